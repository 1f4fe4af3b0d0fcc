//! Explicit (regular) proxy mode against real clients: curl `-x` for HTTP
//! and CONNECT, openssl s_client for the minted leaf, keep-alive, the flow
//! log in text and JSON, and credential redaction.
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use regex::Regex;
use support::nginx::{Nginx, SMALL_BODY};
use support::pki::{TestPki, pem_certs, x509_text};
use support::proxy::{Proxy, ProxyBuilder};
use support::*;

const T: Duration = Duration::from_secs(10);

/// PKI + nginx + a regular-mode proxy that trusts the test CA upstream.
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

/// Optional `[HH:MM:SS.mmm]` prefix tolerated in front of request lines.
const TS: &str = r"(\[\d{2}:\d{2}:\d{2}\.\d{3}\])?";

#[test]
fn http_absolute_form_body_identical() {
    let (_pki, ng, p) = setup(&[]);
    let r = curl(&[
        "-x",
        &p.proxy_url(),
        &format!("{}/small.txt", ng.http_base()),
    ]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    assert!(ng.wait_access_log("\"GET /small.txt HTTP/1.1\" 200", T));
}

#[test]
fn https_connect_is_intercepted_and_body_identical() {
    let (pki, ng, p) = setup(&[]);
    let url = format!("{}/small.txt", ng.https_base());
    let r = curl(&[
        "-x",
        &p.proxy_url(),
        "--cacert",
        s(&p.ca_cert()),
        "--http1.1",
        &url,
    ]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    // Intercepted: the certificate curl sees is not the upstream's.
    let r = curl(&["-x", &p.proxy_url(), "--cacert", s(&pki.ca_pem()), &url]);
    assert_eq!(r.exit, 60, "expected curl's certificate error (60): {r:?}");
    assert!(ng.wait_access_log("\"GET /small.txt HTTP/1.1\" 200", T));
}

#[test]
fn minted_leaf_covers_sni_and_is_issued_by_mitmproxy_ca() {
    let (_pki, ng, p) = setup(&[]);
    let out = run_bounded(
        Command::new("openssl")
            .args(["s_client", "-proxy", &p.addr("regular").to_string()])
            .args(["-connect", &format!("localhost:{}", ng.https_port)])
            .args(["-servername", "localhost", "-showcerts"])
            .args(["-CAfile", s(&p.ca_cert()), "-verify_hostname", "localhost"]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let certs = pem_certs(&text);
    assert!(
        !certs.is_empty(),
        "no certificate from s_client:\n{text}\n{}",
        p.dump()
    );
    let san = x509_text(&certs[0], &["-ext", "subjectAltName"]);
    assert!(san.contains("DNS:localhost"), "{san}");
    let issuer = x509_text(&certs[0], &["-issuer"]).replace(' ', "");
    assert!(issuer.contains("CN=mitmproxy"), "{issuer}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
}

#[test]
fn keep_alive_two_requests_share_one_client_connection() {
    let (_pki, ng, p) = setup(&[]);
    let url = format!("{}/small.txt", ng.http_base());
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "-x", &p.proxy_url()])
            .args(["-o", "/dev/null", "-o", "/dev/null"])
            .args(["-w", "%{http_code} %{num_connects}\n", &url, &url]),
        Duration::from_secs(40),
    );
    assert_eq!(out, "200 1\n200 0\n", "curl did not reuse its connection");
    let req = format!(r"^{TS}(127\.0\.0\.1:\d+): GET {}$", regex::escape(&url));
    let reqs = p.wait_for_stdout_n(&req, 2, T);
    assert_eq!(reqs.len(), 2, "{}", p.dump());
    // Both requests came from one client connection, connected once.
    let re = Regex::new(&req).unwrap();
    let clients: Vec<String> = reqs
        .iter()
        .map(|l| re.captures(l).unwrap()[2].to_owned())
        .collect();
    assert_eq!(clients[0], clients[1], "{}", p.dump());
    let connect = format!(r"\[{}\] client connect$", regex::escape(&clients[0]));
    let connects = p.wait_for_stdout_n(&connect, 1, T);
    assert_eq!(connects.len(), 1, "{}", p.dump());
}

/// The request line at `i` is followed by a response line, per the spec.
fn response_after(lines: &[String], req: &Regex) -> (String, String) {
    let i = lines
        .iter()
        .position(|l| req.is_match(l))
        .unwrap_or_else(|| panic!("no line matching {req} in:\n{}", lines.join("\n")));
    let next = lines.get(i + 1).cloned().unwrap_or_default();
    (lines[i].clone(), next)
}

#[test]
fn flow_log_text_lines_as_specified() {
    let (_pki, ng, mut p) = setup(&[]);
    let http_url = format!("{}/small.txt", ng.http_base());
    let https_url = format!("{}/small.txt", ng.https_base());
    let r = curl(&["-x", &p.proxy_url(), &http_url]);
    assert_eq!(r.status, 200);
    let r = curl(&[
        "-x",
        &p.proxy_url(),
        "--cacert",
        s(&p.ca_cert()),
        "--http1.1",
        &https_url,
    ]);
    assert_eq!(r.status, 200);
    let disc = p.wait_for_stdout_n(r"\] client disconnect", 2, T);
    assert!(disc.len() >= 2, "{}", p.dump());
    // Upstream connections are pooled beyond the client's lifetime: their
    // `server disconnect` is logged when they close — at the latest when the
    // proxy shuts down and empties its pools.
    p.signal(libc::SIGTERM);
    assert!(
        p.wait_exit(T).is_some_and(|st| st.success()),
        "{}",
        p.dump()
    );
    let sd = r"^\[\d{2}:\d{2}:\d{2}\.\d{3}\]\[127\.0\.0\.1:\d+\] server disconnect";
    assert!(
        p.wait_for_stdout(sd, T).is_some(),
        "no server disconnect\n{}",
        p.dump()
    );
    let lines = p.flow_lines();
    let size = format!("{}b", SMALL_BODY.len());
    let ts = r"\[\d{2}:\d{2}:\d{2}\.\d{3}\]";
    for (url, authority) in [
        (&http_url, format!("127.0.0.1:{}", ng.http_port)),
        (&https_url, format!("localhost:{}", ng.https_port)),
    ] {
        let req = Regex::new(&format!(
            r"^{TS}(127\.0\.0\.1:\d+): GET {}$",
            regex::escape(url)
        ))
        .unwrap();
        let (line, next) = response_after(&lines, &req);
        let client = req.captures(&line).unwrap()[2].to_owned();
        // The spec shows four spaces; any indentation is accepted.
        let resp = Regex::new(&format!(r"^\s+<< 200 OK {size}$")).unwrap();
        assert!(resp.is_match(&next), "after {line}: {next:?}");
        let c = regex::escape(&client);
        let port = authority.rsplit(':').next().unwrap();
        for want in [
            format!(r"^{ts}\[{c}\] client connect$"),
            format!(
                r"^{ts}\[{c}\] server connect {}( \(127\.0\.0\.1:{port}\))?$",
                regex::escape(&authority)
            ),
            format!(r"^{ts}\[{c}\] client disconnect"),
        ] {
            assert!(
                p.wait_for_stdout(&want, T).is_some(),
                "no line matching {want}\n{}",
                p.dump()
            );
        }
    }
}

#[test]
fn flow_log_h2_request_line_has_http2_suffix() {
    let (_pki, ng, p) = setup(&[]);
    let url = format!("{}/small.txt", ng.https_base());
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "--http2", "-x", &p.proxy_url()])
            .args(["--cacert", s(&p.ca_cert()), "-w", "%{http_version}", &url]),
        Duration::from_secs(40),
    );
    assert_eq!(out, format!("{SMALL_BODY}2"));
    let req = format!(
        r"^{TS}127\.0\.0\.1:\d+: GET {} HTTP/2\.0$",
        regex::escape(&url)
    );
    assert!(p.wait_for_stdout(&req, T).is_some(), "{}", p.dump());
    assert!(ng.wait_access_log("\"GET /small.txt HTTP/2.0\" 200", T));
}

/// Waits for and parses the JSON flow record whose `url` is `url`.
fn json_flow(p: &Proxy, url: &str) -> serde_json::Value {
    let found = wait_until(T, || {
        p.flow_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["type"] == "http" && v["url"] == url)
    });
    found.unwrap_or_else(|| panic!("no JSON http record for {url}\n{}", p.dump()))
}

#[test]
fn flow_log_json_lines_parse_with_expected_fields() {
    let (_pki, ng, p) = setup(&["--log-format", "json"]);
    let http_url = format!("{}/small.txt", ng.http_base());
    let https_url = format!("{}/small.txt", ng.https_base());
    assert_eq!(curl(&["-x", &p.proxy_url(), &http_url]).status, 200);
    let r = curl(&[
        "-x",
        &p.proxy_url(),
        "--cacert",
        s(&p.ca_cert()),
        "--http1.1",
        &https_url,
    ]);
    assert_eq!(r.status, 200);
    for (url, port, sni) in [
        (&http_url, ng.http_port, None),
        (&https_url, ng.https_port, Some("localhost")),
    ] {
        let v = json_flow(&p, url);
        for key in [
            "client",
            "mode",
            "destination",
            "server_addr",
            "method",
            "request_http_version",
            "response_http_version",
            "status",
            "reason",
            "request_bytes",
            "response_bytes",
            "timings_ms",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert!(
            v["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{v}"
        );
        assert_eq!(v["mode"], "regular", "{v}");
        assert_eq!(v["method"], "GET", "{v}");
        assert_eq!(v["status"], 200, "{v}");
        assert_eq!(v["reason"], "OK", "{v}");
        assert_eq!(v["request_http_version"], "HTTP/1.1", "{v}");
        assert_eq!(v["response_http_version"], "HTTP/1.1", "{v}");
        assert_eq!(v["response_bytes"], SMALL_BODY.len() as u64, "{v}");
        assert_eq!(v["server_addr"], format!("127.0.0.1:{port}"), "{v}");
        let dest = v["destination"].as_str().unwrap();
        assert!(dest.ends_with(&format!(":{port}")), "{v}");
        assert!(v["timings_ms"].is_object(), "{v}");
        assert!(v.get("error").is_none_or(|e| e.is_null()), "{v}");
        if let Some(sni) = sni {
            assert_eq!(v["sni"], sni, "{v}");
        }
    }
    // Every line on stdout is one JSON object.
    for l in p.flow_lines().iter().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.is_object(), "{l}");
    }
}

#[test]
fn authorization_is_redacted_at_detail_2_unless_show_secrets() {
    const SECRET: &str = "s3cr3t-token-4711";
    for show in [false, true] {
        let mut extra = vec!["--flow-detail", "2"];
        if show {
            extra.push("--show-secrets");
        }
        let (_pki, ng, p) = setup(&extra);
        let url = format!("{}/headers", ng.http_base());
        let r = curl(&[
            "-x",
            &p.proxy_url(),
            "-H",
            &format!("Authorization: Bearer {SECRET}"),
            &url,
        ]);
        // The upstream still gets the real credential.
        assert!(
            r.text().contains(&format!("authorization=Bearer {SECRET}")),
            "{r:?}"
        );
        let hdr = p.wait_for_stdout(r"(?i)authorization: Bearer", T);
        assert!(hdr.is_some(), "no authorization header line\n{}", p.dump());
        assert!(p.wait_for_stdout(r"\] client disconnect", T).is_some());
        let leaked = p.flow_lines().iter().any(|l| l.contains(SECRET));
        assert_eq!(
            leaked,
            show,
            "secret in log = {leaked}, --show-secrets = {show}\n{}",
            p.dump()
        );
    }
}
