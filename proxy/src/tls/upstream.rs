//! Upstream-facing rustls client configuration and error descriptions.
//! STUB — replaced by the tls work item. Signatures are the contract.

use std::path::PathBuf;
use std::sync::Arc;

use super::ca::CaError;

/// How tproxy verifies upstream servers.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTlsOptions {
    /// `--ssl-insecure`: do not verify upstream certificates at all.
    pub insecure: bool,
    /// `--upstream-ca FILE`: PEM bundles added to the system/webpki roots.
    pub extra_roots: Vec<PathBuf>,
}

/// A client config for upstream connections offering `alpn`.
pub fn client_config(
    opts: &UpstreamTlsOptions,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<rustls::ClientConfig>, CaError> {
    let _ = (opts, alpn);
    unimplemented!("stub")
}

/// One line naming why an upstream handshake failed, with the fix when it is a
/// verification failure (e.g. "certificate signed by an unknown issuer; add it
/// with --upstream-ca FILE or skip verification with --ssl-insecure").
pub fn describe_upstream_error(err: &std::io::Error) -> String {
    err.to_string()
}

/// True when a downstream handshake error means the client rejected our
/// certificate (unknown CA / bad certificate alert).
pub fn client_rejected_our_cert(err: &std::io::Error) -> bool {
    let _ = err;
    false
}
