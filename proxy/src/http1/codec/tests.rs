//! Codec tests on byte strings shaped like real traffic, including the
//! classic request-smuggling shapes (CL.TE, TE.CL, TE.TE variants).

use super::*;

fn req(bytes: &[u8]) -> Result<Option<(RequestHead, usize)>, ParseError> {
    parse_request(bytes, &Limits::default())
}

fn req_ok(bytes: &[u8]) -> (RequestHead, usize) {
    req(bytes).unwrap().unwrap()
}

fn res_ok(bytes: &[u8]) -> (ResponseHead, usize) {
    parse_response(bytes, &Limits::default()).unwrap().unwrap()
}

fn req_kind(bytes: &[u8]) -> Result<BodyKind, FramingError> {
    request_body_kind(&req_ok(bytes).0)
}

fn res_kind(bytes: &[u8], method: &str) -> Result<BodyKind, FramingError> {
    response_body_kind(&res_ok(bytes).0, method)
}

fn is_malformed(r: Result<Option<(RequestHead, usize)>, ParseError>) -> bool {
    matches!(r, Err(ParseError::Malformed(_)))
}

// A request as curl 7.88 sends it.
const CURL_GET: &[u8] = b"GET /path?q=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";

#[test]
fn parses_curl_request_and_keeps_name_case() {
    let (head, len) = req_ok(CURL_GET);
    assert_eq!(len, CURL_GET.len());
    assert_eq!(head.method, "GET");
    assert_eq!(head.target, "/path?q=1");
    assert_eq!(head.minor_version, 1);
    let names: Vec<&str> = head.headers.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["Host", "User-Agent", "Accept"]);
    assert_eq!(head.headers.get("user-agent"), Some(&b"curl/7.88.1"[..]));
    assert_eq!(request_body_kind(&head), Ok(BodyKind::Empty));
}

#[test]
fn incomplete_head_at_every_split_is_none() {
    for cut in 0..CURL_GET.len() {
        assert_eq!(req(&CURL_GET[..cut]), Ok(None), "cut at {cut}");
    }
}

#[test]
fn pipelined_requests_in_one_buffer() {
    let buf = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: h\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n";
    let (first, n1) = req_ok(buf);
    assert_eq!(first.target, "/a");
    assert_eq!(request_body_kind(&first), Ok(BodyKind::Length(5)));
    assert_eq!(&buf[n1..n1 + 5], b"hello");
    let rest = &buf[n1 + 5..];
    let (second, n2) = req_ok(rest);
    assert_eq!(second.target, "/b");
    let (third, n3) = req_ok(&rest[n2..]);
    assert_eq!(third.target, "/c");
    assert_eq!(n2 + n3, rest.len());
}

#[test]
fn http10_keep_alive() {
    let (head, _) = req_ok(b"GET / HTTP/1.0\r\nHost: h\r\nConnection: Keep-Alive\r\n\r\n");
    assert_eq!(head.minor_version, 0);
    assert!(head.headers.has_token("connection", "keep-alive"));
    assert_eq!(request_body_kind(&head), Ok(BodyKind::Empty));
    let mut out = Vec::new();
    write_request_head(&head, &mut out);
    assert!(out.starts_with(b"GET / HTTP/1.0\r\n"));
    let (resp, _) =
        res_ok(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(response_body_kind(&resp, "GET"), Ok(BodyKind::Length(2)));
    let (close, _) = res_ok(b"HTTP/1.0 200 OK\r\n\r\nbody until close");
    assert_eq!(response_body_kind(&close, "GET"), Ok(BodyKind::UntilClose));
}

#[test]
fn limits_head_bytes_complete_and_incomplete() {
    let limits = Limits {
        max_head_bytes: 64,
        max_headers: 8,
    };
    let mut big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100));
    // Incomplete but already over the limit.
    assert_eq!(parse_request(&big, &limits), Err(ParseError::TooLarge(64)));
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(parse_request(&big, &limits), Err(ParseError::TooLarge(64)));
    // Exactly at the limit is fine.
    let exact = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let limits = Limits {
        max_head_bytes: exact.len(),
        max_headers: 8,
    };
    assert_eq!(
        parse_request(exact, &limits).unwrap().unwrap().1,
        exact.len()
    );
    // A complete head followed by a long body does not count the body.
    let mut with_body = exact.to_vec();
    with_body.extend(std::iter::repeat_n(b'b', 1000));
    assert!(parse_request(&with_body, &limits).unwrap().is_some());
}

#[test]
fn limits_header_count() {
    let limits = Limits {
        max_head_bytes: 4096,
        max_headers: 3,
    };
    let ok = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert!(parse_request(ok, &limits).unwrap().is_some());
    let bad = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
    assert_eq!(
        parse_request(bad, &limits),
        Err(ParseError::TooManyHeaders(3))
    );
    let bad_resp = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
    assert_eq!(
        parse_response(bad_resp, &limits),
        Err(ParseError::TooManyHeaders(3))
    );
    // Above the stack slot count the heap path is used.
    let many = Limits {
        max_head_bytes: 64 * 1024,
        max_headers: 300,
    };
    let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..200 {
        buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    buf.extend_from_slice(b"\r\n");
    assert_eq!(
        parse_request(&buf, &many).unwrap().unwrap().0.headers.len(),
        200
    );
}

#[test]
fn rejects_malformed_request_heads() {
    let cases: &[&[u8]] = &[
        // obs-fold
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: one\r\n two\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: one\r\n\ttwo\r\n\r\n",
        // whitespace before colon
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n",
        // invalid names / values
        b"GET / HTTP/1.1\r\nHo(st: h\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n",
        // bare LF line endings
        b"GET / HTTP/1.1\nHost: h\n\n",
        b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
        // request line
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / HTTP/1.2\r\n\r\n",
        b"GET / HTTP/0.9\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET /a b HTTP/1.1\r\n\r\n",
        b"GET \xc3\xa4 HTTP/1.1\r\n\r\n",
        b"GET /\xc3\xa4 HTTP/1.1\r\n\r\n",
        b"GET * HTTP/1.1\r\n\r\n",
        b"GET example.test HTTP/1.1\r\n\r\n",
        b"CONNECT /x HTTP/1.1\r\n\r\n",
        b"CONNECT example.test HTTP/1.1\r\n\r\n",
        b"CONNECT example.test:http HTTP/1.1\r\n\r\n",
        // duplicate Host
        b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
    ];
    for case in cases {
        assert!(
            is_malformed(req(case)),
            "accepted {:?}: {:?}",
            String::from_utf8_lossy(case),
            req(case)
        );
    }
}

#[test]
fn accepts_every_target_form() {
    for (line, target) in [
        (&b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"[..], "*"),
        (
            b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
            "example.test:443",
        ),
        (b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n", "[::1]:8443"),
        (
            b"GET http://example.test/a?b HTTP/1.1\r\nHost: example.test\r\n\r\n",
            "http://example.test/a?b",
        ),
        (b"PURGE /cache HTTP/1.1\r\nHost: h\r\n\r\n", "/cache"),
    ] {
        assert_eq!(req_ok(line).0.target, target);
    }
}

#[test]
fn responses_parse_with_and_without_reason() {
    let raw = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Length: 0\r\n\r\nnext";
    let (head, len) = res_ok(raw);
    assert_eq!(
        (head.status, head.reason.as_str(), head.minor_version),
        (200, "OK", 1)
    );
    assert_eq!(len, raw.len() - 4);
    let (empty, _) = res_ok(b"HTTP/1.1 204 \r\n\r\n");
    assert_eq!(empty.reason, "");
    let (none, _) = res_ok(b"HTTP/1.1 404\r\n\r\n");
    assert_eq!(none.reason, "");
    for bad in [
        &b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\nServer: x\n\n",
    ] {
        assert!(
            matches!(
                parse_response(bad, &Limits::default()),
                Err(ParseError::Malformed(_))
            ),
            "accepted {:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn request_framing_rules() {
    let head = |fields: &str| format!("POST / HTTP/1.1\r\nHost: h\r\n{fields}\r\n");
    let kind = |fields: &str| req_kind(head(fields).as_bytes());
    assert_eq!(kind(""), Ok(BodyKind::Empty));
    assert_eq!(kind("Content-Length: 0\r\n"), Ok(BodyKind::Length(0)));
    assert_eq!(kind("Content-Length: 42\r\n"), Ok(BodyKind::Length(42)));
    assert_eq!(kind("Content-Length: 007\r\n"), Ok(BodyKind::Length(7)));
    assert_eq!(
        kind("Transfer-Encoding: chunked\r\n"),
        Ok(BodyKind::Chunked)
    );
    assert_eq!(
        kind("Transfer-Encoding: Chunked\r\n"),
        Ok(BodyKind::Chunked)
    );
    assert_eq!(
        kind("Transfer-Encoding: gzip, chunked\r\n"),
        Ok(BodyKind::Chunked)
    );
    assert_eq!(
        kind("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
        Ok(BodyKind::Chunked)
    );
    // Identical repeats are fine, in one list or several lines.
    assert_eq!(kind("Content-Length: 5, 5\r\n"), Ok(BodyKind::Length(5)));
    assert_eq!(
        kind("Content-Length: 5\r\nContent-Length: 5\r\n"),
        Ok(BodyKind::Length(5))
    );
    // Differing ones are not.
    assert_eq!(
        kind("Content-Length: 5, 6\r\n"),
        Err(FramingError::ConflictingLength)
    );
    assert_eq!(
        kind("Content-Length: 5\r\nContent-Length: 6\r\n"),
        Err(FramingError::ConflictingLength)
    );
    for bad in [
        "+5",
        "-5",
        "5 5",
        "0x5",
        "5a",
        "",
        "5,",
        ",5",
        "5,,5",
        "18446744073709551616",
        "1e3",
        "5;q",
    ] {
        assert_eq!(
            kind(&format!("Content-Length: {bad}\r\n")),
            Err(FramingError::InvalidLength),
            "{bad:?}"
        );
    }
    assert_eq!(
        kind("Content-Length: 18446744073709551615\r\n"),
        Ok(BodyKind::Length(u64::MAX))
    );
}

#[test]
fn smuggling_shapes_are_rejected() {
    let te_cl = FramingError::LengthAndChunked;
    let bad_te = FramingError::BadTransferEncoding;
    // CL.TE and TE.CL: both framings present, in either order.
    assert_eq!(
        req_kind(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED"),
        Err(te_cl.clone())
    );
    assert_eq!(
        req_kind(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
        Err(te_cl.clone())
    );
    // TE.TE obfuscations.
    for te in [
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: \"chunked\"\r\n",
        "Transfer-Encoding: chunked;q=1\r\n",
        "Transfer-Encoding: identity\r\n",
        "Transfer-Encoding: \r\n",
        "Transfer-Encoding: ,\r\n",
        "Transfer-Encoding: chunk\r\n",
    ] {
        let msg = format!("POST / HTTP/1.1\r\nHost: h\r\n{te}\r\n");
        assert_eq!(req_kind(msg.as_bytes()), Err(bad_te.clone()), "{te:?}");
    }
    // TE.TE with one header unparseable: rejected by the head parser itself.
    for msg in [
        &b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n Content-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\x0bchunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\nContent-Length: 5\r\n\r\n",
    ] {
        assert!(is_malformed(req(msg)), "{:?}", String::from_utf8_lossy(msg));
    }
    // Chunked in an HTTP/1.0 request.
    assert_eq!(
        req_kind(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Err(bad_te)
    );
}

#[test]
fn response_framing_rules() {
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(res_kind(chunked, "GET"), Ok(BodyKind::Chunked));
    assert_eq!(res_kind(chunked, "HEAD"), Ok(BodyKind::Empty));
    let cl = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
    assert_eq!(res_kind(cl, "GET"), Ok(BodyKind::Length(10)));
    assert_eq!(res_kind(cl, "HEAD"), Ok(BodyKind::Empty));
    assert_eq!(res_kind(cl, "CONNECT"), Ok(BodyKind::Empty));
    let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\n";
    assert_eq!(res_kind(refused, "CONNECT"), Ok(BodyKind::Length(10)));
    for status in [
        "100 Continue",
        "101 Switching Protocols",
        "204 No Content",
        "304 Not Modified",
    ] {
        let msg = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(
            res_kind(msg.as_bytes(), "GET"),
            Ok(BodyKind::Empty),
            "{status}"
        );
    }
    assert_eq!(
        res_kind(b"HTTP/1.1 200 OK\r\n\r\n", "GET"),
        Ok(BodyKind::UntilClose)
    );
    assert_eq!(
        res_kind(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "GET"),
        Ok(BodyKind::UntilClose)
    );
    assert_eq!(
        res_kind(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "GET"
        ),
        Err(FramingError::LengthAndChunked)
    );
    assert_eq!(
        res_kind(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "GET"
        ),
        Err(FramingError::BadTransferEncoding)
    );
    assert_eq!(
        res_kind(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET"
        ),
        Err(FramingError::BadTransferEncoding)
    );
    assert_eq!(
        res_kind(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET"
        ),
        Err(FramingError::ConflictingLength)
    );
}

#[test]
fn has_token_across_lines_and_case() {
    let (head, _) = req_ok(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive , Upgrade\r\nconnection:\tX-Secret,\r\nUpgrade: websocket\r\n\r\n");
    let h = &head.headers;
    assert!(h.has_token("Connection", "upgrade"));
    assert!(h.has_token("connection", "KEEP-ALIVE"));
    assert!(h.has_token("connection", "x-secret"));
    assert!(!h.has_token("connection", "alive"));
    assert!(!h.has_token("connection", ""));
    assert!(!h.has_token("upgrade", "h2c"));
    assert!(!h.has_token("missing", "x"));
}

#[test]
fn hop_by_hop_removal() {
    let (mut head, _) = req_ok(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close, X-Hop\r\nConnection: content-length, host, transfer-encoding\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n\
          Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Authenticate: Basic\r\nX-Hop: 1\r\nx-hop: 2\r\n\
          Content-Length: 0\r\nTransfer-Encoding: chunked\r\nX-End: kept\r\n\r\n",
    );
    let mut keep = head.headers.clone();
    remove_hop_by_hop(&mut keep, true);
    let names: Vec<&str> = keep.iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["Host", "Content-Length", "Transfer-Encoding", "X-End"]
    );
    remove_hop_by_hop(&mut head.headers, false);
    let names: Vec<&str> = head.headers.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["Host", "Content-Length", "X-End"]);
}

#[test]
fn head_round_trips_through_writer() {
    let raw = b"POST http://example.test/up HTTP/1.1\r\nHost: example.test\r\nX-Mixed-Case: A b\r\nEmpty: \r\nContent-Length: 3\r\n\r\n";
    let (head, _) = req_ok(raw);
    let mut out = Vec::new();
    write_request_head(&head, &mut out);
    assert_eq!(out, raw.to_vec());
    let raw_res = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\n";
    let (res, _) = res_ok(raw_res);
    let mut out = Vec::new();
    write_response_head(&res, &mut out);
    assert_eq!(out, raw_res.to_vec());
    let (no_reason, _) = res_ok(b"HTTP/1.1 200\r\n\r\n");
    out.clear();
    write_response_head(&no_reason, &mut out);
    assert_eq!(out, b"HTTP/1.1 200 \r\n\r\n");
    // And the serialised form parses back to the same head.
    assert_eq!(res_ok(&out).0, no_reason);
}
