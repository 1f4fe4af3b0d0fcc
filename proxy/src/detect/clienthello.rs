//! TLS ClientHello reassembly and parsing (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2,
//! RFC 6066 §3 server_name, RFC 7301 ALPN).
//!
//! The hello may be spread over several handshake records (large post-quantum
//! key shares, or deliberately fragmented by a client); the fragments are
//! reassembled before parsing. Structure is checked strictly: any length that
//! does not add up, a duplicated extension, or an empty ALPN list makes the
//! whole thing `Other` (passthrough), because a proxy that reads a hello
//! differently from the real server is a policy bypass.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use super::{ClientHello, Sniff};

/// Largest ClientHello handshake message accepted (header included). Larger
/// hellos are `Other`.
pub const MAX_HELLO_BYTES: usize = 64 * 1024;
/// TLSPlaintext fragments are at most 2^14 bytes (RFC 8446 §5.1).
const MAX_RECORD_LEN: usize = 1 << 14;
const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const NAME_TYPE_HOST: u8 = 0;

/// Outcome of gathering the handshake message from records.
enum Gathered<'a> {
    NeedMore,
    Invalid,
    /// The complete handshake message, header included.
    Complete(Cow<'a, [u8]>),
}

/// `buf` starts with 0x16: classify it as a ClientHello, `NeedMore` or `Other`.
pub(super) fn sniff_tls(buf: &[u8]) -> Sniff {
    match gather(buf) {
        Gathered::NeedMore => Sniff::NeedMore,
        Gathered::Invalid => Sniff::Other,
        Gathered::Complete(msg) => match parse_hello(&msg) {
            Some(hello) => Sniff::Tls(hello),
            None => Sniff::Other,
        },
    }
}

/// Check a (possibly partial) record header at `buf[pos..]`.
/// Returns the fragment length once the header is complete.
fn record_header(buf: &[u8], pos: usize) -> Result<Option<usize>, ()> {
    let header = &buf[pos..buf.len().min(pos + RECORD_HEADER)];
    if header.first().is_some_and(|&t| t != CONTENT_HANDSHAKE) {
        return Err(());
    }
    if header.get(1).is_some_and(|&major| major != 3) {
        return Err(());
    }
    let [_, _, _, hi, lo] = *header else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    // Zero-length handshake fragments are forbidden (RFC 8446 §5.1).
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(());
    }
    Ok(Some(len))
}

/// Total message length announced by a (possibly partial) handshake header.
fn message_len(msg: &[u8]) -> Result<Option<usize>, ()> {
    if msg.first().is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO) {
        return Err(());
    }
    let [_, a, b, c, ..] = *msg else {
        return Ok(None);
    };
    let total = 4 + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
    if total > MAX_HELLO_BYTES {
        return Err(());
    }
    Ok(Some(total))
}

fn gather(buf: &[u8]) -> Gathered<'_> {
    // Common case: the whole message sits in the first record; borrow it.
    let first_len = match record_header(buf, 0) {
        Err(()) => return Gathered::Invalid,
        Ok(None) => return Gathered::NeedMore,
        Ok(Some(len)) => len,
    };
    let first = &buf[RECORD_HEADER..buf.len().min(RECORD_HEADER + first_len)];
    match message_len(first) {
        Err(()) => return Gathered::Invalid,
        Ok(Some(total)) if first.len() >= total => {
            return Gathered::Complete(Cow::Borrowed(&first[..total]));
        }
        Ok(_) => {}
    }
    let mut msg = Vec::new();
    let mut pos = 0;
    // Each iteration consumes one record (at least 6 bytes): bounded by buf.
    while pos < buf.len() {
        let len = match record_header(buf, pos) {
            Err(()) => return Gathered::Invalid,
            Ok(None) => return Gathered::NeedMore,
            Ok(Some(len)) => len,
        };
        let start = pos + RECORD_HEADER;
        let end = buf.len().min(start + len);
        msg.extend_from_slice(&buf[start..end]);
        match message_len(&msg) {
            Err(()) => return Gathered::Invalid,
            Ok(Some(total)) if msg.len() >= total => {
                msg.truncate(total);
                return Gathered::Complete(Cow::Owned(msg));
            }
            Ok(_) => {}
        }
        if end < start + len {
            return Gathered::NeedMore;
        }
        pos = start + len;
    }
    Gathered::NeedMore
}

/// Bounds-checked big-endian reader; every method is `None` past the end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Self { rest }
    }
    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a one-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    /// A vector with a two-byte length prefix.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Parse a complete ClientHello handshake message (header included).
/// `None` = malformed.
fn parse_hello(msg: &[u8]) -> Option<ClientHello> {
    let mut r = Reader::new(msg.get(4..)?);
    let legacy_version = r.u16()?;
    if legacy_version >> 8 != 3 {
        return None;
    }
    r.take(32)?; // random
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return None;
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return None;
    }
    if r.vec8()?.is_empty() {
        return None; // compression methods: at least `null`
    }
    let mut hello = ClientHello::default();
    if r.is_empty() {
        return Some(hello); // pre-extension hello (SSLv3 style)
    }
    let mut exts = Reader::new(r.vec16()?);
    if !r.is_empty() {
        return None;
    }
    let mut seen: Vec<u16> = Vec::new();
    while !exts.is_empty() {
        let ext_type = exts.u16()?;
        let data = exts.vec16()?;
        if seen.contains(&ext_type) {
            return None; // RFC 8446 §4.2: at most one of each type
        }
        seen.push(ext_type);
        match ext_type {
            EXT_SERVER_NAME => hello.sni = parse_server_name(data)?,
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            _ => {}
        }
    }
    Some(hello)
}

/// server_name extension: outer `None` = malformed, inner `None` = no usable
/// host name (absent, empty or invalid).
fn parse_server_name(data: &[u8]) -> Option<Option<String>> {
    let mut r = Reader::new(data);
    let list = r.vec16()?;
    if !r.is_empty() || list.is_empty() {
        return None;
    }
    let mut entries = Reader::new(list);
    let mut host: Option<&[u8]> = None;
    while !entries.is_empty() {
        let name_type = entries.u8()?;
        // Every name type defined so far carries a two-byte-length name.
        let name = entries.vec16()?;
        if name_type == NAME_TYPE_HOST {
            if host.is_some() {
                return None; // RFC 6066: one name per type
            }
            host = Some(name);
        }
    }
    Some(host.and_then(valid_host_name))
}

/// A DNS host name as RFC 6066 allows it in SNI: ASCII, no trailing dot, no
/// IP literal; returned lower-cased. Underscores are accepted (seen in
/// internal names), hyphens not at label edges.
fn valid_host_name(name: &[u8]) -> Option<String> {
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let labels_ok = name.split(|&b| b == b'.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.first() != Some(&b'-')
            && label.last() != Some(&b'-')
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return None;
    }
    let lower = String::from_utf8(name.to_ascii_lowercase()).ok()?;
    if lower.parse::<Ipv4Addr>().is_ok() {
        return None;
    }
    Some(lower)
}

/// ALPN extension: a non-empty list of non-empty protocol names.
fn parse_alpn(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut r = Reader::new(data);
    let list = r.vec16()?;
    if !r.is_empty() || list.is_empty() {
        return None;
    }
    let mut names = Reader::new(list);
    let mut out = Vec::new();
    while !names.is_empty() {
        let name = names.vec8()?;
        if name.is_empty() {
            return None;
        }
        out.push(name.to_vec());
    }
    Some(out)
}
