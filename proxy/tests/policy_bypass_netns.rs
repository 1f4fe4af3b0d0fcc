//! Issue #20 in transparent mode (root): the original destination is the
//! request's identity. Unmodified clients in the client namespace, REDIRECT
//! in the node namespace, nginx and the raw logging server in the upstream
//! namespace: Host / :authority / SNI claims that disagree with where the
//! bytes go get 421 (TLS: SNI bound by the upstream certificate) or are
//! labelled by the address (plain HTTP), an SNI claim does not buy a
//! passthrough to another address, and paths are matched in normal form.
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::netns::{self, Topology, UPSTREAM_IP, UPSTREAM_IP2};
use support::nginx::Nginx;
use support::pki::TestPki;
use support::proxy::ProxyBuilder;
use support::rawlog::{Answer, RawLog};
use support::*;

const T: Duration = Duration::from_secs(10);
const PROXY_PORT: u16 = 15001;

const RULES: &str = r#"
rules:
  - name: pinned
    match:
      sni: allowed.test
    action: passthrough
  - name: no-secret
    match:
      path_prefix: /secret
    action: deny
    deny:
      status: 403
      body: no secret
  - name: allowed-host
    match:
      host: allowed.test
    action: allow
  - name: public
    match:
      host: [198.18.2.2, 198.18.2.3, upstream.test]
      path_prefix: /public/
    action: allow
default:
  action: deny
"#;

#[test]
fn transparent_identity_is_the_original_destination() {
    if !require_root("transparent_identity_is_the_original_destination") {
        return;
    }
    let topo = Topology::new("bypass");
    let pki = TestPki::new();
    let ng = Nginx::start_in_ns(&pki, &topo.upstream, UPSTREAM_IP, 80, 443);
    let listener = netns::in_netns(&topo.upstream, || {
        std::net::TcpListener::bind((UPSTREAM_IP2, 80)).unwrap()
    });
    let up = RawLog::serve(listener, Answer::Ok);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let p = ProxyBuilder::new()
        .netns(&topo.node)
        .mode(&format!("transparent@0.0.0.0:{PROXY_PORT}"))
        .upstream_ca(&pki.ca_pem())
        .args(&["--rules", rules.to_str().unwrap()])
        .spawn();
    topo.redirect_to(PROXY_PORT);
    let c = Some(topo.client.as_str());
    let ca = p.ca_cert();
    let ca = ca.to_str().unwrap();
    let resolve = format!("upstream.test:443:{UPSTREAM_IP}");

    // Plain HTTP: the Host claim cannot be verified; the request is decided
    // and logged by the original destination.
    let r = curl_in(
        c,
        &[
            "-H",
            "Host: allowed.test",
            &format!("http://{UPSTREAM_IP2}/anything"),
        ],
    );
    assert_eq!(r.status, 418, "{r:?}\n{}", p.dump());
    assert!(
        p.wait_for_stdout(r": GET http://198\.18\.2\.3/anything\s*$", T)
            .is_some(),
        "{}",
        p.dump()
    );
    // TLS: the Host / :authority must be the SNI the upstream certificate
    // was verified against.
    for v in ["--http1.1", "--http2"] {
        let r = curl_in(
            c,
            &[
                "--resolve",
                &resolve,
                "--cacert",
                ca,
                v,
                "-H",
                "Host: allowed.test",
                "https://upstream.test/small.txt",
            ],
        );
        assert_eq!(r.status, 421, "{v}: {r:?}\n{}", p.dump());
    }
    // An SNI claiming the passthrough host, sent to another address: not
    // passed through (it does not resolve there); intercepted instead.
    let out = run_bounded(
        topo.exec(&topo.client, "openssl")
            .args(["s_client", "-connect", &format!("{UPSTREAM_IP}:443")])
            .args(["-servername", "allowed.test"])
            .stdin(std::process::Stdio::null()),
        T,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mitmproxy"),
        "passed through on a claim:\n{text}"
    );
    assert!(
        p.wait_for_stdout(r"TLS server name `allowed\.test` does not resolve to the destination 198\.18\.2\.2:443", T)
            .is_some(),
        "{}",
        p.dump()
    );

    // Paths in normal form, HTTP/1 (raw server) and h2 (nginx).
    for path in [
        "/public/../secret",
        "/public/%2e%2e/secret",
        "//secret",
        "/%73ecret",
    ] {
        let r = curl_in(
            c,
            &["--path-as-is", &format!("http://{UPSTREAM_IP2}{path}")],
        );
        assert_eq!(r.status, 403, "{path}: {r:?}\n{}", p.dump());
        let r = curl_in(
            c,
            &[
                "--resolve",
                &resolve,
                "--cacert",
                ca,
                "--http2",
                "--path-as-is",
                &format!("https://upstream.test{path}"),
            ],
        );
        assert_eq!(r.status, 403, "h2 {path}: {r:?}\n{}", p.dump());
    }
    let r = curl_in(
        c,
        &[
            "--path-as-is",
            &format!("http://{UPSTREAM_IP2}/public/a/../b"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", p.dump());
    assert!(
        up.wait_for("GET /public/b HTTP/1.1\r\n", T),
        "{}",
        up.received()
    );
    // h2c upgrade offered by the client: never forwarded.
    let r = curl_in(
        c,
        &["--http2", &format!("http://{UPSTREAM_IP2}/public/h2c")],
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", p.dump());
    assert!(up.wait_for("GET /public/h2c", T));
    std::thread::sleep(Duration::from_millis(300));
    let got = up.received().to_ascii_lowercase();
    assert!(
        !got.contains("secret") && !got.contains("anything"),
        "{got}"
    );
    assert!(!got.contains("upgrade:"), "{got}");
    assert!(!ng.access_log().contains("secret"), "{}", ng.access_log());
    assert!(
        !ng.access_log().contains("small.txt"),
        "{}",
        ng.access_log()
    );
}
