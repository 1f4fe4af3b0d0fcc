//! Tests of the test fixtures themselves, without the proxy: the PKI
//! verifies, nginx answers over HTTP/HTTPS/h2, the Python upstreams and the
//! raw WebSocket client work, the namespace topology routes and redirects,
//! and the process guard captures and stops what it spawns.
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::netns::{self, Topology, UPSTREAM_IP, UPSTREAM_IP2};
use support::nginx::{INDEX_BODY, Nginx, SMALL_BODY, slow_body};
use support::pki::{SERVER_SANS, TestPki, pem_certs, x509_text};
use support::proxy::ProxyBuilder;
use support::pyup::{Kind, PyUpstream, WSCLIENT_PY, run_python};
use support::*;

#[test]
fn pki_server_cert_chains_to_ca_and_covers_names() {
    let pki = TestPki::new();
    let out = run_ok(
        Command::new("openssl")
            .args(["verify", "-purpose", "sslserver", "-CAfile"])
            .arg(pki.ca_pem())
            .arg(pki.server_cert()),
        Duration::from_secs(10),
    );
    assert!(out.contains(": OK"), "{out}");
    let pem = std::fs::read_to_string(pki.server_cert()).unwrap();
    let san = x509_text(&pem, &["-ext", "subjectAltName"]);
    for name in SERVER_SANS.split(',') {
        let want = name.replace("IP:", "IP Address:");
        assert!(san.contains(&want), "{want} missing in {san}");
    }
    assert_eq!(pem_certs(&pem).len(), 1);
}

#[test]
fn nginx_serves_http_https_h2_and_logs() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let r = curl(&[&format!("{}/small.txt", ng.http_base())]);
    assert_eq!((r.status, r.text().as_str()), (200, SMALL_BODY), "{r:?}");
    let r = curl(&[&format!("{}/", ng.http_base())]);
    assert_eq!((r.status, r.text().as_str()), (200, INDEX_BODY), "{r:?}");
    let ca = pki.ca_pem();
    let ca = ca.to_str().unwrap();
    let r = curl(&["--cacert", ca, &format!("{}/small.txt", ng.https_base())]);
    assert_eq!((r.status, r.text().as_str()), (200, SMALL_BODY), "{r:?}");
    // h2 is negotiated over TLS.
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version}"])
            .args(["--cacert", ca, &format!("{}/small.txt", ng.https_base())]),
        Duration::from_secs(30),
    );
    assert_eq!(out.trim(), "2");
    // Header echo endpoint.
    let r = curl(&[
        "-H",
        "Authorization: Bearer fixture-secret",
        &format!("{}/headers", ng.http_base()),
    ]);
    assert!(
        r.text().contains("authorization=Bearer fixture-secret"),
        "{r:?}"
    );
    assert!(ng.wait_access_log("\"GET /small.txt HTTP/1.1\" 200", Duration::from_secs(5)));
    assert!(ng.wait_access_log("\"GET /small.txt HTTP/2.0\" 200", Duration::from_secs(5)));
    // Without the CA curl refuses the server: the cert is not a public one.
    let r = curl(&[&format!("{}/small.txt", ng.https_base())]);
    assert_ne!(r.exit, 0, "{r:?}");
}

#[test]
fn nginx_big_and_slow_files_have_expected_content() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let (_, want) = big_file();
    let mut child = Command::new("curl")
        .args(["-sS", "--max-time", "120"])
        .arg(format!("{}/big.bin", ng.http_base()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (sha, n) = sha256_reader(child.stdout.take().unwrap()).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!((sha.as_str(), n), (want.as_str(), BIG_LEN));
    let r = curl(&[&format!("{}/slow/1m.bin", ng.http_base())]);
    assert_eq!(r.status, 200);
    assert!(
        r.body == slow_body(),
        "slow body differs ({} bytes)",
        r.body.len()
    );
}

#[test]
fn python_sink_reports_size_and_sha_plain_and_tls() {
    let pki = TestPki::new();
    for tls in [false, true] {
        let up = PyUpstream::local(Kind::Sink, tls.then_some(&pki));
        let data = tempfile::NamedTempFile::new().unwrap();
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(data.path(), &body).unwrap();
        let url = if tls {
            format!("https://localhost:{}/up", up.addr.port())
        } else {
            format!("http://{}/up", up.addr)
        };
        let ca = pki.ca_pem();
        let r = curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "-T",
            data.path().to_str().unwrap(),
            &url,
        ]);
        assert_eq!(r.status, 200, "{r:?}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["size"], body.len() as u64);
        assert_eq!(v["sha256"], sha256_hex(&body));
        // Chunked upload too (stdin → chunked with curl -T -).
        let out = run_ok(
            Command::new("sh").arg("-c").arg(format!(
                "printf 'abc' | curl -sS --cacert {} -T - {url}",
                ca.display()
            )),
            Duration::from_secs(30),
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["size"], 3);
        assert_eq!(v["sha256"], sha256_hex(b"abc"));
    }
}

#[test]
fn websocket_echo_server_and_raw_client_agree() {
    let pki = TestPki::new();
    let ws = PyUpstream::local(Kind::Ws, None);
    let out = run_python(
        WSCLIENT_PY,
        &["--target", &ws.addr.to_string()],
        Duration::from_secs(30),
    );
    assert_eq!(out.trim(), "OK 3");
    let wss = PyUpstream::local(Kind::Ws, Some(&pki));
    let ca = pki.ca_pem();
    let out = run_python(
        WSCLIENT_PY,
        &[
            "--target",
            &format!("localhost:{}", wss.addr.port()),
            "--tls",
            "--cafile",
            ca.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.trim(), "OK 3");
}

#[test]
fn tcp_echo_returns_bytes() {
    let up = PyUpstream::local(Kind::TcpEcho, None);
    let mut s = std::net::TcpStream::connect(up.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"\x00\x01not-http not-tls\xff").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"\x00\x01not-http not-tls\xff");
}

#[test]
fn process_guard_parses_listeners_captures_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake-tproxy.sh");
    std::fs::write(
        &fake,
        "#!/bin/sh\n\
         echo \"INFO tproxy: listening mode=regular addr=127.0.0.1:18080\" >&2\n\
         echo \"INFO tproxy: listening mode=admin addr=127.0.0.1:19090\" >&2\n\
         echo \"args: $*\"\n\
         echo '[00:00:00.000][127.0.0.1:1] client connect'\n\
         exec sleep 60\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let p = ProxyBuilder::new().program(&fake).spawn();
    assert_eq!(p.addr("regular").to_string(), "127.0.0.1:18080");
    assert_eq!(p.addr("admin").to_string(), "127.0.0.1:19090");
    let args = p
        .wait_for_stdout("^args: ", Duration::from_secs(5))
        .unwrap();
    assert!(args.contains("--mode regular@127.0.0.1:0"), "{args}");
    assert!(args.contains("--admin 127.0.0.1:0"), "{args}");
    assert!(
        args.contains(&format!("--confdir {}", p.confdir().display())),
        "{args}"
    );
    assert!(
        p.wait_for_stdout(r"\] client connect$", Duration::from_secs(5))
            .is_some()
    );
    assert!(
        p.wait_for_stderr("mode=admin", Duration::from_secs(1))
            .is_some()
    );
    let rss = p.rss().unwrap();
    assert!(rss.rss_kib > 0 && rss.hwm_kib >= rss.rss_kib, "{rss:?}");
    let pid = p.pid() as i32;
    drop(p);
    // SAFETY: signal 0 only probes whether the pid exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "guard did not stop pid {pid}");
}

#[test]
fn netns_topology_routes_and_redirects_without_proxy() {
    if !require_root("netns_topology_routes_and_redirects_without_proxy") {
        return;
    }
    let pki = TestPki::new();
    let topo = Topology::new("fix");
    let ng = Nginx::start_in_ns(&pki, &topo.upstream, UPSTREAM_IP, 80, 443);
    // Routed client → node → upstream, no proxy involved.
    let r = curl_in(
        Some(topo.client.as_str()),
        &[&format!("http://{UPSTREAM_IP}/")],
    );
    assert_eq!((r.status, r.text().as_str()), (200, INDEX_BODY), "{r:?}");
    let ca = pki.ca_pem();
    let r = curl_in(
        Some(topo.client.as_str()),
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("upstream.test:443:{UPSTREAM_IP}"),
            "https://upstream.test/small.txt",
        ],
    );
    assert_eq!((r.status, r.text().as_str()), (200, SMALL_BODY), "{r:?}");
    assert!(ng.wait_access_log("198.18.1.2 \"GET / HTTP/1.1\" 200", Duration::from_secs(5)));
    // The REDIRECT rule diverts client :80/:443 to a node-local listener
    // (a TCP echo standing in for the proxy); other ports are untouched.
    let echo = PyUpstream::start(
        Kind::TcpEcho,
        "0.0.0.0",
        15001,
        None,
        Some(topo.node.as_str()),
    );
    topo.redirect_to(echo.addr.port());
    let got = netns::in_netns(&topo.client, || {
        let addr = format!("{UPSTREAM_IP2}:443").parse().unwrap();
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"redirected?").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        v
    });
    assert_eq!(got, b"redirected?");
    // Nothing listens on 198.18.2.3:8081 and the rule does not match it.
    let refused = netns::in_netns(&topo.client, || {
        let addr = format!("{UPSTREAM_IP2}:8081").parse().unwrap();
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_err()
    });
    assert!(refused);
}
