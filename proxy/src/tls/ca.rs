//! Certificate authority stored in a mitmproxy-compatible confdir.
//! STUB — replaced by the tls work item. Signatures are the contract.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;

/// Key algorithm for a newly created CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyKind {
    /// RSA-2048, what mitmproxy creates (maximum client compatibility).
    #[default]
    Rsa2048,
    /// ECDSA P-256: much cheaper leaf signatures.
    EcdsaP256,
}

/// Errors loading or creating the CA. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A loaded CA: certificate and signing key.
#[derive(Debug)]
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl CertificateAuthority {
    /// Load `confdir/mitmproxy-ca.pem`, or create the full mitmproxy file set
    /// there if it does not exist. Returns `(ca, created)`.
    pub fn load_or_create(confdir: &Path, kind: KeyKind) -> Result<(Self, bool), CaError> {
        let _ = (confdir, kind);
        Err(CaError::Invalid {
            path: confdir.to_path_buf(),
            reason: "stub".into(),
        })
    }

    /// Load an existing CA from `confdir/mitmproxy-ca.pem` (key + cert PEM).
    pub fn load(confdir: &Path) -> Result<Self, CaError> {
        Self::load_or_create(confdir, KeyKind::default()).map(|(ca, _)| ca)
    }

    /// Create a new CA in `confdir` (refuses to overwrite unless `force`).
    pub fn create(confdir: &Path, kind: KeyKind, force: bool) -> Result<Self, CaError> {
        let _ = force;
        Self::load_or_create(confdir, kind).map(|(ca, _)| ca)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Human summary for `tproxy ca show`: subject, key kind, validity,
    /// SHA-256 fingerprint, file paths.
    pub fn describe(&self) -> String {
        String::new()
    }
}

/// Instructions printed after creating a CA: how to trust it (Debian/Ubuntu,
/// Fedora/RHEL, macOS, curl/Python/Node env vars, Kubernetes ConfigMap).
pub fn trust_instructions(confdir: &Path) -> String {
    format!("{}", confdir.display())
}
