//! The bounded reason set of `tproxy_tls_handshake_failures_total`.

use rustls::AlertDescription;

/// Label values, indexed by [`Reason`].
pub const REASONS: [&str; 6] = [
    "unknown_ca",
    "bad_certificate",
    "handshake_timeout",
    "eof",
    "protocol",
    "other",
];

/// Why a TLS handshake failed (a label value of bounded cardinality).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The peer does not trust the issuer (client: our CA is not installed;
    /// upstream: its chain does not reach a trusted root).
    UnknownCa = 0,
    /// The certificate was rejected for another reason (name, expiry,
    /// revocation, unsupported, …).
    BadCertificate = 1,
    /// No handshake within the time allowed.
    HandshakeTimeout = 2,
    /// The peer closed the connection during the handshake.
    Eof = 3,
    /// Protocol violations: not TLS, no shared version/cipher, bad messages.
    Protocol = 4,
    /// Anything else (I/O errors, …).
    Other = 5,
}

/// Classify a handshake error from tokio-rustls.
pub fn reason(err: &std::io::Error) -> Reason {
    let rustls_err = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    match rustls_err {
        Some(e) => from_rustls(e),
        None if err.kind() == std::io::ErrorKind::UnexpectedEof => Reason::Eof,
        None if err.kind() == std::io::ErrorKind::TimedOut => Reason::HandshakeTimeout,
        None => Reason::Other,
    }
}

fn from_rustls(e: &rustls::Error) -> Reason {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::AlertReceived(AlertDescription::UnknownCA)
        | rustls::Error::InvalidCertificate(C::UnknownIssuer) => Reason::UnknownCa,
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked,
        )
        | rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented => Reason::BadCertificate,
        rustls::Error::AlertReceived(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::InvalidMessage(_)
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::PeerMisbehaved(_)
        | rustls::Error::DecryptError => Reason::Protocol,
        _ => Reason::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_errors() {
        let wrap = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let r = |e| REASONS[reason(&wrap(e)) as usize];
        assert_eq!(
            r(rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
            "unknown_ca"
        );
        assert_eq!(
            r(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            )),
            "unknown_ca"
        );
        assert_eq!(
            r(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired
            )),
            "bad_certificate"
        );
        assert_eq!(
            r(rustls::Error::AlertReceived(
                AlertDescription::HandshakeFailure
            )),
            "protocol"
        );
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(REASONS[reason(&eof) as usize], "eof");
        let other = std::io::Error::other("boom");
        assert_eq!(REASONS[reason(&other) as usize], "other");
    }
}
