//! The flow log: mitmdump-style text or JSON lines on stdout, written by a
//! dedicated thread so workers never format or do I/O for it.
//!
//! Workers hand owned records to [`FlowLog::conn_event`], [`FlowLog::http`]
//! and [`FlowLog::tcp`], which only move them into a bounded queue
//! ([`queue`]). The `flowlog` thread formats ([`text`] or [`json`] shape),
//! redacts credentials ([`redact`]) and writes whole batches, so the output
//! is live when the queue runs empty. The formats are specified in
//! `docs/flow-log.md`.
//!
//! Backpressure ([`OnFull`], `--flow-log-full`): by default a worker never
//! waits for the log. When the records not yet written reach the queue's
//! capacity (`--flow-log-queue`, 4096), new records are dropped and counted
//! by reason, stderr says so (at most every 10 s), and once the output drains
//! the log itself carries a line saying how many records were lost and when.
//! `block` makes workers wait instead (lossless, but a stuck reader stops
//! traffic, as it would stall mitmdump). Shutdown is bounded:
//! [`FlowLog::finish`] waits until a deadline and counts what is left as lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

mod json;
pub mod queue;
pub mod redact;
mod size;
#[cfg(test)]
mod tests;
mod text;
mod writer;

pub use redact::{redact_header, redact_url};
pub use size::{canonical_reason, format_address, pretty_size};
pub use text::BODY_LINES_CUTOFF;

pub use queue::{DropReason, OnFull, Stats};
use writer::{Clock, Msg};
pub use writer::{OnFailure, QUEUE_CAPACITY};

/// Body bytes the engine captures per message at `--flow-detail 3`.
pub const BODY_CAPTURE_DETAIL3: usize = 64 * 1024;
/// Body bytes the engine captures per message at `--flow-detail 4`.
pub const BODY_CAPTURE_DETAIL4: usize = 16 * 1024 * 1024;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// mitmdump's human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Flow log settings.
#[derive(Debug, Clone)]
pub struct FlowLogConfig {
    /// `--log-format`: text or JSON lines.
    pub format: LogFormat,
    /// `--flow-detail 0..=4` (mitmdump semantics).
    pub detail: u8,
    /// `--show-secrets`: do not redact credentials.
    pub show_secrets: bool,
}

/// HTTP version of one side of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
    /// HTTP/2 (printed `HTTP/2.0`, as mitmproxy does).
    Http2,
}

impl HttpVersion {
    /// mitmproxy's spelling: `HTTP/1.0`, `HTTP/1.1`, `HTTP/2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http10 => "HTTP/1.0",
            Self::Http11 => "HTTP/1.1",
            Self::Http2 => "HTTP/2.0",
        }
    }

    /// HTTP/1.0 or HTTP/1.1.
    pub fn is_http1(self) -> bool {
        matches!(self, Self::Http10 | Self::Http11)
    }
}

/// A connection-level event (text format only; JSON ignores them).
#[derive(Debug, Clone)]
pub struct ConnEvent {
    /// When it happened.
    pub at: SystemTime,
    /// The client connection it belongs to.
    pub client: SocketAddr,
    /// What happened.
    pub kind: ConnEventKind,
}

/// What a [`ConnEvent`] reports.
#[derive(Debug, Clone)]
pub enum ConnEventKind {
    /// A client connected.
    ClientConnect,
    /// The client connection closed.
    ClientDisconnect,
    /// `authority` is `host:port` as the client asked for it.
    ServerConnect { authority: String, addr: SocketAddr },
    /// The upstream connection closed.
    ServerDisconnect { authority: String, addr: SocketAddr },
    /// A connection-level error worth a line (TLS failure, refused, loop).
    Error { message: String },
}

/// A captured body (only at --flow-detail >= 3).
#[derive(Debug, Clone, Default)]
pub struct BodyCapture {
    /// The captured bytes (at most `FlowLog::body_capture_limit()`).
    pub bytes: Vec<u8>,
    /// More body existed than was captured.
    pub truncated: bool,
}

/// The response half of a flow.
#[derive(Debug, Clone)]
pub struct ResponseSummary {
    /// Status code.
    pub status: u16,
    /// Reason phrase as received; empty for HTTP/2 (the log then prints
    /// the standard phrase).
    pub reason: String,
    /// Version the response was received in.
    pub version: HttpVersion,
    /// Only filled at --flow-detail >= 2.
    pub headers: Vec<(String, String)>,
    /// Only filled at --flow-detail >= 3.
    pub body: Option<BodyCapture>,
}

/// Per-phase durations.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// TCP connect to the upstream (None when reused or not connected).
    pub connect: Option<Duration>,
    /// Upstream TLS handshake.
    pub tls: Option<Duration>,
    /// Request sent until the first response byte.
    pub ttfb: Option<Duration>,
    /// The whole exchange.
    pub total: Duration,
}

/// One HTTP request/response exchange.
#[derive(Debug, Clone)]
pub struct HttpFlow {
    /// When the request started (JSON `ts`).
    pub started: SystemTime,
    /// Client address.
    pub client: SocketAddr,
    /// "regular" | "transparent".
    pub mode: &'static str,
    /// `host:port` the request went to.
    pub destination: String,
    /// Upstream address connected to.
    pub server_addr: Option<SocketAddr>,
    /// TLS server name sent by the client.
    pub sni: Option<String>,
    /// Request method.
    pub method: String,
    /// mitmproxy's "pretty URL": `scheme://host[:port]/path?query`.
    pub url: String,
    /// Version the request was received in.
    pub request_version: HttpVersion,
    /// Only filled at --flow-detail >= 2.
    pub request_headers: Vec<(String, String)>,
    /// Only filled at --flow-detail >= 3.
    pub request_body: Option<BodyCapture>,
    /// None when no response was received (see `error`).
    pub response: Option<ResponseSummary>,
    /// Request body bytes forwarded.
    pub request_bytes: u64,
    /// Response body bytes forwarded (the size the text format prints).
    pub response_bytes: u64,
    /// Per-phase durations.
    pub timings: Timings,
    /// "intercept" | "deny" | "passthrough" | ...
    pub decision: &'static str,
    /// Name of the policy rule that decided, if any.
    pub rule: Option<String>,
    /// The deciding rule's `tag` (a label for logs and metrics), if any.
    pub tag: Option<String>,
    /// Trace identity (spans and `traceparent`), when tracing is on.
    pub trace: Option<crate::observe::FlowTrace>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// The bounded cause label of an upstream failure
    /// ([`crate::upstream::failure::Cause`]), JSON `error_cause`.
    pub error_cause: Option<&'static str>,
    /// Times the request was sent again on a new upstream connection after
    /// a failure the client never saw (JSON `upstream_retries`).
    pub upstream_retries: u8,
}

/// A passthrough (spliced) connection.
#[derive(Debug, Clone)]
pub struct TcpFlow {
    /// When the connection was accepted (JSON `ts`).
    pub started: SystemTime,
    /// Client address.
    pub client: SocketAddr,
    /// "regular" | "transparent".
    pub mode: &'static str,
    /// `host:port` it went to.
    pub destination: String,
    /// Upstream address connected to.
    pub server_addr: Option<SocketAddr>,
    /// TLS server name, when the bytes were a ClientHello.
    pub sni: Option<String>,
    /// Bytes spliced client to server.
    pub client_to_server: u64,
    /// Bytes spliced server to client.
    pub server_to_client: u64,
    /// Connection lifetime.
    pub duration: Duration,
    /// Why it was passed through ("ignore-hosts", "not http", ...).
    pub reason: String,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// Formatting options the writer thread needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opts {
    pub(crate) detail: u8,
    pub(crate) show_secrets: bool,
}

/// Where and how records are written (`--flow-log-full`, `--flow-log-queue`).
pub struct OutputOptions {
    /// Records accepted but not yet written, at most.
    pub capacity: usize,
    /// What a worker does when that many are pending.
    pub on_full: OnFull,
    /// Called once, on the writer thread, when the output fails for good.
    pub on_failure: Option<OnFailure>,
}

impl std::fmt::Debug for OutputOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputOptions")
            .field("capacity", &self.capacity)
            .field("on_full", &self.on_full)
            .finish_non_exhaustive()
    }
}

impl Default for OutputOptions {
    /// `--flow-log-full drop`, `--flow-log-queue 4096`.
    fn default() -> Self {
        Self {
            capacity: writer::QUEUE_CAPACITY,
            on_full: OnFull::Drop,
            on_failure: None,
        }
    }
}

impl OutputOptions {
    /// Lossless: `capacity` records, workers wait when they are pending.
    pub fn blocking(capacity: usize) -> Self {
        Self {
            capacity,
            on_full: OnFull::Block,
            on_failure: None,
        }
    }
}

/// How [`FlowLog::finish`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    /// Records still pending at the deadline, now counted as lost
    /// (`reason="shutdown"`); 0 when everything was written.
    pub lost_at_deadline: u64,
    /// Records lost during the run or at shutdown, for every reason.
    pub lost_total: u64,
}

impl Finish {
    /// Everything accepted was written and nothing was ever dropped.
    pub fn complete(&self) -> bool {
        self.lost_total == 0
    }
}

/// Handle to the flow log; cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct FlowLog {
    format: LogFormat,
    detail: u8,
    /// None at detail 0 (nothing is ever written) or when the writer
    /// thread could not be started.
    inner: Option<Arc<Inner>>,
}

/// Owned by all clones; the last one to go closes the queue and waits for
/// the writer to finish (unless [`FlowLog::finish`] gave up on it).
#[derive(Debug)]
struct Inner {
    queue: Arc<queue::Queue>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(thread) = self.thread.take()
            && !self.queue.abandoned()
        {
            let _ = thread.join();
        }
    }
}

impl FlowLog {
    /// Log to stdout from a dedicated writer thread, with the default
    /// output options (drop when full, [`QUEUE_CAPACITY`]).
    pub fn stdout(cfg: FlowLogConfig) -> Self {
        Self::stdout_with(cfg, OutputOptions::default())
    }

    /// Log to stdout with these output options.
    pub fn stdout_with(cfg: FlowLogConfig, output: OutputOptions) -> Self {
        Self::spawn_with(&cfg, Box::new(std::io::stdout()), Clock::Local, output)
    }

    /// Log to any writer, losslessly (tests).
    pub fn to_writer(cfg: FlowLogConfig, out: Box<dyn std::io::Write + Send>) -> Self {
        Self::spawn(&cfg, out, Clock::Local, writer::QUEUE_CAPACITY)
    }

    /// A lossless log whose text clock uses a fixed UTC offset and whose
    /// queue holds `capacity` records (tests).
    pub(crate) fn spawn(
        cfg: &FlowLogConfig,
        out: Box<dyn std::io::Write + Send>,
        clock: Clock,
        capacity: usize,
    ) -> Self {
        Self::spawn_with(cfg, out, clock, OutputOptions::blocking(capacity))
    }

    pub(crate) fn spawn_with(
        cfg: &FlowLogConfig,
        out: Box<dyn std::io::Write + Send>,
        clock: Clock,
        output: OutputOptions,
    ) -> Self {
        let detail = cfg.detail.min(4);
        let mut log = Self {
            format: cfg.format,
            detail,
            inner: None,
        };
        if detail == 0 {
            return log;
        }
        let opts = Opts {
            detail,
            show_secrets: cfg.show_secrets,
        };
        let queue = Arc::new(queue::Queue::new(output.capacity, output.on_full));
        match writer::spawn(
            cfg.format,
            opts,
            clock,
            queue.clone(),
            out,
            output.on_failure,
        ) {
            Ok(thread) => {
                log.inner = Some(Arc::new(Inner {
                    queue,
                    thread: Some(thread),
                }));
            }
            Err(error) => {
                tracing::error!(%error, "cannot start the flow log writer thread; flows will not be logged");
            }
        }
        log
    }

    /// The effective `--flow-detail` (values above 4 act as 4).
    pub fn detail(&self) -> u8 {
        self.detail
    }

    /// Whether request/response headers should be collected (detail >= 2).
    pub fn wants_headers(&self) -> bool {
        self.detail >= 2
    }

    /// Body capture limit in bytes (0 = do not capture; detail >= 3):
    /// [`BODY_CAPTURE_DETAIL3`] or [`BODY_CAPTURE_DETAIL4`].
    pub fn body_capture_limit(&self) -> usize {
        match self.detail {
            0..=2 => 0,
            3 => BODY_CAPTURE_DETAIL3,
            _ => BODY_CAPTURE_DETAIL4,
        }
    }

    /// Counters (None when nothing is logged: detail 0).
    pub fn stats(&self) -> Option<&Stats> {
        self.inner.as_ref().map(|i| &i.queue.stats)
    }

    /// Records accepted and not yet written.
    pub fn pending(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.queue.pending())
    }

    fn send(&self, msg: Msg) {
        if let Some(inner) = &self.inner {
            // Never waits with `OnFull::Drop`; see `queue`.
            inner.queue.push(msg);
        }
    }

    /// Queues a connection event (text format only; JSON has no such lines).
    pub fn conn_event(&self, ev: ConnEvent) {
        if self.format == LogFormat::Text {
            self.send(Msg::Conn(ev));
        }
    }

    /// Queues one HTTP exchange.
    pub fn http(&self, flow: HttpFlow) {
        self.send(Msg::Http(Box::new(flow)));
    }

    /// Queues one passthrough connection.
    pub fn tcp(&self, flow: TcpFlow) {
        self.send(Msg::Tcp(flow));
    }

    /// Write everything queued so far and wait until it is on the output.
    pub fn flush(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        inner.queue.push_control(Msg::Flush(ack_tx));
        let _ = ack_rx.recv();
    }

    /// Shutdown: write everything queued, waiting at most until `deadline`.
    /// What is still pending then is counted as lost and the writer is left
    /// behind (the process is about to exit); later records are dropped.
    pub fn finish(&self, deadline: std::time::Instant) -> Finish {
        let Some(inner) = &self.inner else {
            return Finish {
                lost_at_deadline: 0,
                lost_total: 0,
            };
        };
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        inner.queue.push_control(Msg::Flush(ack_tx));
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        let lost_at_deadline = match ack_rx.recv_timeout(wait) {
            Ok(()) => 0,
            Err(_) => inner.queue.abandon(),
        };
        Finish {
            lost_at_deadline,
            lost_total: inner.queue.stats.dropped_total(),
        }
    }
}
