//! Where every finished flow goes: metrics, traces and the flow log, in one
//! place. Each engine (HTTP/1, HTTP/2 streams, passthrough) hands its
//! finished record here and nowhere else, so a new protocol gets metrics,
//! traces and log lines by construction.

pub mod trace;

use crate::engine::ConnCtx;
use crate::flowlog::{HttpFlow, TcpFlow};
use crate::worker::Worker;

pub use trace::FlowTrace;

/// One HTTP exchange (or HTTP/2 stream) is finished.
pub fn http_done(worker: &Worker, ctx: &ConnCtx, flow: HttpFlow) {
    let m = &worker.shared.metrics;
    m.request(flow.response.as_ref().map(|r| r.status));
    m.bytes_from_client.inc_by(flow.request_bytes);
    m.bytes_to_client.inc_by(flow.response_bytes);
    trace::http_done(worker, ctx, &flow);
    worker.shared.flowlog.http(flow);
}

/// One passthrough (spliced) connection is finished.
pub fn tcp_done(worker: &Worker, ctx: &ConnCtx, flow: TcpFlow) {
    trace::tcp_done(worker, ctx, &flow);
    worker.shared.flowlog.tcp(flow);
}
