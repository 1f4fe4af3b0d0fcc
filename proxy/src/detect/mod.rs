//! Protocol detection from the first bytes a client sends, and the TLS
//! ClientHello parser (SNI, ALPN).
//! STUB — replaced by the codec work item. Signatures are the contract.

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

/// Classify `buf` (the first bytes of a connection). Never panics.
pub fn sniff(buf: &[u8]) -> Sniff {
    let _ = buf;
    Sniff::Other
}
