//! JSON lines: one object per HTTP flow and per TCP flow, serialised from
//! borrowed structs (no copies of the record's strings).

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde::Serialize;

use super::queue::{DropReason, Gap};
use super::redact::{redact_header, redact_url};
use super::size::{canonical_reason, format_address};
use super::text::unix_millis;
use super::{BodyCapture, HttpFlow, Opts, TcpFlow};

/// `2026-11-21T14:32:48.123Z` (RFC 3339, UTC, milliseconds).
pub(crate) fn rfc3339_millis(at: SystemTime) -> String {
    let ms = unix_millis(at);
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            millis
        ),
        // Outside years -9999..=9999: no real clock produces that.
        Err(_) => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

/// Milliseconds with microsecond precision.
fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

#[derive(Serialize)]
struct Timings {
    connect: Option<f64>,
    tls: Option<f64>,
    ttfb: Option<f64>,
    total: f64,
}

#[derive(Serialize)]
struct Body {
    /// `utf-8` or `base64`.
    encoding: &'static str,
    data: String,
    truncated: bool,
}

impl Body {
    fn new(b: &BodyCapture) -> Self {
        let text = match std::str::from_utf8(&b.bytes) {
            Ok(text) => Some(text),
            // A capture cut in the middle of a character is still text.
            Err(e) if b.truncated && e.error_len().is_none() => {
                std::str::from_utf8(&b.bytes[..e.valid_up_to()]).ok()
            }
            Err(_) => None,
        };
        match text {
            Some(text) => Self {
                encoding: "utf-8",
                data: text.to_string(),
                truncated: b.truncated,
            },
            None => Self {
                encoding: "base64",
                data: base64::engine::general_purpose::STANDARD.encode(&b.bytes),
                truncated: b.truncated,
            },
        }
    }
}

type Headers<'a> = Vec<(&'a str, Cow<'a, str>)>;

fn headers<'a>(h: &'a [(String, String)], opts: &Opts) -> Headers<'a> {
    h.iter()
        .map(|(n, v)| {
            let v = if opts.show_secrets {
                Cow::Borrowed(v.as_str())
            } else {
                redact_header(n, v)
            };
            (n.as_str(), v)
        })
        .collect()
}

#[derive(Serialize)]
struct HttpRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    ts: String,
    client: String,
    mode: &'a str,
    destination: &'a str,
    server_addr: Option<String>,
    sni: Option<&'a str>,
    method: &'a str,
    url: Cow<'a, str>,
    request_http_version: &'static str,
    response_http_version: Option<&'static str>,
    status: Option<u16>,
    reason: Option<&'a str>,
    request_bytes: u64,
    response_bytes: u64,
    timings_ms: Timings,
    decision: &'a str,
    rule: Option<&'a str>,
    tag: Option<&'a str>,
    error: Option<&'a str>,
    /// Cause label of an upstream failure (absent when there is none).
    #[serde(skip_serializing_if = "Option::is_none")]
    error_cause: Option<&'static str>,
    /// Transparent retries on a new upstream connection (absent when 0).
    #[serde(skip_serializing_if = "is_zero")]
    upstream_retries: u8,
    /// Trace id of the request's spans (only when tracing is on), to find
    /// the flow in Jaeger.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    // Detail-gated: absent below the level, present (maybe null) at it.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_headers: Option<Headers<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_headers: Option<Option<Headers<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_body: Option<Option<Body>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_body: Option<Option<Body>>,
}

#[derive(Serialize)]
struct TcpRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    ts: String,
    client: String,
    mode: &'a str,
    destination: &'a str,
    server_addr: Option<String>,
    sni: Option<&'a str>,
    bytes_client_to_server: u64,
    bytes_server_to_client: u64,
    duration_ms: f64,
    reason: &'a str,
    error: Option<&'a str>,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// Appends one HTTP flow as a JSON line.
pub(crate) fn http(out: &mut Vec<u8>, f: &HttpFlow, opts: &Opts) -> serde_json::Result<()> {
    let resp = f.response.as_ref();
    let rec = HttpRecord {
        kind: "http",
        ts: rfc3339_millis(f.started),
        client: format_address(&f.client),
        mode: f.mode,
        destination: &f.destination,
        server_addr: f.server_addr.as_ref().map(format_address),
        sni: f.sni.as_deref(),
        method: &f.method,
        url: if opts.show_secrets {
            Cow::Borrowed(&f.url)
        } else {
            redact_url(&f.url)
        },
        request_http_version: f.request_version.as_str(),
        response_http_version: resp.map(|r| r.version.as_str()),
        status: resp.map(|r| r.status),
        reason: resp.and_then(|r| {
            let reason = if r.reason.is_empty() {
                canonical_reason(r.status)
            } else {
                r.reason.as_str()
            };
            (!reason.is_empty()).then_some(reason)
        }),
        request_bytes: f.request_bytes,
        response_bytes: f.response_bytes,
        timings_ms: Timings {
            connect: f.timings.connect.map(ms),
            tls: f.timings.tls.map(ms),
            ttfb: f.timings.ttfb.map(ms),
            total: ms(f.timings.total),
        },
        decision: f.decision,
        rule: f.rule.as_deref(),
        tag: f.tag.as_deref(),
        error: f.error.as_deref(),
        error_cause: f.error_cause,
        upstream_retries: f.upstream_retries,
        trace_id: f.trace.as_ref().map(|t| t.trace_id_hex()),
        request_headers: (opts.detail >= 2).then(|| headers(&f.request_headers, opts)),
        response_headers: (opts.detail >= 2).then(|| resp.map(|r| headers(&r.headers, opts))),
        request_body: (opts.detail >= 3).then(|| f.request_body.as_ref().map(Body::new)),
        response_body: (opts.detail >= 3)
            .then(|| resp.and_then(|r| r.body.as_ref()).map(Body::new)),
    };
    serde_json::to_writer(&mut *out, &rec)?;
    out.push(b'\n');
    Ok(())
}

/// Appends one passthrough connection as a JSON line.
pub(crate) fn tcp(out: &mut Vec<u8>, f: &TcpFlow) -> serde_json::Result<()> {
    let rec = TcpRecord {
        kind: "tcp",
        ts: rfc3339_millis(f.started),
        client: format_address(&f.client),
        mode: f.mode,
        destination: &f.destination,
        server_addr: f.server_addr.as_ref().map(format_address),
        sni: f.sni.as_deref(),
        bytes_client_to_server: f.client_to_server,
        bytes_server_to_client: f.server_to_client,
        duration_ms: ms(f.duration),
        reason: &f.reason,
        error: f.error.as_deref(),
    };
    serde_json::to_writer(&mut *out, &rec)?;
    out.push(b'\n');
    Ok(())
}

#[derive(Serialize)]
struct GapRecord {
    #[serde(rename = "type")]
    kind: &'static str,
    ts: String,
    lost: u64,
    reason: &'static str,
    first_lost: String,
    last_lost: String,
}

/// The line written where records are missing: how many and when.
pub(crate) fn gap(out: &mut Vec<u8>, g: &Gap, now: SystemTime) -> serde_json::Result<()> {
    let rec = GapRecord {
        kind: "flowlog_gap",
        ts: rfc3339_millis(now),
        lost: g.lost,
        reason: DropReason::QueueFull.as_str(),
        first_lost: rfc3339_millis(g.first),
        last_lost: rfc3339_millis(g.last),
    };
    serde_json::to_writer(&mut *out, &rec)?;
    out.push(b'\n');
    Ok(())
}
