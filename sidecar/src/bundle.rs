//! The CA bundle for the pod's other containers (webhook emptyDir mode).
//!
//! The webhook hands this init container the tproxy CA certificate
//! (`TPROXY_CA_CERT`, PEM) and a directory on a pod-local emptyDir
//! (`TPROXY_CA_BUNDLE_DIR`). It writes there
//!
//! * `ca-certificates.crt` — the system roots of this image
//!   (`--system-roots`, Debian's bundle) followed by the tproxy CA, which the
//!   app containers mount over `/etc/ssl/certs/ca-certificates.crt` and
//!   `/etc/pki/tls/certs/ca-bundle.crt`;
//! * `tproxy-ca.crt` — the tproxy CA alone (`NODE_EXTRA_CA_CERTS`,
//!   `/usr/local/share/ca-certificates/`).
//!
//! Each file is written to a temporary name and renamed into place, mode
//! 0644 (app containers run as any user). Nothing in a workload namespace is
//! needed: the bundle is built inside each pod.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::cli::Args;

/// Name of the bundle file (system roots + tproxy CA).
pub const BUNDLE_FILE: &str = "ca-certificates.crt";
/// Name of the file holding the tproxy CA alone.
pub const CA_FILE: &str = "tproxy-ca.crt";

/// Why the bundle cannot be written. The pod must not start with a trust
/// store that lacks the CA (its HTTPS would fail in confusing ways), so each
/// of these exits 1.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Only one of the two settings was given.
    #[error(
        "TPROXY_CA_CERT and TPROXY_CA_BUNDLE_DIR (--ca-cert / --ca-bundle-dir) go together: set both or neither"
    )]
    Incomplete,
    /// The CA is not PEM certificates.
    #[error(
        "TPROXY_CA_CERT / --ca-cert: {0} (expected the PEM of the tproxy CA certificate, mitmproxy-ca-cert.pem)"
    )]
    BadCert(String),
    /// The image's system roots could not be read.
    #[error(
        "cannot read the system roots {path}: {source} (the sidecar image needs Debian's ca-certificates there, or point --system-roots / TPROXY_SYSTEM_ROOTS at its bundle)"
    )]
    Roots {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Writing into the directory failed.
    #[error(
        "cannot write {path}: {source} (TPROXY_CA_BUNDLE_DIR must be a writable volume shared with the app containers)"
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// What to write, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSpec {
    /// The tproxy CA certificate(s), PEM, ending in a newline.
    pub ca_pem: String,
    /// Target directory.
    pub dir: PathBuf,
    /// The system roots to start the bundle with.
    pub system_roots: PathBuf,
}

impl BundleSpec {
    /// `None` when no bundle is asked for.
    pub fn from_args(args: &Args) -> Result<Option<BundleSpec>, BundleError> {
        let cert = args.ca_cert.as_deref().filter(|s| !s.trim().is_empty());
        let dir = args
            .ca_bundle_dir
            .as_ref()
            .filter(|d| !d.as_os_str().is_empty());
        let (cert, dir) = match (cert, dir) {
            (None, None) => return Ok(None),
            (Some(c), Some(d)) => (c, d),
            _ => return Err(BundleError::Incomplete),
        };
        Ok(Some(BundleSpec {
            ca_pem: check_pem(cert)?,
            dir: dir.clone(),
            system_roots: args.system_roots.clone(),
        }))
    }

    /// Writes both files; returns the bundle's path.
    pub fn write(&self) -> Result<PathBuf, BundleError> {
        let roots =
            fs::read_to_string(&self.system_roots).map_err(|source| BundleError::Roots {
                path: self.system_roots.clone(),
                source,
            })?;
        let mut bundle = roots;
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(&self.ca_pem);
        write_atomic(&self.dir, CA_FILE, self.ca_pem.as_bytes())?;
        write_atomic(&self.dir, BUNDLE_FILE, bundle.as_bytes())
    }
}

/// Accepts one or more PEM certificates (and nothing secret); returns them
/// trimmed, newline-terminated.
fn check_pem(text: &str) -> Result<String, BundleError> {
    if text.contains("PRIVATE KEY-----") {
        return Err(BundleError::BadCert(
            "holds a private key; pass the certificate alone".into(),
        ));
    }
    let begins = text.matches("-----BEGIN CERTIFICATE-----").count();
    let ends = text.matches("-----END CERTIFICATE-----").count();
    if begins == 0 {
        return Err(BundleError::BadCert(
            "no -----BEGIN CERTIFICATE----- block".into(),
        ));
    }
    if begins != ends {
        return Err(BundleError::BadCert(
            "a certificate block is not closed".into(),
        ));
    }
    let mut pem = text.trim().to_owned();
    pem.push('\n');
    Ok(pem)
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, BundleError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let err = |source| BundleError::Write {
        path: path.clone(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    // The umask may have narrowed the mode: app containers run as any uid.
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644)).map_err(err)?;
    fs::rename(&tmp, &path).map_err(err)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use std::os::unix::fs::PermissionsExt as _;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["tproxy-sidecar"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    #[test]
    fn nothing_asked_nothing_written() {
        assert_eq!(BundleSpec::from_args(&args(&[])).unwrap(), None);
    }

    #[test]
    fn both_settings_or_neither() {
        let e = BundleSpec::from_args(&args(&["--ca-cert", CERT])).unwrap_err();
        assert!(matches!(e, BundleError::Incomplete), "{e}");
        let e = BundleSpec::from_args(&args(&["--ca-bundle-dir", "/x"])).unwrap_err();
        assert!(matches!(e, BundleError::Incomplete), "{e}");
    }

    #[test]
    fn rejects_keys_and_non_certificates() {
        for bad in [
            "hello",
            "-----BEGIN PRIVATE KEY-----\nAA\n-----END PRIVATE KEY-----\n",
            "-----BEGIN CERTIFICATE-----\nMIIB\n",
        ] {
            let e = BundleSpec::from_args(&args(&["--ca-cert", bad, "--ca-bundle-dir", "/x"]))
                .unwrap_err();
            assert!(matches!(e, BundleError::BadCert(_)), "{bad:?}: {e}");
        }
    }

    #[test]
    fn writes_roots_then_ca_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("roots.crt");
        // No trailing newline: the CA must still start on its own line.
        fs::write(
            &roots,
            "-----BEGIN CERTIFICATE-----\nROOT\n-----END CERTIFICATE-----",
        )
        .unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let spec = BundleSpec::from_args(&args(&[
            "--ca-cert",
            &format!("\n{CERT}\n\n"),
            "--ca-bundle-dir",
            out.to_str().unwrap(),
            "--system-roots",
            roots.to_str().unwrap(),
        ]))
        .unwrap()
        .unwrap();
        let path = spec.write().unwrap();
        assert_eq!(path, out.join(BUNDLE_FILE));
        let bundle = fs::read_to_string(&path).unwrap();
        assert_eq!(
            bundle,
            format!("-----BEGIN CERTIFICATE-----\nROOT\n-----END CERTIFICATE-----\n{CERT}\n")
        );
        assert_eq!(
            fs::read_to_string(out.join(CA_FILE)).unwrap(),
            format!("{CERT}\n")
        );
        for f in [BUNDLE_FILE, CA_FILE] {
            let mode = fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{f}");
        }
        // A rerun (init container restart) replaces the files.
        spec.write().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), bundle);
    }

    #[test]
    fn missing_roots_or_directory_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let spec = BundleSpec {
            ca_pem: format!("{CERT}\n"),
            dir: dir.path().to_owned(),
            system_roots: dir.path().join("nope.crt"),
        };
        let e = spec.write().unwrap_err().to_string();
        assert!(e.contains("TPROXY_SYSTEM_ROOTS"), "{e}");
        let roots = dir.path().join("roots.crt");
        fs::write(&roots, "").unwrap();
        let spec = BundleSpec {
            dir: dir.path().join("missing-dir"),
            system_roots: roots,
            ..spec
        };
        let e = spec.write().unwrap_err().to_string();
        assert!(e.contains("TPROXY_CA_BUNDLE_DIR"), "{e}");
    }
}
