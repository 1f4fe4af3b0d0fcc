//! Upstream connections end all the time (issue #18); clients must never
//! notice. nginx with a small `keepalive_requests` ends every HTTP/2
//! connection with GOAWAY and every HTTP/1.1 one with `Connection: close`
//! after a few requests; real clients (h2load, a Python h2 client) push tens
//! of thousands of requests through tproxy and none may fail, while nginx's
//! access log (`$connection`) shows the churn happened. Purpose-built
//! upstreams make the rarer cases deterministic: streams refused by GOAWAY or
//! REFUSED_STREAM (retried, body replayed), a server refusing everything
//! (bounded attempts, 502 naming the cause), the HTTP/1.1 keep-alive race
//! (safe requests retried, a POST not), an announced `Keep-Alive: timeout`.
#![allow(clippy::unwrap_used)]

mod h2_support;
mod support;

use std::process::Command;
use std::time::Duration;

use h2_support::{PyH2, Tunnel};
use support::h2up::{H2CLIENT_PY, run_client};
use support::nginx::{KeepAlive, Nginx, SMALL_BODY};
use support::pki::TestPki;
use support::proxy::{Proxy, ProxyBuilder};
use support::pyup::{Kind, PyUpstream};
use support::*;

const T: Duration = Duration::from_secs(10);

/// nginx ending connections after 50 requests or 1 s idle.
fn churning() -> KeepAlive {
    KeepAlive {
        requests: 50,
        timeout: "1s".into(),
    }
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// The value of one sample of `/metrics` (0 when absent).
fn metric(p: &Proxy, sample: &str) -> u64 {
    let r = curl(&[&format!("http://{}/metrics", p.addr("admin"))]);
    assert_eq!(r.status, 200, "{r:?}");
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Every `tproxy_upstream_failures_total` sample is zero.
fn assert_no_upstream_failures(p: &Proxy) {
    let r = curl(&[&format!("http://{}/metrics", p.addr("admin"))]);
    let text = r.text();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("tproxy_upstream_failures_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(bad.is_empty(), "{bad:?}\n{}", p.dump());
}

/// h2load's summary must show `n` requests, all succeeded with 2xx.
fn assert_h2load_clean(out: &str, n: u32, p: &Proxy) {
    let want = format!("{n} total, {n} started, {n} done, {n} succeeded, 0 failed, 0 errored");
    assert!(out.contains(&want), "{out}\n{}", p.dump());
    assert!(
        out.contains(&format!("status codes: {n} 2xx, 0 3xx, 0 4xx, 0 5xx")),
        "{out}\n{}",
        p.dump()
    );
}

/// The JSON flow records of `p` (`--log-format json`).
fn json_flows(p: &Proxy) -> Vec<serde_json::Value> {
    p.flow_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "http")
        .collect()
}

#[test]
fn h2_clients_never_see_upstream_goaways() {
    let pki = TestPki::new();
    let ng = Nginx::start_with(&pki, &churning());
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--flow-detail", "0"])
        .spawn();
    let tunnel = Tunnel::new(p.addr("regular"), format!("localhost:{}", ng.https_port));
    let url = format!("https://localhost:{}/small.txt", tunnel.addr.port());
    let n = 20_000;
    let out = run_ok(
        Command::new("h2load").args(["-n", &n.to_string(), "-c", "8", "-m", "8", &url]),
        Duration::from_secs(240),
    );
    assert_h2load_clean(&out, n, &p);
    // nginx ended a connection every 50 streams: at least n/50 of them.
    let conns = ng.connections("\"GET /small.txt HTTP/2.0\" 200");
    assert!(conns >= (n / 50) as usize, "{conns} upstream connections");
    // Streams caught above a GOAWAY's last-stream-id were sent again.
    let retried = metric(&p, "tproxy_upstream_retries_total{cause=\"goaway\"}");
    assert!(retried > 0, "no stream was retried:\n{}", p.dump());
    assert_no_upstream_failures(&p);
}

#[test]
fn python_h2_client_with_200_concurrent_streams_through_goaways() {
    let pki = TestPki::new();
    let ng = Nginx::start_with(&pki, &churning());
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--flow-detail", "0"])
        .spawn();
    let ca = p.ca_cert();
    let target = format!("localhost:{}", ng.https_port);
    let proxy = p.addr("regular").to_string();
    let paths: Vec<String> = (0..200).map(|i| format!("/small.txt?s={i}")).collect();
    for round in 0..5 {
        let mut args = vec!["--connect", &target, "--proxy", &proxy, "--cafile", s(&ca)];
        args.extend(paths.iter().map(String::as_str));
        let out = run_client(H2CLIENT_PY, &args, Duration::from_secs(120));
        let streams = out["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 200, "round {round}: {out}");
        for st in streams {
            assert_eq!(
                (st["status"].as_u64(), st["reset"].is_null()),
                (Some(200), true),
                "round {round}: {st}\n{}",
                p.dump()
            );
            assert_eq!(
                st["body_len"].as_u64(),
                Some(SMALL_BODY.len() as u64),
                "{st}"
            );
        }
    }
    let conns = ng.connections("\"GET /small.txt?s=");
    assert!(conns >= 1000 / 50, "{conns} upstream connections");
    assert_no_upstream_failures(&p);
}

#[test]
fn http11_upstream_connection_close_never_reaches_h1_and_h2_clients() {
    let pki = TestPki::new();
    let ng = Nginx::start_with(&pki, &churning());
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--flow-detail", "0"])
        .spawn();
    let n = 10_000;
    for (port, scheme) in [(ng.https_port, "https"), (ng.http_port, "http")] {
        let tunnel = Tunnel::new(p.addr("regular"), format!("localhost:{port}"));
        let url = format!("{scheme}://localhost:{}/small.txt", tunnel.addr.port());
        let out = run_ok(
            Command::new("h2load").args(["--h1", "-n", &n.to_string(), "-c", "8", &url]),
            Duration::from_secs(240),
        );
        assert_h2load_clean(&out, n, &p);
    }
    // An h2 client (cleartext, prior knowledge) to the HTTP/1.1-only port:
    // each stream an HTTP/1.1 exchange on a pooled connection.
    let tunnel = Tunnel::new(p.addr("regular"), format!("localhost:{}", ng.http_port));
    let url = format!("http://localhost:{}/small.txt", tunnel.addr.port());
    let out = run_ok(
        Command::new("h2load").args(["-n", &n.to_string(), "-c", "4", "-m", "8", &url]),
        Duration::from_secs(240),
    );
    assert_h2load_clean(&out, n, &p);
    let conns = ng.connections("\"GET /small.txt HTTP/1.1\" 200");
    assert!(
        conns >= (3 * n / 50) as usize,
        "{conns} upstream connections"
    );
    assert_no_upstream_failures(&p);
}

#[test]
fn http11_client_to_h2_upstream_never_sees_goaways() {
    // The h2-only upstream answers every `/goaway` stream and then sends
    // GOAWAY with that stream as the last one: every connection serves one
    // request and the others in flight on it are refused. It alerts on an
    // http/1.1-only offer (an upstream that merely selects no ALPN protocol
    // is HTTP/1.1 by RFC 7301 and is not probed with h2).
    let pki = TestPki::new();
    let up = PyH2::strict(&pki);
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--flow-detail", "1"])
        .spawn();
    let tunnel = Tunnel::new(p.addr("regular"), format!("localhost:{}", up.port));
    let url = format!("https://localhost:{}/goaway", tunnel.addr.port());
    let n = 2_000;
    let out = run_ok(
        Command::new("h2load").args(["--h1", "-n", &n.to_string(), "-c", "8", &url]),
        Duration::from_secs(240),
    );
    assert_h2load_clean(&out, n, &p);
    let retried = metric(&p, "tproxy_upstream_retries_total{cause=\"goaway\"}");
    assert!(retried > 0, "no request was retried:\n{}", p.dump());
    assert_no_upstream_failures(&p);
}

#[test]
fn transparent_mode_clients_never_see_upstream_churn() {
    if !require_root("transparent_mode_clients_never_see_upstream_churn") {
        return;
    }
    use support::netns::{Topology, UPSTREAM_IP};
    const PROXY_PORT: u16 = 15018;
    let topo = Topology::new("churn");
    let pki = TestPki::new();
    let ng = Nginx::start_in_ns_with(&pki, &topo.upstream, UPSTREAM_IP, 80, 443, &churning());
    let p = ProxyBuilder::new()
        .netns(&topo.node)
        .mode(&format!("transparent@0.0.0.0:{PROXY_PORT}"))
        .upstream_ca(&pki.ca_pem())
        .args(&["--flow-detail", "0"])
        .spawn();
    topo.redirect_to(PROXY_PORT);
    let n = 10_000;
    // h2load connects to the IP (no SNI: tproxy mints a leaf for the IP).
    let https = format!("https://{UPSTREAM_IP}/small.txt");
    let http = format!("http://{UPSTREAM_IP}/small.txt");
    let cases: [&[&str]; 3] = [
        &["-c", "4", "-m", "8", &https],
        &["--h1", "-c", "4", &https],
        &["--h1", "-c", "4", &http],
    ];
    for case in cases {
        let out = run_ok(
            topo.exec(&topo.client, "h2load")
                .args(["-n", &n.to_string()])
                .args(case),
            Duration::from_secs(240),
        );
        assert_h2load_clean(&out, n, &p);
    }
    // (HTTP/1.1 TLS clients may be translated onto h2 upstream connections:
    // the destination spoke h2 to this worker before.)
    let all = ng.connections("\"GET /small.txt HTTP/");
    let lines = ng.access_log().matches("/small.txt HTTP/").count();
    assert_eq!(lines, 3 * n as usize);
    assert!(all >= (3 * n / 50) as usize, "{all} upstream connections");
    assert_no_upstream_failures(&p);
}

/// curl through `p` with the tproxy CA; `--http2` or `--http1.1` in `extra`.
fn curl_via(p: &Proxy, extra: &[&str]) -> CurlResult {
    let ca = p.ca_cert();
    let proxy = p.proxy_url();
    let mut args = vec!["-x", &proxy, "--cacert", s(&ca)];
    args.extend_from_slice(extra);
    curl(&args)
}

/// curl through `p` fetching several URLs on one client connection; stdout
/// is each body followed by `[STATUS]`.
fn curl_many(p: &Proxy, args: &[&str]) -> String {
    let ca = p.ca_cert();
    run_ok(
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "60",
                "-x",
                &p.proxy_url(),
                "--cacert",
                s(&ca),
            ])
            .args(["-w", "[%{http_code}]"])
            .args(args),
        Duration::from_secs(90),
    )
}

#[test]
fn streams_the_upstream_refused_are_sent_again_with_their_body() {
    let pki = TestPki::new();
    let up = PyH2::strict(&pki);
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--log-format", "json"])
        .spawn();
    let base = format!("https://localhost:{}", up.port);
    // RST_STREAM REFUSED_STREAM, then answered.
    let r = curl_via(&p, &["--http2", &format!("{base}/refuse-once-get")]);
    assert_eq!(r.status, 200, "{r:?}\n{}", p.dump());
    // GOAWAY above the stream after its whole body was sent: the body is
    // replayed on the new connection, h2 client and HTTP/1.1 client alike.
    let body: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &body).unwrap();
    let data = format!("@{}", s(file.path()));
    for (v, path) in [
        ("--http2", "/goaway-once-h2"),
        ("--http1.1", "/goaway-once-h1"),
    ] {
        let r = curl_via(&p, &[v, "--data-binary", &data, &format!("{base}{path}")]);
        assert_eq!(r.status, 200, "{v}: {r:?}\n{}", p.dump());
        let echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(echo["body_size"], body.len(), "{v}: {echo}");
        assert_eq!(echo["body_sha256"], sha256_hex(&body), "{v}: {echo}");
    }
    assert_eq!(
        metric(&p, "tproxy_upstream_retries_total{cause=\"refused\"}"),
        1
    );
    assert_eq!(
        metric(&p, "tproxy_upstream_retries_total{cause=\"goaway\"}"),
        2
    );
    let flows = json_flows(&p);
    assert!(
        flows
            .iter()
            .filter(|f| f["url"].as_str().unwrap_or("").contains("-once-"))
            .all(|f| f["status"] == 200 && f["upstream_retries"] == 1 && f["error"].is_null()),
        "{flows:?}"
    );
    assert_no_upstream_failures(&p);
}

#[test]
fn a_server_refusing_every_stream_costs_eight_attempts_and_a_502_naming_goaway() {
    let pki = TestPki::new();
    let up = PyH2::start(&pki);
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--log-format", "json"])
        .spawn();
    let url = format!("https://localhost:{}/refuse-always", up.port);
    let r = curl_via(&p, &["--http2", &url]);
    assert_eq!(r.status, 502, "{r:?}");
    let text = r.text();
    assert!(
        text.contains("the upstream sent GOAWAY (NO_ERROR) for a stream it did not process"),
        "{text}"
    );
    assert!(text.contains("after 8 attempts"), "{text}");
    let flows = p.wait_for_stdout("refuse-always", T);
    assert!(flows.is_some(), "{}", p.dump());
    let f = json_flows(&p)
        .into_iter()
        .find(|f| f["url"].as_str().unwrap_or("").ends_with("/refuse-always"))
        .unwrap();
    assert_eq!(
        (&f["error_cause"], &f["upstream_retries"], &f["status"]),
        (
            &serde_json::json!("goaway"),
            &serde_json::json!(7),
            &serde_json::Value::Null
        ),
        "{f}"
    );
    assert_eq!(
        metric(&p, "tproxy_upstream_failures_total{cause=\"goaway\"}"),
        1
    );
    assert_eq!(
        metric(&p, "tproxy_upstream_retries_total{cause=\"goaway\"}"),
        7
    );
    // Exactly eight streams reached the server: the bound holds.
    let refused = wait_until(T, || {
        let n = up
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("refused /refuse-always"))
            .count();
        (n >= 8).then_some(n)
    });
    std::thread::sleep(Duration::from_millis(300));
    let n = up
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("refused /refuse-always"))
        .count();
    assert_eq!((refused, n), (Some(8), 8));
}

#[test]
fn keep_alive_race_retries_safe_requests_and_reports_the_rest() {
    let pki = TestPki::new();
    let plain = PyUpstream::local(Kind::OneShot, None);
    let tls = PyUpstream::local(Kind::OneShot, Some(&pki));
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--log-format", "json", "--workers", "1"])
        .spawn();
    // HTTP/1.1 client, plain: the second and third GET find their kept
    // connection closed by the server and are sent again on a new one.
    let base = format!("http://{}", plain.addr);
    let out = curl_many(
        &p,
        &[
            &format!("{base}/a"),
            &format!("{base}/b"),
            &format!("{base}/c"),
        ],
    );
    assert_eq!(
        out,
        "oneshot 1\n[200]oneshot 2\n[200]oneshot 3\n[200]",
        "{}",
        p.dump()
    );
    // A POST is not idempotent: never sent twice. It takes the pooled
    // connection of the last GET, which the server closes: 502 naming it.
    let r = curl(&[
        "-x",
        &p.proxy_url(),
        "-X",
        "POST",
        "-H",
        "Content-Length: 0",
        &format!("{base}/post"),
    ]);
    assert_eq!(r.status, 502, "{r:?}\n{}", p.dump());
    assert!(
        r.text()
            .contains("upstream closed the connection without a response"),
        "{r:?}"
    );
    // Intercepted TLS (the upstream offers no ALPN, so the client is
    // answered HTTP/1.1): the pooled connection opened before the client's
    // handshake serves /x; /y finds it closed and is sent again.
    let tbase = format!("https://localhost:{}", tls.addr.port());
    let out = curl_many(&p, &[&format!("{tbase}/x"), &format!("{tbase}/y")]);
    assert_eq!(out, "oneshot 1\n[200]oneshot 2\n[200]", "{}", p.dump());
    assert!(p.wait_for_stdout("/y\"", T).is_some(), "{}", p.dump());
    let flows = json_flows(&p);
    let post = flows
        .iter()
        .find(|f| f["url"].as_str().unwrap_or("").ends_with("/post"))
        .unwrap();
    assert_eq!(post["error_cause"], "idle_close_race", "{post}");
    assert_eq!(post["upstream_retries"], serde_json::Value::Null, "{post}");
    let retried: Vec<_> = flows
        .iter()
        .filter(|f| f["upstream_retries"] == 1)
        .map(|f| f["url"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        retried.iter().any(|u| u.ends_with("/b")) && retried.iter().any(|u| u.ends_with("/y")),
        "{retried:?}\n{}",
        p.dump()
    );
    assert_eq!(
        metric(
            &p,
            "tproxy_upstream_failures_total{cause=\"idle_close_race\"}"
        ),
        1
    );
    assert!(
        metric(
            &p,
            "tproxy_upstream_retries_total{cause=\"idle_close_race\"}"
        ) >= 3
    );
}

#[test]
fn an_announced_keep_alive_timeout_stops_reuse_before_it_expires() {
    let pki = TestPki::new();
    // `Keep-Alive: timeout=2`: reuse stops after 1 s idle (a second of margin).
    let ng = Nginx::start_with(
        &pki,
        &KeepAlive {
            requests: 1000,
            timeout: "2s 2s".into(),
        },
    );
    let p = ProxyBuilder::new().args(&["--workers", "1"]).spawn();
    let get = |tag: &str| {
        let r = curl(&[
            "-x",
            &p.proxy_url(),
            &format!("{}/small.txt?{tag}", ng.http_base()),
        ]);
        assert_eq!(r.status, 200, "{r:?}");
    };
    let conn_of = |tag: &str| {
        assert!(ng.wait_access_log(&format!("?{tag} "), T));
        let log = ng.access_log();
        let line = log
            .lines()
            .find(|l| l.contains(&format!("?{tag} ")))
            .unwrap();
        line.rsplit_once(" conn=").unwrap().1.trim().to_owned()
    };
    get("a");
    std::thread::sleep(Duration::from_millis(200));
    get("b");
    // Idle 1.5 s: nginx would still take it, but it is within a second of
    // the announced timeout.
    std::thread::sleep(Duration::from_millis(1500));
    get("c");
    let (a, b, c) = (conn_of("a"), conn_of("b"), conn_of("c"));
    assert_eq!(a, b, "a quick second request reuses the connection");
    assert_ne!(b, c, "reused a connection close to its keep-alive timeout");
}

#[test]
fn shutdown_sends_clients_goaway_with_the_last_stream_id_and_finishes_their_streams() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--shutdown-timeout", "30"])
        .spawn();
    let tunnel = Tunnel::new(p.addr("regular"), format!("localhost:{}", ng.https_port));
    // 1 MiB at 256 KiB/s: about 4 s in flight when the proxy is told to stop.
    let url = format!("https://localhost:{}/slow/1m.bin", tunnel.addr.port());
    let nghttp = std::thread::spawn(move || {
        run_ok(
            Command::new("nghttp").args(["-n", "-v", "--no-dep", &url]),
            Duration::from_secs(60),
        )
    });
    assert!(
        p.wait_for_stdout("server connect", T).is_some(),
        "{}",
        p.dump()
    );
    std::thread::sleep(Duration::from_millis(500));
    p.signal(libc::SIGTERM);
    let out = nghttp.join().unwrap();
    // Graceful: first the maximal id (with a PING), then the real last id.
    assert!(out.contains("last_stream_id=2147483647"), "{out}");
    assert!(out.contains("last_stream_id=1,"), "{out}");
    // The stream in flight finished: its END_STREAM DATA frame arrived.
    let end = out
        .lines()
        .position(|l| l.contains("recv DATA frame") && l.contains("stream_id=1"))
        .is_some();
    assert!(end && out.contains("; END_STREAM"), "{out}");
    assert!(ng.wait_access_log("\"GET /slow/1m.bin HTTP/2.0\" 200 1048576", T));
}
