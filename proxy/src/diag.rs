//! Diagnostics to stderr without ever waiting for stderr.
//!
//! `tracing` events are formatted on the thread that emits them (a worker,
//! often), and a plain stderr writer would then `write(2)` there: a stderr
//! pipe nobody reads would stall that worker's event loop. [`Stderr`] is the
//! subscriber's writer instead: it copies each formatted event into a bounded
//! queue ([`QUEUE_LINES`]) and returns; a `tproxy-stderr` thread writes them.
//! When the queue is full the line is dropped and counted
//! (`tproxy_stderr_lines_dropped_total`); when stderr drains, a line says
//! how many were lost. [`flush`] waits (bounded) for what is queued, for the
//! last lines at exit.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Diagnostic lines waiting for stderr, at most.
pub const QUEUE_LINES: usize = 1024;

enum Line {
    Text(Vec<u8>),
    Flush(SyncSender<()>),
}

static QUEUE: OnceLock<Option<SyncSender<Line>>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Serialises direct writes when the writer thread could not be started.
static FALLBACK: Mutex<()> = Mutex::new(());

/// Lines dropped because stderr was not keeping up.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The queue, starting the writer thread on first use (None: it could not
/// be started, and lines are written directly).
fn queue() -> Option<&'static SyncSender<Line>> {
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_LINES);
            std::thread::Builder::new()
                .name("tproxy-stderr".into())
                .spawn(move || run(&rx))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

fn run(rx: &Receiver<Line>) {
    let mut reported = 0u64;
    // Not locked for good: `eprintln!` elsewhere (start-up errors) must
    // still get through.
    let mut err = std::io::stderr();
    while let Ok(line) = rx.recv() {
        match line {
            Line::Text(bytes) => {
                let dropped = DROPPED.load(Ordering::Relaxed);
                if dropped > reported {
                    let _ = writeln!(
                        err,
                        "tproxy: {} diagnostic lines were dropped: stderr was not read fast enough (tproxy_stderr_lines_dropped_total)",
                        dropped - reported
                    );
                    reported = dropped;
                }
                let _ = err.write_all(&bytes);
            }
            Line::Flush(ack) => {
                let _ = err.flush();
                let _ = ack.send(());
            }
        }
    }
}

/// Wait until every line queued so far reached stderr, at most `timeout`.
/// False when stderr did not drain in time.
pub fn flush(timeout: Duration) -> bool {
    let Some(Some(q)) = QUEUE.get() else {
        return true;
    };
    let deadline = Instant::now() + timeout;
    let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
    let mut msg = Line::Flush(ack_tx);
    loop {
        match q.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                msg = m;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return false,
        }
    }
    let wait = deadline.saturating_duration_since(Instant::now());
    !matches!(
        ack_rx.recv_timeout(wait),
        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected)
    )
}

/// The `tracing_subscriber` writer: one formatted event per `write` call
/// sequence, queued as one line on drop.
#[derive(Debug, Default)]
pub struct Stderr {
    buf: Vec<u8>,
}

impl Write for Stderr {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Stderr {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut self.buf);
        match queue() {
            Some(q) => {
                if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                    q.try_send(Line::Text(bytes))
                {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                let _guard = FALLBACK.lock().unwrap_or_else(PoisonError::into_inner);
                let _ = std::io::stderr().write_all(&bytes);
            }
        }
    }
}

/// `MakeWriter` for `tracing_subscriber::fmt().with_writer(diag::make)`.
pub fn make() -> Stderr {
    Stderr::default()
}
