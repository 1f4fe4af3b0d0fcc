//! Golden strings for every text line shape; JSON parsed back.

use std::time::{Duration, SystemTime};

use super::*;
use crate::flowlog::*;

fn text_http(f: &HttpFlow, detail: u8) -> String {
    let mut out = String::new();
    text::http(&mut out, f, &opts(detail));
    out
}

fn conn_line(kind: ConnEventKind) -> String {
    let mut out = String::new();
    let ev = ConnEvent {
        at: t0(),
        client: addr("10.0.0.7:51234"),
        kind,
    };
    text::conn_event(&mut out, &ev, 3600);
    out
}

#[test]
fn conn_event_lines() {
    let a = addr("93.184.216.34:443");
    assert_eq!(
        conn_line(ConnEventKind::ClientConnect),
        "[15:32:48.123][10.0.0.7:51234] client connect\n"
    );
    assert_eq!(
        conn_line(ConnEventKind::ServerConnect {
            authority: "example.com:443".into(),
            addr: a
        }),
        "[15:32:48.123][10.0.0.7:51234] server connect example.com:443 (93.184.216.34:443)\n"
    );
    assert_eq!(
        conn_line(ConnEventKind::ServerConnect {
            authority: "93.184.216.34:443".into(),
            addr: a
        }),
        "[15:32:48.123][10.0.0.7:51234] server connect 93.184.216.34:443\n"
    );
    assert_eq!(
        conn_line(ConnEventKind::ServerDisconnect {
            authority: "example.com:443".into(),
            addr: a
        }),
        "[15:32:48.123][10.0.0.7:51234] server disconnect example.com:443 (93.184.216.34:443)\n"
    );
    assert_eq!(
        conn_line(ConnEventKind::ClientDisconnect),
        "[15:32:48.123][10.0.0.7:51234] client disconnect\n"
    );
    assert_eq!(
        conn_line(ConnEventKind::Error {
            message: "TLS handshake failed:\nunknown ca".into()
        }),
        "[15:32:48.123][10.0.0.7:51234] error: TLS handshake failed:.unknown ca\n"
    );
}

#[test]
fn clock_wraps_days_and_offsets() {
    let ev = |at| ConnEvent {
        at,
        client: addr("[::1]:1"),
        kind: ConnEventKind::ClientConnect,
    };
    let mut out = String::new();
    // 14:32:48 UTC at -15:00 is 23:32:48 the previous day.
    text::conn_event(&mut out, &ev(t0()), -15 * 3600);
    text::conn_event(
        &mut out,
        &ev(SystemTime::UNIX_EPOCH - Duration::from_millis(1)),
        0,
    );
    assert_eq!(
        out,
        "[23:32:48.123][[::1]:1] client connect\n[23:59:59.999][[::1]:1] client connect\n"
    );
}

#[test]
fn http_detail1_lines() {
    let f = flow();
    assert_eq!(
        text_http(&f, 1),
        "10.0.0.7:51234: GET https://example.com/index.html\n             << 200 OK 1.2k\n"
    );

    // HTTP/2 on both sides: version on both lines; canonical reason.
    let mut h2 = flow();
    h2.request_version = HttpVersion::Http2;
    if let Some(r) = h2.response.as_mut() {
        r.version = HttpVersion::Http2;
        r.reason = String::new();
    }
    assert_eq!(
        text_http(&h2, 1),
        "10.0.0.7:51234: GET https://example.com/index.html HTTP/2.0\n    << HTTP/2.0 200 OK 1.2k\n"
    );

    // HTTP/1.0 request answered with HTTP/1.1.
    let mut h10 = flow();
    h10.request_version = HttpVersion::Http10;
    assert_eq!(
        text_http(&h10, 1),
        "10.0.0.7:51234: GET https://example.com/index.html HTTP/1.0\n    << HTTP/1.1 200 OK 1.2k\n"
    );

    // Denied by a rule.
    let mut deny = flow();
    deny.decision = "deny";
    deny.rule = Some("block-all".into());
    deny.response_bytes = 33;
    if let Some(r) = deny.response.as_mut() {
        r.status = 418;
        r.reason = "I'm a teapot".into();
    }
    assert_eq!(
        text_http(&deny, 1),
        "10.0.0.7:51234: GET https://example.com/index.html\n             << 418 I'm a teapot 33b [deny rule block-all]\n"
    );

    // Allowed by a named rule.
    let mut allow = flow();
    allow.decision = "allow";
    allow.rule = Some("s3".into());
    assert!(text_http(&allow, 1).ends_with("<< 200 OK 1.2k [rule s3]\n"));

    // No response.
    let mut err = flow();
    err.response = None;
    err.error = Some("upstream connect: connection refused".into());
    assert_eq!(
        text_http(&err, 1),
        "10.0.0.7:51234: GET https://example.com/index.html\n             << error: upstream connect: connection refused\n"
    );

    // Response and then an error (body cut short).
    let mut both = flow();
    both.error = Some("upstream reset".into());
    assert!(
        text_http(&both, 1).ends_with("<< 200 OK 1.2k\n             << error: upstream reset\n")
    );

    // IPv6 client: wider padding.
    let mut v6 = flow();
    v6.client = addr("[2001:db8::7]:51234");
    assert_eq!(
        text_http(&v6, 1),
        "[2001:db8::7]:51234: GET https://example.com/index.html\n                  << 200 OK 1.2k\n"
    );
}

#[test]
fn http_line_redacts_and_escapes() {
    let mut f = flow();
    f.url = "https://u:p@example.com/x?X-Amz-Signature=abc&a=b\r\n[12:00:00.000] fake".into();
    let out = text_http(&f, 1);
    assert_eq!(
        out.lines().next().unwrap(),
        "10.0.0.7:51234: GET https://u:...@example.com/x?X-Amz-Signature=...&a=b..[12:00:00.000] fake"
    );
    assert_eq!(out.lines().count(), 2);

    let mut out = String::new();
    text::http(
        &mut out,
        &f,
        &Opts {
            detail: 2,
            show_secrets: true,
        },
    );
    assert!(out.contains("https://u:p@example.com/x?X-Amz-Signature=abc"));
    assert!(out.contains("    authorization: Bearer sekrit\n"));
}

#[test]
fn http_detail2_headers() {
    let f = flow();
    assert_eq!(
        text_http(&f, 2),
        "10.0.0.7:51234: GET https://example.com/index.html\n\
         \x20   host: example.com\n\
         \x20   authorization: Bearer ...\n\
         \x20<< 200 OK 1.2k\n\
         \x20   content-type: text/plain\n\
         \x20   set-cookie: sid=...; Path=/\n"
    );
}

#[test]
fn http_detail3_bodies() {
    let mut f = flow();
    f.method = "POST".into();
    f.request_body = Some(BodyCapture {
        bytes: b"{\"a\":\t1}\r\n".to_vec(),
        truncated: false,
    });
    assert_eq!(
        text_http(&f, 3),
        "10.0.0.7:51234: POST https://example.com/index.html\n\
         \x20   host: example.com\n\
         \x20   authorization: Bearer ...\n\
         \n\
         \x20   {\"a\":\t1}\n\
         \n\
         \x20<< 200 OK 1.2k\n\
         \x20   content-type: text/plain\n\
         \x20   set-cookie: sid=...; Path=/\n\
         \n\
         \x20   hello\n\
         \x20   world\n\
         \n"
    );
}

#[test]
fn binary_and_truncated_bodies() {
    let mut f = flow();
    f.response = f.response.map(|mut r| {
        r.headers.clear();
        r.body = Some(BodyCapture {
            bytes: (0u8..20).chain(*b"AB").collect(),
            truncated: true,
        });
        r
    });
    let out = text_http(&f, 3);
    let want = "\
\x20<< 200 OK 1.2k

    0000000000 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  ................
    0000000010 10 11 12 13 41 42                                ....AB
    (body capture truncated at 22b)

";
    assert!(out.ends_with(want), "{out}");

    // A capture cut inside a UTF-8 character is still shown as text.
    let cut = "héllo".as_bytes()[..2].to_vec();
    f.response = f.response.map(|mut r| {
        r.body = Some(BodyCapture {
            bytes: cut,
            truncated: true,
        });
        r
    });
    assert!(text_http(&f, 3).ends_with("\n    h\n    (body capture truncated at 2b)\n\n"));
}

#[test]
fn body_line_cutoff_depends_on_detail() {
    let mut f = flow();
    let body: String = (0..600).map(|i| format!("line {i}\n")).collect();
    f.response = f.response.map(|mut r| {
        r.headers.clear();
        r.body = Some(BodyCapture {
            bytes: body.into_bytes(),
            truncated: false,
        });
        r
    });
    let d3 = text_http(&f, 3);
    assert!(d3.contains("    line 511\n    (cut off)\n\n"));
    assert!(!d3.contains("line 512"));
    let d4 = text_http(&f, 4);
    assert!(d4.ends_with("    line 599\n\n"));
    assert!(!d4.contains("(cut off)"));
    assert_eq!(
        d4.lines().filter(|l| l.starts_with("    line ")).count(),
        600
    );
}

#[test]
fn tcp_lines() {
    let mut out = String::new();
    text::tcp(&mut out, &tcp_flow(), &opts(1));
    assert_eq!(
        out,
        "10.0.0.7:51235: passthrough db.internal:5432 (not http) >> 517b << 4.2k\n"
    );
    let mut f = tcp_flow();
    f.error = Some("connection reset by peer".into());
    let mut out = String::new();
    text::tcp(&mut out, &f, &opts(1));
    assert_eq!(
        out,
        "10.0.0.7:51235: passthrough db.internal:5432 (not http) >> 517b << 4.2k\n             << error: connection reset by peer\n"
    );
}

fn json_http(f: &HttpFlow, detail: u8, show_secrets: bool) -> serde_json::Value {
    let mut out = Vec::new();
    json::http(
        &mut out,
        f,
        &Opts {
            detail,
            show_secrets,
        },
    )
    .unwrap();
    assert_eq!(out.last(), Some(&b'\n'));
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
    serde_json::from_slice(&out).unwrap()
}

const HTTP_KEYS: &[&str] = &[
    "type",
    "ts",
    "client",
    "mode",
    "destination",
    "server_addr",
    "sni",
    "method",
    "url",
    "request_http_version",
    "response_http_version",
    "status",
    "reason",
    "request_bytes",
    "response_bytes",
    "timings_ms",
    "decision",
    "rule",
    "tag",
    "error",
];

#[test]
fn json_http_fields() {
    let mut f = flow();
    f.url = "https://example.com/?token=abc".into();
    let v = json_http(&f, 1, false);
    let obj = v.as_object().unwrap();
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut want = HTTP_KEYS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want, "exactly the documented fields at detail 1");
    assert_eq!(v["type"], "http");
    assert_eq!(v["ts"], "2026-11-21T14:32:48.123Z");
    assert_eq!(v["client"], "10.0.0.7:51234");
    assert_eq!(v["mode"], "transparent");
    assert_eq!(v["destination"], "example.com:443");
    assert_eq!(v["server_addr"], "93.184.216.34:443");
    assert_eq!(v["sni"], "example.com");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["url"], "https://example.com/?token=...");
    assert_eq!(v["request_http_version"], "HTTP/1.1");
    assert_eq!(v["response_http_version"], "HTTP/1.1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["reason"], "OK");
    assert_eq!(v["request_bytes"], 0);
    assert_eq!(v["response_bytes"], 1234);
    assert_eq!(v["timings_ms"]["connect"], 1.5);
    assert_eq!(v["timings_ms"]["tls"], 3.25);
    assert_eq!(v["timings_ms"]["ttfb"], 20.0);
    assert_eq!(v["timings_ms"]["total"], 25.125);
    assert_eq!(v["decision"], "intercept");
    assert!(v["rule"].is_null());
    assert!(v["error"].is_null());
    assert_eq!(
        json_http(&f, 1, true)["url"],
        "https://example.com/?token=abc"
    );
}

#[test]
fn json_http_without_response_has_nulls() {
    let mut f = flow();
    f.response = None;
    f.server_addr = None;
    f.sni = None;
    f.timings = Timings::default();
    f.error = Some("connect refused".into());
    f.decision = "deny";
    f.rule = Some("r1".into());
    let v = json_http(&f, 2, false);
    for key in [
        "server_addr",
        "sni",
        "response_http_version",
        "status",
        "reason",
        "response_headers",
    ] {
        assert!(v[key].is_null(), "{key}");
        assert!(v.as_object().unwrap().contains_key(key), "{key} present");
    }
    assert!(v["timings_ms"]["connect"].is_null());
    assert_eq!(v["timings_ms"]["total"], 0.0);
    assert_eq!(v["error"], "connect refused");
    assert_eq!(v["rule"], "r1");
    assert_eq!(v["decision"], "deny");
    assert!(v["tag"].is_null());
}

#[test]
fn json_detail_gates_headers_and_bodies() {
    let mut f = flow();
    f.request_body = Some(BodyCapture {
        bytes: vec![0xff, 0x00, 0x41],
        truncated: true,
    });
    let d1 = json_http(&f, 1, false);
    for key in [
        "request_headers",
        "response_headers",
        "request_body",
        "response_body",
    ] {
        assert!(
            !d1.as_object().unwrap().contains_key(key),
            "{key} absent at 1"
        );
    }
    let d2 = json_http(&f, 2, false);
    assert_eq!(
        d2["request_headers"],
        serde_json::json!([["host", "example.com"], ["authorization", "Bearer ..."]])
    );
    assert_eq!(
        d2["response_headers"],
        serde_json::json!([
            ["content-type", "text/plain"],
            ["set-cookie", "sid=...; Path=/"]
        ])
    );
    assert!(!d2.as_object().unwrap().contains_key("request_body"));
    let d3 = json_http(&f, 3, false);
    assert_eq!(
        d3["request_body"],
        serde_json::json!({"encoding": "base64", "data": "/wBB", "truncated": true})
    );
    assert_eq!(
        d3["response_body"],
        serde_json::json!({"encoding": "utf-8", "data": "hello\nworld\n", "truncated": false})
    );
    f.request_body = None;
    let d4 = json_http(&f, 4, true);
    assert!(d4["request_body"].is_null());
    assert!(d4.as_object().unwrap().contains_key("request_body"));
    assert_eq!(d4["request_headers"][1][1], "Bearer sekrit");
}

#[test]
fn json_tcp_fields() {
    let mut out = Vec::new();
    json::tcp(&mut out, &tcp_flow()).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "type": "tcp",
            "ts": "2026-11-21T14:32:48.123Z",
            "client": "10.0.0.7:51235",
            "mode": "transparent",
            "destination": "db.internal:5432",
            "server_addr": "198.18.2.2:5432",
            "sni": null,
            "bytes_client_to_server": 517,
            "bytes_server_to_client": 4300,
            "duration_ms": 1520.25,
            "reason": "not http",
            "error": null,
        })
    );
}

#[test]
fn odd_inputs_do_not_panic() {
    let mut f = flow();
    f.method = String::new();
    f.url = String::new();
    f.destination = "\u{0}\u{7f}\u{2028}".into();
    f.request_headers = vec![
        (String::new(), String::new()),
        ("cookie".into(), ";;=;".into()),
    ];
    f.request_body = Some(BodyCapture {
        bytes: vec![0xc3; 100_000],
        truncated: true,
    });
    f.timings.total = Duration::MAX;
    f.started = SystemTime::UNIX_EPOCH - Duration::from_secs(1 << 40);
    for detail in 0..=9 {
        let _ = text_http(&f, detail);
        let v = json_http(&f, detail, false);
        assert!(v["timings_ms"]["total"].as_f64().unwrap() > 0.0);
    }
}

/// Random strings built from the characters the parsers care about (and
/// multi-byte and control characters) through every redaction and format
/// path: nothing panics, JSON stays one parseable line, text stays one line
/// per field.
#[test]
fn random_inputs_never_panic() {
    const POOL: &[char] = &[
        'a', 'Z', '0', ':', '/', '?', '#', '@', '&', '=', ';', ' ', '\t', '\r', '\n', '\0', '%',
        '[', ']', '.', '-', 'é', '€', '😀', '\u{2028}', '\u{7f}', '\u{85}',
    ];
    let names = [
        "authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "referer",
        "x-a-token",
        "accept",
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let len = (next() % 40) as usize;
        let s: String = (0..len)
            .map(|_| POOL[(next() % POOL.len() as u64) as usize])
            .collect();
        let _ = crate::flowlog::redact_url(&s);
        for name in names {
            let _ = crate::flowlog::redact_header(name, &s);
        }
        let mut f = flow();
        f.url = format!("https://{s}");
        f.method = s.clone();
        f.request_headers = names.iter().map(|n| (n.to_string(), s.clone())).collect();
        f.request_body = Some(BodyCapture {
            bytes: s.clone().into_bytes(),
            truncated: next() % 2 == 0,
        });
        f.error = Some(s.clone());
        let detail = (next() % 5) as u8;
        let out = text_http(&f, detail);
        if detail == 1 {
            assert_eq!(out.lines().count(), 3, "{out:?}");
        }
        let _ = json_http(&f, detail, false);
    }
}

#[test]
fn json_carries_the_trace_id_only_when_traced() {
    let mut f = flow();
    assert!(json_http(&f, 1, false).get("trace_id").is_none());
    f.trace = Some(crate::observe::FlowTrace {
        trace_id: [0xab; 16],
        sampled: true,
        ..Default::default()
    });
    assert_eq!(
        json_http(&f, 1, false)["trace_id"],
        "abababababababababababababababab"
    );
}
