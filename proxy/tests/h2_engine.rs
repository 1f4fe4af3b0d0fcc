//! HTTP/2 interception end to end with real clients (curl, h2load) and a
//! real upstream (nginx with h2 on TLS, HTTP/1.1 only on cleartext): ALPN
//! mirroring, h2 ↔ h2 streams, h2 client → HTTP/1.1 upstream, HTTP/1.1
//! client → h2 upstream, multiplexing, a 100 MiB download.
//!
//! h2load and nghttp have no proxy support: [`Tunnel`] is a local port whose
//! every connection is a CONNECT tunnel through the proxy.
#![allow(clippy::unwrap_used)]

mod h2_support;
mod support;

use std::process::Command;
use std::time::Duration;

use h2_support::{PyH2, Tunnel, chunked_trailer_server};
use support::nginx::{Nginx, SMALL_BODY};
use support::pki::TestPki;
use support::proxy::{Proxy, ProxyBuilder};
use support::*;

const T: Duration = Duration::from_secs(10);

fn setup(extra: &[&str]) -> (TestPki, Nginx, Proxy) {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(extra)
        .spawn();
    (pki, ng, p)
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

const TS: &str = r"(\[\d{2}:\d{2}:\d{2}\.\d{3}\])?";

/// curl through the proxy printing `%{http_version}` after the body.
fn curl_version(p: &Proxy, extra: &[&str], url: &str) -> String {
    run_ok(
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "-x", &p.proxy_url()])
            .args(["--cacert", s(&p.ca_cert()), "-w", "|%{http_version}"])
            .args(extra)
            .arg(url),
        Duration::from_secs(40),
    )
}

#[test]
fn curl_http2_is_h2_on_both_sides() {
    let (_pki, ng, p) = setup(&[]);
    let url = format!("{}/small.txt", ng.https_base());
    let out = curl_version(&p, &["--http2"], &url);
    assert_eq!(out, format!("{SMALL_BODY}|2"), "{}", p.dump());
    let line = format!(
        r"^{TS}127\.0\.0\.1:\d+: GET {} HTTP/2\.0$",
        regex::escape(&url)
    );
    assert!(p.wait_for_stdout(&line, T).is_some(), "{}", p.dump());
    // The response line names HTTP/2.0 too (mitmdump style).
    assert!(
        p.wait_for_stdout(r"<< HTTP/2\.0 200 OK", T).is_some(),
        "{}",
        p.dump()
    );
    assert!(ng.wait_access_log("\"GET /small.txt HTTP/2.0\" 200", T));
}

#[test]
fn json_log_carries_each_sides_protocol() {
    let (_pki, ng, p) = setup(&["--log-format", "json", "--workers", "1"]);
    let url = format!("{}/small.txt", ng.https_base());
    assert_eq!(
        curl_version(&p, &["--http2"], &url),
        format!("{SMALL_BODY}|2")
    );
    // An HTTP/1.1 client on the same worker rides the HTTP/2 upstream connection.
    assert_eq!(
        curl_version(&p, &["--http1.1"], &url),
        format!("{SMALL_BODY}|1.1")
    );
    let flows = wait_until(T, || {
        let v: Vec<serde_json::Value> = p
            .flow_lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["type"] == "http" && v["url"] == url.as_str())
            .collect();
        (v.len() >= 2).then_some(v)
    })
    .unwrap_or_else(|| panic!("two JSON flows for {url}\n{}", p.dump()));
    assert_eq!(flows[0]["request_http_version"], "HTTP/2.0", "{}", flows[0]);
    assert_eq!(
        flows[0]["response_http_version"], "HTTP/2.0",
        "{}",
        flows[0]
    );
    assert_eq!(flows[0]["status"], 200);
    // The first stream paid for the upstream connection; every flow has a TTFB.
    assert!(
        flows[0]["timings_ms"]["connect"].is_number(),
        "{}",
        flows[0]
    );
    assert!(flows[0]["timings_ms"]["tls"].is_number(), "{}", flows[0]);
    assert!(flows[1]["timings_ms"]["ttfb"].is_number(), "{}", flows[1]);
    assert_eq!(flows[1]["request_http_version"], "HTTP/1.1", "{}", flows[1]);
    assert_eq!(
        flows[1]["response_http_version"], "HTTP/2.0",
        "{}",
        flows[1]
    );
    assert_eq!(flows[1]["status"], 200);
    let log = ng.access_log();
    assert_eq!(
        log.matches("\"GET /small.txt HTTP/2.0\" 200").count(),
        2,
        "{log}"
    );
}

#[test]
fn http2_off_keeps_http11() {
    let (_pki, ng, p) = setup(&["--http2=false"]);
    let url = format!("{}/small.txt", ng.https_base());
    assert_eq!(
        curl_version(&p, &["--http2"], &url),
        format!("{SMALL_BODY}|1.1")
    );
    assert!(ng.wait_access_log("\"GET /small.txt HTTP/1.1\" 200", T));
}

#[test]
fn h2_prior_knowledge_client_to_http11_only_upstream() {
    let (_pki, ng, p) = setup(&[]);
    // Through a CONNECT tunnel (-p) curl speaks h2c with prior knowledge; the
    // upstream's cleartext port speaks HTTP/1.1 only.
    let url = format!("{}/small.txt", ng.http_base());
    let out = curl_version(&p, &["-p", "--http2-prior-knowledge"], &url);
    assert_eq!(out, format!("{SMALL_BODY}|2"), "{}", p.dump());
    // POST with a body of unknown length goes out chunked.
    let posted = run_ok(
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "-x", &p.proxy_url(), "-p"])
            .args([
                "--http2-prior-knowledge",
                "--data-binary",
                "@-",
                "-o",
                "/dev/null",
            ])
            .args(["-w", "%{http_code}"])
            .arg(format!("{}/small.txt", ng.http_base())),
        Duration::from_secs(40),
    );
    // nginx answers POST to a static file with 405: it parsed the request.
    assert_eq!(posted, "405", "{}", p.dump());
    let line = format!(r"GET {} HTTP/2\.0$", regex::escape(&url));
    assert!(p.wait_for_stdout(&line, T).is_some(), "{}", p.dump());
    assert!(
        p.wait_for_stdout(r"<< HTTP/1\.1 200 OK", T).is_some(),
        "{}",
        p.dump()
    );
    assert!(ng.wait_access_log("\"GET /small.txt HTTP/1.1\" 200", T));
}

#[test]
fn download_100_mib_over_h2_is_byte_exact() {
    let (_pki, ng, p) = setup(&[]);
    let (_, want) = big_file();
    let url = format!("{}/big.bin", ng.https_base());
    let body = tempfile::NamedTempFile::new().unwrap();
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--max-time", "120", "--http2", "-x", &p.proxy_url()])
            .args(["--cacert", s(&p.ca_cert()), "-w", "%{http_version}", "-o"])
            .arg(body.path())
            .arg(&url),
        Duration::from_secs(150),
    );
    assert_eq!(out, "2");
    let (got, len) = sha256_reader(std::fs::File::open(body.path()).unwrap()).unwrap();
    assert_eq!(len, BIG_LEN);
    assert_eq!(&got, want);
}

#[test]
fn hundred_concurrent_streams_on_one_connection() {
    let (_pki, ng, p) = setup(&[]);
    let tunnel = Tunnel::new(p.addr("regular"), format!("localhost:{}", ng.https_port));
    let url = format!("https://localhost:{}/small.txt", tunnel.addr.port());
    let out = run_ok(
        Command::new("h2load").args(["-n", "100", "-c", "1", "-m", "100", &url]),
        Duration::from_secs(60),
    );
    assert!(
        out.contains("100 total, 100 started, 100 done, 100 succeeded"),
        "{out}\n{}",
        p.dump()
    );
    // The URL names where tproxy connects (the CONNECT target), not the
    // port in the client's :authority (the local tunnel's): issue #20.
    let logged = format!("https://localhost:{}/small.txt", ng.https_port);
    let re = format!(r"GET {} HTTP/2\.0$", regex::escape(&logged));
    let lines = p.wait_for_stdout_n(&re, 100, T);
    assert_eq!(lines.len(), 100, "{}", p.dump());
    let log = ng.access_log();
    assert_eq!(log.matches("\"GET /small.txt HTTP/2.0\" 200").count(), 100);
}

#[test]
fn nghttp_h2c_through_tunnel_to_http11_upstream() {
    let (_pki, ng, p) = setup(&[]);
    let tunnel = Tunnel::new(p.addr("regular"), format!("127.0.0.1:{}", ng.http_port));
    let url = format!("http://127.0.0.1:{}/small.txt", tunnel.addr.port());
    let out = run_ok(
        Command::new("nghttp").args(["--no-dep", "-m", "20", &url]),
        Duration::from_secs(60),
    );
    assert_eq!(out, SMALL_BODY.repeat(20), "{}", p.dump());
    let log = ng.access_log();
    assert_eq!(
        log.matches("\"GET /small.txt HTTP/1.1\" 200").count(),
        20,
        "{log}"
    );
}

#[test]
fn upstream_reset_reaches_the_client_and_siblings_finish() {
    let pki = TestPki::new();
    let up = PyH2::start(&pki);
    let p = ProxyBuilder::new().upstream_ca(&pki.ca_pem()).spawn();
    let tunnel = Tunnel::new(p.addr("regular"), format!("localhost:{}", up.port));
    let base = format!("https://localhost:{}", tunnel.addr.port());
    let out = run_bounded(
        Command::new("nghttp").args([
            "-v",
            "--no-dep",
            &format!("{base}/a"),
            &format!("{base}/reset/x"),
            &format!("{base}/b"),
        ]),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("recv RST_STREAM") && text.contains("ENHANCE_YOUR_CALM"),
        "{text}\n{}",
        p.dump()
    );
    for body in ["/a\n", "/b\n"] {
        assert!(text.contains(body), "sibling {body:?} missing: {text}");
    }
    assert!(
        p.wait_for_stdout(r"error: upstream reset the stream \(ENHANCE_YOUR_CALM\)", T)
            .is_some(),
        "{}",
        p.dump()
    );
}

#[test]
fn http11_client_to_h2_only_upstream_is_translated() {
    let pki = TestPki::new();
    // An h2-only upstream refusing http/1.1 offers (no_application_protocol
    // alert): the client keeps HTTP/1.1, the upstream gets HTTP/2. (One that
    // merely selects no protocol speaks HTTP/1.1 by RFC 7301 and is no longer
    // probed with a second h2 handshake: issue #20.)
    let up = PyH2::strict(&pki);
    let p = ProxyBuilder::new().upstream_ca(&pki.ca_pem()).spawn();
    let url = format!("https://localhost:{}/hello?x=1", up.port);
    let out = curl_version(&p, &["--http1.1"], &url);
    assert_eq!(out, "/hello?x=1\n|1.1", "{}", p.dump());
    let out = curl_version(&p, &["--http1.1", "--data-binary", "payload"], &url);
    assert_eq!(out, "/hello?x=1\n|1.1", "{}", p.dump());
    let line = format!(r"POST {} HTTP/1\.1$", regex::escape(&url));
    assert!(p.wait_for_stdout(&line, T).is_some(), "{}", p.dump());
    assert!(
        p.wait_for_stdout(r"<< HTTP/2\.0 200 OK 11b", T).is_some(),
        "{}",
        p.dump()
    );
    // An h2 client to the same upstream: h2 on both sides.
    assert_eq!(
        curl_version(&p, &["--http2"], &url),
        "/hello?x=1\n|2",
        "{}",
        p.dump()
    );
}

#[test]
fn chunked_trailers_from_http11_upstream_become_h2_trailers() {
    let up = chunked_trailer_server();
    let p = ProxyBuilder::new().spawn();
    let tunnel = Tunnel::new(p.addr("regular"), up.to_string());
    let url = format!("http://127.0.0.1:{}/t", tunnel.addr.port());
    let out = run_bounded(
        Command::new("nghttp").args(["-v", &url]),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hello world"), "{text}\n{}", p.dump());
    assert!(
        text.contains("x-trail: yes") && text.contains("grpc-status: 0"),
        "{text}\n{}",
        p.dump()
    );
}

#[test]
fn rules_decide_each_h2_stream() {
    const RULES: &str = r#"
rules:
  - name: small-file
    match:
      path_prefix: /small.txt
    action: allow
default:
  action: deny
  deny:
    status: 418
    body: Access Denied by Administrator
"#;
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--rules", s(&rules)])
        .spawn();
    // Two streams on one HTTP/2 connection: one allowed, one denied.
    let allowed = format!("{}/small.txt", ng.https_base());
    let denied = format!("{}/index.html", ng.https_base());
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "--http2", "-x", &p.proxy_url()])
            .args([
                "--cacert",
                s(&p.ca_cert()),
                "-w",
                "|%{http_code}|%{http_version}\n",
            ])
            .args([&allowed, &denied]),
        Duration::from_secs(40),
    );
    assert_eq!(
        out,
        format!("{SMALL_BODY}|200|2\nAccess Denied by Administrator|418|2\n"),
        "{}",
        p.dump()
    );
    assert!(
        p.wait_for_stdout(
            r"<< HTTP/2\.0 418 I'm a teapot 30b \[deny rule default\]",
            T
        )
        .is_some(),
        "{}",
        p.dump()
    );
    assert!(!ng.access_log().contains("/index.html"));
}

#[test]
fn transparent_mode_h2_and_h2c_clients() {
    if !require_root("transparent_mode_h2_and_h2c_clients") {
        return;
    }
    use support::netns::{Topology, UPSTREAM_IP};
    const PROXY_PORT: u16 = 15002;
    let topo = Topology::new("h2t");
    let pki = TestPki::new();
    let ng = Nginx::start_in_ns(&pki, &topo.upstream, UPSTREAM_IP, 80, 443);
    let p = ProxyBuilder::new()
        .netns(&topo.node)
        .mode(&format!("transparent@0.0.0.0:{PROXY_PORT}"))
        .upstream_ca(&pki.ca_pem())
        .spawn();
    topo.redirect_to(PROXY_PORT);
    let ca = p.ca_cert();
    let c = Some(topo.client.as_str());
    let resolve = format!("upstream.test:443:{UPSTREAM_IP}");
    let https = "https://upstream.test/small.txt";
    let r = curl_in(
        c,
        &["--http2", "--resolve", &resolve, "--cacert", s(&ca), https],
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    let line = format!(r"GET {} HTTP/2\.0$", regex::escape(https));
    assert!(p.wait_for_stdout(&line, T).is_some(), "{}", p.dump());
    assert!(ng.wait_access_log("\"GET /small.txt HTTP/2.0\" 200", T));
    // nghttp in the client namespace: several streams on one connection.
    let out = run_ok(
        topo.exec(&topo.client, "nghttp").args([
            "--no-dep",
            "-m",
            "10",
            &format!("https://{UPSTREAM_IP}/small.txt"),
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(out, SMALL_BODY.repeat(10), "{}", p.dump());
    // Cleartext h2 with prior knowledge to an HTTP/1.1-only port.
    let http = format!("http://{UPSTREAM_IP}/small.txt");
    let r = curl_in(c, &["--http2-prior-knowledge", &http]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    let line = format!(r"GET {} HTTP/2\.0$", regex::escape(&http));
    assert!(p.wait_for_stdout(&line, T).is_some(), "{}", p.dump());
}

#[test]
fn client_reset_reaches_the_upstream_with_its_reason() {
    let pki = TestPki::new();
    let up = PyH2::start(&pki);
    let p = ProxyBuilder::new().upstream_ca(&pki.ca_pem()).spawn();
    let script = h2_support::script("resetting_client.py");
    let port = p.addr("regular").port().to_string();
    let target = format!("localhost:{}", up.port);
    let out = run_ok(
        Command::new(venv_python())
            .arg(&script)
            .args([&port, &target]),
        Duration::from_secs(30),
    );
    assert!(out.contains("sent reset"), "{out}");
    let seen = wait_until(T, || {
        up.lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.starts_with("reset /hang"))
            .cloned()
    });
    assert_eq!(seen.as_deref(), Some("reset /hang 13"), "{}", p.dump());
    assert!(
        p.wait_for_stdout(r"error: client reset the stream \(HTTP_1_1_REQUIRED\)", T)
            .is_some(),
        "{}",
        p.dump()
    );
}

#[test]
fn upstream_goaway_moves_new_streams_to_a_new_connection() {
    let pki = TestPki::new();
    let up = PyH2::start(&pki);
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--workers", "1"])
        .spawn();
    let base = format!("https://localhost:{}", up.port);
    let out = curl_version(&p, &["--http2"], &format!("{base}/goaway"));
    assert_eq!(out, "bye\n|2", "{}", p.dump());
    // The worker's connection is going away: the next client's stream must
    // reach the upstream over a new one.
    let out = curl_version(&p, &["--http2"], &format!("{base}/after"));
    assert_eq!(out, "/after\n|2", "{}", p.dump());
    assert!(
        p.wait_for_stdout(r"GET .*/after HTTP/2\.0$", T).is_some(),
        "{}",
        p.dump()
    );
    let connects = p.wait_for_stdout_n("server connect", 2, T);
    assert_eq!(connects.len(), 2, "{}", p.dump());
}

#[test]
fn stream_and_header_limits_are_advertised_and_enforced() {
    let (_pki, ng, p) = setup(&[
        "--h2-max-concurrent-streams",
        "7",
        "--max-header-bytes",
        "4096",
    ]);
    let tunnel = Tunnel::new(p.addr("regular"), format!("localhost:{}", ng.https_port));
    let url = format!("https://localhost:{}/small.txt", tunnel.addr.port());
    let out = run_ok(
        Command::new("nghttp").args(["-v", "--no-dep", "-m", "20", &url]),
        Duration::from_secs(60),
    );
    assert!(
        out.contains("[SETTINGS_MAX_CONCURRENT_STREAMS(0x03):7]"),
        "{out}"
    );
    assert!(
        out.contains("[SETTINGS_MAX_HEADER_LIST_SIZE(0x06):4096]"),
        "{out}"
    );
    // nghttp opens its 20 streams before our SETTINGS arrive: those beyond
    // the limit are refused (REFUSED_STREAM, safe to retry), the rest answered.
    let answered = out.matches(SMALL_BODY).count();
    let refused = out.matches("error_code=REFUSED_STREAM").count();
    assert!(answered >= 7, "{out}");
    assert_eq!(answered + refused, 20, "{out}");
    // Within the limit, 100 requests complete on one connection.
    let out = run_ok(
        Command::new("h2load").args(["-n", "100", "-c", "1", "-m", "7", &url]),
        Duration::from_secs(60),
    );
    assert!(out.contains("100 succeeded"), "{out}");
    // A header list over the limit is answered 431 on its stream.
    let big = format!("x-big: {}", "a".repeat(8000));
    let r = curl(&[
        "--http2",
        "-x",
        &p.proxy_url(),
        "--cacert",
        s(&p.ca_cert()),
        "-H",
        &big,
        &format!("{}/small.txt", ng.https_base()),
    ]);
    assert_eq!(r.status, 431, "{r:?}\n{}", p.dump());
}
