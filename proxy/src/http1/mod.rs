//! HTTP/1.x: head parsing and serialisation, body framing (RFC 9112), the
//! chunked decoder, hop-by-hop header handling.
//!
//! The streaming engine that uses these lives in `crate::engine` (data plane).

pub mod chunked;
pub mod codec;
mod framing;

#[cfg(test)]
mod interop_tests;
#[cfg(test)]
mod robustness_tests;
