//! OpenTelemetry traces end to end: a real tproxy exports to an OTLP/HTTP
//! receiver running in this test (decoding the protobuf with prost), with
//! two client addresses mapped to two pods of different workloads.
//!
//! Proves: SERVER + CLIENT spans per request with the HTTP semantic
//! convention attributes (plus TLS ones for intercepted HTTPS, and the
//! policy rule/tag), CLIENT parented by SERVER, one resource per source
//! workload, an incoming `traceparent` continued (and the upstream seeing
//! tproxy's CLIENT span as its parent), no `traceparent` injected when the
//! client sent none (unless `--otlp-inject-traceparent`), a span per
//! passthrough connection; with the receiver down requests still succeed
//! and the lost spans are counted on /metrics; a bad sampler stops start-up.
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod otel_support;
mod support;

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use otel_support::*;
use support::nginx::Nginx;
use support::pki::TestPki;
use support::proxy::{ProxyBuilder, tproxy_bin};
use support::*;

const T: Duration = Duration::from_secs(15);

/// The client's trace in the W3C spec example.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

const PODS: &str = r#"{
  "version": 1,
  "generated_at": "2026-11-21T12:00:00Z",
  "node": "node-a",
  "pods": {
    "127.0.0.2": {
      "namespace": "backup", "name": "velero-6d8f7b9c4-abcde",
      "uid": "5b1c7a4e-0001-4c1a-9d3e-000000000001",
      "workload": {"kind": "Deployment", "name": "velero"},
      "labels": {"app": "velero"}
    },
    "127.0.0.3": {
      "namespace": "shop", "name": "web-0",
      "uid": "5b1c7a4e-0002-4c1a-9d3e-000000000002",
      "workload": {"kind": "StatefulSet", "name": "web"},
      "labels": {}
    }
  }
}"#;

const RULES: &str = r#"
rules:
  - name: recorder
    match:
      path_prefix: /rec/
    action: allow
    tag: recorded
  - name: forbidden
    match:
      path_prefix: /forbidden
    action: deny
default: allow
"#;

// ---------------------------------------------------------------- tests

#[test]
fn spans_per_workload_with_http_semantics_links_and_continued_traces() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let rx = Receiver::start();
    let up = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pods.json"), PODS).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
    let ignore = format!(r"^127\.0\.0\.1:{}$", ng.https_port);
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&[
            "--otlp-endpoint",
            &format!("http://{}", rx.addr),
            "--pod-directory",
            dir.path().join("pods.json").to_str().unwrap(),
            "--rules",
            dir.path().join("rules.yaml").to_str().unwrap(),
            "--ignore-hosts",
            &ignore,
        ])
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .spawn();
    let ca = p.ca_cert();
    let ca = ca.to_str().unwrap();
    let base = format!("http://{}", up.addr);

    // velero (127.0.0.2): continues its own trace.
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let r = curl_from(
        &p,
        "127.0.0.2",
        &["-H", &format!("traceparent: {tp}")],
        &format!("{base}/rec/continued"),
    );
    assert_eq!(r.status, 200, "{r:?}");
    // web (127.0.0.3): no traceparent → none injected.
    let r = curl_from(&p, "127.0.0.3", &[], &format!("{base}/rec/fresh"));
    assert_eq!(r.status, 200, "{r:?}");
    // velero: intercepted HTTPS.
    let r = curl_from(
        &p,
        "127.0.0.2",
        &["--cacert", ca],
        &format!("{}/small.txt", ng.https_base()),
    );
    assert_eq!(r.status, 200, "{r:?}");
    // web: denied by a rule (SERVER span only).
    let r = curl_from(&p, "127.0.0.3", &[], &format!("{base}/forbidden"));
    assert_eq!(r.status, 418, "{r:?}");
    // web: passed through (--ignore-hosts): one connection span.
    let r = curl_from(
        &p,
        "127.0.0.3",
        &["-k"],
        &format!("https://127.0.0.1:{}/small.txt", ng.https_port),
    );
    assert_eq!(r.status, 200, "{r:?}");

    rx.wait("all spans", |s| {
        find(s, SpanKind::Client, "/rec/continued").is_some()
            && find(s, SpanKind::Client, "/rec/fresh").is_some()
            && find(s, SpanKind::Client, "/small.txt").is_some()
            && find(s, SpanKind::Server, "/forbidden").is_some()
            && s.iter().any(|(_, s)| s.name == "passthrough")
    });
    let spans = rx.spans();

    // The continued trace: same trace id, SERVER parented by the client's
    // span, CLIENT by SERVER, and the upstream saw the CLIENT span as parent.
    let (res, server) = find(&spans, SpanKind::Server, "/rec/continued").unwrap();
    let (_, client) = find(&spans, SpanKind::Client, "/rec/continued").unwrap();
    assert_eq!(hex_of(&server.trace_id), TRACE);
    assert_eq!(hex_of(&server.parent_span_id), PARENT);
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(server.name, "GET");
    let upstream_tp = up
        .traceparent("/rec/continued")
        .expect("traceparent upstream");
    assert_eq!(
        upstream_tp,
        format!("00-{TRACE}-{}-01", hex_of(&client.span_id)),
        "the upstream's parent must be tproxy's CLIENT span"
    );
    // Resource: the velero workload.
    assert_eq!(s_attr(res, "service.name"), Some("velero"));
    assert_eq!(s_attr(res, "service.namespace"), Some("backup"));
    assert_eq!(s_attr(res, "k8s.namespace.name"), Some("backup"));
    assert_eq!(s_attr(res, "k8s.pod.name"), Some("velero-6d8f7b9c4-abcde"));
    // HTTP semantic conventions.
    let a = &server.attributes;
    let port = i64::from(up.addr.port());
    assert_eq!(s_attr(a, "http.request.method"), Some("GET"));
    assert_eq!(
        s_attr(a, "url.full"),
        Some(format!("{base}/rec/continued").as_str())
    );
    assert_eq!(s_attr(a, "url.scheme"), Some("http"));
    assert_eq!(s_attr(a, "server.address"), Some("127.0.0.1"));
    assert_eq!(i_attr(a, "server.port"), Some(port));
    assert_eq!(s_attr(a, "client.address"), Some("127.0.0.2"));
    assert_eq!(i_attr(a, "http.response.status_code"), Some(200));
    assert_eq!(s_attr(a, "network.protocol.version"), Some("1.1"));
    assert_eq!(s_attr(a, "tproxy.decision"), Some("allow"));
    assert_eq!(s_attr(a, "tproxy.rule"), Some("recorder"));
    assert_eq!(s_attr(a, "tproxy.tag"), Some("recorded"));
    let c = &client.attributes;
    assert_eq!(s_attr(c, "network.peer.address"), Some("127.0.0.1"));
    assert_eq!(i_attr(c, "network.peer.port"), Some(port));
    assert_eq!(i_attr(c, "http.response.status_code"), Some(200));
    assert!(client.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);

    // No traceparent from the client: a new trace, none injected upstream.
    let (res, server) = find(&spans, SpanKind::Server, "/rec/fresh").unwrap();
    assert!(server.parent_span_id.is_empty());
    assert_ne!(hex_of(&server.trace_id), TRACE);
    assert_eq!(up.traceparent("/rec/fresh"), None);
    assert_eq!(s_attr(res, "service.name"), Some("web"));
    assert_eq!(s_attr(res, "k8s.pod.name"), Some("web-0"));
    assert_eq!(s_attr(res, "service.namespace"), Some("shop"));

    // Intercepted HTTPS: TLS attributes.
    let (res, server) = find(&spans, SpanKind::Server, "/small.txt").unwrap();
    assert_eq!(s_attr(res, "service.name"), Some("velero"));
    let a = &server.attributes;
    assert_eq!(s_attr(a, "url.scheme"), Some("https"));
    assert_eq!(s_attr(a, "tls.client.server_name"), Some("localhost"));
    assert_eq!(s_attr(a, "server.address"), Some("localhost"));

    // Denied: the SERVER span says so; no upstream exchange.
    let (_, denied) = find(&spans, SpanKind::Server, "/forbidden").unwrap();
    assert_eq!(s_attr(&denied.attributes, "tproxy.decision"), Some("deny"));
    assert_eq!(s_attr(&denied.attributes, "tproxy.rule"), Some("forbidden"));
    assert_eq!(
        i_attr(&denied.attributes, "http.response.status_code"),
        Some(418)
    );
    assert!(find(&spans, SpanKind::Client, "/forbidden").is_none());

    // Passthrough: one connection span, in the web workload.
    let (res, conn) = spans.iter().find(|(_, s)| s.name == "passthrough").unwrap();
    assert_eq!(s_attr(res, "service.name"), Some("web"));
    assert_eq!(
        s_attr(&conn.attributes, "server.address"),
        Some("127.0.0.1")
    );
    assert_eq!(
        i_attr(&conn.attributes, "server.port"),
        Some(i64::from(ng.https_port))
    );
    assert!(i_attr(&conn.attributes, "tproxy.bytes.server_to_client").unwrap() > 0);

    // One resource per workload in every export request, and every span in
    // the resource of the pod whose address sent it.
    for req in rx.got.lock().unwrap().iter() {
        let names: Vec<&str> = req
            .resource_spans
            .iter()
            .map(|rs| s_attr(&rs.resource.as_ref().unwrap().attributes, "service.name").unwrap())
            .collect();
        let mut dedup = names.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(
            dedup.len(),
            names.len(),
            "a workload split over resources: {names:?}"
        );
    }
    for (res, s) in &spans {
        if let Some(client) = s_attr(&s.attributes, "client.address") {
            let want = if client == "127.0.0.2" {
                "velero"
            } else {
                "web"
            };
            assert_eq!(s_attr(res, "service.name"), Some(want), "{s:?}");
        }
    }
}

#[test]
fn inject_flag_starts_a_trace_upstream() {
    let rx = Receiver::start();
    let up = Recorder::start();
    let p = ProxyBuilder::new()
        .args(&["--otlp-inject-traceparent"])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://{}", rx.addr),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .spawn();
    let r = curl(&[
        "-x",
        &p.proxy_url(),
        &format!("http://{}/rec/injected", up.addr),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    rx.wait("the CLIENT span", |s| {
        find(s, SpanKind::Client, "/rec/injected").is_some()
    });
    let spans = rx.spans();
    let (res, client) = find(&spans, SpanKind::Client, "/rec/injected").unwrap();
    // No pod directory: the fallback service name.
    assert_eq!(s_attr(res, "service.name"), Some("tproxy"));
    assert_eq!(
        up.traceparent("/rec/injected"),
        Some(format!(
            "00-{}-{}-01",
            hex_of(&client.trace_id),
            hex_of(&client.span_id)
        ))
    );
}

#[test]
fn receiver_down_requests_still_succeed_and_lost_spans_are_counted() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    // A port nobody listens on (bound, then closed).
    let dead = free_port();
    let p = ProxyBuilder::new()
        .args(&["--otlp-endpoint", &format!("http://127.0.0.1:{dead}")])
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .spawn();
    for i in 0..20 {
        let r = curl(&[
            "-x",
            &p.proxy_url(),
            &format!("{}/small.txt?i={i}", ng.http_base()),
        ]);
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    let lost = wait_until(T, || {
        let n = metric(
            &p,
            "tproxy_trace_spans_dropped_total{reason=\"export_failed\"}",
        );
        (n >= 40.0).then_some(n)
    });
    assert!(
        lost.is_some(),
        "expected 40 lost spans (20 requests x SERVER + CLIENT) on /metrics\n{}",
        curl(&[&format!("http://{}/metrics", p.addr("admin"))]).text()
    );
    assert!(metric(&p, "tproxy_trace_export_requests_total{result=\"error\"}") >= 1.0);
    assert_eq!(metric(&p, "tproxy_trace_spans_exported_total"), 0.0);
    assert!(
        p.wait_for_stderr("OTLP export failed", T).is_some(),
        "the failure is logged once\n{}",
        p.dump()
    );
    // Still serving.
    let r = curl(&[
        "-x",
        &p.proxy_url(),
        &format!("{}/small.txt", ng.http_base()),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    // The trace counters pass Prometheus' own linter.
    let text = curl(&[&format!("http://{}/metrics", p.addr("admin"))]).body;
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &text).unwrap();
    let out = run_bounded(
        Command::new("sh")
            .arg("-c")
            .arg("promtool check metrics < \"$1\"")
            .arg("sh")
            .arg(f.path()),
        T,
    );
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_sampler_or_endpoint_stops_start_up_with_a_clear_error() {
    for (env, args, needle) in [
        (
            vec![("OTEL_TRACES_SAMPLER", "sometimes")],
            vec!["--otlp-endpoint", "http://127.0.0.1:4318"],
            "OTEL_TRACES_SAMPLER",
        ),
        (
            vec![
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ],
            vec!["--otlp-endpoint", "http://127.0.0.1:4318"],
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            vec![],
            vec!["--otlp-endpoint", "127.0.0.1:4318"],
            "--otlp-endpoint",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(tproxy_bin());
        cmd.args([
            "--mode",
            "regular@127.0.0.1:0",
            "--admin",
            "off",
            "--confdir",
        ])
        .arg(dir.path())
        .args(&args);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = run_bounded(&mut cmd, T);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} {args:?} started");
        assert!(stderr.contains(needle), "{needle} not named: {stderr}");
    }
}

#[test]
fn queued_spans_are_exported_on_shutdown() {
    let rx = Receiver::start();
    let up = Recorder::start();
    // Batches would wait 10 minutes: only the shutdown flush can send them.
    let mut p = ProxyBuilder::new()
        .args(&["--otlp-endpoint", &format!("http://{}", rx.addr)])
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .spawn();
    for i in 0..3 {
        let r = curl(&[
            "-x",
            &p.proxy_url(),
            &format!("http://{}/rec/shutdown-{i}", up.addr),
        ]);
        assert_eq!(r.status, 200, "{r:?}");
    }
    p.signal(libc::SIGTERM);
    assert!(
        p.wait_exit(T).is_some(),
        "no exit after SIGTERM\n{}",
        p.dump()
    );
    let spans = rx.spans();
    for i in 0..3 {
        let suffix = format!("/rec/shutdown-{i}");
        assert!(
            find(&spans, SpanKind::Server, &suffix).is_some()
                && find(&spans, SpanKind::Client, &suffix).is_some(),
            "{suffix} not flushed at shutdown: {spans:#?}"
        );
    }
}

#[test]
fn a_stalled_receiver_never_slows_requests_and_overflow_is_counted() {
    // Accepts export connections and never answers (nor reads).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    // None once the test is done: later connections are closed at once.
    let held: Arc<Mutex<Option<Vec<TcpStream>>>> = Arc::new(Mutex::new(Some(Vec::new())));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            if let Some(v) = h.lock().unwrap().as_mut() {
                v.push(s);
            }
        }
    });
    let up = Recorder::start();
    // One flow queued at most, one span per export: the first export hangs
    // (60 s timeout), one flow waits in the queue, the rest overflow.
    let p = ProxyBuilder::new()
        .args(&[
            "--otlp-endpoint",
            &format!("http://{addr}"),
            "--otlp-queue-size",
            "1",
        ])
        .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "60000")
        .spawn();
    for i in 0..10 {
        let r = curl(&[
            "-x",
            &p.proxy_url(),
            &format!("http://{}/rec/stall-{i}", up.addr),
        ]);
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    let dropped = metric(
        &p,
        "tproxy_trace_spans_dropped_total{reason=\"queue_full\"}",
    );
    assert!(
        dropped >= 2.0,
        "expected overflow with a hung exporter, got {dropped}\n{}",
        curl(&[&format!("http://{}/metrics", p.addr("admin"))]).text()
    );
    // Let the hung export fail now so shutdown is quick.
    held.lock().unwrap().take();
}

#[test]
fn https_endpoint_is_verified_against_upstream_ca() {
    let pki = TestPki::new();
    let rx = Receiver::start_tls(&pki);
    let up = Recorder::start();
    let endpoint = format!("https://localhost:{}", rx.addr.port());
    // Trusting the receiver's CA (--upstream-ca): spans arrive.
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--otlp-endpoint", &endpoint])
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .spawn();
    let r = curl(&["-x", &p.proxy_url(), &format!("http://{}/rec/tls", up.addr)]);
    assert_eq!(r.status, 200, "{r:?}");
    rx.wait("spans over HTTPS", |s| {
        find(s, SpanKind::Client, "/rec/tls").is_some()
    });
    drop(p);
    // Not trusting it: the export fails verification and is counted.
    let p = ProxyBuilder::new()
        .args(&["--otlp-endpoint", &endpoint])
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .spawn();
    let r = curl(&[
        "-x",
        &p.proxy_url(),
        &format!("http://{}/rec/untrusted", up.addr),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    let failed = wait_until(T, || {
        (metric(
            &p,
            "tproxy_trace_spans_dropped_total{reason=\"export_failed\"}",
        ) >= 2.0)
            .then_some(())
    });
    assert!(
        failed.is_some(),
        "an untrusted receiver must not get spans\n{}",
        p.dump()
    );
    assert!(find(&rx.spans(), SpanKind::Client, "/rec/untrusted").is_none());
}

#[test]
fn sampler_decisions_hold_end_to_end() {
    let rx = Receiver::start();
    let up = Recorder::start();
    // Record only what the caller sampled; nothing for new traces.
    let p = ProxyBuilder::new()
        .args(&["--otlp-endpoint", &format!("http://{}", rx.addr)])
        .env("OTEL_TRACES_SAMPLER", "parentbased_always_off")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .spawn();
    let get = |path: &str, tp: Option<&str>| {
        let url = format!("http://{}{path}", up.addr);
        let proxy = p.proxy_url();
        let header = tp.map(|t| format!("traceparent: {t}"));
        let mut args = vec!["-x", proxy.as_str()];
        if let Some(h) = &header {
            args.extend(["-H", h.as_str()]);
        }
        args.push(&url);
        let r = curl(&args);
        assert_eq!(r.status, 200, "{r:?}");
    };
    // Sent first: unsampled caller, and no caller at all.
    get("/rec/unsampled", Some(&format!("00-{TRACE}-{PARENT}-00")));
    get("/rec/root", None);
    // Then a sampled caller: once its spans arrive, the earlier requests'
    // spans would have too (one FIFO queue, one exporter).
    get("/rec/sampled", Some(&format!("00-{TRACE}-{PARENT}-01")));
    rx.wait("the sampled request", |s| {
        find(s, SpanKind::Client, "/rec/sampled").is_some()
    });
    let spans = rx.spans();
    assert!(find(&spans, SpanKind::Server, "/rec/unsampled").is_none());
    assert!(find(&spans, SpanKind::Server, "/rec/root").is_none());
    // The unsampled trace still propagates, flagged unsampled, with a new
    // parent id (tproxy's unrecorded span), never the caller's.
    let tp = up.traceparent("/rec/unsampled").expect("propagated");
    assert!(
        tp.starts_with(&format!("00-{TRACE}-")) && tp.ends_with("-00"),
        "{tp}"
    );
    assert!(!tp.contains(PARENT), "{tp}");
    assert_eq!(up.traceparent("/rec/root"), None);
    let (_, client) = find(&spans, SpanKind::Client, "/rec/sampled").unwrap();
    assert_eq!(
        up.traceparent("/rec/sampled"),
        Some(format!("00-{TRACE}-{}-01", hex(&client.span_id)))
    );
}
