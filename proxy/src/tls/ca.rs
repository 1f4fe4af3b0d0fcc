//! Certificate authority stored in a mitmproxy-compatible confdir.
//!
//! `mitmproxy-ca.pem` (unencrypted private key + certificate, PEM) is the only
//! file read, so a CA made by mitmproxy works as is: RSA keys as PKCS#1
//! ("RSA PRIVATE KEY") or PKCS#8, EC keys as SEC1 ("EC PRIVATE KEY") or PKCS#8.
//! A new CA is written as the same file set mitmproxy creates.
//!
//! RSA-2048 keys are generated with the pure-Rust `rsa` crate (ring can sign
//! with RSA but cannot generate RSA keys); all signing is done by ring.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
    PKCS_RSA_SHA256, PublicKeyData, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;
use x509_parser::public_key::PublicKey;

use super::encoding;

/// Key + certificate, PEM: the only file tproxy (and mitmproxy) reads.
pub const CA_FILE: &str = "mitmproxy-ca.pem";
/// Key + certificate, PKCS#12 (no password).
pub const CA_P12_FILE: &str = "mitmproxy-ca.p12";
/// The certificate alone, PEM: what clients are given to trust.
pub const CA_CERT_PEM_FILE: &str = "mitmproxy-ca-cert.pem";
/// Same bytes as [`CA_CERT_PEM_FILE`] under the name Android expects.
pub const CA_CERT_CER_FILE: &str = "mitmproxy-ca-cert.cer";
/// The certificate alone, PKCS#12 (Windows).
pub const CA_CERT_P12_FILE: &str = "mitmproxy-ca-cert.p12";
/// DH parameters (written for mitmproxy compatibility; unused by rustls).
pub const DHPARAM_FILE: &str = "mitmproxy-dhparam.pem";

/// Common name and organisation of a new CA (the same as mitmproxy's).
pub const CA_NAME: &str = "mitmproxy";
/// Lifetime of a new CA, like mitmproxy's (10 × 365 days).
pub const CA_VALIDITY_DAYS: i64 = 3650;

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
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file exists but does not hold what it should.
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// `create` without `force` found an existing CA.
    #[error(
        "{path} already exists; refusing to replace the CA (clients that trust it would stop \
         trusting tproxy): pass --force to replace it"
    )]
    Exists { path: PathBuf },
    /// `load` found no CA.
    #[error(
        "{path} not found: create a CA with `tproxy ca init`, or copy mitmproxy's \
         mitmproxy-ca.pem (~/.mitmproxy) into that directory"
    )]
    NotFound { path: PathBuf },
    /// Key generation or signing failed.
    #[error("generating the CA: {reason}")]
    Generate { reason: String },
}

/// A loaded CA: certificate and signing key.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    kind: Option<KeyKind>,
    key_description: String,
    subject: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    has_ski: bool,
    confdir: PathBuf,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never prints the key.
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("key", &self.key_description)
            .field("not_after", &self.not_after)
            .field("confdir", &self.confdir)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Load `confdir/mitmproxy-ca.pem`, or create the full mitmproxy file set
    /// there if it does not exist. Returns `(ca, created)`.
    pub fn load_or_create(confdir: &Path, kind: KeyKind) -> Result<(Self, bool), CaError> {
        match Self::load(confdir) {
            Ok(ca) => Ok((ca, false)),
            Err(CaError::NotFound { .. }) => {
                Self::create(confdir, kind, false).map(|ca| (ca, true))
            }
            Err(e) => Err(e),
        }
    }

    /// Load an existing CA from `confdir/mitmproxy-ca.pem` (key + cert PEM).
    pub fn load(confdir: &Path) -> Result<Self, CaError> {
        let path = confdir.join(CA_FILE);
        let pem = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CaError::NotFound { path });
            }
            Err(source) => return Err(CaError::Io { path, source }),
        };
        let invalid = |reason: String| CaError::Invalid {
            path: path.clone(),
            reason,
        };
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            invalid(format!(
                "no usable private key ({e}): the file must hold an unencrypted PEM \"PRIVATE \
                 KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" followed by the CA certificate \
                 (decrypt an encrypted key with `openssl pkey -in KEY -out KEY`)"
            ))
        })?;
        let key = key_pair_from_der(&key).map_err(invalid)?;
        let cert_der = match CertificateDer::pem_slice_iter(&pem).next() {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(invalid(format!("unreadable certificate: {e}"))),
            None => {
                return Err(invalid(
                    "no PEM \"CERTIFICATE\" after the private key".into(),
                ));
            }
        };
        Self::from_parts(confdir, &path, cert_der, key)
    }

    /// Create a new CA in `confdir` (refuses to overwrite unless `force`).
    ///
    /// Files are written to temporary names and renamed into place, the key
    /// file `mitmproxy-ca.pem` last: a crash leaves either no CA (the next run
    /// creates one) or a complete one.
    pub fn create(confdir: &Path, kind: KeyKind, force: bool) -> Result<Self, CaError> {
        let ca_path = confdir.join(CA_FILE);
        if !force && ca_path.exists() {
            return Err(CaError::Exists { path: ca_path });
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(confdir)
            .map_err(|source| CaError::Io {
                path: confdir.to_path_buf(),
                source,
            })?;

        let generate = |reason: String| CaError::Generate { reason };
        let (key, pkcs8) = generate_key(kind).map_err(generate)?;
        let params = ca_params(OffsetDateTime::now_utc(), &key).map_err(generate)?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| generate(format!("signing the CA certificate: {e}")))?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        let p12 = |key: Option<&[u8]>| {
            encoding::pkcs12(CA_NAME, &cert_der, key)
                .map_err(|_| generate("writing PKCS#12: no randomness".into()))
        };
        let key_p12 = p12(Some(&pkcs8))?;
        let cert_p12 = p12(None)?;

        write_atomic(confdir, CA_CERT_PEM_FILE, cert_pem.as_bytes(), 0o644)?;
        write_atomic(confdir, CA_CERT_CER_FILE, cert_pem.as_bytes(), 0o644)?;
        write_atomic(confdir, CA_CERT_P12_FILE, &cert_p12, 0o644)?;
        write_atomic(
            confdir,
            DHPARAM_FILE,
            encoding::DHPARAM_PEM.as_bytes(),
            0o644,
        )?;
        write_atomic(confdir, CA_P12_FILE, &key_p12, 0o600)?;
        let mut ca_pem = key.serialize_pem();
        ca_pem.push_str(&cert_pem);
        write_atomic(confdir, CA_FILE, ca_pem.as_bytes(), 0o600)?;
        tracing::info!(confdir = %confdir.display(), ?kind, "created a new CA");

        Self::from_parts(confdir, &ca_path, cert_der, key)
    }

    /// Validate a certificate + key pair and build the CA from them.
    fn from_parts(
        confdir: &Path,
        path: &Path,
        cert_der: CertificateDer<'static>,
        key: KeyPair,
    ) -> Result<Self, CaError> {
        let invalid = |reason: String| CaError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| invalid(format!("unparsable CA certificate: {e}")))?;
        let is_ca = matches!(x509.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(invalid(
                "the certificate is not a CA (BasicConstraints cA is not set)".into(),
            ));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(invalid(
                "the private key does not belong to the certificate".into(),
            ));
        }
        let not_before = x509.validity().not_before.to_datetime();
        let not_after = x509.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            return Err(invalid(format!(
                "the CA certificate expired on {}; create a new one with `tproxy ca init --force` \
                 (and distribute it to clients again)",
                encoding::fmt_time(not_after)
            )));
        }
        let has_ski = x509.extensions().iter().any(|e| {
            matches!(
                e.parsed_extension(),
                ParsedExtension::SubjectKeyIdentifier(_)
            )
        });
        let bits = match x509.public_key().parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => 0,
        };
        let (kind, key_description) = describe_key(&key, bits);
        let subject = x509.subject().to_string();
        let cert_pem = encoding::pem_encode("CERTIFICATE", &cert_der);
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| invalid(format!("unusable CA certificate: {e}")))?;
        Ok(Self {
            cert_pem,
            cert_der,
            issuer,
            kind,
            key_description,
            subject,
            not_before,
            not_after,
            has_ski,
            confdir: confdir.to_path_buf(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Subject as text, e.g. `CN=mitmproxy, O=mitmproxy`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The key kind when it is one tproxy creates (`None` for e.g. RSA-4096).
    pub fn key_kind(&self) -> Option<KeyKind> {
        self.kind
    }

    /// Start of the CA certificate's validity.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// End of the CA certificate's validity (leaves never outlive it).
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// SHA-256 fingerprint of the certificate, `AB:CD:…` (as openssl prints it).
    pub fn fingerprint_sha256(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.cert_der);
        let hex: Vec<String> = d.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        hex.join(":")
    }

    /// The directory the CA was loaded from or created in.
    pub fn confdir(&self) -> &Path {
        &self.confdir
    }

    /// The rcgen issuer (certificate name, key identifier, signing key).
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Whether the CA certificate has a SubjectKeyIdentifier, which leaves
    /// then reference in their AuthorityKeyIdentifier.
    pub(crate) fn has_ski(&self) -> bool {
        self.has_ski
    }

    /// Human summary for `tproxy ca show`: subject, key kind, validity,
    /// SHA-256 fingerprint, file paths.
    pub fn describe(&self) -> String {
        let expired = if self.not_after <= OffsetDateTime::now_utc() {
            " (EXPIRED)"
        } else {
            ""
        };
        let mut out = format!(
            "subject:     {}\nkey:         {}\nnot before:  {}\nnot after:   {}{}\nSHA-256:     {}\n",
            self.subject,
            self.key_description,
            encoding::fmt_time(self.not_before),
            encoding::fmt_time(self.not_after),
            expired,
            self.fingerprint_sha256(),
        );
        let files = [
            (CA_FILE, "key + certificate: keep private"),
            (CA_CERT_PEM_FILE, "certificate: give this to clients"),
            (CA_CERT_CER_FILE, "certificate, PEM, for Android"),
            (CA_CERT_P12_FILE, "certificate, PKCS#12, for Windows"),
            (CA_P12_FILE, "key + certificate, PKCS#12: keep private"),
        ];
        let mut first = true;
        for (name, what) in files {
            let p = self.confdir.join(name);
            if p.exists() {
                let label = if first { "files:" } else { "" };
                first = false;
                out.push_str(&format!("{label:<13}{} ({what})\n", p.display()));
            }
        }
        out
    }
}

/// Instructions printed after creating a CA: how to trust it (Debian/Ubuntu,
/// Fedora/RHEL, macOS, curl/Python/Node env vars, the Helm chart's CA Secret).
pub fn trust_instructions(confdir: &Path) -> String {
    let cert = confdir.join(CA_CERT_PEM_FILE);
    let cert = cert.display();
    format!(
        "To intercept HTTPS, clients must trust the CA certificate {cert}
(also served by the admin listener at http://<admin-address>/ca.pem).

  Debian/Ubuntu:  sudo cp {cert} /usr/local/share/ca-certificates/tproxy.crt
                  sudo update-ca-certificates
  Fedora/RHEL:    sudo cp {cert} /etc/pki/ca-trust/source/anchors/tproxy.pem
                  sudo update-ca-trust
  macOS:          sudo security add-trusted-cert -d -r trustRoot \\
                       -k /Library/Keychains/System.keychain {cert}
  Firefox:        Settings > Privacy & Security > Certificates > View Certificates >
                  Authorities > Import (Firefox keeps its own trust store)
  One program:    curl --cacert {cert} ...
                  SSL_CERT_FILE={cert}        (OpenSSL-based tools, Go on Linux)
                  REQUESTS_CA_BUNDLE={cert}   (Python requests)
                  NODE_EXTRA_CA_CERTS={cert}  (Node.js)
  Kubernetes:     the tproxy Helm chart (charts/tproxy) keeps its CA in a Secret with the keys
                  mitmproxy-ca.pem and mitmproxy-ca-cert.pem; to use this CA there:
                  kubectl -n tproxy create secret generic tproxy-ca \\
                       --from-file={key} --from-file={cert}
                  helm install tproxy charts/tproxy -n tproxy --set ca.existingSecret=tproxy-ca
                  (or --set-file ca.pem={key}); the webhook adds the certificate to the
                  trust store of every opted-in pod, in any namespace

The private key ({key}) must stay secret: whoever holds it can impersonate any site
to clients that trust this CA.
",
        key = confdir.join(CA_FILE).display(),
    )
}

/// A new key for a CA, with its PKCS#8 DER (for the PKCS#12 file).
fn generate_key(kind: KeyKind) -> Result<(KeyPair, Vec<u8>), String> {
    match kind {
        KeyKind::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey;
            let mut rng = rsa::rand_core::OsRng;
            let key = rsa::RsaPrivateKey::new(&mut rng, 2048)
                .map_err(|e| format!("generating an RSA-2048 key: {e}"))?;
            let der = key
                .to_pkcs8_der()
                .map_err(|e| format!("encoding the RSA key: {e}"))?;
            let pkcs8 = der.as_bytes().to_vec();
            let kp = KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
                &PKCS_RSA_SHA256,
            )
            .map_err(|e| format!("loading the RSA key into ring: {e}"))?;
            Ok((kp, pkcs8))
        }
        KeyKind::EcdsaP256 => {
            let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .map_err(|e| format!("generating a P-256 key: {e}"))?;
            let pkcs8 = kp.serialize_der();
            Ok((kp, pkcs8))
        }
    }
}

/// Parameters of a new CA certificate, mirroring mitmproxy's `create_ca`.
fn ca_params(now: OffsetDateTime, key: &KeyPair) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::default();
    // SubjectKeyIdentifier = SHA-1 of the public key (RFC 5280 §4.2.1.2
    // method 1): what mitmproxy (python cryptography) puts in the
    // AuthorityKeyIdentifier of the leaves it mints, so OpenSSL can chain
    // mitmproxy-minted leaves to a tproxy-created CA.
    let ski = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        key.public_key_raw(),
    );
    params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(ski.as_ref().to_vec());
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::days(2);
    params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// A positive, non-zero 16-byte serial number (RFC 5280 allows up to 20).
pub(crate) fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness for a serial number".to_string())?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Any supported private key encoding → an rcgen key pair (ring-backed).
fn key_pair_from_der(key: &PrivateKeyDer<'_>) -> Result<KeyPair, String> {
    let unsupported = |e: rcgen::Error| {
        format!(
            "unsupported private key ({e}): supported are RSA (2048 to 8192 bits), ECDSA \
             P-256/P-384 and Ed25519"
        )
    };
    match key {
        PrivateKeyDer::Pkcs8(k) => KeyPair::try_from(k).map_err(unsupported),
        PrivateKeyDer::Pkcs1(k) => {
            let pkcs8 = encoding::pkcs1_to_pkcs8(k.secret_pkcs1_der());
            KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
                &PKCS_RSA_SHA256,
            )
            .map_err(unsupported)
        }
        PrivateKeyDer::Sec1(k) => {
            let p256 = encoding::sec1_to_pkcs8(k.secret_sec1_der(), encoding::OID_P256);
            let p384 = encoding::sec1_to_pkcs8(k.secret_sec1_der(), encoding::OID_P384);
            KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(p256.as_slice()),
                &PKCS_ECDSA_P256_SHA256,
            )
            .or_else(|_| {
                KeyPair::from_pkcs8_der_and_sign_algo(
                    &PrivatePkcs8KeyDer::from(p384.as_slice()),
                    &PKCS_ECDSA_P384_SHA384,
                )
            })
            .map_err(unsupported)
        }
        _ => Err("unsupported private key encoding".into()),
    }
}

/// `(kind, "RSA 2048-bit")` for a key pair; `rsa_bits` from the certificate.
fn describe_key(key: &KeyPair, rsa_bits: usize) -> (Option<KeyKind>, String) {
    let alg = key.algorithm();
    if alg == &PKCS_ECDSA_P256_SHA256 {
        (Some(KeyKind::EcdsaP256), "ECDSA P-256".into())
    } else if alg == &PKCS_ECDSA_P384_SHA384 {
        (None, "ECDSA P-384".into())
    } else if alg == &PKCS_ED25519 {
        (None, "Ed25519".into())
    } else {
        let kind = (rsa_bits == 2048).then_some(KeyKind::Rsa2048);
        (kind, format!("RSA {rsa_bits}-bit"))
    }
}

/// Write `dir/name` atomically: a temporary file with `mode`, fsync, rename,
/// then fsync the directory.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CaError::Io { path, source }
    };
    // A leftover from a crashed run may have another mode: start afresh.
    let _ = fs::remove_file(&tmp);
    let result = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io(&path)(e));
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_encoding_round_trips() {
        let der = vec![7u8; 200];
        let pem = encoding::pem_encode("CERTIFICATE", &der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), der.as_slice());
    }

    #[test]
    fn trust_instructions_cover_systems_and_runtimes() {
        let text = trust_instructions(Path::new("/etc/tproxy"));
        for needle in [
            "/etc/tproxy/mitmproxy-ca-cert.pem",
            "update-ca-certificates",
            "update-ca-trust",
            "security add-trusted-cert",
            "Firefox",
            "curl --cacert",
            "SSL_CERT_FILE=",
            "REQUESTS_CA_BUNDLE=",
            "NODE_EXTRA_CA_CERTS=",
            "/ca.pem",
            "create secret generic tproxy-ca",
            "--from-file=/etc/tproxy/mitmproxy-ca.pem --from-file=/etc/tproxy/mitmproxy-ca-cert.pem",
            "--set ca.existingSecret=tproxy-ca",
            "--set-file ca.pem=/etc/tproxy/mitmproxy-ca.pem",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }

    #[test]
    fn describe_lists_subject_validity_fingerprint_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(dir.path(), KeyKind::EcdsaP256, false).unwrap();
        let text = ca.describe();
        eprintln!("{text}");
        assert!(
            text.starts_with("subject:     CN=mitmproxy, O=mitmproxy\n"),
            "{text}"
        );
        assert!(text.contains("key:         ECDSA P-256\n"), "{text}");
        assert!(text.contains(&ca.fingerprint_sha256()), "{text}");
        assert_eq!(ca.fingerprint_sha256().len(), 32 * 3 - 1);
        assert_eq!(text.matches(" (").count(), 5, "five files listed: {text}");
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = random_serial().unwrap();
        let b = random_serial().unwrap();
        assert_ne!(a, b);
        assert!(a.as_ref()[0] & 0x80 == 0 && a.as_ref()[0] != 0);
    }
}
