//! gRPC through the proxy with real grpcio on both ends (TLS with the test
//! PKI upstream, the tproxy CA towards the client, CONNECT via grpc's
//! `grpc.http_proxy`): unary and server-streaming calls succeed, and status
//! codes, messages and trailing metadata arrive intact.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::h2up::{GRPCSVC_PY, PyServer, run_client};
use support::pki::TestPki;
use support::proxy::ProxyBuilder;

#[test]
fn grpc_unary_streaming_and_error_status_through_regular_mode() {
    let pki = TestPki::new();
    let svc = PyServer::grpc(&pki);
    let p = ProxyBuilder::new().upstream_ca(&pki.ca_pem()).spawn();
    let target = svc.addr.to_string();
    let proxy = p.addr("regular").to_string();
    let ca = p.ca_cert();
    let out = run_client(
        GRPCSVC_PY,
        &[
            "call",
            "--target",
            &target,
            "--ca",
            ca.to_str().unwrap(),
            "--proxy",
            &proxy,
            "--name",
            "upstream.test",
            "--count",
            "5",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(
        out["unary"],
        serde_json::json!({"reply": "echo:hello", "code": "OK", "trailers": [["x-trailer", "unary-ok"]]}),
        "{}",
        p.dump()
    );
    assert_eq!(
        out["stream"],
        serde_json::json!({
            "messages": ["msg-0", "msg-1", "msg-2", "msg-3", "msg-4"],
            "code": "OK",
            "trailers": [["x-trailer", "stream-ok"]]
        }),
        "{}",
        p.dump()
    );
    assert_eq!(
        out["fail"],
        serde_json::json!({"code": "PERMISSION_DENIED", "details": "denied by test"}),
        "{}",
        p.dump()
    );
    // Each call is an HTTP/2 flow of its own in the log.
    for method in ["Unary", "Stream", "Fail"] {
        let re = format!(r": POST https://\S+/tproxy\.test\.Echo/{method} HTTP/2\.0$");
        assert!(
            p.wait_for_stdout(&re, Duration::from_secs(10)).is_some(),
            "no flow line for {method}\n{}",
            p.dump()
        );
    }
}

#[test]
fn grpc_calls_and_a_long_stream_survive_upstream_goaways() {
    // The server ends every connection with GOAWAY after about 400 ms (its
    // in-flight calls get 60 s of grace): unary calls one after the other
    // and a 3 s server stream cross many of them.
    let pki = TestPki::new();
    let svc = PyServer::grpc_max_age(&pki, 400);
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--flow-detail", "0"])
        .spawn();
    let target = svc.addr.to_string();
    let proxy = p.addr("regular").to_string();
    let ca = p.ca_cert();
    let out = run_client(
        GRPCSVC_PY,
        &[
            "churn",
            "--target",
            &target,
            "--ca",
            ca.to_str().unwrap(),
            "--proxy",
            &proxy,
            "--name",
            "upstream.test",
            "--calls",
            "300",
            "--pause-ms",
            "10",
            "--stream",
            "20:150",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(
        out["unary_errors"],
        serde_json::json!([]),
        "{out}\n{}",
        p.dump()
    );
    assert_eq!(out["unary_ok"], 300, "{out}");
    assert_eq!(
        out["stream"],
        serde_json::json!({"messages": 20, "code": "OK"}),
        "{out}\n{}",
        p.dump()
    );
    // The calls span more than 3 s (10 ms apart) at one connection per
    // ~400 ms: many upstream connections, each ended by a GOAWAY (the
    // stream stays on its first one through the grace period).
    let peers = out["peers"].as_u64().unwrap();
    assert!(peers >= 4, "only {peers} upstream connections: {out}");
}
