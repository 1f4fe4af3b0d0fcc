//! HTTP/1 codec. STUB — replaced by the codec work item. Signatures are the contract.

/// Parser limits (`--max-header-bytes`, `--max-headers`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
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
    pub fn append(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.entries.push((name.to_owned(), value.into()));
    }
    /// Whether a comma-separated header (e.g. `Connection`) lists `token`
    /// (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        let _ = (name, token);
        false
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Request target as sent: origin-form `/p?q`, absolute-form
    /// `http://h/p`, authority-form `h:443` (CONNECT) or `*`.
    pub target: String,
    /// 0 = HTTP/1.0, 1 = HTTP/1.1.
    pub minor_version: u8,
    pub headers: Headers,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub minor_version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
}

/// Malformed or over-limit input. Always answered with 400 (requests) or
/// 502 (responses) and the connection closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("header section larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("malformed HTTP/1 message: {0}")]
    Malformed(String),
}

/// Ambiguous or invalid body framing (request smuggling shapes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("both Content-Length and Transfer-Encoding present")]
    LengthAndChunked,
    #[error("conflicting Content-Length values")]
    ConflictingLength,
    #[error("invalid Content-Length")]
    InvalidLength,
    #[error("unsupported Transfer-Encoding (chunked must be last)")]
    BadTransferEncoding,
    #[error("invalid chunk: {0}")]
    BadChunk(String),
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Empty,
    Length(u64),
    Chunked,
    /// Response read until the server closes (HTTP/1.0 style).
    UntilClose,
}

/// Parse a request head from the start of `buf`. `Ok(None)` = incomplete.
/// Returns the head and its length in bytes.
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(RequestHead, usize)>, ParseError> {
    let _ = (buf, limits);
    Ok(None)
}

/// Parse a response head from the start of `buf`. `Ok(None)` = incomplete.
pub fn parse_response(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(ResponseHead, usize)>, ParseError> {
    let _ = (buf, limits);
    Ok(None)
}

/// Body framing of a request (RFC 9112 §6.3), rejecting ambiguity.
pub fn request_body_kind(head: &RequestHead) -> Result<BodyKind, FramingError> {
    let _ = head;
    Ok(BodyKind::Empty)
}

/// Body framing of a response to a request with `request_method`.
pub fn response_body_kind(
    head: &ResponseHead,
    request_method: &str,
) -> Result<BodyKind, FramingError> {
    let _ = (head, request_method);
    Ok(BodyKind::Empty)
}

/// Remove hop-by-hop fields (RFC 9110 §7.6.1): those named in `Connection`,
/// plus Connection, Keep-Alive, Proxy-Connection, Proxy-Authenticate?? no —
/// see the implementation docs; TE, Trailer, Transfer-Encoding, Upgrade.
/// `Transfer-Encoding` removal is the caller's choice (`keep_framing`).
pub fn remove_hop_by_hop(headers: &mut Headers, keep_framing: bool) {
    let _ = (headers, keep_framing);
}

/// Serialise a request head (`target` as given) into `out`.
pub fn write_request_head(head: &RequestHead, out: &mut Vec<u8>) {
    let _ = (head, out);
}

/// Serialise a response head into `out`.
pub fn write_response_head(head: &ResponseHead, out: &mut Vec<u8>) {
    let _ = (head, out);
}

/// Progress of one `ChunkedDecoder::decode` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to the chunked body (forward them as-is).
    pub consumed: usize,
    /// The terminating chunk and trailer section were fully consumed.
    pub done: bool,
}

/// Incremental, validating chunked-body scanner. The proxy forwards the raw
/// bytes it consumes; `on_data` sees the payload slices (for byte counts and
/// body capture). Rejects bad chunk sizes, overflow, missing CRLF, oversized
/// chunk lines and trailer sections.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn decode(
        &mut self,
        input: &[u8],
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<Progress, FramingError> {
        let _ = (input, on_data);
        Ok(Progress {
            consumed: 0,
            done: true,
        })
    }
}
