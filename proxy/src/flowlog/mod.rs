//! The flow log: mitmdump-style text or JSON lines on stdout, written by a
//! dedicated thread so workers never block on stdout.
//! STUB — replaced by the flowlog work item. Types and signatures are the contract.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

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
    pub format: LogFormat,
    /// `--flow-detail 0..=4` (mitmdump semantics).
    pub detail: u8,
    /// `--show-secrets`: do not redact credentials.
    pub show_secrets: bool,
}

/// HTTP version of one side of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http10,
    Http11,
    Http2,
}

/// A connection-level event (text format only; JSON ignores them).
#[derive(Debug, Clone)]
pub struct ConnEvent {
    pub at: SystemTime,
    pub client: SocketAddr,
    pub kind: ConnEventKind,
}

#[derive(Debug, Clone)]
pub enum ConnEventKind {
    ClientConnect,
    ClientDisconnect,
    /// `authority` is `host:port` as the client asked for it.
    ServerConnect {
        authority: String,
        addr: SocketAddr,
    },
    ServerDisconnect {
        authority: String,
        addr: SocketAddr,
    },
    /// A connection-level error worth a line (TLS failure, refused, loop).
    Error {
        message: String,
    },
}

/// A captured body (only at --flow-detail >= 3).
#[derive(Debug, Clone, Default)]
pub struct BodyCapture {
    pub bytes: Vec<u8>,
    /// More body existed than was captured.
    pub truncated: bool,
}

/// The response half of a flow.
#[derive(Debug, Clone)]
pub struct ResponseSummary {
    pub status: u16,
    pub reason: String,
    pub version: HttpVersion,
    /// Only filled at --flow-detail >= 2.
    pub headers: Vec<(String, String)>,
    pub body: Option<BodyCapture>,
}

/// Per-phase durations.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub connect: Option<Duration>,
    pub tls: Option<Duration>,
    pub ttfb: Option<Duration>,
    pub total: Duration,
}

/// One HTTP request/response exchange.
#[derive(Debug, Clone)]
pub struct HttpFlow {
    pub started: SystemTime,
    pub client: SocketAddr,
    /// "regular" | "transparent".
    pub mode: &'static str,
    /// `host:port` the request went to.
    pub destination: String,
    pub server_addr: Option<SocketAddr>,
    pub sni: Option<String>,
    pub method: String,
    /// mitmproxy's "pretty URL": `scheme://host[:port]/path?query`.
    pub url: String,
    pub request_version: HttpVersion,
    /// Only filled at --flow-detail >= 2.
    pub request_headers: Vec<(String, String)>,
    pub request_body: Option<BodyCapture>,
    /// None when no response was received (see `error`).
    pub response: Option<ResponseSummary>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub timings: Timings,
    /// "intercept" | "deny" | "passthrough" | ...
    pub decision: &'static str,
    pub rule: Option<String>,
    pub error: Option<String>,
}

/// A passthrough (spliced) connection.
#[derive(Debug, Clone)]
pub struct TcpFlow {
    pub started: SystemTime,
    pub client: SocketAddr,
    pub mode: &'static str,
    pub destination: String,
    pub server_addr: Option<SocketAddr>,
    pub sni: Option<String>,
    pub client_to_server: u64,
    pub server_to_client: u64,
    pub duration: Duration,
    /// Why it was passed through ("ignore-hosts", "not http", ...).
    pub reason: String,
    pub error: Option<String>,
}

/// Handle to the flow log; cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct FlowLog {}

impl FlowLog {
    /// Log to stdout from a dedicated writer thread.
    pub fn stdout(cfg: FlowLogConfig) -> Self {
        let _ = cfg;
        Self {}
    }

    /// Log to any writer (tests).
    pub fn to_writer(cfg: FlowLogConfig, out: Box<dyn std::io::Write + Send>) -> Self {
        let _ = (cfg, out);
        Self {}
    }

    /// Whether request/response headers should be collected (detail >= 2).
    pub fn wants_headers(&self) -> bool {
        false
    }

    /// Body capture limit in bytes (0 = do not capture; detail >= 3).
    pub fn body_capture_limit(&self) -> usize {
        0
    }

    pub fn conn_event(&self, ev: ConnEvent) {
        let _ = ev;
    }

    pub fn http(&self, flow: HttpFlow) {
        let _ = flow;
    }

    pub fn tcp(&self, flow: TcpFlow) {
        let _ = flow;
    }

    /// Write everything queued so far and wait until it is on stdout.
    pub fn flush(&self) {}
}
