//! The writer thread: takes batches of owned records from the [`Queue`],
//! formats them into one buffer and writes it with `write_all` whenever the
//! buffer is full or the batch is done (so the output is live when traffic is
//! light and written in large chunks when it is heavy).
//!
//! The writer is the only thread that ever waits for the output. When the
//! output fails for good (EPIPE: the reader is gone; EIO), every later
//! record is discarded and counted, and `on_failure` runs once (the process
//! decides whether to keep serving; see `docs/flow-log.md`).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;

use super::queue::{DropReason, Gap, Queue, Taken};
use super::text::unix_millis;
use super::{ConnEvent, HttpFlow, LogFormat, Opts, TcpFlow, json, text};

/// Records accepted but not yet written, by default (`--flow-log-queue`).
pub const QUEUE_CAPACITY: usize = 4096;

/// Output buffer: a batch is written out in chunks of about this size.
const BUF_SIZE: usize = 64 * 1024;

/// A message to the writer thread.
#[derive(Debug)]
pub(crate) enum Msg {
    Conn(ConnEvent),
    Http(Box<HttpFlow>),
    Tcp(TcpFlow),
    /// Records were dropped here (queue full); printed as one line.
    Gap(Gap),
    /// Write everything before this message, then answer.
    Flush(SyncSender<()>),
}

impl Msg {
    /// A flow-log record (counts against the capacity), not a marker.
    pub(crate) fn is_record(&self) -> bool {
        matches!(self, Msg::Conn(_) | Msg::Http(_) | Msg::Tcp(_))
    }
}

/// How the writer finds the UTC offset of the text format's clock.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Clock {
    /// The system's local time zone (`TZ`, `/etc/localtime`), per record.
    Local,
    /// A fixed offset in seconds east of UTC (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Fixed(i32),
}

/// Called once when the output fails for good.
pub type OnFailure = Box<dyn FnOnce(&io::Error) + Send>;

/// Starts the writer thread.
pub(crate) fn spawn(
    format: LogFormat,
    opts: Opts,
    clock: Clock,
    queue: Arc<Queue>,
    out: Box<dyn Write + Send>,
    on_failure: Option<OnFailure>,
) -> io::Result<JoinHandle<()>> {
    let writer = Writer {
        out,
        queue,
        on_failure,
        buf: Vec::with_capacity(BUF_SIZE + 4096),
        buf_records: 0,
        format,
        opts,
        clock,
        tz_slot: i64::MIN,
        tz_offset: 0,
        text: String::with_capacity(1024),
        json: Vec::with_capacity(1024),
    };
    std::thread::Builder::new()
        .name("flowlog".into())
        .spawn(move || writer.run())
}

struct Writer {
    out: Box<dyn Write + Send>,
    queue: Arc<Queue>,
    on_failure: Option<OnFailure>,
    /// Formatted bytes not yet written, and how many records they hold.
    buf: Vec<u8>,
    buf_records: usize,
    format: LogFormat,
    opts: Opts,
    clock: Clock,
    /// 15-minute slot whose offset is cached (every UTC offset change
    /// happens on a quarter hour).
    tz_slot: i64,
    tz_offset: i32,
    text: String,
    json: Vec<u8>,
}

impl Writer {
    fn broken(&self) -> bool {
        self.queue.stats.broken.load(Ordering::Relaxed)
    }

    fn run(mut self) {
        let mut batch = VecDeque::new();
        while let Taken::Batch = self.queue.take(&mut batch) {
            for msg in batch.drain(..) {
                match msg {
                    Msg::Flush(ack) => {
                        self.write_out();
                        // Always reach the output's own flush: a flush
                        // request means "make it visible now".
                        if !self.broken() {
                            let _ = self.out.flush();
                        }
                        let _ = ack.send(());
                    }
                    record => self.record(&record),
                }
                if self.buf.len() >= BUF_SIZE {
                    self.write_out();
                }
            }
            self.write_out();
        }
    }

    fn record(&mut self, msg: &Msg) {
        let is_record = msg.is_record();
        if self.broken() {
            if is_record {
                self.queue.stats.add_dropped(DropReason::OutputError, 1);
                self.queue.done(1);
            }
            return;
        }
        let formatted = match catch_unwind(AssertUnwindSafe(|| self.format(msg))) {
            Ok(formatted) => formatted,
            Err(_) => {
                tracing::error!("flow log formatting panicked; record skipped");
                false
            }
        };
        if formatted {
            let bytes = match self.format {
                LogFormat::Text => self.text.as_bytes(),
                LogFormat::Json => self.json.as_slice(),
            };
            self.buf.extend_from_slice(bytes);
        }
        if is_record {
            // Skipped records (nothing to print) count as done at once.
            self.buf_records += 1;
        }
    }

    /// Write the buffer out; the records in it are done either way.
    fn write_out(&mut self) {
        let n = std::mem::take(&mut self.buf_records);
        if !self.buf.is_empty() && !self.broken() {
            let res = self
                .out
                .write_all(&self.buf)
                .and_then(|()| self.out.flush());
            match res {
                Ok(()) => {
                    self.queue
                        .stats
                        .written
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(error) => {
                    self.queue
                        .stats
                        .add_dropped(DropReason::OutputError, n as u64);
                    self.fail(&error);
                }
            }
        }
        self.buf.clear();
        self.queue.done(n);
    }

    fn fail(&mut self, error: &io::Error) {
        self.queue.stats.broken.store(true, Ordering::Relaxed);
        tracing::error!(
            %error,
            "flow log output failed; no more flows can be logged (records are counted in tproxy_flowlog_records_dropped_total{{reason=\"output_error\"}})"
        );
        if let Some(hook) = self.on_failure.take() {
            hook(error);
        }
    }

    /// Formats `msg` into the reusable buffer of its format; false when
    /// there is nothing to write.
    fn format(&mut self, msg: &Msg) -> bool {
        match self.format {
            LogFormat::Text => {
                self.text.clear();
                match msg {
                    Msg::Conn(ev) => {
                        let offset = self.offset_at(unix_millis(ev.at).div_euclid(1000));
                        text::conn_event(&mut self.text, ev, offset);
                    }
                    Msg::Http(f) => text::http(&mut self.text, f, &self.opts),
                    Msg::Tcp(f) => text::tcp(&mut self.text, f, &self.opts),
                    Msg::Gap(g) => {
                        let now = std::time::SystemTime::now();
                        let offset = self.offset_at(unix_millis(now).div_euclid(1000));
                        text::gap(&mut self.text, g, now, offset);
                    }
                    Msg::Flush(_) => return false,
                }
                true
            }
            LogFormat::Json => {
                self.json.clear();
                let res = match msg {
                    Msg::Http(f) => json::http(&mut self.json, f, &self.opts),
                    Msg::Tcp(f) => json::tcp(&mut self.json, f),
                    Msg::Gap(g) => json::gap(&mut self.json, g, std::time::SystemTime::now()),
                    Msg::Conn(_) | Msg::Flush(_) => return false,
                };
                match res {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::error!(%error, "flow log JSON serialisation failed; record skipped");
                        false
                    }
                }
            }
        }
    }

    fn offset_at(&mut self, unix_secs: i64) -> i32 {
        match self.clock {
            Clock::Fixed(offset) => offset,
            Clock::Local => {
                let slot = unix_secs.div_euclid(900);
                if slot != self.tz_slot {
                    self.tz_slot = slot;
                    self.tz_offset = local_offset_secs(unix_secs).unwrap_or(0);
                }
                self.tz_offset
            }
        }
    }
}

/// The local time zone's UTC offset at `unix_secs` (DST included), or None
/// when the C library cannot tell (then the log uses UTC).
pub(crate) fn local_offset_secs(unix_secs: i64) -> Option<i32> {
    let t = libc::time_t::try_from(unix_secs).ok()?;
    let mut tm = std::mem::MaybeUninit::<libc::tm>::uninit();
    // SAFETY: `t` and `tm` are valid for the call; localtime_r is the
    // reentrant variant and writes only to `tm`. It reads `TZ`, which could
    // race with a concurrent `setenv`; in Rust 2024 `std::env::set_var` is
    // `unsafe` with exactly the obligation that no other thread reads the
    // environment, and tproxy never calls it once threads run.
    let res = unsafe { libc::localtime_r(&t, tm.as_mut_ptr()) };
    if res.is_null() {
        return None;
    }
    // SAFETY: localtime_r returned non-null, so it filled in `tm`.
    let tm = unsafe { tm.assume_init() };
    let offset = i32::try_from(tm.tm_gmtoff).ok()?;
    (-18 * 3600..=18 * 3600).contains(&offset).then_some(offset)
}
