//! The flow log: mitmdump-style text or JSON lines on stdout, written by a
//! dedicated thread so workers never format or do I/O for it.
//!
//! Workers hand owned records to [`FlowLog::conn_event`], [`FlowLog::http`]
//! and [`FlowLog::tcp`], which only move them into a bounded channel. The
//! `flowlog` thread formats ([`text`] or [`json`] shape), redacts credentials
//! ([`redact`]) and writes through a buffer that is flushed whenever the
//! queue runs empty. The formats are specified in `docs/flow-log.md`.
//!
//! Backpressure: when the queue (4096 records) is full, the sending worker
//! blocks until the writer catches up. The log is never lossy; a stdout that
//! nobody reads stalls the proxy, as it would stall mitmdump.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

mod json;
pub mod redact;
mod size;
#[cfg(test)]
mod tests;
mod text;
mod writer;

pub use redact::{redact_header, redact_url};
pub use size::{canonical_reason, format_address, pretty_size};
pub use text::BODY_LINES_CUTOFF;

use writer::{Clock, Msg};

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
/// the writer to finish.
#[derive(Debug)]
struct Inner {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl FlowLog {
    /// Log to stdout from a dedicated writer thread.
    pub fn stdout(cfg: FlowLogConfig) -> Self {
        Self::spawn(
            &cfg,
            Box::new(std::io::stdout()),
            Clock::Local,
            writer::QUEUE_CAPACITY,
        )
    }

    /// Log to any writer (tests).
    pub fn to_writer(cfg: FlowLogConfig, out: Box<dyn std::io::Write + Send>) -> Self {
        Self::spawn(&cfg, out, Clock::Local, writer::QUEUE_CAPACITY)
    }

    /// A log whose text clock uses a fixed UTC offset and whose queue holds
    /// `capacity` records.
    pub(crate) fn spawn(
        cfg: &FlowLogConfig,
        out: Box<dyn std::io::Write + Send>,
        clock: Clock,
        capacity: usize,
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
        match writer::spawn(cfg.format, opts, clock, capacity, out) {
            Ok((tx, thread)) => {
                log.inner = Some(Arc::new(Inner {
                    tx: Some(tx),
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

    fn send(&self, msg: Msg) {
        if let Some(tx) = self.inner.as_ref().and_then(|i| i.tx.as_ref()) {
            // Blocks while the queue is full. Fails only if the writer
            // thread is gone, and then there is nowhere to write anyway.
            let _ = tx.send(msg);
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

    /// Write everything queued so far and wait until it is on stdout.
    pub fn flush(&self) {
        let Some(tx) = self.inner.as_ref().and_then(|i| i.tx.as_ref()) else {
            return;
        };
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        if tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv();
        }
    }
}
