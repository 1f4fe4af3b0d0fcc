//! Where every finished flow goes: metrics, traces and the flow log, in one
//! place. Each engine (HTTP/1, HTTP/2 streams, passthrough) hands its
//! finished record here and nowhere else, so a new protocol gets metrics,
//! traces and log lines by construction.

pub mod trace;

use crate::engine::ConnCtx;
use crate::flowlog::{HttpFlow, TcpFlow};
use crate::metrics::flows::Request;
use crate::worker::Worker;

pub use trace::FlowTrace;

/// One HTTP exchange (or HTTP/2 stream) is finished.
pub fn http_done(worker: &Worker, ctx: &ConnCtx, flow: HttpFlow) {
    if let Some(stats) = &worker.shared.metrics.flows {
        stats.record_http(
            worker.id,
            &Request {
                source: ctx.source.as_ref(),
                client_ip: ctx.client.ip(),
                destination: &flow.destination,
                method: &flow.method,
                status: flow.response.as_ref().map(|r| r.status),
                decision: flow.decision,
                rule: flow.rule.as_deref(),
                total: flow.timings.total,
                ttfb: flow.timings.ttfb,
                request_bytes: flow.request_bytes,
                response_bytes: flow.response_bytes,
            },
        );
    }
    trace::http_done(worker, ctx, &flow);
    worker.shared.flowlog.http(flow);
}

/// One passthrough (spliced) connection is finished.
pub fn tcp_done(worker: &Worker, ctx: &ConnCtx, flow: TcpFlow) {
    worker.shared.metrics.passthrough_done(ctx.mode);
    if let Some(stats) = &worker.shared.metrics.flows {
        stats.record_tcp(
            worker.id,
            ctx.source.as_ref(),
            ctx.client.ip(),
            flow.client_to_server,
            flow.server_to_client,
        );
    }
    trace::tcp_done(worker, ctx, &flow);
    worker.shared.flowlog.tcp(flow);
}
