//! Queued records → one OTLP `ExportTraceServiceRequest`: spans named and
//! attributed per the OpenTelemetry HTTP semantic conventions, grouped into
//! one `ResourceSpans` per source pod (runs on the exporter thread).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode,
};

use crate::flowlog::{HttpVersion, redact_url};
use crate::poddir::PodInfo;

use super::context::FLAG_SAMPLED;
use super::record::{HttpRecord, SpanMsg, TcpRecord};

/// OTLP span flags: the W3C flags, plus "is the parent remote" known (bit 8)
/// and its value (bit 9).
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// Build the export request for a batch. `fallback_service` names the
/// resource of clients that are not known pods.
pub fn request(batch: Vec<SpanMsg>, fallback_service: &str) -> ExportTraceServiceRequest {
    // Resource per pod: Jaeger's service list shows `service.name` (the
    // workload), so several pods of one workload are one service there,
    // while each span still says which pod sent it.
    let mut index: HashMap<Option<(String, String)>, usize> = HashMap::new();
    let mut groups: Vec<(Option<Arc<PodInfo>>, Vec<Span>)> = Vec::new();
    for msg in batch {
        let key = msg.source().map(|p| (p.namespace.clone(), p.name.clone()));
        let i = *index.entry(key).or_insert_with(|| {
            groups.push((msg.source().cloned(), Vec::new()));
            groups.len() - 1
        });
        let spans = &mut groups[i].1;
        match msg {
            SpanMsg::Http(h) => http_spans(&h, spans),
            SpanMsg::Tcp(t) => spans.push(tcp_span(&t)),
        }
    }
    let scope = InstrumentationScope {
        name: "tproxy".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(pod, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: resource_attributes(pod.as_deref(), fallback_service),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

/// `service.name`: the workload; else the `app.kubernetes.io/name` label;
/// else the pod name.
pub fn service_name(pod: &PodInfo) -> &str {
    pod.workload_name
        .as_deref()
        .or_else(|| pod.labels.get("app.kubernetes.io/name").map(String::as_str))
        .unwrap_or(&pod.name)
}

fn resource_attributes(pod: Option<&PodInfo>, fallback_service: &str) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(10);
    match pod {
        Some(p) => {
            str_attr(&mut a, "service.name", service_name(p));
            str_attr(&mut a, "service.namespace", &p.namespace);
            let instance = if p.uid.is_empty() {
                format!("{}/{}", p.namespace, p.name)
            } else {
                p.uid.clone()
            };
            str_attr(&mut a, "service.instance.id", &instance);
            str_attr(&mut a, "k8s.namespace.name", &p.namespace);
            str_attr(&mut a, "k8s.pod.name", &p.name);
            if !p.uid.is_empty() {
                str_attr(&mut a, "k8s.pod.uid", &p.uid);
            }
            if let (Some(kind), Some(name)) = (&p.workload_kind, &p.workload_name) {
                let key = match kind.as_str() {
                    "Deployment" => Some("k8s.deployment.name"),
                    "StatefulSet" => Some("k8s.statefulset.name"),
                    "DaemonSet" => Some("k8s.daemonset.name"),
                    "ReplicaSet" => Some("k8s.replicaset.name"),
                    "Job" => Some("k8s.job.name"),
                    "CronJob" => Some("k8s.cronjob.name"),
                    _ => None,
                };
                if let Some(key) = key {
                    str_attr(&mut a, key, name);
                }
            }
        }
        None => str_attr(&mut a, "service.name", fallback_service),
    }
    str_attr(&mut a, "telemetry.sdk.name", "tproxy");
    str_attr(&mut a, "telemetry.sdk.language", "rust");
    str_attr(&mut a, "telemetry.sdk.version", env!("CARGO_PKG_VERSION"));
    a
}

const KNOWN_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
];

fn http_spans(h: &HttpRecord, out: &mut Vec<Span>) {
    let known = KNOWN_METHODS.contains(&h.method.as_str());
    // Span name: the method (no route is known to a proxy); "HTTP" for
    // methods outside the standard set, per the semantic conventions.
    let name = if known {
        h.method.clone()
    } else {
        "HTTP".to_owned()
    };
    let url = semconv_url(&h.url);
    let scheme = url.split_once("://").map_or("http", |(s, _)| s);
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .map_or("/", |p| p.split(['?', '#']).next().unwrap_or("/"));
    let server = crate::engine::split_authority(&h.destination, 0);
    let trace_flags = u32::from(FLAG_SAMPLED);

    let mut a = Vec::with_capacity(20);
    method_attrs(&mut a, &h.method, known);
    str_attr(&mut a, "url.full", &url);
    str_attr(&mut a, "url.scheme", scheme);
    str_attr(&mut a, "url.path", path);
    server_attrs(&mut a, server.as_ref());
    addr_attrs(&mut a, "client", h.client);
    addr_attrs(&mut a, "network.peer", h.client);
    str_attr(&mut a, "network.protocol.name", "http");
    str_attr(
        &mut a,
        "network.protocol.version",
        version(h.request_version),
    );
    if let Some(s) = h.status {
        int_attr(&mut a, "http.response.status_code", i64::from(s));
    }
    int_attr(&mut a, "http.request.body.size", clamp(h.request_bytes));
    int_attr(&mut a, "http.response.body.size", clamp(h.response_bytes));
    if scheme == "https" {
        str_attr(&mut a, "tls.protocol.name", "tls");
        if let Some(sni) = &h.sni {
            str_attr(&mut a, "tls.client.server_name", sni);
        }
    }
    str_attr(&mut a, "tproxy.mode", h.mode);
    str_attr(&mut a, "tproxy.decision", h.decision);
    if let Some(r) = &h.rule {
        str_attr(&mut a, "tproxy.rule", r);
    }
    if let Some(t) = &h.tag {
        str_attr(&mut a, "tproxy.tag", t);
    }
    let server_failed = h.status.is_some_and(|s| s >= 500) || h.error.is_some();
    if server_failed {
        str_attr(
            &mut a,
            "error.type",
            &error_type(h.status.filter(|s| *s >= 500), h.error.as_deref()),
        );
    }
    out.push(Span {
        trace_id: h.ids.trace_id.to_vec(),
        span_id: h.ids.server_span.to_vec(),
        parent_span_id: h.ids.remote_parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: trace_flags
            | HAS_IS_REMOTE
            | if h.ids.remote_parent.is_some() {
                IS_REMOTE
            } else {
                0
            },
        name: name.clone(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: h.start_ns,
        end_time_unix_nano: h.end_ns,
        attributes: a,
        status: Some(status(server_failed, h.error.as_deref())),
        ..Default::default()
    });

    let Some(c) = &h.client_span else { return };
    let mut a = Vec::with_capacity(14);
    method_attrs(&mut a, &h.method, known);
    str_attr(&mut a, "url.full", &url);
    server_attrs(&mut a, server.as_ref());
    if let Some(peer) = c.peer {
        addr_attrs(&mut a, "network.peer", peer);
    }
    str_attr(&mut a, "network.protocol.name", "http");
    str_attr(
        &mut a,
        "network.protocol.version",
        version(c.response_version.unwrap_or(HttpVersion::Http11)),
    );
    if let Some(s) = h.status {
        int_attr(&mut a, "http.response.status_code", i64::from(s));
    }
    // Client spans: 4xx is an error too (semantic conventions).
    let client_failed = h.status.is_some_and(|s| s >= 400) || h.error.is_some();
    if client_failed {
        str_attr(
            &mut a,
            "error.type",
            &error_type(h.status.filter(|s| *s >= 400), h.error.as_deref()),
        );
    }
    out.push(Span {
        trace_id: h.ids.trace_id.to_vec(),
        span_id: c.span_id.to_vec(),
        parent_span_id: h.ids.server_span.to_vec(),
        flags: trace_flags | HAS_IS_REMOTE,
        name,
        kind: SpanKind::Client as i32,
        start_time_unix_nano: c.start_ns,
        end_time_unix_nano: h.end_ns,
        attributes: a,
        status: Some(status(client_failed, h.error.as_deref())),
        ..Default::default()
    });
}

fn tcp_span(t: &TcpRecord) -> Span {
    let mut a = Vec::with_capacity(14);
    server_attrs(
        &mut a,
        crate::engine::split_authority(&t.destination, 0).as_ref(),
    );
    if let Some(peer) = t.server_addr {
        addr_attrs(&mut a, "network.peer", peer);
    }
    addr_attrs(&mut a, "client", t.client);
    str_attr(&mut a, "network.transport", "tcp");
    if let Some(sni) = &t.sni {
        str_attr(&mut a, "tls.client.server_name", sni);
    }
    str_attr(&mut a, "tproxy.mode", t.mode);
    str_attr(&mut a, "tproxy.decision", "passthrough");
    str_attr(&mut a, "tproxy.passthrough.reason", &t.reason);
    int_attr(
        &mut a,
        "tproxy.bytes.client_to_server",
        clamp(t.client_to_server),
    );
    int_attr(
        &mut a,
        "tproxy.bytes.server_to_client",
        clamp(t.server_to_client),
    );
    if t.error.is_some() {
        str_attr(&mut a, "error.type", &error_type(None, t.error.as_deref()));
    }
    Span {
        trace_id: t.trace_id.to_vec(),
        span_id: t.span_id.to_vec(),
        flags: u32::from(FLAG_SAMPLED) | HAS_IS_REMOTE,
        name: "passthrough".into(),
        kind: SpanKind::Client as i32,
        start_time_unix_nano: t.start_ns,
        end_time_unix_nano: t.end_ns,
        attributes: a,
        status: Some(status(t.error.is_some(), t.error.as_deref())),
        ..Default::default()
    }
}

/// `url.full` as the semantic conventions want it: user info replaced by
/// `REDACTED:REDACTED`, credential-like query values masked (the flow log's
/// rules).
fn semconv_url(url: &str) -> String {
    let masked = redact_url(url);
    if let Some((scheme, rest)) = masked.split_once("://") {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            return format!("{scheme}://REDACTED:REDACTED@{}", &rest[at + 1..]);
        }
    }
    masked.into_owned()
}

fn status(failed: bool, message: Option<&str>) -> Status {
    if failed {
        Status {
            code: StatusCode::Error as i32,
            message: message.unwrap_or_default().to_owned(),
        }
    } else {
        Status::default()
    }
}

/// Low-cardinality `error.type`: the status code, or the kind of failure.
fn error_type(status: Option<u16>, error: Option<&str>) -> String {
    if let Some(s) = status {
        return s.to_string();
    }
    let e = error.unwrap_or_default();
    let kind = if e.contains("did not answer") || e.contains("timed out") || e.contains("timeout") {
        "timeout"
    } else if e.starts_with("client") {
        "client_closed"
    } else {
        "upstream_error"
    };
    kind.to_owned()
}

fn method_attrs(a: &mut Vec<KeyValue>, method: &str, known: bool) {
    if known {
        str_attr(a, "http.request.method", method);
    } else {
        str_attr(a, "http.request.method", "_OTHER");
        str_attr(a, "http.request.method_original", method);
    }
}

fn server_attrs(a: &mut Vec<KeyValue>, server: Option<&(String, u16)>) {
    if let Some((host, port)) = server {
        str_attr(a, "server.address", host);
        if *port != 0 {
            int_attr(a, "server.port", i64::from(*port));
        }
    }
}

fn addr_attrs(a: &mut Vec<KeyValue>, prefix: &str, addr: SocketAddr) {
    let addr = crate::net::origdst::normalize(addr);
    str_attr(a, &format!("{prefix}.address"), &addr.ip().to_string());
    int_attr(a, &format!("{prefix}.port"), i64::from(addr.port()));
}

fn version(v: HttpVersion) -> &'static str {
    match v {
        HttpVersion::Http10 => "1.0",
        HttpVersion::Http11 => "1.1",
        HttpVersion::Http2 => "2",
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn str_attr(a: &mut Vec<KeyValue>, key: &str, value: &str) {
    a.push(KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    });
}

fn int_attr(a: &mut Vec<KeyValue>, key: &str, value: i64) {
    a.push(KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    });
}
