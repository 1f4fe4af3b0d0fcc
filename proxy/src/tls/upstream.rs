//! Upstream-facing rustls client configuration and error descriptions.
//!
//! Verification is on by default, against the system trust store
//! (rustls-native-certs; the bundled webpki roots when the system store is
//! empty) plus `--upstream-ca` files. The root store and verifier are built
//! once per distinct option set and shared by every config built from it, as
//! is one session store (so resumption works across connections, configs and
//! workers — but never between a verifying and a non-verifying config).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::ca::CaError;

/// Upstream sessions remembered for resumption (shared by all workers).
const SESSION_CACHE_SIZE: usize = 4096;

/// How tproxy verifies upstream servers.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTlsOptions {
    /// `--ssl-insecure`: do not verify upstream certificates at all.
    pub insecure: bool,
    /// `--upstream-ca FILE`: PEM bundles added to the system/webpki roots.
    pub extra_roots: Vec<PathBuf>,
}

/// What configs built from the same options share.
#[derive(Clone)]
struct Shared {
    verifier: Arc<dyn ServerCertVerifier>,
    sessions: Arc<dyn ClientSessionStore>,
}

type SharedKey = (bool, Vec<PathBuf>);

/// A client config for upstream connections offering `alpn`.
///
/// Cheap after the first call with the same `opts`: the trust store is read
/// once per option set (root files changed on disk later are not re-read).
pub fn client_config(
    opts: &UpstreamTlsOptions,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<rustls::ClientConfig>, CaError> {
    let shared = shared_for(opts)?;
    let mut config = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CaError::Generate {
            reason: format!("building the upstream TLS config: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(shared.verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    config.resumption = Resumption::store(shared.sessions);
    Ok(Arc::new(config))
}

fn shared_for(opts: &UpstreamTlsOptions) -> Result<Shared, CaError> {
    static CACHE: Mutex<Option<HashMap<SharedKey, Shared>>> = Mutex::new(None);
    let key = (opts.insecure, opts.extra_roots.clone());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(s) = cache.get(&key) {
        return Ok(s.clone());
    }
    let algorithms = super::provider().signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = if opts.insecure {
        Arc::new(AcceptAnyCert { algorithms })
    } else {
        let roots = root_store(&opts.extra_roots)?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            super::provider(),
        )
        .build()
        .map_err(|e| CaError::Generate {
            reason: format!("building the upstream certificate verifier: {e}"),
        })?
    };
    let shared = Shared {
        verifier,
        sessions: Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE_SIZE)),
    };
    cache.insert(key, shared.clone());
    Ok(shared)
}

/// System roots (webpki roots if the system has none) plus `extra` files.
fn root_store(extra: &[PathBuf]) -> Result<RootCertStore, CaError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!(
            errors = native.errors.len(),
            ignored,
            "no system CA certificates found: verifying upstreams against the bundled webpki roots"
        );
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        tracing::debug!(added, ignored, "loaded system CA certificates");
    }
    for path in extra {
        let invalid = |reason: String| CaError::Invalid {
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|source| CaError::Io {
            path: path.clone(),
            source,
        })?;
        let mut count = 0;
        for cert in CertificateDer::pem_slice_iter(&bytes) {
            let cert = cert.map_err(|e| invalid(format!("unreadable PEM certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
            count += 1;
        }
        if count == 0 {
            return Err(invalid(
                "no PEM \"CERTIFICATE\" found (--upstream-ca takes PEM CA certificates)".into(),
            ));
        }
        tracing::info!(path = %path.display(), count, "added upstream CA certificates");
    }
    Ok(roots)
}

/// `--ssl-insecure`: accepts any certificate, but still checks that the
/// server's handshake signature matches the certificate it sent.
#[derive(Debug)]
struct AcceptAnyCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if any.
fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

const FIX_SKIP: &str = "--ssl-insecure skips the check";
const FIX_TRUST: &str =
    "add its CA with --upstream-ca FILE or disable verification with --ssl-insecure";

fn fmt_unix(t: &UnixTime) -> String {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(dt) => {
            let f = time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
            );
            dt.format(&f).unwrap_or_else(|_| secs.to_string())
        }
        Err(_) => secs.to_string(),
    }
}

/// `DnsName("a.example")` (how rustls reports presented names) → `a.example`.
fn bare_name(presented: &str) -> &str {
    match (presented.find("(\""), presented.rfind("\")")) {
        (Some(start), Some(end)) if start + 2 <= end => &presented[start + 2..end],
        _ => presented,
    }
}

fn describe_cert_error(e: &CertificateError) -> String {
    use CertificateError as C;
    match e {
        C::UnknownIssuer => {
            format!("upstream certificate is not trusted (unknown issuer); {FIX_TRUST}")
        }
        C::NotValidForName => {
            format!("upstream certificate is not valid for the requested name; {FIX_SKIP}")
        }
        C::NotValidForNameContext {
            expected,
            presented,
        } => {
            let mut s = format!(
                "upstream certificate is not valid for {}",
                expected.to_str()
            );
            if !presented.is_empty() {
                let names: Vec<&str> = presented.iter().map(|p| bare_name(p)).collect();
                let _ = write!(s, " (it names {})", names.join(", "));
            }
            let _ = write!(s, "; {FIX_SKIP}");
            s
        }
        C::Expired => format!("upstream certificate has expired; {FIX_SKIP}"),
        C::ExpiredContext { not_after, .. } => format!(
            "upstream certificate expired on {}; {FIX_SKIP}",
            fmt_unix(not_after)
        ),
        C::NotValidYet => format!("upstream certificate is not valid yet; {FIX_SKIP}"),
        C::NotValidYetContext { not_before, .. } => format!(
            "upstream certificate is not valid before {}; {FIX_SKIP}",
            fmt_unix(not_before)
        ),
        C::Revoked => "upstream certificate has been revoked".into(),
        C::BadSignature => format!("upstream certificate has a bad signature; {FIX_TRUST}"),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            format!("upstream certificate is not valid for TLS server authentication; {FIX_SKIP}")
        }
        C::BadEncoding => format!("upstream certificate is malformed; {FIX_SKIP}"),
        other => format!("upstream certificate rejected ({other:?}); {FIX_TRUST}"),
    }
}

/// One line naming why an upstream handshake failed, with the fix when it is a
/// verification failure (e.g. "certificate signed by an unknown issuer; add it
/// with --upstream-ca FILE or skip verification with --ssl-insecure").
pub fn describe_upstream_error(err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let Some(rerr) = rustls_error(err) else {
        return match err.kind() {
            ErrorKind::UnexpectedEof => {
                "upstream closed the connection during the TLS handshake".into()
            }
            ErrorKind::ConnectionReset => {
                "upstream reset the connection during the TLS handshake".into()
            }
            ErrorKind::TimedOut => "upstream TLS handshake timed out".into(),
            _ => format!("upstream TLS handshake failed: {err}"),
        };
    };
    use rustls::Error as E;
    match rerr {
        E::InvalidCertificate(c) => describe_cert_error(c),
        E::AlertReceived(AlertDescription::HandshakeFailure) => {
            "upstream refused the TLS handshake (alert handshake_failure: no common protocol \
             version, cipher suite or signature scheme)"
                .into()
        }
        E::AlertReceived(AlertDescription::ProtocolVersion) => {
            "upstream refused the TLS handshake (alert protocol_version: it needs a TLS version \
             other than 1.2/1.3)"
                .into()
        }
        E::AlertReceived(AlertDescription::NoApplicationProtocol) => {
            "upstream refused the TLS handshake (alert no_application_protocol: it supports none \
             of the offered ALPN protocols)"
                .into()
        }
        E::AlertReceived(AlertDescription::UnrecognisedName) => {
            "upstream refused the TLS handshake (alert unrecognized_name: it does not serve this \
             server name)"
                .into()
        }
        E::AlertReceived(a) => format!("upstream refused the TLS handshake (alert {a:?})"),
        E::NoApplicationProtocol => "upstream chose no ALPN protocol that was offered".into(),
        E::InvalidMessage(m) => format!(
            "upstream sent an invalid TLS message ({m:?}); is it speaking TLS on this port?"
        ),
        E::PeerIncompatible(p) => format!("upstream TLS is incompatible: {p:?}"),
        E::PeerMisbehaved(p) => format!("upstream violated the TLS protocol: {p:?}"),
        other => format!("upstream TLS error: {other}"),
    }
}

/// True when a downstream handshake error means the client rejected our
/// certificate (unknown CA / bad certificate alert).
///
/// Counts the alerts TLS stacks send when they do not trust a certificate:
/// unknown_ca (OpenSSL, rustls), bad_certificate (Go, rustls),
/// certificate_unknown (Java, NSS, Schannel), unsupported_certificate,
/// certificate_expired, certificate_revoked — and decrypt_error, which
/// OpenSSL and rustls send when the certificate's signature does not verify
/// against a trusted CA *of the same name*: every mitmproxy-style CA is
/// called `CN=mitmproxy, O=mitmproxy`, so a client trusting another (older)
/// one reports exactly this.
pub fn client_rejected_our_cert(err: &std::io::Error) -> bool {
    matches!(
        rustls_error(err),
        Some(rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::DecryptError
        ))
    )
}

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_H1: &[u8] = b"http/1.1";

/// Upstream client configs for every ALPN offer tproxy mirrors from a client
/// (built once at start; all share one verifier and one session store).
#[derive(Debug, Clone)]
pub struct UpstreamAlpn {
    none: Arc<rustls::ClientConfig>,
    h1: Arc<rustls::ClientConfig>,
    h2: Arc<rustls::ClientConfig>,
    h2_h1: Arc<rustls::ClientConfig>,
    h1_h2: Arc<rustls::ClientConfig>,
}

impl UpstreamAlpn {
    /// Build the configs for `opts`.
    pub fn new(opts: &UpstreamTlsOptions) -> Result<Self, CaError> {
        let (h1, h2) = (ALPN_H1.to_vec(), ALPN_H2.to_vec());
        Ok(UpstreamAlpn {
            none: client_config(opts, Vec::new())?,
            h1: client_config(opts, vec![h1.clone()])?,
            h2: client_config(opts, vec![h2.clone()])?,
            h2_h1: client_config(opts, vec![h2.clone(), h1.clone()])?,
            h1_h2: client_config(opts, vec![h1, h2])?,
        })
    }

    /// The config offering exactly `offer` (a list from [`mirror_offer`]).
    pub fn for_offer(&self, offer: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        match offer {
            [] => self.none.clone(),
            [a] if *a == ALPN_H2 => self.h2.clone(),
            [_] => self.h1.clone(),
            [a, ..] if *a == ALPN_H2 => self.h2_h1.clone(),
            _ => self.h1_h2.clone(),
        }
    }
}

/// The client's ALPN list reduced to the protocols tproxy speaks (h2,
/// http/1.1), in the client's order; h2 dropped unless `http2`.
pub fn mirror_offer(client: &[Vec<u8>], http2: bool) -> Vec<&'static [u8]> {
    let mut out: Vec<&'static [u8]> = Vec::with_capacity(2);
    for p in client {
        let known = if p.as_slice() == ALPN_H2 && http2 {
            ALPN_H2
        } else if p.as_slice() == ALPN_H1 {
            ALPN_H1
        } else {
            continue;
        };
        if !out.contains(&known) {
            out.push(known);
        }
    }
    out
}

/// Whether an upstream handshake failed because the server accepts none of
/// the offered ALPN protocols (an h2-only server offered http/1.1).
pub fn is_no_alpn_error(err: &std::io::Error) -> bool {
    matches!(
        rustls_error(err),
        Some(
            rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol)
                | rustls::Error::NoApplicationProtocol
        )
    )
}

#[cfg(test)]
mod alpn_tests {
    use super::*;

    #[test]
    fn offer_keeps_client_order_and_known_protocols() {
        let c = vec![b"spdy/3".to_vec(), b"http/1.1".to_vec(), b"h2".to_vec()];
        assert_eq!(mirror_offer(&c, true), vec![ALPN_H1, ALPN_H2]);
        assert_eq!(mirror_offer(&c, false), vec![ALPN_H1]);
        assert!(mirror_offer(&[], true).is_empty());
    }
}
