//! Distributed tracing of flows (OpenTelemetry). Without an exporter
//! configured every function here is a no-op.

use crate::engine::ConnCtx;
use crate::flowlog::{HttpFlow, TcpFlow};
use crate::worker::Worker;

/// Trace identity of one HTTP request, decided when its head arrives.
#[derive(Debug, Clone, Default)]
pub struct FlowTrace {}

impl FlowTrace {
    /// The `traceparent` value to send upstream, replacing the client's
    /// (None: forward the request's own headers unchanged).
    pub fn upstream_traceparent(&self) -> Option<String> {
        None
    }
}

/// A request head arrived (before anything goes upstream). `traceparent` is
/// the client's header value, if it sent one.
pub fn begin(_worker: &Worker, _ctx: &ConnCtx, _traceparent: Option<&[u8]>) -> Option<FlowTrace> {
    None
}

/// Emit the spans of a finished HTTP flow.
pub fn http_done(_worker: &Worker, _ctx: &ConnCtx, _flow: &HttpFlow) {}

/// Emit the span of a finished passthrough connection.
pub fn tcp_done(_worker: &Worker, _ctx: &ConnCtx, _flow: &TcpFlow) {}
