//! Tests of the formats (golden strings) and of the writer thread.

mod backpressure;
mod format;
mod mitmproxy;
mod writer;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::*;

/// 2026-11-21T14:32:48.123Z
pub(super) fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_271_568_123)
}

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) fn opts(detail: u8) -> Opts {
    Opts {
        detail,
        show_secrets: false,
    }
}

pub(super) fn flow() -> HttpFlow {
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
        tag: None,
        trace: None,
        error: None,
        error_cause: None,
        upstream_retries: 0,
    }
}

pub(super) fn tcp_flow() -> TcpFlow {
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

pub(super) fn cfg(format: LogFormat, detail: u8) -> FlowLogConfig {
    FlowLogConfig {
        format,
        detail,
        show_secrets: false,
    }
}
