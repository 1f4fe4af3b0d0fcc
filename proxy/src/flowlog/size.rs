//! Small formatting helpers shared by the text and JSON formats: sizes,
//! addresses, status reasons, control-character escaping.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// A byte count the way mitmproxy's `human.pretty_size` prints it (mitmproxy
/// 9+): below 1024 `354b`; above, one decimal below 99.95 of the unit
/// (`1.2k`, `99.9k`) and none from there on (`100k`, `1024k`), units `k m g t`.
/// The result is at most 5 characters below 100 TiB.
pub fn pretty_size(size: u64) -> String {
    let mut out = String::with_capacity(8);
    push_pretty_size(&mut out, size);
    out
}

/// [`pretty_size`] appending to `out`.
pub fn push_pretty_size(out: &mut String, size: u64) {
    if size < 1024 {
        let _ = write!(out, "{size}b");
        return;
    }
    // Same float arithmetic as the Python original so rounding agrees.
    let mut s = size as f64;
    for (i, suffix) in ['k', 'm', 'g', 't'].into_iter().enumerate() {
        s /= 1024.0;
        if s < 99.95 {
            let _ = write!(out, "{s:.1}{suffix}");
            return;
        }
        if s < 1024.0 || i == 3 {
            let _ = write!(out, "{s:.0}{suffix}");
            return;
        }
    }
}

/// An address the way mitmproxy's `human.format_address` prints it:
/// `1.2.3.4:80`, `[2001:db8::1]:443`, IPv4-mapped IPv6 as plain IPv4,
/// the unspecified address as `*:port`.
pub fn format_address(addr: &SocketAddr) -> String {
    let mut out = String::with_capacity(24);
    push_address(&mut out, addr);
    out
}

/// [`format_address`] appending to `out`.
pub fn push_address(out: &mut String, addr: &SocketAddr) {
    let port = addr.port();
    let _ = match normalize_ip(addr.ip()) {
        ip if ip.is_unspecified() => write!(out, "*:{port}"),
        IpAddr::V4(v4) => write!(out, "{v4}:{port}"),
        IpAddr::V6(v6) => write!(out, "[{v6}]:{port}"),
    };
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) as IPv4; anything else unchanged.
pub(crate) fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// mitmproxy's reason phrase for a status code (used for HTTP/2 responses,
/// which carry none on the wire). Empty for codes it does not know.
pub fn canonical_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content.",
        206 => "Partial Content",
        207 => "Multi-Status",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Time-out",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Requested Range not satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        422 => "Unprocessable Content",
        444 => "No Response",
        499 => "Client Closed Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Time-out",
        505 => "HTTP Version not supported",
        507 => "Insufficient Storage Space",
        510 => "Not Extended",
        _ => "",
    }
}

/// Whether `c` must not reach a log line verbatim: C0 controls, DEL, the C1
/// controls and the Unicode line/paragraph separators (anything a terminal or
/// a log shipper could treat as a line break or an escape sequence).
fn is_unsafe_char(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Appends `s` with every unsafe character replaced by `.` (mitmproxy's
/// `escape_control_characters` without kept spacing), so no input can forge
/// a log line or emit terminal escapes.
pub(crate) fn push_escaped(out: &mut String, s: &str) {
    if !s.chars().any(is_unsafe_char) {
        out.push_str(s);
        return;
    }
    out.extend(s.chars().map(|c| if is_unsafe_char(c) { '.' } else { c }));
}

/// Like [`push_escaped`] but keeps tabs (for body lines).
pub(crate) fn push_escaped_keep_tabs(out: &mut String, s: &str) {
    out.extend(s.chars().map(|c| {
        if c != '\t' && is_unsafe_char(c) {
            '.'
        } else {
            c
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by mitmproxy 11.0.2's `human.pretty_size`.
    #[test]
    fn pretty_size_matches_mitmproxy_table() {
        let table: &[(u64, &str)] = &[
            (0, "0b"),
            (1, "1b"),
            (354, "354b"),
            (1023, "1023b"),
            (1024, "1.0k"),
            (1025, "1.0k"),
            (1234, "1.2k"),
            (1536, "1.5k"),
            (10239, "10.0k"),
            (102348, "99.9k"),
            (102349, "100k"),
            (1048575, "1024k"),
            (1048576, "1.0m"),
            (100 * 1024 * 1024, "100m"),
            (1024 * 1024 * 1024 - 1, "1024m"),
            (1024 * 1024 * 1024, "1.0g"),
            (5 * 1024u64.pow(4), "5.0t"),
            (1 << 63, "8388608t"),
        ];
        for &(n, want) in table {
            assert_eq!(pretty_size(n), want, "pretty_size({n})");
        }
        assert_eq!(pretty_size(u64::MAX), "16777216t");
    }

    #[test]
    fn format_address_like_mitmproxy() {
        let cases = [
            ("10.0.0.7:51234", "10.0.0.7:51234"),
            ("[2001:db8::1]:443", "[2001:db8::1]:443"),
            ("[::ffff:198.18.0.1]:80", "198.18.0.1:80"),
            ("0.0.0.0:8080", "*:8080"),
            ("[::]:8080", "*:8080"),
        ];
        for (input, want) in cases {
            let addr: SocketAddr = input.parse().unwrap();
            assert_eq!(format_address(&addr), want);
        }
    }

    #[test]
    fn escaping_replaces_line_breaks_and_escapes() {
        let mut out = String::new();
        push_escaped(&mut out, "a\r\nb\x1b[31m\u{85}\u{2028}\tc");
        assert_eq!(out, "a..b.[31m...c");
        let mut out = String::new();
        push_escaped_keep_tabs(&mut out, "a\tb\x07");
        assert_eq!(out, "a\tb.");
    }
}
