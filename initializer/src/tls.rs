//! Serving certificate loaded from PEM files and reloaded when they change.
//!
//! Secret volumes update by swapping a symlink, so the files are re-read on
//! an interval and compared by content; a new valid cert+key pair replaces
//! the old one for new handshakes. An invalid pair (e.g. the key not yet
//! updated) is logged and the old one stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::Metrics;

/// Errors loading the serving certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// No certificate in the cert file.
    #[error("{0}: no PEM CERTIFICATE found")]
    NoCert(PathBuf),
    /// Bad PEM.
    #[error("{path}: invalid PEM: {reason}")]
    Pem {
        /// File path.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// The key is unusable or does not match the certificate.
    #[error("certificate/key pair rejected: {0}")]
    Key(rustls::Error),
}

/// The PEM file pair.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// Certificate chain (leaf first).
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_pair(
    files: &CertFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(files.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(TlsError::Key)
}

/// Certificate resolver whose certificate can be swapped at run time.
#[derive(Debug)]
pub struct ReloadingCert {
    files: CertFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    seen: RwLock<(Vec<u8>, Vec<u8>)>,
}

impl ReloadingCert {
    /// Loads the pair once; fails when it is unusable.
    pub fn load(files: CertFiles, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        let ck = parse_pair(&files, &cert_pem, &key_pem, &provider)?;
        Ok(ReloadingCert {
            files,
            provider,
            current: RwLock::new(Arc::new(ck)),
            seen: RwLock::new((cert_pem, key_pem)),
        })
    }

    /// Re-reads the files; swaps the certificate when they changed and are
    /// valid. Returns whether a new certificate is in use.
    pub fn reload_if_changed(&self, metrics: &Metrics) -> bool {
        let (cert_pem, key_pem) = match (read(&self.files.cert), read(&self.files.key)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "serving certificate unreadable, keeping the current one");
                return false;
            }
        };
        {
            let seen = self.seen.read().unwrap_or_else(|p| p.into_inner());
            if seen.0 == cert_pem && seen.1 == key_pem {
                return false;
            }
        }
        let result = parse_pair(&self.files, &cert_pem, &key_pem, &self.provider);
        *self.seen.write().unwrap_or_else(|p| p.into_inner()) = (cert_pem, key_pem);
        match result {
            Ok(ck) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ck);
                metrics.tls_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(cert = %self.files.cert.display(), "serving certificate reloaded");
                true
            }
            Err(e) => {
                metrics.tls_reloads.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "new serving certificate rejected, keeping the current one");
                false
            }
        }
    }

    /// Polls the files every `interval` until the process ends.
    pub async fn watch(self: Arc<Self>, interval: Duration, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let this = Arc::clone(&self);
            let m = Arc::clone(&metrics);
            // File reads are blocking; keep them off the reactor threads.
            let _ = tokio::task::spawn_blocking(move || this.reload_if_changed(&m)).await;
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

/// rustls server config (ring provider, TLS 1.2/1.3, ALPN http/1.1).
pub fn server_config(
    resolver: Arc<ReloadingCert>,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Key)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The ring crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
