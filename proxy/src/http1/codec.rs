//! HTTP/1 codec: head parsing (httparse plus the checks a proxy needs on top),
//! body framing per RFC 9112 §6, hop-by-hop header handling and serialisation.
//!
//! The parsers are deliberately strict: tproxy sits between two HTTP
//! implementations and any message the two could frame differently is a
//! request-smuggling vector, so ambiguity is rejected instead of guessed.
//!
//! Choices beyond plain RFC parsing (all covered by tests in `codec/tests.rs`):
//! * Heads must use CRLF line endings; a bare LF anywhere in the head is
//!   rejected (httparse alone would accept it).
//! * Obsolete line folding and whitespace before the colon are rejected in
//!   requests and responses alike.
//! * Request targets must be ASCII; `*` only with `OPTIONS`; `CONNECT` only with
//!   authority-form; other methods only with origin-form (`/…`) or
//!   absolute-form (`scheme://…`).
//! * More than one `Host` field in a request is rejected (RFC 9112 §3.2). A
//!   missing `Host` is left to the caller.
//! * A response carrying both `Transfer-Encoding` and `Content-Length` is
//!   rejected (RFC 9112 lets TE win, but the upstream that sent it is
//!   confused, and a proxy forwarding both would hand the confusion on).

use super::chunked;

pub use super::framing::{request_body_kind, response_body_kind};
pub use chunked::{ChunkedDecoder, Progress};

/// Parser limits (`--max-header-bytes`, `--max-headers`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted head (start line + fields + final CRLF), in bytes.
    pub max_head_bytes: usize,
    /// Largest accepted number of header fields.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 64 * 1024,
            max_headers: 128,
        }
    }
}

/// Header list preserving order and original name case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, Vec<u8>)>,
}

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Self::default()
    }
    /// First value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
    /// All values of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
    /// Remove every `name`; returns how many were removed.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.entries.len();
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        before - self.entries.len()
    }
    /// Replace all values of `name` with one.
    pub fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.remove(name);
        self.append(name, value);
    }
    /// Add a field at the end, keeping existing ones of the same name.
    pub fn append(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.entries.push((name.to_owned(), value.into()));
    }
    /// Whether a comma-separated header (e.g. `Connection`) lists `token`
    /// (case-insensitive). Elements are split on `,` across every field line
    /// of `name` and trimmed of optional whitespace; an element matches only
    /// as a whole (`keep-alive` does not match `alive`).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name)
            .flat_map(list_elements)
            .any(|e| e.eq_ignore_ascii_case(token.as_bytes()))
    }
    /// The options the `Connection` fields name (hop-by-hop, RFC 9110 §7.6.1).
    pub fn connection_options(&self) -> impl Iterator<Item = &[u8]> {
        self.get_all("connection").flat_map(list_elements)
    }
    /// All fields in order, names in their original case.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }
    /// Number of field lines.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Non-empty elements of a comma-separated field value, OWS-trimmed.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

pub(super) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method token as sent (case-sensitive).
    pub method: String,
    /// Request target as sent: origin-form `/p?q`, absolute-form
    /// `http://h/p`, authority-form `h:443` (CONNECT) or `*`.
    pub target: String,
    /// 0 = HTTP/1.0, 1 = HTTP/1.1.
    pub minor_version: u8,
    /// Header fields in order.
    pub headers: Headers,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// 0 = HTTP/1.0, 1 = HTTP/1.1.
    pub minor_version: u8,
    /// Three-digit status code.
    pub status: u16,
    /// Reason phrase as sent (may be empty).
    pub reason: String,
    /// Header fields in order.
    pub headers: Headers,
}

/// Malformed or over-limit input. Always answered with 400 (requests) or
/// 502 (responses) and the connection closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The head exceeds `Limits::max_head_bytes`.
    #[error("header section larger than {0} bytes")]
    TooLarge(usize),
    /// The head has more than `Limits::max_headers` fields.
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    /// Syntax error; the text says what was wrong.
    #[error("malformed HTTP/1 message: {0}")]
    Malformed(String),
}

/// Ambiguous or invalid body framing (request smuggling shapes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Content-Length and Transfer-Encoding together.
    #[error("both Content-Length and Transfer-Encoding present")]
    LengthAndChunked,
    /// Several Content-Length values that differ.
    #[error("conflicting Content-Length values")]
    ConflictingLength,
    /// A Content-Length value that is not a plain decimal number.
    #[error("invalid Content-Length")]
    InvalidLength,
    /// A Transfer-Encoding that does not end in exactly one `chunked`.
    #[error("unsupported Transfer-Encoding (chunked must be last)")]
    BadTransferEncoding,
    /// Malformed chunked body.
    #[error("invalid chunk: {0}")]
    BadChunk(String),
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    Empty,
    /// Exactly this many bytes (may be 0 when `Content-Length: 0` was sent).
    Length(u64),
    /// Chunked transfer coding; scan it with [`ChunkedDecoder`].
    Chunked,
    /// Response read until the server closes (HTTP/1.0 style).
    UntilClose,
}

/// Stack room for header slots; larger limits fall back to the heap.
const STACK_HEADERS: usize = 128;

fn malformed(what: &str) -> ParseError {
    ParseError::Malformed(what.to_owned())
}

/// Map an httparse error, whose `TooManyHeaders` means our slot array filled.
fn map_httparse(e: httparse::Error, limits: &Limits) -> ParseError {
    match e {
        httparse::Error::TooManyHeaders => ParseError::TooManyHeaders(limits.max_headers),
        other => ParseError::Malformed(other.to_string()),
    }
}

/// Run `f` over a header slot array of `limits.max_headers` entries and the
/// head-limited prefix of `buf`; turns partial/oversized results into the
/// contract's `Ok(None)` / `TooLarge`.
fn with_slots<'b, T>(
    buf: &'b [u8],
    limits: &Limits,
    f: impl FnOnce(&'b [u8], &mut [httparse::Header<'b>]) -> Result<Option<(T, usize)>, ParseError>,
) -> Result<Option<(T, usize)>, ParseError> {
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let result = if limits.max_headers <= STACK_HEADERS {
        let mut slots = [httparse::EMPTY_HEADER; STACK_HEADERS];
        f(window, &mut slots[..limits.max_headers])
    } else {
        let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
        f(window, &mut slots)
    }?;
    match result {
        // The window holds max_head_bytes and still no end of head: the head
        // can only be larger than allowed.
        None if buf.len() >= limits.max_head_bytes => {
            Err(ParseError::TooLarge(limits.max_head_bytes))
        }
        other => Ok(other),
    }
}

/// Reject bare LF line endings: httparse accepts them, peers may not.
fn check_crlf(head: &[u8]) -> Result<(), ParseError> {
    let mut prev = 0u8;
    for &b in head {
        if b == b'\n' && prev != b'\r' {
            return Err(malformed("bare LF line ending"));
        }
        prev = b;
    }
    Ok(())
}

fn collect_headers(raw: &[httparse::Header<'_>]) -> Headers {
    Headers {
        entries: raw
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect(),
    }
}

/// Parse a request head from the start of `buf`. `Ok(None)` = incomplete.
/// Returns the head and its length in bytes.
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(RequestHead, usize)>, ParseError> {
    with_slots(buf, limits, |window, slots| {
        let mut req = httparse::Request::new(slots);
        let len = match req.parse(window) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(map_httparse(e, limits)),
        };
        check_crlf(&window[..len])?;
        let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
        else {
            return Err(malformed("incomplete request line"));
        };
        check_target(method, target)?;
        let headers = collect_headers(req.headers);
        if headers.get_all("host").count() > 1 {
            return Err(malformed("more than one Host field"));
        }
        let head = RequestHead {
            method: method.to_owned(),
            target: target.to_owned(),
            minor_version,
            headers,
        };
        Ok(Some((head, len)))
    })
}

/// Target form must match the method (RFC 9112 §3.2).
fn check_target(method: &str, target: &str) -> Result<(), ParseError> {
    if !target.is_ascii() {
        return Err(malformed("non-ASCII request target"));
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(())
        } else {
            Err(malformed("asterisk-form target is only valid for OPTIONS"))
        };
    }
    if method == "CONNECT" {
        return if is_authority_form(target) {
            Ok(())
        } else {
            Err(malformed(
                "CONNECT needs an authority-form target host:port",
            ))
        };
    }
    if target.starts_with('/') || is_absolute_form(target) {
        Ok(())
    } else {
        Err(malformed(
            "request target is neither origin-form nor absolute-form",
        ))
    }
}

/// `scheme "://" …` with a syntactically valid scheme.
fn is_absolute_form(target: &str) -> bool {
    let Some((scheme, rest)) = target.split_once("://") else {
        return false;
    };
    let mut chars = scheme.bytes();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        && !rest.is_empty()
}

/// `host:port`, host a reg-name or `[v6]`, port all digits.
fn is_authority_form(target: &str) -> bool {
    let Some((host, port)) = target.rsplit_once(':') else {
        return false;
    };
    let port_ok = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|v6| {
            !v6.is_empty()
                && v6
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        })
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'%'))
    };
    port_ok && host_ok
}

/// Parse a response head from the start of `buf`. `Ok(None)` = incomplete.
pub fn parse_response(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(ResponseHead, usize)>, ParseError> {
    with_slots(buf, limits, |window, slots| {
        let mut res = httparse::Response::new(slots);
        let len = match res.parse(window) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(map_httparse(e, limits)),
        };
        check_crlf(&window[..len])?;
        let (Some(minor_version), Some(status)) = (res.version, res.code) else {
            return Err(malformed("incomplete status line"));
        };
        if !(100..=999).contains(&status) {
            return Err(malformed("status code out of range"));
        }
        let head = ResponseHead {
            minor_version,
            status,
            reason: res.reason.unwrap_or("").to_owned(),
            headers: collect_headers(res.headers),
        };
        Ok(Some((head, len)))
    })
}

/// Fields that are hop-by-hop whether or not `Connection` names them.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Remove hop-by-hop fields (RFC 9110 §7.6.1): those named in `Connection`
/// (tokens of every `Connection` line), plus Connection, Keep-Alive,
/// Proxy-Connection, TE, Trailer, Upgrade, Proxy-Authenticate and
/// Proxy-Authorization; Transfer-Encoding too unless `keep_framing`.
///
/// Choices:
/// * `Content-Length` and `Host` are never removed, even when `Connection`
///   names them (`Connection: content-length` is a desync trick: the proxy
///   framed the body by that length, so the next hop must see it too).
/// * With `keep_framing`, `Transfer-Encoding` survives even when named in
///   `Connection`, for the same reason.
/// * `Upgrade` is removed: callers that support an upgrade (WebSocket) must
///   read it before calling this and put it back.
pub fn remove_hop_by_hop(headers: &mut Headers, keep_framing: bool) {
    let protected = |name: &str| {
        name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("host")
            || (keep_framing && name.eq_ignore_ascii_case("transfer-encoding"))
    };
    let named: Vec<Vec<u8>> = headers.connection_options().map(<[u8]>::to_vec).collect();
    headers.entries.retain(|(name, _)| {
        if protected(name) {
            return true;
        }
        let hop = HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || (!keep_framing && name.eq_ignore_ascii_case("transfer-encoding"))
            || named
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name.as_bytes()));
        !hop
    });
}

fn write_headers(headers: &Headers, out: &mut Vec<u8>) {
    for (name, value) in headers.iter() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn version_str(minor: u8) -> &'static [u8] {
    if minor == 0 { b"HTTP/1.0" } else { b"HTTP/1.1" }
}

/// Serialise a request head (`target` as given) into `out`:
/// `METHOD SP target SP HTTP/1.x CRLF`, `Name: value CRLF` per field, CRLF.
pub fn write_request_head(head: &RequestHead, out: &mut Vec<u8>) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.push(b' ');
    out.extend_from_slice(version_str(head.minor_version));
    out.extend_from_slice(b"\r\n");
    write_headers(&head.headers, out);
}

/// Serialise a response head into `out`: `HTTP/1.x SP status SP reason CRLF`
/// (reason kept as parsed, possibly empty), fields, CRLF.
pub fn write_response_head(head: &ResponseHead, out: &mut Vec<u8>) {
    out.extend_from_slice(version_str(head.minor_version));
    out.push(b' ');
    // Status codes are three digits; clamp anything else into that shape.
    let status = head.status.min(999);
    out.extend_from_slice(format!("{status:03}").as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    write_headers(&head.headers, out);
}

#[cfg(test)]
mod tests;
