//! Distributed tracing of flows: OpenTelemetry spans exported over OTLP/HTTP.
//! Without an endpoint configured every function here is a no-op.
//!
//! Per intercepted request a SERVER span (the client's request as tproxy
//! received it) and a CLIENT child span (the exchange with the upstream);
//! per passthrough connection one span. Spans are grouped into one OTLP
//! resource per **source pod** whose `service.name` is the pod's workload,
//! so each workload is its own service in Jaeger. See `docs/tracing.md`.
//!
//! How it runs:
//! * [`begin`] (request head arrived): parse the client's `traceparent`,
//!   sample, pick ids. The ids live in the request's [`FlowTrace`], never
//!   in a thread-local "current context", so nothing can leak between the
//!   tasks that share a worker thread.
//! * [`http_done`] / [`tcp_done`]: copy the few fields the spans need into
//!   a record and `try_send` it into a bounded queue. A full queue drops the
//!   record and counts it (`tproxy_trace_spans_dropped_total`); a worker
//!   never waits for the exporter.
//! * The `tproxy-otlp` thread batches (512 spans or 1 s), builds the OTLP
//!   protobuf and POSTs it with a small blocking HTTP client.
//!
//! Why not the OpenTelemetry SDK: its `TracerProvider` carries exactly one
//! `Resource`, but here every source workload is its own resource (one
//! provider plus batch thread per pod would not scale), and its span API
//! builds attribute sets on the calling thread and keeps the active span in
//! a thread-local context, which monoio tasks would have to wrap per future.
//! Writing the OTLP protobuf directly (a small writer, `pb.rs`; the tests
//! decode it with `opentelemetry-proto`'s generated types) keeps the
//! worker's share to a few copies and one channel send, the exporter's to
//! about a microsecond per span, and puts the resource wherever it belongs.

mod context;
mod encode;
mod export;
mod http;
mod pb;
mod record;
mod sampler;
pub mod settings;
#[cfg(test)]
mod tests;

use std::sync::mpsc::{SyncSender, TrySendError};

use prometheus::IntCounter;

use crate::engine::ConnCtx;
use crate::flowlog::{HttpFlow, TcpFlow};
use crate::worker::Worker;

pub use context::{FLAG_SAMPLED, Parent, SpanId, TraceId, format_traceparent, parse_traceparent};
pub use export::{Counters, Exporter};
pub use sampler::{Root, Sampler, SamplerError};
pub use settings::{Endpoint, SettingsError, TraceSettings};

use record::{HttpIds, SpanMsg};

/// Trace identity of one HTTP request, decided when its head arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowTrace {
    /// The trace (continued from the client's `traceparent`, or new).
    pub trace_id: TraceId,
    /// tproxy's SERVER span for the request.
    pub server_span: SpanId,
    /// tproxy's CLIENT span for the upstream exchange (the parent id the
    /// upstream sees in our `traceparent`).
    pub client_span: SpanId,
    /// The client's span, when it sent a valid `traceparent`.
    pub remote_parent: Option<SpanId>,
    /// Spans are recorded and exported.
    pub sampled: bool,
    /// A `traceparent` is sent upstream.
    pub propagate: bool,
}

impl FlowTrace {
    /// The `traceparent` value to send upstream, replacing the client's
    /// (None: forward the request's own headers unchanged).
    pub fn upstream_traceparent(&self) -> Option<String> {
        self.propagate.then(|| {
            let flags = if self.sampled { FLAG_SAMPLED } else { 0 };
            format_traceparent(&self.trace_id, &self.client_span, flags)
        })
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        context::push_hex(&mut s, &self.trace_id);
        s
    }
}

/// The workers' handle on tracing (in [`crate::worker::Shared`]).
#[derive(Debug)]
pub struct Tracer {
    tx: SyncSender<SpanMsg>,
    sampler: Sampler,
    inject_always: bool,
    dropped: IntCounter,
}

/// Tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Registering the trace counters failed.
    #[error("registering the trace metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The TLS client for an `https://` endpoint could not be built.
    #[error("TLS for the OTLP endpoint: {0}")]
    Tls(#[from] crate::tls::ca::CaError),
    /// The exporter thread could not be spawned.
    #[error("cannot spawn the OTLP exporter thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Start tracing: register the counters in `registry`, create the bounded
/// queue and spawn the exporter thread. An `https://` endpoint is verified
/// against the system/webpki roots plus `extra_roots` (`--upstream-ca`).
pub fn start(
    settings: &TraceSettings,
    extra_roots: &[std::path::PathBuf],
    registry: &prometheus::Registry,
) -> Result<(Tracer, Exporter), StartError> {
    let counters = Counters::register(registry)?;
    let tls = if settings.endpoint.tls {
        Some(crate::tls::upstream::client_config(
            &crate::tls::upstream::UpstreamTlsOptions {
                insecure: false,
                extra_roots: extra_roots.to_vec(),
            },
            vec![b"http/1.1".to_vec()],
        )?)
    } else {
        None
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(settings.queue_size);
    let tracer = Tracer {
        tx,
        sampler: settings.sampler,
        inject_always: settings.inject_always,
        dropped: counters.dropped_queue_full.clone(),
    };
    let exporter = Exporter::spawn(settings, tls, counters, rx)?;
    tracing::info!(
        endpoint = %settings.endpoint.url,
        sampler = %settings.sampler.describe(),
        inject_traceparent = settings.inject_always,
        "exporting traces"
    );
    Ok((tracer, exporter))
}

impl Tracer {
    /// The trace decision for a request whose client sent `traceparent`.
    /// None: nothing to record and nothing to inject.
    pub fn decide(&self, traceparent: Option<&[u8]>) -> Option<FlowTrace> {
        let parent = traceparent.and_then(parse_traceparent);
        let trace_id = parent.map_or_else(context::new_trace_id, |p| p.trace_id);
        let sampled = self.sampler.should_sample(parent.as_ref(), &trace_id);
        // Continue a caller's trace with our span as the upstream's parent,
        // with the sampled flag saying what we decided; inject a new one
        // only when configured.
        let propagate = parent.is_some() || self.inject_always;
        if !sampled && !propagate {
            return None;
        }
        Some(FlowTrace {
            trace_id,
            server_span: context::new_span_id(),
            client_span: context::new_span_id(),
            remote_parent: parent.map(|p| p.span_id),
            sampled,
            propagate,
        })
    }

    fn send(&self, msg: SpanMsg) {
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) => {
                self.dropped.inc_by(m.span_count());
            }
        }
    }
}

/// A request head arrived (before anything goes upstream). `traceparent` is
/// the client's header value, if it sent one.
pub fn begin(worker: &Worker, _ctx: &ConnCtx, traceparent: Option<&[u8]>) -> Option<FlowTrace> {
    worker.shared.tracer.as_ref()?.decide(traceparent)
}

/// Emit the spans of a finished HTTP flow.
pub fn http_done(worker: &Worker, ctx: &ConnCtx, flow: &HttpFlow) {
    let Some(tracer) = worker.shared.tracer.as_ref() else {
        return;
    };
    let Some(t) = flow.trace.filter(|t| t.sampled) else {
        return;
    };
    let ids = HttpIds {
        trace_id: t.trace_id,
        server_span: t.server_span,
        remote_parent: t.remote_parent,
    };
    let rec = record::http_record(ctx.source.clone(), ids, t.client_span, flow);
    tracer.send(SpanMsg::Http(Box::new(rec)));
}

/// Emit the span of a finished passthrough connection (a trace of its own:
/// there is no header to continue).
pub fn tcp_done(worker: &Worker, ctx: &ConnCtx, flow: &TcpFlow) {
    let Some(tracer) = worker.shared.tracer.as_ref() else {
        return;
    };
    let trace_id = context::new_trace_id();
    if !tracer.sampler.should_sample(None, &trace_id) {
        return;
    }
    let rec = record::tcp_record(ctx.source.clone(), trace_id, context::new_span_id(), flow);
    tracer.send(SpanMsg::Tcp(Box::new(rec)));
}
