//! Tests of the formats (golden strings) and of the writer thread.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::writer::Clock;
use super::*;

/// 2026-11-21T14:32:48.123Z
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_271_568_123)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn opts(detail: u8) -> Opts {
    Opts {
        detail,
        show_secrets: false,
    }
}

fn flow() -> HttpFlow {
    HttpFlow {
        started: t0(),
        client: addr("10.0.0.7:51234"),
        mode: "transparent",
        destination: "example.com:443".into(),
        server_addr: Some(addr("93.184.216.34:443")),
        sni: Some("example.com".into()),
        method: "GET".into(),
        url: "https://example.com/index.html".into(),
        request_version: HttpVersion::Http11,
        request_headers: vec![
            ("host".into(), "example.com".into()),
            ("authorization".into(), "Bearer sekrit".into()),
        ],
        request_body: None,
        response: Some(ResponseSummary {
            status: 200,
            reason: "OK".into(),
            version: HttpVersion::Http11,
            headers: vec![
                ("content-type".into(), "text/plain".into()),
                ("set-cookie".into(), "sid=abc; Path=/".into()),
            ],
            body: Some(BodyCapture {
                bytes: b"hello\nworld\n".to_vec(),
                truncated: false,
            }),
        }),
        request_bytes: 0,
        response_bytes: 1234,
        timings: Timings {
            connect: Some(Duration::from_micros(1500)),
            tls: Some(Duration::from_micros(3250)),
            ttfb: Some(Duration::from_millis(20)),
            total: Duration::from_micros(25_125),
        },
        decision: "intercept",
        rule: None,
        error: None,
    }
}

fn tcp_flow() -> TcpFlow {
    TcpFlow {
        started: t0(),
        client: addr("10.0.0.7:51235"),
        mode: "transparent",
        destination: "db.internal:5432".into(),
        server_addr: Some(addr("198.18.2.2:5432")),
        sni: None,
        client_to_server: 517,
        server_to_client: 4300,
        duration: Duration::from_micros(1_520_250),
        reason: "not http".into(),
        error: None,
    }
}

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
    text::conn_event(&mut out, &ev(SystemTime::UNIX_EPOCH - Duration::from_millis(1)), 0);
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
        "10.0.0.7:51234: GET https://example.com/index.html\n              << 200 OK 1.2k\n"
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
        "10.0.0.7:51234: GET https://example.com/index.html HTTP/2.0\n   << HTTP/2.0 200 OK 1.2k\n"
    );

    // HTTP/1.0 request answered with HTTP/1.1.
    let mut h10 = flow();
    h10.request_version = HttpVersion::Http10;
    assert_eq!(
        text_http(&h10, 1),
        "10.0.0.7:51234: GET https://example.com/index.html HTTP/1.0\n      << HTTP/1.1 200 OK 1.2k\n"
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
        "10.0.0.7:51234: GET https://example.com/index.html\n              << 418 I'm a teapot 33b [deny rule block-all]\n"
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
        "10.0.0.7:51234: GET https://example.com/index.html\n              << error: upstream connect: connection refused\n"
    );

    // Response and then an error (body cut short).
    let mut both = flow();
    both.error = Some("upstream reset".into());
    assert!(text_http(&both, 1).ends_with("<< 200 OK 1.2k\n              << error: upstream reset\n"));

    // IPv6 client: wider padding.
    let mut v6 = flow();
    v6.client = addr("[2001:db8::7]:51234");
    assert_eq!(
        text_http(&v6, 1),
        "[2001:db8::7]:51234: GET https://example.com/index.html\n                   << 200 OK 1.2k\n"
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
    0000000010 10 11 12 13 41 42                                 ....AB
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
    assert_eq!(d4.lines().filter(|l| l.starts_with("    line ")).count(), 600);
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
        "10.0.0.7:51235: passthrough db.internal:5432 (not http) >> 517b << 4.2k\n              << error: connection reset by peer\n"
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
    assert_eq!(json_http(&f, 1, true)["url"], "https://example.com/?token=abc");
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
}

#[test]
fn json_detail_gates_headers_and_bodies() {
    let mut f = flow();
    f.request_body = Some(BodyCapture {
        bytes: vec![0xff, 0x00, 0x41],
        truncated: true,
    });
    let d1 = json_http(&f, 1, false);
    for key in ["request_headers", "response_headers", "request_body", "response_body"] {
        assert!(!d1.as_object().unwrap().contains_key(key), "{key} absent at 1");
    }
    let d2 = json_http(&f, 2, false);
    assert_eq!(
        d2["request_headers"],
        serde_json::json!([["host", "example.com"], ["authorization", "Bearer ..."]])
    );
    assert_eq!(
        d2["response_headers"],
        serde_json::json!([["content-type", "text/plain"], ["set-cookie", "sid=...; Path=/"]])
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
    f.request_headers = vec![(String::new(), String::new()), ("cookie".into(), ";;=;".into())];
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

// ---- the writer thread ----

/// A shared in-memory sink that counts flushes.
#[derive(Clone, Default)]
struct Sink {
    data: Arc<Mutex<Vec<u8>>>,
    flushes: Arc<Mutex<usize>>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.data.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        *self.flushes.lock().unwrap() += 1;
        Ok(())
    }
}

impl Sink {
    fn text(&self) -> String {
        String::from_utf8(self.data.lock().unwrap().clone()).unwrap()
    }
}

fn cfg(format: LogFormat, detail: u8) -> FlowLogConfig {
    FlowLogConfig {
        format,
        detail,
        show_secrets: false,
    }
}

#[test]
fn detail_levels_set_capture() {
    let cases = [
        (0, false, 0),
        (1, false, 0),
        (2, true, 0),
        (3, true, BODY_CAPTURE_DETAIL3),
        (4, true, BODY_CAPTURE_DETAIL4),
        (9, true, BODY_CAPTURE_DETAIL4),
    ];
    for (detail, headers, limit) in cases {
        let log = FlowLog::to_writer(cfg(LogFormat::Text, detail), Box::new(io::sink()));
        assert_eq!(log.wants_headers(), headers, "detail {detail}");
        assert_eq!(log.body_capture_limit(), limit, "detail {detail}");
    }
}

#[test]
fn detail0_writes_nothing() {
    for format in [LogFormat::Text, LogFormat::Json] {
        let sink = Sink::default();
        let log = FlowLog::to_writer(cfg(format, 0), Box::new(sink.clone()));
        log.conn_event(ConnEvent {
            at: t0(),
            client: addr("10.0.0.7:1"),
            kind: ConnEventKind::ClientConnect,
        });
        log.http(flow());
        log.tcp(tcp_flow());
        log.flush();
        drop(log);
        assert!(sink.text().is_empty());
    }
}

#[test]
fn text_and_json_through_the_writer() {
    let sink = Sink::default();
    let log = FlowLog::spawn(
        &cfg(LogFormat::Text, 1),
        Box::new(sink.clone()),
        Clock::Fixed(0),
        16,
    );
    log.conn_event(ConnEvent {
        at: t0(),
        client: addr("10.0.0.7:51234"),
        kind: ConnEventKind::ClientConnect,
    });
    log.http(flow());
    log.tcp(tcp_flow());
    log.flush();
    assert_eq!(
        sink.text(),
        "[14:32:48.123][10.0.0.7:51234] client connect\n\
         10.0.0.7:51234: GET https://example.com/index.html\n\
         \x20             << 200 OK 1.2k\n\
         10.0.0.7:51235: passthrough db.internal:5432 (not http) >> 517b << 4.2k\n"
    );

    let sink = Sink::default();
    let log = FlowLog::to_writer(cfg(LogFormat::Json, 1), Box::new(sink.clone()));
    log.conn_event(ConnEvent {
        at: t0(),
        client: addr("10.0.0.7:51234"),
        kind: ConnEventKind::ClientConnect,
    });
    log.http(flow());
    log.tcp(tcp_flow());
    log.flush();
    let text = sink.text();
    let types: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].to_string())
        .collect();
    assert_eq!(types, ["\"http\"", "\"tcp\""], "no connection events in JSON");
}

#[test]
fn ten_thousand_records_from_four_threads_in_order() {
    let sink = Sink::default();
    // A small queue so senders really block and wait.
    let log = FlowLog::spawn(
        &cfg(LogFormat::Json, 1),
        Box::new(sink.clone()),
        Clock::Fixed(0),
        8,
    );
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..2500 {
                    let mut f = tcp_flow();
                    f.destination = format!("t{t}:{i}");
                    log.tcp(f);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    log.flush();
    let text = sink.text();
    let mut next = [0u32; 4];
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let dest = v["destination"].as_str().unwrap();
        let (t, i) = dest[1..].split_once(':').unwrap();
        let (t, i): (usize, u32) = (t.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[t], "thread {t} out of order");
        next[t] += 1;
    }
    assert_eq!(next, [2500; 4]);
}

#[test]
fn flush_waits_for_everything_queued_before_it() {
    let sink = Sink::default();
    let log = FlowLog::to_writer(cfg(LogFormat::Text, 1), Box::new(sink.clone()));
    for round in 1..=20 {
        for _ in 0..50 {
            log.tcp(tcp_flow());
        }
        let flushes_before = *sink.flushes.lock().unwrap();
        log.flush();
        assert_eq!(sink.text().lines().count(), round * 50);
        assert!(*sink.flushes.lock().unwrap() > flushes_before, "underlying flush called");
    }
}

#[test]
fn records_appear_without_flush_when_queue_is_idle() {
    let sink = Sink::default();
    let log = FlowLog::to_writer(cfg(LogFormat::Text, 1), Box::new(sink.clone()));
    log.tcp(tcp_flow());
    // No flush(): the writer must flush on its own once the queue is empty.
    let deadline = Instant::now() + Duration::from_secs(10);
    while *sink.flushes.lock().unwrap() == 0 || sink.text().is_empty() {
        assert!(Instant::now() < deadline, "record never flushed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(sink.text().contains("passthrough"));
}

#[test]
fn dropping_the_last_handle_writes_everything() {
    let sink = Sink::default();
    let log = FlowLog::to_writer(cfg(LogFormat::Text, 1), Box::new(sink.clone()));
    let clone = log.clone();
    for _ in 0..1000 {
        clone.tcp(tcp_flow());
    }
    drop(clone);
    drop(log);
    assert_eq!(sink.text().lines().count(), 1000);
}

/// A writer that fails with EPIPE and counts how often it was asked.
#[derive(Clone, Default)]
struct Epipe(Arc<Mutex<usize>>);

impl Write for Epipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        *self.0.lock().unwrap() += 1;
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn broken_pipe_stops_writing_and_keeps_draining() {
    let sink = Epipe::default();
    let log = FlowLog::spawn(
        &cfg(LogFormat::Text, 4),
        Box::new(sink.clone()),
        Clock::Fixed(0),
        4,
    );
    for _ in 0..10_000 {
        log.http(flow());
    }
    log.flush();
    log.flush();
    drop(log);
    assert_eq!(*sink.0.lock().unwrap(), 1, "one failed write, then no more attempts");
}

#[test]
fn real_pipe_closed_by_reader() {
    let (mut reader, writer) = io::pipe().unwrap();
    let log = FlowLog::spawn(
        &cfg(LogFormat::Json, 1),
        Box::new(writer),
        Clock::Fixed(0),
        4,
    );
    log.tcp(tcp_flow());
    log.flush();
    let mut first = [0u8; 1];
    reader.read_exact(&mut first).unwrap();
    assert_eq!(first[0], b'{');
    drop(reader);
    // More than a pipe buffer's worth after the reader went away: EPIPE.
    for _ in 0..5000 {
        log.tcp(tcp_flow());
    }
    log.flush();
    drop(log);
}

#[test]
fn local_offset_agrees_with_date() {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for ts in [now, 1_795_271_568, 1_783_000_000] {
        let out = std::process::Command::new("date")
            .arg("-d")
            .arg(format!("@{ts}"))
            .arg("+%z")
            .output()
            .unwrap();
        let z = String::from_utf8(out.stdout).unwrap();
        let z = z.trim();
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let hh: i32 = z[1..3].parse().unwrap();
        let mm: i32 = z[3..5].parse().unwrap();
        assert_eq!(
            writer::local_offset_secs(ts),
            Some(sign * (hh * 3600 + mm * 60)),
            "offset at {ts} (date says {z})"
        );
    }
}

/// Compares [`pretty_size`] with mitmproxy's own `human.pretty_size` from
/// the test venv over the unit boundaries and a spread of values.
#[test]
fn pretty_size_matches_real_mitmproxy() {
    let venv = std::env::var_os("TPROXY_TEST_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv")
        });
    let python = venv.join("bin/python");
    if !python.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no test venv at {} (run scripts/install-test-deps.sh)",
            venv.display()
        );
        eprintln!("skipping: no test venv at {}", venv.display());
        return;
    }
    let mut sizes: Vec<u64> = (0..2100).collect();
    for k in 1..=4u32 {
        let unit = 1024u64.pow(k);
        for m in [1u64, 2, 9, 10, 99, 100, 101, 500, 1000, 1023, 1024, 1025] {
            for d in [0i64, -1, 1, -51, 51, -52, 52] {
                sizes.push((m * unit).saturating_add_signed(d * (unit as i64 / 1024)));
                sizes.push((m * unit).saturating_add_signed(d));
            }
        }
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sizes.push(x >> (x % 60));
    }
    let input: String = sizes.iter().map(|s| format!("{s}\n")).collect();
    let mut child = std::process::Command::new(&python)
        .arg("-c")
        .arg(
            "import sys\nfrom mitmproxy.utils.human import pretty_size\n\
             for l in sys.stdin: print(pretty_size(int(l)))",
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(out.status.success());
    let theirs = String::from_utf8(out.stdout).unwrap();
    let theirs: Vec<&str> = theirs.lines().collect();
    assert_eq!(theirs.len(), sizes.len());
    for (size, want) in sizes.iter().zip(theirs) {
        assert_eq!(pretty_size(*size), want, "pretty_size({size})");
    }
}
