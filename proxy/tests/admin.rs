//! The admin listener: /healthz, /readyz, /ca.pem and /metrics (checked by
//! Prometheus' own `promtool check metrics`).
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::nginx::Nginx;
use support::pki::TestPki;
use support::proxy::ProxyBuilder;
use support::*;

#[test]
fn admin_endpoints_health_ca_and_metrics() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let p = ProxyBuilder::new().upstream_ca(&pki.ca_pem()).spawn();
    let admin = format!("http://{}", p.addr("admin"));
    let r = curl(&[&format!("{admin}/healthz")]);
    assert_eq!((r.status, r.text().trim()), (200, "ok"), "{r:?}");
    let r = curl(&[&format!("{admin}/readyz")]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&[&format!("{admin}/ca.pem")]);
    assert_eq!(r.status, 200, "{r:?}");
    let file = std::fs::read(p.ca_cert()).unwrap();
    assert!(
        r.body == file,
        "/ca.pem differs from {}",
        p.ca_cert().display()
    );
    // Traffic first, so request metrics have samples.
    let ca = p.ca_cert();
    for url in [
        format!("{}/small.txt", ng.http_base()),
        format!("{}/small.txt", ng.https_base()),
    ] {
        let r = curl(&["-x", &p.proxy_url(), "--cacert", ca.to_str().unwrap(), &url]);
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = curl(&[&format!("{admin}/metrics")]);
    assert_eq!(r.status, 200, "{r:?}");
    let text = r.text();
    assert!(
        text.lines().any(|l| l.starts_with("tproxy_")),
        "no tproxy_ samples:\n{text}"
    );
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (see scripts/install-test-deps.sh)");
    child.stdin.take().unwrap().write_all(&r.body).unwrap();
    let pid = child.id();
    let out = std::thread::spawn(move || child.wait_with_output().unwrap());
    let ok = wait_until(Duration::from_secs(30), || out.is_finished().then_some(()));
    if ok.is_none() {
        // SAFETY: kill(2) on our own child that has not been reaped.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let out = out.join().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn admin_off_opens_no_admin_listener() {
    let p = ProxyBuilder::new().admin("off").spawn();
    assert!(
        p.listeners().iter().all(|(m, _)| m != "admin"),
        "{:?}",
        p.listeners()
    );
    assert!(wait_for_tcp(p.addr("regular"), Duration::from_secs(5)));
}

#[test]
fn metrics_false_turns_only_per_request_families_off() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let scrape = |p: &support::proxy::Proxy| {
        let url = format!("{}/small.txt", ng.http_base());
        let r = curl(&["-x", &p.proxy_url(), &url]);
        assert_eq!(r.status, 200, "{r:?}");
        let admin = format!("http://{}/metrics", p.addr("admin"));
        // The flow is recorded after the response is sent: poll briefly.
        wait_until(Duration::from_secs(5), || {
            let text = curl(&[&admin]).text();
            text.contains("tproxy_connections_total").then_some(text)
        })
        .unwrap()
    };
    let on = ProxyBuilder::new().spawn();
    let on_text = wait_until(Duration::from_secs(5), || {
        let t = scrape(&on);
        t.contains("tproxy_requests_total{").then_some(t)
    });
    assert!(on_text.is_some(), "default: per-request families missing");
    let off = ProxyBuilder::new().args(&["--metrics=false"]).spawn();
    let text = scrape(&off);
    assert!(
        !text.contains("tproxy_requests_total") && !text.contains("tproxy_request_duration"),
        "--metrics=false still exports per-request families:\n{text}"
    );
    assert!(text.contains("tproxy_build_info{"), "{text}");
}

/// Sends `request` to the admin listener and reads until the server closes.
fn admin_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (and close) before the whole request is sent.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    // Err = reset after the answer; the answer is still in `out`.
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn admin_refuses_malformed_and_oversize_requests() {
    let p = ProxyBuilder::new().spawn();
    let admin = p.addr("admin");
    for bad in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"[..],
        b"GET /metrics HTTP/1.1\nHost: x\n\n",
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"GET  /metrics HTTP/1.1\r\n\r\n",
    ] {
        let r = admin_exchange(admin, bad);
        assert!(
            r.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{:?} → {r:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let r = admin_exchange(admin, &big);
    assert!(
        r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{r:?}"
    );
    assert!(r.contains("connection: close"), "{r:?}");
    let mut many = b"GET /healthz HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let r = admin_exchange(admin, &many);
    assert!(r.starts_with("HTTP/1.1 431 "), "{r:?}");
    let r = admin_exchange(admin, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 405 "), "{r:?}");
    assert!(r.contains("allow: GET, HEAD\r\n"), "{r:?}");
    let r = admin_exchange(admin, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r:?}");
    assert!(r.ends_with("\r\n\r\n"), "HEAD has no body: {r:?}");
    let r = admin_exchange(admin, b"GET /healthz?verbose HTTP/1.0\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nok\n"),
        "{r:?}"
    );
    // A client that sends half a head and stalls gets 408 and is closed.
    let r = admin_exchange(admin, b"GET /metrics HTTP/1.1\r\nHost:");
    assert!(r.starts_with("HTTP/1.1 408 "), "{r:?}");
    // Still serving.
    let r = curl(&[&format!("http://{admin}/healthz")]);
    assert_eq!(r.status, 200, "{r:?}");
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[test]
fn idle_admin_connections_do_not_create_threads() {
    let p = ProxyBuilder::new().args(&["--workers", "1"]).spawn();
    let admin = p.addr("admin");
    // Warm up (any lazily started thread starts now).
    assert_eq!(curl(&[&format!("http://{admin}/metrics")]).status, 200);
    let before = threads_of(p.pid());
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(admin).unwrap())
        .collect();
    // Accepts are taken in order: once this answers, all 200 are accepted.
    let r = curl(&["--max-time", "10", &format!("http://{admin}/healthz")]);
    assert_eq!(r.status, 200, "{r:?}");
    let during = threads_of(p.pid());
    assert!(
        during <= before + 1,
        "{before} threads before, {during} with 200 idle admin connections"
    );
    drop(idle);
}
