//! Client-facing (downstream) rustls server configuration.
//! STUB — replaced by the tls work item. Signatures are the contract.

use std::sync::Arc;

use rustls::sign::CertifiedKey;

/// A server config presenting `leaf`, negotiating ALPN from `alpn` (in our
/// preference order; empty = no ALPN).
pub fn server_config(leaf: Arc<CertifiedKey>, alpn: &[Vec<u8>]) -> Arc<rustls::ServerConfig> {
    let _ = (leaf, alpn);
    unimplemented!("stub")
}
