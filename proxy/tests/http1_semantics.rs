//! HTTP/1 semantics through the proxy with a raw client socket: pipelined
//! requests answered in order, oversized header sections refused with 431,
//! HEAD responses without a body, HTTP/1.0 clients.
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::nginx::{Nginx, SMALL_BODY};
use support::pki::TestPki;
use support::proxy::{Proxy, ProxyBuilder};

fn setup() -> (TestPki, Nginx, Proxy) {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let p = ProxyBuilder::new().upstream_ca(&pki.ca_pem()).spawn();
    (pki, ng, p)
}

/// Send `req` on a fresh connection to the proxy and read until EOF.
fn exchange(p: &Proxy, req: &[u8]) -> String {
    let mut s = TcpStream::connect(p.addr("regular")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (_pki, ng, p) = setup();
    let base = ng.http_base();
    let req = format!(
        "GET {base}/small.txt HTTP/1.1\r\nHost: x\r\n\r\n\
         GET {base}/missing-1 HTTP/1.1\r\nHost: x\r\n\r\n\
         HEAD {base}/small.txt HTTP/1.1\r\nHost: x\r\n\r\n\
         GET {base}/small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let out = exchange(&p, req.as_bytes());
    let statuses: Vec<&str> = out
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect();
    assert_eq!(
        statuses,
        ["200", "404", "200", "200"],
        "{out}\n{}",
        p.dump()
    );
    // Two GET bodies; the HEAD response carries none.
    assert_eq!(out.matches(SMALL_BODY).count(), 2, "{out}");
}

#[test]
fn oversized_header_section_gets_431_and_is_not_forwarded() {
    let (_pki, ng, p) = setup();
    let big = "a".repeat(70 * 1024);
    let req = format!(
        "GET {}/small.txt HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n",
        ng.http_base()
    );
    let out = exchange(&p, req.as_bytes());
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !ng.access_log().contains("small.txt"),
        "an oversized request reached the upstream"
    );
}

#[test]
fn http10_client_gets_a_closed_delimited_or_sized_response() {
    let (_pki, ng, p) = setup();
    let req = format!("GET {}/small.txt HTTP/1.0\r\n\r\n", ng.http_base());
    let out = exchange(&p, req.as_bytes());
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    assert!(
        !out.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{out}"
    );
    assert!(out.ends_with(SMALL_BODY), "{out}");
}

#[test]
fn origin_form_request_to_the_explicit_proxy_is_explained() {
    let (_pki, _ng, p) = setup();
    let out = exchange(&p, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(out.contains("HTTP_PROXY"), "{out}");
}
