//! The writer thread: receives owned records over a bounded channel, formats
//! them and writes them through a `BufWriter`, flushing whenever the queue
//! runs empty.

use std::io::{self, BufWriter, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;

use super::text::unix_millis;
use super::{ConnEvent, HttpFlow, LogFormat, Opts, TcpFlow, json, text};

/// Records queued between the workers and the writer. When the queue is
/// full, senders block (the log is never lossy).
pub(crate) const QUEUE_CAPACITY: usize = 4096;

/// Output buffer; records larger than this are written straight through.
const BUF_SIZE: usize = 64 * 1024;

/// A message to the writer thread.
#[derive(Debug)]
pub(crate) enum Msg {
    Conn(ConnEvent),
    Http(Box<HttpFlow>),
    Tcp(TcpFlow),
    /// Flush everything before this message, then answer.
    Flush(SyncSender<()>),
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

/// Starts the writer thread.
pub(crate) fn spawn(
    format: LogFormat,
    opts: Opts,
    clock: Clock,
    capacity: usize,
    out: Box<dyn Write + Send>,
) -> io::Result<(SyncSender<Msg>, JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
    let writer = Writer {
        out: BufWriter::with_capacity(BUF_SIZE, out),
        broken: false,
        format,
        opts,
        clock,
        tz_slot: i64::MIN,
        tz_offset: 0,
        text: String::with_capacity(1024),
        json: Vec::with_capacity(1024),
    };
    let handle = std::thread::Builder::new()
        .name("flowlog".into())
        .spawn(move || writer.run(rx))?;
    Ok((tx, handle))
}

struct Writer {
    out: BufWriter<Box<dyn Write + Send>>,
    /// Output failed (e.g. EPIPE): records are drained and discarded.
    broken: bool,
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
    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let msg = match rx.try_recv() {
                Ok(msg) => msg,
                Err(TryRecvError::Empty) => {
                    // Queue drained: make what we have visible, then wait.
                    self.flush();
                    match rx.recv() {
                        Ok(msg) => msg,
                        Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            match msg {
                Msg::Flush(ack) => {
                    self.flush();
                    let _ = ack.send(());
                }
                record => self.record(&record),
            }
        }
        self.flush();
        if self.broken {
            // Drop buffered bytes instead of retrying the failed output.
            let _ = self.out.into_parts();
        }
    }

    fn record(&mut self, msg: &Msg) {
        if self.broken {
            return;
        }
        match catch_unwind(AssertUnwindSafe(|| self.format(msg))) {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => {
                tracing::error!("flow log formatting panicked; record skipped");
                return;
            }
        }
        let bytes = match self.format {
            LogFormat::Text => self.text.as_bytes(),
            LogFormat::Json => self.json.as_slice(),
        };
        if let Err(error) = self.out.write_all(bytes) {
            self.fail(&error);
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
                    Msg::Flush(_) => return false,
                }
                true
            }
            LogFormat::Json => {
                self.json.clear();
                let res = match msg {
                    Msg::Http(f) => json::http(&mut self.json, f, &self.opts),
                    Msg::Tcp(f) => json::tcp(&mut self.json, f),
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

    fn flush(&mut self) {
        if self.broken {
            return;
        }
        if let Err(error) = self.out.flush() {
            self.fail(&error);
        }
    }

    fn fail(&mut self, error: &io::Error) {
        self.broken = true;
        tracing::warn!(%error, "flow log output failed; flow logging stopped, further records are discarded");
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
