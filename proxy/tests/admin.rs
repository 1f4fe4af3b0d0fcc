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
