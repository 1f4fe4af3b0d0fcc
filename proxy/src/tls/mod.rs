//! TLS: the certificate authority (mitmproxy-compatible confdir), the leaf
//! certificate cache shared by all workers, and rustls configs for both sides.
//!
//! * `provider()` — the one rustls CryptoProvider (ring); configs are always
//!   built with `builder_with_provider` (`builder()` panics when two providers
//!   are in the build: docs/stack.md).
//! * `ca::CertificateAuthority` — load/create `mitmproxy-ca.pem` & friends.
//! * `certcache::CertCache` — `Send + Sync`, shared via `Arc` by all workers.
//! * `server::server_config` — rustls ServerConfig for one minted leaf.
//! * `upstream::client_config` — rustls ClientConfig with verification options.

pub mod ca;
pub mod certcache;
mod encoding;
pub mod server;
pub mod upstream;

use std::sync::{Arc, OnceLock};

/// The crypto provider every rustls config in tproxy is built with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}
