//! Protocol detection from the first bytes a client sends, and the TLS
//! ClientHello parser (SNI, ALPN).
//!
//! [`sniff`] is called on a growing buffer: it answers `NeedMore` while the
//! bytes so far are a prefix of something it would recognise, so the caller
//! reads more (up to its limit, where `NeedMore` is treated as `Other`).
//! Everything unrecognised or malformed is `Other`: such connections are
//! passed through untouched, never rejected here.

mod clienthello;

pub use clienthello::MAX_HELLO_BYTES;

/// What the first bytes look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniff {
    /// Not enough bytes to tell (read more, up to a limit).
    NeedMore,
    /// A complete TLS ClientHello.
    Tls(ClientHello),
    /// Starts like an HTTP/1 request line (`GET /`, `CONNECT h:p` ...).
    Http1,
    /// The HTTP/2 prior-knowledge preface `PRI * HTTP/2.0`.
    H2Preface,
    /// Anything else (including malformed TLS): pass through untouched.
    Other,
}

/// The parts of a ClientHello tproxy decides on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// server_name (host_name), lower-cased, if present and valid.
    pub sni: Option<String>,
    /// ALPN protocol names in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Methods recognised as soon as the space after them arrives.
const KNOWN_METHODS: &[&[u8]] = &[
    b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];

/// Longest method token accepted by the generic rule.
const MAX_METHOD_LEN: usize = 16;
/// Longest authority-form target the generic rule scans for (`host:port`).
const MAX_AUTHORITY_LEN: usize = 262;

/// Classify `buf` (the first bytes of a connection). Never panics.
///
/// * TLS: a handshake record (`0x16`, version major 3) carrying a ClientHello,
///   possibly spread over several records → `Tls` once complete; malformed or
///   larger than [`MAX_HELLO_BYTES`] → `Other`.
/// * `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` → `H2Preface` (`NeedMore` on a prefix).
/// * A known method and a space → `Http1`; any other token of `A-Z`, `-`, `_`
///   up to 16 bytes, a space and then `/`, `*`, `http://`, `https://` or an
///   authority `host:port` → `Http1`.
/// * Otherwise `Other`.
pub fn sniff(buf: &[u8]) -> Sniff {
    match buf.first() {
        None => Sniff::NeedMore,
        Some(0x16) => clienthello::sniff_tls(buf),
        Some(_) => sniff_plaintext(buf),
    }
}

fn sniff_plaintext(buf: &[u8]) -> Sniff {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniff::H2Preface
        } else {
            Sniff::NeedMore
        };
    }
    sniff_http1(buf)
}

/// Methods are case-sensitive and every registered one is upper case.
fn is_method_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

fn sniff_http1(buf: &[u8]) -> Sniff {
    let token_len = buf
        .iter()
        .take(MAX_METHOD_LEN + 1)
        .take_while(|&&b| is_method_byte(b))
        .count();
    if token_len == 0 || token_len > MAX_METHOD_LEN {
        return Sniff::Other;
    }
    let Some(&after) = buf.get(token_len) else {
        return Sniff::NeedMore;
    };
    if after != b' ' {
        return Sniff::Other;
    }
    if KNOWN_METHODS.contains(&&buf[..token_len]) {
        return Sniff::Http1;
    }
    sniff_target(&buf[token_len + 1..])
}

/// The start of a request target after an unknown method.
fn sniff_target(t: &[u8]) -> Sniff {
    match t.first() {
        None => return Sniff::NeedMore,
        Some(b'/' | b'*') => return Sniff::Http1,
        Some(_) => {}
    }
    for scheme in [&b"http://"[..], b"https://"] {
        let n = t.len().min(scheme.len());
        if t[..n].eq_ignore_ascii_case(&scheme[..n]) {
            return if n == scheme.len() {
                Sniff::Http1
            } else {
                Sniff::NeedMore
            };
        }
    }
    sniff_authority(t)
}

/// `host:port` followed by a space (authority-form, as CONNECT sends it).
fn sniff_authority(t: &[u8]) -> Sniff {
    let host_len = t
        .iter()
        .take(MAX_AUTHORITY_LEN + 1)
        .take_while(|&&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
        })
        .count();
    if host_len > MAX_AUTHORITY_LEN {
        return Sniff::Other;
    }
    match t.get(host_len) {
        None => Sniff::NeedMore,
        Some(b' ') => {
            let authority = &t[..host_len];
            let port_ok = authority
                .iter()
                .rposition(|&b| b == b':')
                .map(|colon| &authority[colon + 1..])
                .is_some_and(|port| !port.is_empty() && port.iter().all(u8::is_ascii_digit));
            if port_ok && authority.first() != Some(&b':') {
                Sniff::Http1
            } else {
                Sniff::Other
            }
        }
        Some(_) => Sniff::Other,
    }
}

#[cfg(test)]
mod tests;
