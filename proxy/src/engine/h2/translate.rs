//! HTTP/2 ⇄ HTTP/1.1 head translation: pseudo-headers ⇄ request line and
//! Host, connection-specific fields dropped, cookies joined, trailers as a
//! chunked trailer section.
//!
//! Internally every request head is an HTTP/1 [`RequestHead`] (origin-form
//! target, `Host` first), so routing, rules and the flow record are shared
//! with the HTTP/1 engine whatever the client spoke.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::http1::codec::{Headers, RequestHead, ResponseHead};

/// Fields that are meaningful for one HTTP/1 connection only and must not
/// appear in HTTP/2 (RFC 9113 §8.2.2); `te` is allowed as `trailers`.
const CONNECTION_SPECIFIC: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// An HTTP/2 request's head as an HTTP/1.1 head: target = `:path`, `Host` =
/// `:authority` (placed first), `cookie` fields joined with `; `
/// (RFC 9113 §8.2.3).
pub fn request_head(parts: &http::request::Parts) -> RequestHead {
    let mut headers = Headers::new();
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    if let Some(a) = &authority {
        headers.append("host", a.as_bytes());
    }
    let mut cookies: Vec<&[u8]> = Vec::new();
    for (name, value) in &parts.headers {
        if name == http::header::COOKIE {
            cookies.push(value.as_bytes());
        } else if name == http::header::HOST && authority.is_some() {
            // :authority wins over a Host field (RFC 9113 §8.3.1).
        } else {
            headers.append(name.as_str(), value.as_bytes());
        }
    }
    if !cookies.is_empty() {
        headers.append("cookie", cookies.join(&b"; "[..]));
    }
    let target = match parts.uri.path_and_query() {
        Some(pq) if parts.method == http::Method::OPTIONS && pq.as_str() == "*" => "*".to_owned(),
        Some(pq) => pq.as_str().to_owned(),
        None => "/".to_owned(),
    };
    RequestHead {
        method: parts.method.as_str().to_owned(),
        target,
        minor_version: 1,
        headers,
    }
}

/// Whether a field must not be forwarded into HTTP/2. `named` are the
/// options of the message's `Connection` fields (also hop-by-hop).
fn drop_for_h2(name: &str, named: &[&[u8]]) -> bool {
    CONNECTION_SPECIFIC
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
        || named
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
}

/// HTTP/1-style fields → an HTTP/2 field map: connection-specific fields
/// dropped, `te` kept only as `trailers`, invalid names/values skipped.
pub fn h2_headers(h: &Headers) -> HeaderMap {
    let named: Vec<&[u8]> = h.connection_options().collect();
    let mut map = HeaderMap::with_capacity(h.len());
    for (name, value) in h.iter() {
        if name.eq_ignore_ascii_case("te") {
            if h.has_token("te", "trailers") && !map.contains_key(http::header::TE) {
                map.insert(http::header::TE, HeaderValue::from_static("trailers"));
            }
            continue;
        }
        if drop_for_h2(name, &named) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// An HTTP/2 request for `head` (already routed and edited): `:scheme`,
/// `:authority` (from the head's Host), `:path`, `:method`.
pub fn h2_request(head: &RequestHead, scheme: &str) -> Result<http::Request<()>, String> {
    let authority = head
        .headers
        .get("host")
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .ok_or_else(|| "request has no Host and no :authority".to_owned())?;
    let uri = if head.target == "*" {
        http::Uri::builder()
            .scheme(scheme)
            .authority(authority.as_str())
            .path_and_query("*")
            .build()
    } else {
        http::Uri::builder()
            .scheme(scheme)
            .authority(authority.as_str())
            .path_and_query(head.target.as_str())
            .build()
    };
    let uri = uri.map_err(|e| format!("cannot express the request in HTTP/2: {e}"))?;
    let method = http::Method::from_bytes(head.method.as_bytes())
        .map_err(|_| format!("invalid method `{}`", head.method))?;
    let mut req = http::Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    *req.headers_mut() = h2_headers(&head.headers);
    Ok(req)
}

/// An HTTP/2 response head: the status and the fields minus
/// connection-specific ones.
pub fn h2_response(status: u16, headers: &Headers) -> http::Response<()> {
    let mut resp = http::Response::new(());
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    *resp.version_mut() = http::Version::HTTP_2;
    *resp.headers_mut() = h2_headers(headers);
    resp
}

/// An HTTP/2 response head as an HTTP/1.1 head (standard reason phrase).
pub fn response_head(parts: &http::response::Parts) -> ResponseHead {
    ResponseHead {
        minor_version: 1,
        status: parts.status.as_u16(),
        reason: parts.status.canonical_reason().unwrap_or("").to_owned(),
        headers: headers_from_map(&parts.headers),
    }
}

/// An HTTP/2 field map as an ordered HTTP/1 field list.
pub fn headers_from_map(map: &HeaderMap) -> Headers {
    let mut h = Headers::new();
    for (name, value) in map {
        h.append(name.as_str(), value.as_bytes());
    }
    h
}

/// The end of a chunked body carrying `trailers`: `0 CRLF`, fields, CRLF.
pub fn chunked_end(trailers: Option<&HeaderMap>) -> Vec<u8> {
    let mut out = b"0\r\n".to_vec();
    for (name, value) in trailers.into_iter().flatten() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Parse the trailer section at the end of a chunked body (the raw bytes
/// from the last-chunk line on) into HTTP/2 trailers; None when empty.
pub fn trailers_from_chunked_end(tail: &[u8]) -> Option<HeaderMap> {
    let text = tail.strip_prefix(b"\r\n").unwrap_or(tail);
    let mut lines = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    lines.next()?; // the last-chunk line `0[;ext]`
    let mut map = HeaderMap::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if drop_for_h2(&String::from_utf8_lossy(name), &[]) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    (!map.is_empty()).then_some(map)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b" \t".contains(b))
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b" \t".contains(b))
        .map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn pseudo_headers_become_request_line_and_host() {
        let req = http::Request::builder()
            .method("POST")
            .uri("https://example.com:8443/a/b?c=d")
            .header("content-type", "text/plain")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        let head = request_head(&parts(req));
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/a/b?c=d");
        assert_eq!(head.minor_version, 1);
        let fields: Vec<_> = head.headers.iter().map(|(n, _)| n.to_owned()).collect();
        assert_eq!(fields, ["host", "content-type", "cookie"]);
        assert_eq!(head.headers.get("host"), Some(&b"example.com:8443"[..]));
        assert_eq!(head.headers.get("cookie"), Some(&b"a=1; b=2"[..]));
    }

    #[test]
    fn h1_head_becomes_h2_request_without_hop_by_hop_fields() {
        let mut headers = Headers::new();
        headers.append("Host", "example.com");
        headers.append("Connection", "keep-alive, X-Hop");
        headers.append("Keep-Alive", "timeout=5");
        headers.append("Transfer-Encoding", "chunked");
        headers.append("Upgrade", "websocket");
        headers.append("X-Hop", "1");
        headers.append("TE", "trailers, deflate");
        headers.append("Accept", "*/*");
        let head = RequestHead {
            method: "GET".into(),
            target: "/x?y".into(),
            minor_version: 1,
            headers,
        };
        let req = h2_request(&head, "https").unwrap();
        assert_eq!(req.uri().to_string(), "https://example.com/x?y");
        let names: Vec<_> = req.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["te", "accept"]);
        assert_eq!(req.headers()["te"], "trailers");
        assert!(
            h2_request(
                &RequestHead {
                    headers: Headers::new(),
                    ..head
                },
                "http"
            )
            .is_err()
        );
    }

    #[test]
    fn te_without_trailers_is_dropped() {
        let mut h = Headers::new();
        h.append("te", "gzip");
        assert!(h2_headers(&h).is_empty());
    }

    #[test]
    fn trailers_map_both_ways() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("ok"));
        let end = chunked_end(Some(&t));
        assert_eq!(end, b"0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n");
        let back = trailers_from_chunked_end(&end).unwrap();
        assert_eq!(back, t);
        assert_eq!(chunked_end(None), b"0\r\n\r\n");
        assert!(trailers_from_chunked_end(b"\r\n0;ext=1\r\n\r\n").is_none());
        let odd = trailers_from_chunked_end(b"0\r\nX-A:  v \r\nConnection: x\r\n\r\n").unwrap();
        assert_eq!(odd.len(), 1);
        assert_eq!(odd["x-a"], "v");
    }

    #[test]
    fn response_heads_translate() {
        let mut h = Headers::new();
        h.append("Content-Length", "3");
        h.append("Connection", "close");
        h.append("X-A", "b");
        let r = h2_response(200, &h);
        assert_eq!(r.headers().len(), 2);
        let (p, ()) = r.into_parts();
        let back = response_head(&p);
        assert_eq!(back.reason, "OK");
        assert_eq!(back.headers.get("x-a"), Some(&b"b"[..]));
    }
}
