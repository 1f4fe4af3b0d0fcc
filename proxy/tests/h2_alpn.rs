//! ALPN mirroring at its edges, over TLS (h2_engine.rs covers the common
//! paths): an upstream that refuses non-h2 offers with the
//! no_application_protocol alert (Go/rustls style) reached by an HTTP/1.1
//! client, trailers and resets from it to an h2 client, and a client that
//! offers only h2 reaching an HTTP/1.1-only upstream (translated), while a
//! client offering both gets the upstream's HTTP/1.1.
#![allow(clippy::unwrap_used)]

mod h2_support;
mod support;

use std::process::Command;
use std::time::Duration;

use h2_support::PyH2;
use support::h2up::{H2CLIENT_PY, run_client};
use support::pki::TestPki;
use support::proxy::{Proxy, ProxyBuilder};
use support::pyup::{Kind, PyUpstream};
use support::*;

const T: Duration = Duration::from_secs(10);

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// A regular-mode proxy trusting the test CA upstream, JSON flow log.
fn json_proxy(pki: &TestPki) -> Proxy {
    ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--log-format", "json"])
        .spawn()
}

/// The JSON http records of the proxy's flow log.
fn records(p: &Proxy) -> Vec<serde_json::Value> {
    p.flow_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "http")
        .collect()
}

/// Waits until `n` JSON http records whose url contains `needle` exist.
fn wait_records(p: &Proxy, needle: &str, n: usize) -> Vec<serde_json::Value> {
    let found = wait_until(T, || {
        let r: Vec<_> = records(p)
            .into_iter()
            .filter(|v| v["url"].as_str().is_some_and(|u| u.contains(needle)))
            .collect();
        (r.len() >= n).then_some(r)
    });
    found.unwrap_or_else(|| panic!("fewer than {n} records for {needle}\n{}", p.dump()))
}

fn versions(rec: &serde_json::Value) -> (String, String) {
    (
        rec["request_http_version"]
            .as_str()
            .unwrap_or("?")
            .to_owned(),
        rec["response_http_version"]
            .as_str()
            .unwrap_or("?")
            .to_owned(),
    )
}

/// A temporary file of `len` patterned bytes, and the bytes.
fn upload_file(len: u32) -> (tempfile::NamedTempFile, Vec<u8>) {
    let f = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(f.path(), &data).unwrap();
    (f, data)
}

/// curl `args`, returning (body, `%{http_version}`).
fn curl_version(ns: Option<&str>, args: &[&str]) -> (String, String) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    cmd.args(["-sS", "--max-time", "30", "-w", "\n%{http_version}"])
        .args(args);
    let out = run_ok(&mut cmd, Duration::from_secs(40));
    let (body, version) = out.rsplit_once('\n').unwrap();
    (body.to_owned(), version.to_owned())
}

#[test]
fn strict_h2_upstream_trailers_and_resets_reach_the_h2_client() {
    let pki = TestPki::new();
    let up = PyH2::strict(&pki);
    let p = json_proxy(&pki);
    let connect = up.addr().to_string();
    let proxy = p.addr("regular").to_string();
    let out = run_client(
        H2CLIENT_PY,
        &[
            "--connect",
            &connect,
            "--proxy",
            &proxy,
            "--sni",
            "upstream.test",
            "--cafile",
            s(&p.ca_cert()),
            "/slow/a",
            "/reset/b",
            "/ok/c",
            "/trailers",
        ],
        Duration::from_secs(60),
    );
    let st = |path: &str| {
        out["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["path"] == path)
            .cloned()
            .unwrap()
    };
    let reset = st("/reset/b");
    assert_eq!(reset["status"], serde_json::Value::Null, "{reset}");
    assert_eq!(
        reset["reset"],
        11,
        "the upstream's ENHANCE_YOUR_CALM must reach the client: {reset}\n{}",
        p.dump()
    );
    for (path, body) in [("/slow/a", "/slow/a\n"), ("/ok/c", "/ok/c\n")] {
        let s = st(path);
        assert_eq!(
            (s["status"].clone(), s["body_head"].clone()),
            (200.into(), body.into()),
            "{s}"
        );
        assert_eq!(s["reset"], serde_json::Value::Null, "{s}");
    }
    let tr = st("/trailers");
    assert_eq!(tr["status"], 200, "{tr}");
    assert_eq!(tr["body_head"], "body before trailers\n", "{tr}");
    assert_eq!(
        tr["trailers"],
        serde_json::json!([["x-check", "yes"]]),
        "trailers must be forwarded: {tr}"
    );
    // Every stream is its own flow; the reset one carries an error.
    let recs = wait_records(&p, &connect, 4);
    let rec = recs
        .iter()
        .find(|r| r["url"].as_str().unwrap().ends_with("/reset/b"))
        .unwrap();
    assert!(!rec["error"].is_null(), "{rec}");
}

#[test]
fn http1_client_reaches_an_h2_only_upstream() {
    let pki = TestPki::new();
    let up = PyH2::strict(&pki);
    let p = json_proxy(&pki);
    let base = format!("https://127.0.0.1:{}", up.port);
    let ca = p.ca_cert();
    let hdrs = tempfile::NamedTempFile::new().unwrap();
    let (body, version) = curl_version(
        None,
        &[
            "--http1.1",
            "-x",
            &p.proxy_url(),
            "--cacert",
            s(&ca),
            "-D",
            s(hdrs.path()),
            "-H",
            "X-Test: one",
            &format!("{base}/echo"),
        ],
    );
    assert_eq!(version, "1.1", "the client side stays HTTP/1.1");
    let head = std::fs::read_to_string(hdrs.path()).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{}", p.dump());
    assert!(
        head.to_ascii_lowercase().contains("x-upstream: h2-only"),
        "{head}"
    );
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    let got: Vec<(String, String)> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_owned(),
                h[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let get = |n: &str| got.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(get(":method"), Some("GET"), "{got:?}");
    assert_eq!(get(":path"), Some("/echo"), "{got:?}");
    assert_eq!(get(":authority"), Some(&base[8..]), "{got:?}");
    assert_eq!(get("x-test"), Some("one"), "{got:?}");
    for banned in [
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
    ] {
        assert_eq!(
            get(banned),
            None,
            "{banned} must not be sent over h2: {got:?}"
        );
    }

    // A chunked request body is de-chunked into DATA frames, byte-exact.
    let (upload, data) = upload_file(300_000);
    let (body, _) = curl_version(
        None,
        &[
            "--http1.1",
            "-x",
            &p.proxy_url(),
            "--cacert",
            s(&ca),
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", s(upload.path())),
            &format!("{base}/echo/upload"),
        ],
    );
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["body_size"], data.len(), "{echo}");
    assert_eq!(echo["body_sha256"], sha256_hex(&data).as_str(), "{echo}");

    let rec = &wait_records(&p, "/echo", 2)[0];
    assert_eq!(
        versions(rec),
        ("HTTP/1.1".into(), "HTTP/2.0".into()),
        "{rec}"
    );
}

#[test]
fn h2_client_reaches_an_http1_only_upstream() {
    let pki = TestPki::new();
    // The Python sink speaks HTTP/1.1 only (no ALPN): uploads are hashed.
    let up = PyUpstream::local(Kind::Sink, Some(&pki));
    let p = json_proxy(&pki);
    let url = format!("https://127.0.0.1:{}/upload", up.addr.port());

    // curl offers h2 and http/1.1: mirroring answers with what the upstream
    // took (no ALPN = HTTP/1.1), so there is nothing to translate.
    let (upload, data) = upload_file(1_000_000);
    let (body, version) = curl_version(
        None,
        &[
            "--http2",
            "-x",
            &p.proxy_url(),
            "--cacert",
            s(&p.ca_cert()),
            "--data-binary",
            &format!("@{}", s(upload.path())),
            &url,
        ],
    );
    assert_eq!(version, "1.1", "mirrored ALPN: the upstream chose HTTP/1.1");
    let sink: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}\n{}", p.dump()));
    assert_eq!(sink["size"], data.len(), "{sink}");
    assert_eq!(sink["sha256"], sha256_hex(&data).as_str(), "{sink}");

    // A client that offers only h2 (like gRPC clients) must be served over
    // h2 and translated to HTTP/1.1 upstream, several streams at once.
    let connect = up.addr.to_string();
    let proxy = p.addr("regular").to_string();
    let ca = p.ca_cert();
    let out = run_client(
        H2CLIENT_PY,
        &[
            "--connect",
            &connect,
            "--proxy",
            &proxy,
            "--cafile",
            s(&ca),
            "/a",
            "/b",
            "/c",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out["alpn"], "h2");
    for st in out["streams"].as_array().unwrap() {
        assert_eq!(st["status"], 200, "{st}\n{}", p.dump());
        assert_eq!(st["body_head"], "py upstream\n", "{st}");
    }
    for path in ["/a", "/b", "/c"] {
        let rec = &wait_records(&p, &format!("{connect}{path}"), 1)[0];
        assert_eq!(
            versions(rec),
            ("HTTP/2.0".into(), "HTTP/1.1".into()),
            "{rec}"
        );
    }
}
