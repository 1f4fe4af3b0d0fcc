//! Trace decisions and the OTLP encoding, end to end within the process:
//! flow records → protobuf bytes → decoded `ExportTraceServiceRequest`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use prost::Message;

use super::*;
use crate::flowlog::{HttpVersion, ResponseSummary, Timings};
use crate::poddir::PodInfo;

const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn tracer(sampler: Sampler, inject_always: bool) -> (Tracer, std::sync::mpsc::Receiver<SpanMsg>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(2);
    let t = Tracer {
        tx,
        sampler,
        inject_always,
        dropped: IntCounter::new("d", "d").unwrap(),
    };
    (t, rx)
}

#[test]
fn continues_an_incoming_trace() {
    let (t, _rx) = tracer(Sampler::default(), false);
    let ft = t.decide(Some(TP.as_bytes())).unwrap();
    assert_eq!(ft.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        ft.remote_parent,
        Some([0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31])
    );
    assert!(ft.sampled);
    assert_ne!(ft.server_span, ft.client_span);
    let up = ft.upstream_traceparent().unwrap();
    let p = parse_traceparent(up.as_bytes()).unwrap();
    assert_eq!(p.trace_id, ft.trace_id);
    assert_eq!(
        p.span_id, ft.client_span,
        "the upstream's parent is our CLIENT span"
    );
    assert!(p.sampled());
}

#[test]
fn no_traceparent_no_injection_by_default() {
    let (t, _rx) = tracer(Sampler::default(), false);
    let ft = t.decide(None).unwrap();
    assert!(ft.sampled && ft.remote_parent.is_none());
    assert_eq!(ft.upstream_traceparent(), None);
    // A malformed header is treated as absent.
    let ft = t.decide(Some(b"00-zz")).unwrap();
    assert_eq!(ft.upstream_traceparent(), None);
    let (t, _rx) = tracer(Sampler::default(), true);
    assert!(t.decide(None).unwrap().upstream_traceparent().is_some());
}

#[test]
fn unsampled_requests_still_propagate() {
    let off = Sampler::from_env_values(Some("always_off"), None).unwrap();
    let (t, _rx) = tracer(off, false);
    assert_eq!(t.decide(None), None, "nothing to record, nothing to inject");
    let ft = t.decide(Some(TP.as_bytes())).unwrap();
    assert!(!ft.sampled);
    let up = ft.upstream_traceparent().unwrap();
    assert!(
        up.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && up.ends_with("-00"),
        "{up}"
    );
    // parentbased: the caller said "not sampled".
    let (t, _rx) = tracer(Sampler::default(), true);
    let unsampled = TP.replace("-01", "-00");
    let ft = t.decide(Some(unsampled.as_bytes())).unwrap();
    assert!(!ft.sampled);
    assert!(ft.upstream_traceparent().unwrap().ends_with("-00"));
}

#[test]
fn full_queue_drops_and_counts() {
    let (t, rx) = tracer(Sampler::default(), false);
    let flow = http_flow(None, None);
    for _ in 0..5 {
        let ids = HttpIds {
            trace_id: [1; 16],
            server_span: [2; 8],
            remote_parent: None,
        };
        t.send(SpanMsg::Http(Box::new(record::http_record(
            None, ids, [3; 8], &flow,
        ))));
    }
    // Two queued; three dropped, two spans each (SERVER + CLIENT).
    assert_eq!(rx.try_iter().count(), 2);
    assert_eq!(t.dropped.get(), 6);
}

fn pod(ns: &str, name: &str, workload: &str) -> Arc<PodInfo> {
    Arc::new(PodInfo {
        namespace: ns.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        workload_kind: Some("Deployment".into()),
        workload_name: Some(workload.into()),
        labels: BTreeMap::new(),
    })
}

fn http_flow(status: Option<u16>, error: Option<&str>) -> HttpFlow {
    HttpFlow {
        started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        client: "127.0.0.2:40000".parse().unwrap(),
        mode: "regular",
        destination: "s3.example.com:443".into(),
        server_addr: Some("192.0.2.7:443".parse().unwrap()),
        sni: Some("s3.example.com".into()),
        method: "PUT".into(),
        url: "https://user:secret@s3.example.com/bucket/key?X-Amz-Signature=abc&x=1".into(),
        request_version: HttpVersion::Http11,
        request_headers: Vec::new(),
        request_body: None,
        response: status.map(|s| ResponseSummary {
            status: s,
            reason: String::new(),
            version: HttpVersion::Http11,
            headers: Vec::new(),
            body: None,
        }),
        request_bytes: 10,
        response_bytes: 20,
        timings: Timings {
            connect: Some(Duration::from_millis(2)),
            tls: Some(Duration::from_millis(3)),
            ttfb: Some(Duration::from_millis(8)),
            total: Duration::from_millis(10),
        },
        decision: "intercept",
        rule: Some("backups".into()),
        tag: Some("s3".into()),
        trace: None,
        error: error.map(str::to_owned),
        error_cause: None,
        upstream_retries: 0,
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn s<'a>(attrs: &'a [KeyValue], key: &str) -> &'a str {
    match attr(attrs, key) {
        Some(Value::StringValue(v)) => v,
        other => panic!("{key}: {other:?}"),
    }
}

fn i(attrs: &[KeyValue], key: &str) -> i64 {
    match attr(attrs, key) {
        Some(Value::IntValue(v)) => *v,
        other => panic!("{key}: {other:?}"),
    }
}

fn defaults() -> encode::ResourceDefaults {
    encode::ResourceDefaults {
        service_name: "tproxy".into(),
        extra: vec![
            ("k8s.cluster.name".into(), "prod-eu".into()),
            // Never replaces what the pod says.
            ("service.namespace".into(), "ignored".into()),
        ],
    }
}

fn round_trip(batch: Vec<SpanMsg>) -> ExportTraceServiceRequest {
    let bytes = encode::request(&batch, &defaults());
    ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap()
}

fn http_msg(source: Option<Arc<PodInfo>>, flow: &HttpFlow, parent: Option<SpanId>) -> SpanMsg {
    let ids = HttpIds {
        trace_id: [0xab; 16],
        server_span: [1; 8],
        remote_parent: parent,
    };
    SpanMsg::Http(Box::new(record::http_record(source, ids, [2; 8], flow)))
}

#[test]
fn http_spans_follow_the_semantic_conventions() {
    let flow = http_flow(Some(200), None);
    let req = round_trip(vec![http_msg(
        Some(pod("backup", "velero-1", "velero")),
        &flow,
        Some([9; 8]),
    )]);
    assert_eq!(req.resource_spans.len(), 1);
    let rs = &req.resource_spans[0];
    let res = &rs.resource.as_ref().unwrap().attributes;
    assert_eq!(s(res, "service.name"), "velero");
    assert_eq!(s(res, "service.namespace"), "backup");
    assert_eq!(s(res, "k8s.namespace.name"), "backup");
    assert_eq!(s(res, "k8s.pod.name"), "velero-1");
    assert_eq!(s(res, "k8s.deployment.name"), "velero");
    assert_eq!(s(res, "k8s.cluster.name"), "prod-eu");
    let namespaces = res
        .iter()
        .filter(|kv| kv.key == "service.namespace")
        .count();
    assert_eq!(namespaces, 1);
    let spans: &[Span] = &rs.scope_spans[0].spans;
    assert_eq!(spans.len(), 2);
    let (server, client) = (&spans[0], &spans[1]);
    assert_eq!(
        (server.name.as_str(), server.kind),
        ("PUT", SpanKind::Server as i32)
    );
    assert_eq!(client.kind, SpanKind::Client as i32);
    assert_eq!(server.trace_id, vec![0xab; 16]);
    assert_eq!(server.parent_span_id, vec![9; 8]);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.span_id, vec![2; 8]);
    assert_eq!(server.flags & 0x301, 0x301, "sampled, remote parent");
    let start = 1_700_000_000u64 * 1_000_000_000;
    assert_eq!(server.start_time_unix_nano, start);
    assert_eq!(server.end_time_unix_nano, start + 10_000_000);
    assert_eq!(
        client.start_time_unix_nano,
        start + 5_000_000,
        "after connect + TLS"
    );
    assert_eq!(client.end_time_unix_nano, server.end_time_unix_nano);
    let a = &server.attributes;
    assert_eq!(s(a, "http.request.method"), "PUT");
    let url = s(a, "url.full");
    assert!(
        !url.contains("secret") && !url.contains("X-Amz-Signature=abc"),
        "{url}"
    );
    assert!(
        url.starts_with("https://REDACTED:REDACTED@s3.example.com/bucket/key?"),
        "{url}"
    );
    assert!(url.ends_with("&x=1"), "{url}");
    assert_eq!(s(a, "url.scheme"), "https");
    assert_eq!(s(a, "url.path"), "/bucket/key");
    assert_eq!(
        (s(a, "server.address"), i(a, "server.port")),
        ("s3.example.com", 443)
    );
    assert_eq!(
        (s(a, "client.address"), i(a, "client.port")),
        ("127.0.0.2", 40000)
    );
    assert_eq!(i(a, "http.response.status_code"), 200);
    assert_eq!(s(a, "network.protocol.version"), "1.1");
    assert_eq!(s(a, "tls.client.server_name"), "s3.example.com");
    assert_eq!(
        (
            s(a, "tproxy.decision"),
            s(a, "tproxy.rule"),
            s(a, "tproxy.tag")
        ),
        ("intercept", "backups", "s3")
    );
    assert!(attr(a, "error.type").is_none());
    assert_eq!(
        server.status.as_ref().map_or(0, |s| s.code),
        StatusCode::Unset as i32
    );
    assert_eq!(client.events.len(), 1);
    assert_eq!(client.events[0].name, "response head received");
    assert_eq!(
        client.events[0].time_unix_nano,
        start + 8_000_000,
        "at the TTFB"
    );
    let c = &client.attributes;
    assert_eq!(s(c, "network.peer.address"), "192.0.2.7");
    assert_eq!(i(c, "http.response.status_code"), 200);
}

#[test]
fn errors_set_status_and_error_type() {
    // 404: an error for the CLIENT span only.
    let req = round_trip(vec![http_msg(None, &http_flow(Some(404), None), None)]);
    let spans = &req.resource_spans[0].scope_spans[0].spans;
    assert_eq!(
        spans[0].status.as_ref().map_or(0, |s| s.code),
        StatusCode::Unset as i32
    );
    assert_eq!(
        spans[1].status.as_ref().map_or(0, |s| s.code),
        StatusCode::Error as i32
    );
    assert_eq!(s(&spans[1].attributes, "error.type"), "404");
    // No response at all.
    let flow = http_flow(None, Some("upstream did not answer within 300s"));
    let req = round_trip(vec![http_msg(None, &flow, None)]);
    let server = &req.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(s(&server.attributes, "error.type"), "timeout");
    let st = server.status.as_ref().unwrap();
    assert_eq!(st.code, StatusCode::Error as i32);
    assert!(st.message.contains("did not answer"));
    // Unknown source: the fallback service.
    let res = &req.resource_spans[0].resource.as_ref().unwrap().attributes;
    assert_eq!(s(res, "service.name"), "tproxy");
    assert!(attr(res, "k8s.pod.name").is_none());
    // Denied by a rule: SERVER span only.
    let mut denied = http_flow(Some(418), None);
    denied.server_addr = None;
    denied.decision = "deny";
    let req = round_trip(vec![http_msg(None, &denied, None)]);
    assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 1);
}

#[test]
fn unknown_methods_are_other() {
    let mut flow = http_flow(Some(200), None);
    flow.method = "PROPFIND".into();
    let req = round_trip(vec![http_msg(None, &flow, None)]);
    let server = &req.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(server.name, "HTTP");
    assert_eq!(s(&server.attributes, "http.request.method"), "_OTHER");
    assert_eq!(
        s(&server.attributes, "http.request.method_original"),
        "PROPFIND"
    );
}

#[test]
fn one_resource_per_pod() {
    let flow = http_flow(Some(200), None);
    let a1 = pod("backup", "velero-1", "velero");
    let a2 = pod("backup", "velero-2", "velero");
    let b = pod("shop", "web-1", "web");
    let tcp = TcpFlow {
        started: SystemTime::now(),
        client: "127.0.0.3:1".parse().unwrap(),
        mode: "regular",
        destination: "example.org:443".into(),
        server_addr: Some("192.0.2.1:443".parse().unwrap()),
        sni: Some("example.org".into()),
        client_to_server: 100,
        server_to_client: 2000,
        duration: Duration::from_millis(5),
        reason: "ignore-hosts".into(),
        error: None,
    };
    let batch = vec![
        http_msg(Some(a1.clone()), &flow, None),
        http_msg(Some(b.clone()), &flow, None),
        http_msg(Some(a1), &flow, None),
        http_msg(Some(a2), &flow, None),
        SpanMsg::Tcp(Box::new(record::tcp_record(Some(b), [5; 16], [6; 8], &tcp))),
    ];
    let req = round_trip(batch);
    let summary: Vec<(String, String, usize)> = req
        .resource_spans
        .iter()
        .map(|rs| {
            let r = &rs.resource.as_ref().unwrap().attributes;
            (
                s(r, "service.name").to_owned(),
                s(r, "k8s.pod.name").to_owned(),
                rs.scope_spans[0].spans.len(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("velero".into(), "velero-1".into(), 4),
            ("velero".into(), "velero-2".into(), 2),
            ("web".into(), "web-1".into(), 3),
        ]
    );
    let conn = &req.resource_spans[2].scope_spans[0].spans[2];
    assert_eq!(conn.name, "passthrough");
    let a = &conn.attributes;
    assert_eq!(s(a, "server.address"), "example.org");
    assert_eq!(s(a, "tls.client.server_name"), "example.org");
    assert_eq!(i(a, "tproxy.bytes.server_to_client"), 2000);
    assert_eq!(s(a, "tproxy.passthrough.reason"), "ignore-hosts");
}

/// Not a test: prints what a traced request costs a worker (`begin` +
/// `http_done`'s record and queue send) and what a span costs the exporter
/// thread (encode + protobuf). Run with
/// `cargo test -p tproxy --lib measure_span_cost -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, prints numbers"]
fn measure_span_cost() {
    use std::time::Instant;
    const N: u32 = 200_000;
    const CHUNK: u32 = 2_000;
    // Nobody blocked on the channel (the exporter polls): a send is a push.
    // Drained between chunks, untimed, as the exporter frees records.
    let (tx, rx) = std::sync::mpsc::sync_channel(CHUNK as usize);
    let t = Tracer {
        tx,
        sampler: Sampler::default(),
        inject_always: false,
        dropped: IntCounter::new("d", "d").unwrap(),
    };
    let flow = http_flow(Some(200), None);
    let source = Some(pod("backup", "velero-1", "velero"));
    let tp = TP.as_bytes();
    let mut timed = Duration::ZERO;
    for _ in 0..N / CHUNK {
        let t0 = Instant::now();
        for _ in 0..CHUNK {
            let ft = t.decide(Some(tp)).unwrap();
            let up = ft.upstream_traceparent();
            std::hint::black_box(&up);
            let ids = HttpIds {
                trace_id: ft.trace_id,
                server_span: ft.server_span,
                remote_parent: ft.remote_parent,
            };
            let rec = record::http_record(source.clone(), ids, ft.client_span, &flow);
            t.send(SpanMsg::Http(Box::new(rec)));
        }
        timed += t0.elapsed();
        assert_eq!(rx.try_iter().count(), CHUNK as usize);
    }
    assert_eq!(t.dropped.get(), 0);
    let worker_ns = timed.as_nanos() / u128::from(N);
    let t0 = Instant::now();
    for _ in 0..N {
        std::hint::black_box(t.decide(Some(tp)));
    }
    let decide_ns = t0.elapsed().as_nanos() / u128::from(N);
    let t0 = Instant::now();
    for _ in 0..N {
        let ids = HttpIds {
            trace_id: [1; 16],
            server_span: [2; 8],
            remote_parent: None,
        };
        std::hint::black_box(record::http_record(source.clone(), ids, [3; 8], &flow));
    }
    let record_ns = t0.elapsed().as_nanos() / u128::from(N);
    eprintln!("of which decide: {decide_ns} ns, record copy: {record_ns} ns");

    let batch = || -> Vec<SpanMsg> {
        (0..256)
            .map(|_| http_msg(source.clone(), &flow, Some([9; 8])))
            .collect()
    };
    let rounds = 100u32;
    let batches: Vec<Vec<SpanMsg>> = (0..rounds).map(|_| batch()).collect();
    let t0 = Instant::now();
    let bytes: usize = batches
        .iter()
        .map(|b| encode::request(b, &defaults()).len())
        .sum();
    let spans = u128::from(rounds) * 512;
    let export_ns = t0.elapsed().as_nanos() / spans;
    let t0 = Instant::now();
    for _ in 0..10_000 {
        std::hint::black_box(crate::flowlog::redact_url(std::hint::black_box(&flow.url)));
    }
    eprintln!("redact_url: {} ns", t0.elapsed().as_nanos() / 10_000);
    eprintln!(
        "worker per traced request (begin + record + send): {worker_ns} ns; exporter per span (build + encode): {export_ns} ns; {} bytes/span",
        bytes as u128 / spans
    );
}
