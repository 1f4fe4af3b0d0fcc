//! Client-facing (downstream) rustls server configuration.
//!
//! Every config is a clone of one process-wide base config (TLS 1.2 + 1.3,
//! ring provider) that owns one session cache and one ticketer. All configs,
//! whatever their leaf, therefore share session state: a client resuming a
//! session on another connection — on any worker — is recognised (stateless
//! TLS 1.3/1.2 tickets from the shared `Ticketer`, whose keys rotate every 6
//! hours, and stateful session IDs from the shared cache). Cloning the base
//! costs a few `Arc` clones, so building a config per connection is cheap.

use std::sync::{Arc, OnceLock};

use rustls::ServerConfig;
use rustls::server::ServerSessionMemoryCache;
use rustls::sign::{CertifiedKey, SingleCertAndKey};

/// Sessions remembered for stateful resumption (TLS 1.2 session IDs).
const SESSION_CACHE_SIZE: usize = 4096;

fn base() -> &'static ServerConfig {
    static BASE: OnceLock<ServerConfig> = OnceLock::new();
    BASE.get_or_init(|| {
        // The ring provider always offers TLS 1.2 and 1.3 suites, so the
        // version check cannot fail; the placeholder resolver is replaced
        // in every clone.
        let mut config = ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(NoCert));
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        match rustls::crypto::ring::Ticketer::new() {
            Ok(ticketer) => config.ticketer = ticketer,
            Err(error) => {
                tracing::warn!(%error, "no TLS session ticketer: clients resume by session ID only")
            }
        }
        config
    })
}

/// Placeholder resolver of the base config (never used for a handshake).
#[derive(Debug)]
struct NoCert;

impl rustls::server::ResolvesServerCert for NoCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

/// A server config presenting `leaf`, negotiating ALPN from `alpn` (in our
/// preference order; empty = no ALPN).
pub fn server_config(leaf: Arc<CertifiedKey>, alpn: &[Vec<u8>]) -> Arc<rustls::ServerConfig> {
    let mut config = base().clone();
    config.cert_resolver = Arc::new(SingleCertAndKey::from(leaf));
    config.alpn_protocols = alpn.to_vec();
    Arc::new(config)
}
