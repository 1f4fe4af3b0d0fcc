//! What a worker hands to the exporter thread for one finished flow: ids,
//! times and the few fields the spans need, copied out of the flow record.
//! Everything costlier (URL redaction, attribute building, protobuf) runs on
//! the exporter thread. Fields named like those of [`HttpFlow`] and
//! [`TcpFlow`] mean the same; times are nanoseconds since the Unix epoch.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::flowlog::{HttpFlow, HttpVersion, TcpFlow};
use crate::poddir::PodInfo;

use super::context::{SpanId, TraceId};

/// One queued item.
#[derive(Debug)]
pub enum SpanMsg {
    /// SERVER span (+ CLIENT child when the upstream was contacted).
    Http(Box<HttpRecord>),
    /// One span for a passthrough connection.
    Tcp(Box<TcpRecord>),
}

impl SpanMsg {
    /// Spans this item becomes (for the counters).
    pub fn span_count(&self) -> u64 {
        match self {
            SpanMsg::Http(h) => 1 + u64::from(h.client_span.is_some()),
            SpanMsg::Tcp(_) => 1,
        }
    }

    /// The client's pod (the resource the spans belong to).
    pub fn source(&self) -> Option<&Arc<PodInfo>> {
        match self {
            SpanMsg::Http(h) => h.source.as_ref(),
            SpanMsg::Tcp(t) => t.source.as_ref(),
        }
    }
}

/// Ids of the two spans of an HTTP exchange.
#[derive(Debug, Clone, Copy)]
pub struct HttpIds {
    /// The trace.
    pub trace_id: TraceId,
    /// tproxy's SERVER span.
    pub server_span: SpanId,
    /// The caller's span, when the client sent a `traceparent`.
    pub remote_parent: Option<SpanId>,
}

/// The upstream half of an HTTP exchange.
#[derive(Debug)]
pub struct ClientPart {
    /// The CLIENT span (the upstream's parent in our `traceparent`).
    pub span_id: SpanId,
    /// After the upstream connect and TLS handshake, when known.
    pub start_ns: u64,
    /// The upstream address connected to.
    pub peer: Option<SocketAddr>,
    /// Version of the upstream's response.
    pub response_version: Option<HttpVersion>,
    /// The response head arrived.
    pub response_head_ns: Option<u64>,
}

/// A finished, sampled HTTP exchange.
#[derive(Debug)]
pub struct HttpRecord {
    /// The client's pod: the resource of the spans.
    pub source: Option<Arc<PodInfo>>,
    /// Span ids.
    pub ids: HttpIds,
    /// Request head arrived.
    pub start_ns: u64,
    /// Exchange finished.
    pub end_ns: u64,
    pub method: String,
    /// Unredacted; redacted on the exporter thread.
    pub url: String,
    pub destination: String,
    pub sni: Option<String>,
    pub client: SocketAddr,
    /// Response status (None: no response).
    pub status: Option<u16>,
    pub request_version: HttpVersion,
    pub mode: &'static str,
    pub decision: &'static str,
    pub rule: Option<String>,
    pub tag: Option<String>,
    pub error: Option<String>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// The upstream exchange (None: answered by tproxy, e.g. denied).
    pub client_span: Option<ClientPart>,
}

/// A finished passthrough connection.
#[derive(Debug)]
pub struct TcpRecord {
    /// The client's pod: the resource of the span.
    pub source: Option<Arc<PodInfo>>,
    /// A new trace per connection.
    pub trace_id: TraceId,
    /// The connection span.
    pub span_id: SpanId,
    /// Accepted.
    pub start_ns: u64,
    /// Closed.
    pub end_ns: u64,
    pub destination: String,
    pub server_addr: Option<SocketAddr>,
    pub sni: Option<String>,
    pub client: SocketAddr,
    pub mode: &'static str,
    pub reason: String,
    pub client_to_server: u64,
    pub server_to_client: u64,
    pub error: Option<String>,
}

/// Nanoseconds since the Unix epoch (0 before it).
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Copy what the spans need out of `flow`.
pub fn http_record(
    source: Option<Arc<PodInfo>>,
    ids: HttpIds,
    client_span: SpanId,
    flow: &HttpFlow,
) -> HttpRecord {
    let start_ns = unix_nanos(flow.started);
    let end_ns = start_ns.saturating_add(nanos(flow.timings.total));
    // The upstream was contacted (or tried and failed): a CLIENT span. A
    // request answered by tproxy itself (deny) has none.
    let contacted = flow.server_addr.is_some() || (flow.error.is_some() && flow.decision != "deny");
    let client_part = contacted.then(|| {
        let setup = flow.timings.connect.unwrap_or_default() + flow.timings.tls.unwrap_or_default();
        ClientPart {
            span_id: client_span,
            start_ns: start_ns.saturating_add(nanos(setup)).min(end_ns),
            peer: flow.server_addr,
            response_version: flow.response.as_ref().map(|r| r.version),
            response_head_ns: flow
                .timings
                .ttfb
                .map(|t| start_ns.saturating_add(nanos(t)).min(end_ns)),
        }
    });
    HttpRecord {
        source,
        ids,
        start_ns,
        end_ns,
        method: flow.method.clone(),
        url: flow.url.clone(),
        destination: flow.destination.clone(),
        sni: flow.sni.clone(),
        client: flow.client,
        status: flow.response.as_ref().map(|r| r.status),
        request_version: flow.request_version,
        mode: flow.mode,
        decision: flow.decision,
        rule: flow.rule.clone(),
        tag: flow.tag.clone(),
        error: flow.error.clone(),
        request_bytes: flow.request_bytes,
        response_bytes: flow.response_bytes,
        client_span: client_part,
    }
}

/// Copy what the connection span needs out of `flow`.
pub fn tcp_record(
    source: Option<Arc<PodInfo>>,
    trace_id: TraceId,
    span_id: SpanId,
    flow: &TcpFlow,
) -> TcpRecord {
    let start_ns = unix_nanos(flow.started);
    TcpRecord {
        source,
        trace_id,
        span_id,
        start_ns,
        end_ns: start_ns.saturating_add(nanos(flow.duration)),
        destination: flow.destination.clone(),
        server_addr: flow.server_addr,
        sni: flow.sni.clone(),
        client: flow.client,
        mode: flow.mode,
        reason: flow.reason.clone(),
        client_to_server: flow.client_to_server,
        server_to_client: flow.server_to_client,
        error: flow.error.clone(),
    }
}
