//! Issue #20: the rules cannot be talked around. Explicit mode against real
//! upstreams that log what they received (the raw logging server records
//! every byte; nginx its access log), HTTP/1 and HTTP/2: the request's
//! identity is where tproxy connects (Host / :authority / SNI claims that
//! disagree get 421 or are refused), paths are matched and forwarded in
//! normal form, no protocol switch escapes, framing is refused before
//! anything is forwarded, the admin port is not a destination, and the
//! timeouts say what happened. Transparent mode: `policy_bypass_netns.rs`.
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::nginx::Nginx;
use support::pki::TestPki;
use support::proxy::{Proxy, ProxyBuilder};
use support::pyup::{Kind, PyUpstream, WSCLIENT_PY, run_python};
use support::rawlog::{Answer, RawLog};
use support::*;

const T: Duration = Duration::from_secs(10);

/// `allowed.test` is the host an attacker names; `/public/` the only
/// allowed path on localhost; `/secret` denied everywhere.
pub const RULES: &str = r#"
rules:
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
      host: [localhost, 127.0.0.1]
      path_prefix: /public/
    action: allow
  - name: ws
    match:
      host: [localhost, 127.0.0.1]
      path_prefix: /ws
    action: allow
default:
  action: deny
"#;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn proxy(rules: &str, extra: &[&str], ca: Option<&Path>) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let mut b = ProxyBuilder::new().args(&["--rules", s(&file)]).args(extra);
    if let Some(ca) = ca {
        b = b.upstream_ca(ca);
    }
    (b.spawn(), dir)
}

/// Writes `bytes` to `addr`, half-closes after `linger`, returns all read.
fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    raw_with(addr, &[bytes], Duration::ZERO)
}

/// Writes each part (pausing `gap` between them), returns everything read
/// until the proxy closes (bounded by the read timeout).
fn raw_with(addr: SocketAddr, parts: &[&[u8]], gap: Duration) -> String {
    let mut st = TcpStream::connect(addr).unwrap();
    st.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        if st.write_all(p).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = st.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// CONNECT `target` then send `inner`; returns what came back after the
/// tunnel's 200.
fn in_tunnel(p: &Proxy, target: &str, inner: &[u8]) -> String {
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes();
    req.extend_from_slice(inner);
    let out = raw(p.addr("regular"), &req);
    out.split_once("\r\n\r\n")
        .map(|(first, rest)| {
            assert!(first.starts_with("HTTP/1.1 200"), "{out}");
            rest.to_owned()
        })
        .unwrap_or(out)
}

fn status_of(resp: &str) -> u16 {
    resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn host_inside_a_connect_tunnel_is_the_connect_target() {
    let up = RawLog::start(Answer::Ok);
    let (p, _d) = proxy(RULES, &[], None);
    let port = up.addr.port();
    // Control: the Host names the tunnel's target → allowed, forwarded.
    let ok = in_tunnel(
        &p,
        &format!("localhost:{port}"),
        format!("GET /public/ok HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(status_of(&ok), 200, "{ok}\n{}", p.dump());
    assert!(up.wait_for("GET /public/ok HTTP/1.1", T));

    // A tunnel to localhost whose request claims the allowed host: 421.
    let r = in_tunnel(
        &p,
        &format!("localhost:{port}"),
        b"GET /anything HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
    );
    assert_eq!(status_of(&r), 421, "{r}\n{}", p.dump());
    assert!(r.contains("allowed.test") && r.contains("localhost"), "{r}");
    // The same claim in absolute-form inside the tunnel.
    let r = in_tunnel(
        &p,
        &format!("localhost:{port}"),
        b"GET http://allowed.test/anything HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
    );
    assert_eq!(status_of(&r), 421, "{r}\n{}", p.dump());
    // A tunnel to an address: the Host is only a claim; the request is
    // decided and logged by the address (no rule allows /anything there).
    let r = in_tunnel(
        &p,
        &format!("127.0.0.1:{port}"),
        b"GET /anything HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
    );
    assert_eq!(status_of(&r), 418, "{r}\n{}", p.dump());
    let line = format!(r": GET http://127\.0\.0\.1:{port}/anything\s*$");
    assert!(p.wait_for_stdout(&line, T).is_some(), "{}", p.dump());
    // Userinfo in absolute-form (`allowed@real`): refused.
    let r = raw(
        p.addr("regular"),
        format!("GET http://allowed.test@127.0.0.1:{port}/public/x HTTP/1.1\r\nHost: x\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(r.contains("userinfo"), "{r}");
    std::thread::sleep(Duration::from_millis(300));
    let got = up.received();
    assert!(
        !got.contains("anything") && !got.contains("allowed"),
        "{got}"
    );
    // No flow names the claimed host as allowed.
    assert!(
        !p.flow_lines().iter().any(|l| l.contains("allowed-host")),
        "{}",
        p.dump()
    );
}

#[test]
fn tls_and_h2_inside_connect_use_the_connect_target() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let (p, _d) = proxy(RULES, &[], Some(&pki.ca_pem()));
    let ca = p.ca_cert();
    let url = format!("https://localhost:{}/small.txt", ng.https_port);
    for v in ["--http1.1", "--http2"] {
        let r = curl(&[
            "-x",
            &p.proxy_url(),
            "--cacert",
            s(&ca),
            v,
            "-H",
            "Host: allowed.test",
            &url,
        ]);
        assert_eq!(r.status, 421, "{v}: {r:?}\n{}", p.dump());
    }
    // SNI naming another host than the CONNECT target: refused before TLS.
    let out = support::run_bounded(
        Command::new("openssl")
            .args(["s_client", "-proxy", &p.addr("regular").to_string()])
            .args(["-connect", &format!("localhost:{}", ng.https_port)])
            .args(["-servername", "allowed.test", "-CAfile", s(&ca)])
            .stdin(std::process::Stdio::null()),
        T,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no peer certificate available"), "{text}");
    assert!(
        p.wait_for_stdout(
            r"refused TLS for `allowed\.test` inside a CONNECT tunnel to localhost:",
            T
        )
        .is_some(),
        "{}",
        p.dump()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(ng.access_log().is_empty(), "{}", ng.access_log());
}

#[test]
fn paths_are_matched_and_forwarded_in_normal_form() {
    let up = RawLog::start(Answer::Ok);
    let (p, _d) = proxy(RULES, &[], None);
    let base = format!("http://127.0.0.1:{}", up.addr.port());
    let get = |path: &str| {
        curl(&[
            "-x",
            &p.proxy_url(),
            "--path-as-is",
            &format!("{base}{path}"),
        ])
    };
    for path in [
        "/public/../secret",
        "/public/%2e%2e/secret",
        "/public/.%2E/secret",
        "/%73ecret",
        "//secret",
        "/public/./../secret/x",
    ] {
        let r = get(path);
        assert_eq!(
            (r.status, r.text().as_str()),
            (403, "no secret"),
            "{path}: {r:?}\n{}",
            p.dump()
        );
    }
    // Encoded separators have no safe normal form: refused.
    for path in [
        "/public/..%2fsecret",
        "/public/%5c..%5csecret",
        "/public/a%zz",
    ] {
        let r = get(path);
        assert_eq!(r.status, 400, "{path}: {r:?}\n{}", p.dump());
    }
    // Allowed paths reach the upstream in normal form.
    let r = get("/public/a/../b/./c//d");
    assert_eq!(r.status, 200, "{r:?}\n{}", p.dump());
    assert!(
        up.wait_for("GET /public/b/c/d HTTP/1.1\r\n", T),
        "{}",
        up.received()
    );
    let r = get("/public/%7euser/%e2%82%ac?q=/../%2f");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        up.wait_for("GET /public/~user/%E2%82%AC?q=/../%2f HTTP/1.1\r\n", T),
        "{}",
        up.received()
    );
    // The flow log shows the normal form too.
    assert!(
        p.wait_for_stdout(r"GET http://127\.0\.0\.1:\d+/public/b/c/d\s*$", T)
            .is_some(),
        "{}",
        p.dump()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!up.received().contains("secret"), "{}", up.received());
}

#[test]
fn h2_paths_are_normalised_before_the_rules() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let (p, _d) = proxy(RULES, &[], Some(&pki.ca_pem()));
    let ca = p.ca_cert();
    for path in ["/public/../secret", "/public/%2e%2e/secret", "//secret"] {
        let url = format!("https://localhost:{}{path}", ng.https_port);
        let r = curl(&[
            "-x",
            &p.proxy_url(),
            "--cacert",
            s(&ca),
            "--http2",
            "--path-as-is",
            &url,
        ]);
        assert_eq!(r.status, 403, "{path}: {r:?}\n{}", p.dump());
    }
    // Allowed, reaches nginx (404: no such file), in normal form.
    let url = format!("https://localhost:{}/public/x/../y", ng.https_port);
    let r = curl(&[
        "-x",
        &p.proxy_url(),
        "--cacert",
        s(&ca),
        "--http2",
        "--path-as-is",
        &url,
    ]);
    assert_eq!(r.status, 404, "{r:?}\n{}", p.dump());
    assert!(
        ng.wait_access_log("\"GET /public/y HTTP/", T),
        "{}",
        ng.access_log()
    );
    assert!(!ng.access_log().contains("secret"), "{}", ng.access_log());
}

#[test]
fn h2c_upgrade_is_never_forwarded_and_unrequested_switches_are_refused() {
    let up = RawLog::start(Answer::Ok);
    let (p, _d) = proxy(RULES, &[], None);
    let url = format!("http://127.0.0.1:{}/public/h2c", up.addr.port());
    // curl offers `Upgrade: h2c` for http:// with --http2.
    let r = curl(&["-x", &p.proxy_url(), "--http2", &url]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "ok\n"),
        "{r:?}\n{}",
        p.dump()
    );
    // And by hand, twice on one connection: both requests decided by the rules.
    let one = format!(
        "GET {url} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
    );
    let two = format!(
        "GET http://127.0.0.1:{}/secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        up.addr.port()
    );
    let out = raw(p.addr("regular"), format!("{one}{two}").as_bytes());
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("HTTP/1.1 403"),
        "second request not ruled: {out}"
    );
    assert!(up.wait_for("GET /public/h2c", T));
    let got = up.received().to_ascii_lowercase();
    assert!(
        !got.contains("upgrade") && !got.contains("http2-settings"),
        "{got}"
    );
    assert!(!got.contains("secret"), "{got}");

    // An upstream switching protocols unasked: 502, nothing relayed.
    let sw = RawLog::start(Answer::Switch);
    let r = curl(&[
        "-x",
        &p.proxy_url(),
        &format!("http://127.0.0.1:{}/public/x", sw.addr.port()),
    ]);
    assert_eq!(r.status, 502, "{r:?}\n{}", p.dump());
}

#[test]
fn websocket_is_decided_before_the_101_and_logged_as_upgraded() {
    let ws = PyUpstream::local(Kind::Ws, None);
    // Allowed (rule ws on 127.0.0.1 /ws): echoed, and the upgraded
    // connection has its own flow-log line.
    let (p, _d) = proxy(RULES, &[], None);
    let args = [
        "--proxy",
        &p.addr("regular").to_string(),
        "--via",
        "absolute",
        "--target",
        &ws.addr.to_string(),
    ];
    let out = run_python(WSCLIENT_PY, &args, Duration::from_secs(60));
    assert_eq!(out.trim(), "OK 3", "{}", p.dump());
    assert!(
        p.wait_for_stdout(r"passthrough 127\.0\.0\.1:\d+ \(websocket upgrade of GET http://127\.0\.0\.1:\d+/ws, rule ws\) >> ", T)
            .is_some(),
        "{}",
        p.dump()
    );
    // Denied by a rule: 418 before any upstream connection or 101.
    let deny_ws = RULES.replace("path_prefix: /ws", "path_prefix: /nothing");
    let (p, _d) = proxy(&deny_ws, &[], None);
    let req = format!(
        "GET http://{a}/ws HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        a = ws.addr
    );
    let out = raw(p.addr("regular"), req.as_bytes());
    assert!(out.starts_with("HTTP/1.1 418"), "{out}");
    assert!(!out.contains("101"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !p.flow_lines().iter().any(|l| l.contains("server connect")),
        "{}",
        p.dump()
    );
}

#[test]
fn framing_is_refused_before_anything_is_forwarded() {
    let up = RawLog::start(Answer::Ok);
    let (p, _d) = proxy(RULES, &[], None);
    let url = format!("http://127.0.0.1:{}/public/f", up.addr.port());
    // A malformed chunk line arriving with the head: 400, nothing forwarded.
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "5 x\r\nhello\r\n0\r\n\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
    ] {
        let out = raw(
            p.addr("regular"),
            format!(
                "POST {url}?bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            )
            .as_bytes(),
        );
        assert!(out.starts_with("HTTP/1.1 400"), "{body:?}: {out}");
    }
    // A malformed chunk line arriving later: 400, the upstream connection
    // (with an incomplete request) closed, nothing past the error sent.
    let head = format!(
        "POST {url}?late HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    );
    let out = raw_with(
        p.addr("regular"),
        &[head.as_bytes(), b"zz\r\nEVIL\r\n0\r\n\r\n"],
        Duration::from_millis(300),
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Conflicting lengths: refused (no head forwarded).
    let out = raw(
        p.addr("regular"),
        format!("POST {url}?conflict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!").as_bytes(),
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let got = up.received();
    assert!(!got.contains("?bad") && !got.contains("?conflict"), "{got}");
    assert!(!got.contains("EVIL"), "{got}");

    // Agreeing repeated lengths are forwarded as one value.
    let out = raw(
        p.addr("regular"),
        format!("POST {url}?list HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").as_bytes(),
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(up.wait_for("?list", T));
    let got = up.received().to_ascii_lowercase();
    let list_req = &got[got.find("?list").unwrap()..];
    assert_eq!(list_req.matches("content-length:").count(), 1, "{list_req}");
    assert!(list_req.contains("content-length: 5\r\n"), "{list_req}");

    // Framing fields in chunked trailers are dropped; others kept.
    let out = raw(
        p.addr("regular"),
        format!(
            "POST {url}?trailers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             5\r\nhello\r\n0\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\nx-checksum: abc\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        up.wait_for("x-checksum: abc\r\n\r\n", T),
        "{}",
        up.received()
    );
    let got = up.received();
    let tr = &got[got.find("?trailers").unwrap()..];
    assert!(!tr.contains("Content-Length: 99"), "{tr}");
}

#[test]
fn the_admin_port_is_not_a_destination() {
    let (p, _d) = proxy("rules: []\ndefault: allow\n", &[], None);
    let admin = p.addr("admin");
    let out = raw(
        p.addr("regular"),
        format!("GET http://{admin}/metrics HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes(),
    );
    assert!(out.starts_with("HTTP/1.1 508"), "{out}");
    assert!(!out.contains("tproxy_"), "{out}");
    let out = in_tunnel(
        &p,
        &admin.to_string(),
        format!("GET /ca.pem HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes(),
    );
    assert!(out.starts_with("HTTP/1.1 508"), "{out}");
    assert!(!out.contains("BEGIN CERTIFICATE"), "{out}");
    let local = format!("localhost:{}", admin.port());
    let out = raw(
        p.addr("regular"),
        format!("GET http://{local}/metrics HTTP/1.1\r\nHost: {local}\r\n\r\n").as_bytes(),
    );
    assert!(out.starts_with("HTTP/1.1 508"), "{out}");
}

#[test]
fn timeouts_say_what_happened() {
    let silent = RawLog::start(Answer::Silent);
    let ok = RawLog::start(Answer::Ok);
    let (p, _d) = proxy(
        "rules: []\ndefault: allow\n",
        &[
            "--idle-timeout",
            "2",
            "--request-head-timeout",
            "1",
            "--request-body-timeout",
            "1",
            "--request-body-min-rate",
            "0",
        ],
        None,
    );
    // Accepted, never answered: 504.
    let r = curl(&["-x", &p.proxy_url(), &format!("http://{}/x", silent.addr)]);
    assert_eq!(r.status, 504, "{r:?}\n{}", p.dump());
    // A head that never completes: 408 after --request-head-timeout,
    // although --idle-timeout is longer.
    let out = raw_with(
        p.addr("regular"),
        &[format!("GET http://{}/x HTTP/1.1\r\nHost: x\r\n", ok.addr).as_bytes()],
        Duration::ZERO,
    );
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("--request-head-timeout"), "{out}");
    // A body that stops: 408, the upstream connection released.
    let out = raw(
        p.addr("regular"),
        format!(
            "POST http://{}/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
            ok.addr
        )
        .as_bytes(),
    );
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("request body too slow"), "{out}");
}

#[test]
fn expect_100_continue_lets_the_upstream_refuse_before_the_body() {
    let up = RawLog::start(Answer::RefuseBody);
    let ok = RawLog::start(Answer::Ok);
    let (p, _d) = proxy("rules: []\ndefault: allow\n", &[], None);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("body.bin");
    std::fs::write(&f, vec![b'x'; 4 << 20]).unwrap();
    let data = format!("@{}", s(&f));
    let r = curl(&[
        "-x",
        &p.proxy_url(),
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &data,
        &format!("http://{}/upload", up.addr),
    ]);
    assert_eq!(r.status, 413, "{r:?}\n{}", p.dump());
    std::thread::sleep(Duration::from_millis(300));
    let got = up.received();
    assert!(
        got.to_ascii_lowercase().contains("expect: 100-continue"),
        "{got}"
    );
    assert!(
        got.len() < 1 << 20,
        "the body was sent anyway: {} bytes",
        got.len()
    );
    // An upstream that ignores Expect still gets the whole body.
    let r = curl(&[
        "-x",
        &p.proxy_url(),
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &data,
        &format!("http://{}/upload", ok.addr),
    ]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "ok\n"),
        "{r:?}\n{}",
        p.dump()
    );
    assert!(ok.received().len() > 4 << 20);
}
