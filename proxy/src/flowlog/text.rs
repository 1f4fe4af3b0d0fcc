//! mitmdump's human-readable format. Pure functions from a record to lines;
//! the writer thread owns the buffer and the clock offset.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::SystemTime;

use super::queue::Gap;
use super::redact::{redact_header, redact_url};
use super::size::{
    canonical_reason, normalize_ip, push_address, push_escaped, push_escaped_keep_tabs,
    push_pretty_size,
};
use super::{BodyCapture, ConnEvent, ConnEventKind, HttpFlow, HttpVersion, Opts, TcpFlow};

/// Body lines shown at `--flow-detail 3` (mitmproxy's
/// `content_view_lines_cutoff` default); detail 4 shows all.
pub const BODY_LINES_CUTOFF: usize = 512;

/// Bytes per hex dump line for binary bodies.
const HEX_WIDTH: usize = 16;

/// Milliseconds since the Unix epoch (negative before it), saturating.
pub(crate) fn unix_millis(at: SystemTime) -> i64 {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// `[HH:MM:SS.mmm]` of `at` shifted by `offset_secs` (local time).
fn push_clock(out: &mut String, at: SystemTime, offset_secs: i32) {
    let local = unix_millis(at).saturating_add(i64::from(offset_secs) * 1000);
    let day_ms = local.rem_euclid(86_400_000);
    let _ = write!(
        out,
        "[{:02}:{:02}:{:02}.{:03}]",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    );
}

/// The line written where records are missing:
/// `[12:00:09.456] flow log: 1234 records lost from 12:00:01.123 to 12:00:09.400 (output not read fast enough)`.
pub(crate) fn gap(out: &mut String, g: &Gap, now: SystemTime, offset_secs: i32) {
    push_clock(out, now, offset_secs);
    let _ = write!(out, " flow log: {} record", g.lost);
    if g.lost != 1 {
        out.push('s');
    }
    out.push_str(" lost from ");
    push_clock_bare(out, g.first, offset_secs);
    out.push_str(" to ");
    push_clock_bare(out, g.last, offset_secs);
    out.push_str(" (output not read fast enough; see tproxy_flowlog_records_dropped_total)\n");
}

/// `HH:MM:SS.mmm` without brackets.
fn push_clock_bare(out: &mut String, at: SystemTime, offset_secs: i32) {
    let start = out.len();
    push_clock(out, at, offset_secs);
    out.pop();
    out.remove(start);
}

/// One connection event: `[12:00:00.000][10.0.0.7:5000] client connect`.
pub(crate) fn conn_event(out: &mut String, ev: &ConnEvent, offset_secs: i32) {
    push_clock(out, ev.at, offset_secs);
    out.push('[');
    push_address(out, &ev.client);
    out.push_str("] ");
    match &ev.kind {
        ConnEventKind::ClientConnect => out.push_str("client connect"),
        ConnEventKind::ClientDisconnect => out.push_str("client disconnect"),
        ConnEventKind::ServerConnect { authority, addr } => {
            out.push_str("server connect ");
            push_server(out, authority, addr);
        }
        ConnEventKind::ServerDisconnect { authority, addr } => {
            out.push_str("server disconnect ");
            push_server(out, authority, addr);
        }
        ConnEventKind::Error { message } => {
            out.push_str("error: ");
            push_escaped(out, message);
        }
    }
    out.push('\n');
}

/// `example.com:443 (93.184.216.34:443)`; like mitmproxy, the address in
/// parentheses is left out when the authority already is that address.
fn push_server(out: &mut String, authority: &str, addr: &SocketAddr) {
    push_escaped(out, authority);
    let same = authority
        .parse::<SocketAddr>()
        .is_ok_and(|a| normalize_ip(a.ip()) == normalize_ip(addr.ip()));
    if !same {
        out.push_str(" (");
        push_address(out, addr);
        out.push(')');
    }
}

/// The `<<` that starts a response line. At detail 1 it is padded so the
/// status code sits under the request method (mitmproxy's alignment); from
/// detail 2 on, headers follow and mitmproxy uses a single space.
fn push_arrows(out: &mut String, client_len: usize, version_len: usize, detail: u8) {
    if detail == 1 {
        let pad = client_len.saturating_sub(2 + version_len);
        out.extend(std::iter::repeat_n(' ', pad));
    }
    out.push_str(" << ");
}

/// `[deny rule block-all]`, `[rule allow-s3 tag s3]`, `[deny]` or nothing.
fn push_decision_tag(out: &mut String, decision: &str, rule: Option<&str>, tag: Option<&str>) {
    let show_decision = !matches!(decision, "intercept" | "allow" | "");
    if !show_decision && rule.is_none() && tag.is_none() {
        return;
    }
    out.push_str(" [");
    if show_decision {
        push_escaped(out, decision);
        if rule.is_some() {
            out.push(' ');
        }
    }
    if let Some(rule) = rule {
        out.push_str("rule ");
        push_escaped(out, rule);
    }
    if let Some(tag) = tag {
        out.push_str(if show_decision || rule.is_some() {
            " tag "
        } else {
            "tag "
        });
        push_escaped(out, tag);
    }
    out.push(']');
}

fn push_headers(out: &mut String, headers: &[(String, String)], opts: &Opts) {
    for (name, value) in headers {
        out.push_str("    ");
        push_escaped(out, name);
        out.push_str(": ");
        let value = if opts.show_secrets {
            Cow::Borrowed(value.as_str())
        } else {
            redact_header(name, value)
        };
        push_escaped(out, &value);
        out.push('\n');
    }
}

/// The body block of detail >= 3, mitmproxy's layout: a blank line, the
/// body lines indented by 4, `(cut off)` past the line limit, a blank line.
fn push_body(out: &mut String, body: Option<&BodyCapture>, detail: u8) {
    let (bytes, truncated) = body.map_or((&[][..], false), |b| (&b.bytes[..], b.truncated));
    if !bytes.is_empty() {
        out.push('\n');
        let limit = if detail >= 4 {
            usize::MAX
        } else {
            BODY_LINES_CUTOFF
        };
        let cut = match body_text(bytes, truncated) {
            Some(text) => push_lines(out, text.split('\n'), text.ends_with('\n'), limit),
            None => push_hex(out, bytes, limit),
        };
        if cut {
            out.push_str("    (cut off)\n");
        }
        if truncated {
            out.push_str("    (body capture truncated at ");
            push_pretty_size(out, bytes.len() as u64);
            out.push_str(")\n");
        }
    }
    out.push('\n');
}

/// The body as text when it is UTF-8 without NUL bytes (a capture cut in
/// the middle of a character counts as text).
fn body_text(bytes: &[u8], truncated: bool) -> Option<&str> {
    if bytes.contains(&0) {
        return None;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(e) if truncated && e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    }
}

/// Writes at most `limit` lines; returns whether lines were left out.
fn push_lines<'a>(
    out: &mut String,
    lines: impl Iterator<Item = &'a str>,
    trailing_newline: bool,
    limit: usize,
) -> bool {
    let mut lines = lines.peekable();
    let mut n = 0;
    while let Some(line) = lines.next() {
        if trailing_newline && lines.peek().is_none() {
            break; // the empty piece after the final '\n'
        }
        if n == limit {
            return true;
        }
        out.push_str("    ");
        push_escaped_keep_tabs(out, line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
        n += 1;
    }
    false
}

/// `0000000010 68 65 6c 6c 6f 00 ... hello.` lines; returns whether lines
/// were left out.
fn push_hex(out: &mut String, bytes: &[u8], limit: usize) -> bool {
    for (n, chunk) in bytes.chunks(HEX_WIDTH).enumerate() {
        if n == limit {
            return true;
        }
        let _ = write!(out, "    {:010x} ", n * HEX_WIDTH);
        for i in 0..HEX_WIDTH {
            match chunk.get(i) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
        }
        out.push(' ');
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    false
}

/// One HTTP flow: request line, response or error line, plus headers and
/// bodies at higher detail.
pub(crate) fn http(out: &mut String, f: &HttpFlow, opts: &Opts) {
    let detail = opts.detail;
    let client_start = out.len();
    push_address(out, &f.client);
    let client_len = out.len() - client_start;

    // Request line.
    out.push_str(": ");
    push_escaped(out, &f.method);
    out.push(' ');
    let url = if opts.show_secrets {
        Cow::Borrowed(f.url.as_str())
    } else {
        redact_url(&f.url)
    };
    push_escaped(out, &url);
    // mitmproxy hides the version for h1 <-> h1 with equal versions.
    let resp_version = f
        .response
        .as_ref()
        .map_or(HttpVersion::Http11, |r| r.version);
    if !f.request_version.is_http1() || f.request_version != resp_version {
        out.push(' ');
        out.push_str(f.request_version.as_str());
    }
    out.push('\n');
    if detail >= 2 {
        push_headers(out, &f.request_headers, opts);
    }
    if detail >= 3 {
        push_body(out, f.request_body.as_ref(), detail);
    }

    // Response line.
    let mut tagged = false;
    if let Some(resp) = &f.response {
        let show_version = !resp.version.is_http1() || f.request_version != resp.version;
        let version_len = if show_version {
            resp.version.as_str().len() + 1
        } else {
            0
        };
        push_arrows(out, client_len, version_len, detail);
        if show_version {
            out.push_str(resp.version.as_str());
            out.push(' ');
        }
        let _ = write!(out, "{}", resp.status);
        let reason = if resp.reason.is_empty() {
            canonical_reason(resp.status)
        } else {
            resp.reason.as_str()
        };
        if !reason.is_empty() {
            out.push(' ');
            push_escaped(out, reason);
        }
        out.push(' ');
        push_pretty_size(out, f.response_bytes);
        push_decision_tag(out, f.decision, f.rule.as_deref(), f.tag.as_deref());
        tagged = true;
        out.push('\n');
        if detail >= 2 {
            push_headers(out, &resp.headers, opts);
        }
        if detail >= 3 {
            push_body(out, resp.body.as_ref(), detail);
        }
    }

    // Error line (also when there is neither a response nor an error).
    if f.error.is_some() || f.response.is_none() {
        push_arrows(out, client_len, 0, detail);
        out.push_str("error: ");
        push_escaped(out, f.error.as_deref().unwrap_or("no response"));
        if !tagged {
            push_decision_tag(out, f.decision, f.rule.as_deref(), f.tag.as_deref());
        }
        out.push('\n');
    }
}

/// One passthrough connection:
/// `10.0.0.7:5000: passthrough example.com:443 (ignore-hosts) >> 517b << 4.2k`.
pub(crate) fn tcp(out: &mut String, f: &TcpFlow, opts: &Opts) {
    let client_start = out.len();
    push_address(out, &f.client);
    let client_len = out.len() - client_start;
    out.push_str(": passthrough ");
    push_escaped(out, &f.destination);
    out.push_str(" (");
    push_escaped(out, &f.reason);
    out.push_str(") >> ");
    push_pretty_size(out, f.client_to_server);
    out.push_str(" << ");
    push_pretty_size(out, f.server_to_client);
    out.push('\n');
    if let Some(error) = &f.error {
        push_arrows(out, client_len, 0, opts.detail);
        out.push_str("error: ");
        push_escaped(out, error);
        out.push('\n');
    }
}
