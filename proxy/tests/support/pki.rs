//! Test PKI made with the openssl CLI (independent of the proxy's own rcgen
//! code): a CA and one server certificate for `localhost`, `upstream.test`,
//! 127.0.0.1 and 198.18.2.2 (plus 198.18.2.3).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::run_ok;

/// Names the server certificate covers.
pub const SERVER_SANS: &str = "DNS:localhost,DNS:upstream.test,DNS:my-bucket.s3.amazonaws.com,DNS:s3.amazonaws.com,IP:127.0.0.1,IP:198.18.2.2,IP:198.18.2.3";

/// A CA and a server certificate in a temporary directory.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// Creates the CA (`CN=tproxy test CA`, P-256) and the server cert.
    pub fn new() -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("tproxy-pki")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let t = Duration::from_secs(30);
        run_ok(
            Command::new("openssl")
                .current_dir(d)
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key"])
                .args([
                    "-out",
                    "ca.pem",
                    "-days",
                    "30",
                    "-subj",
                    "/CN=tproxy test CA",
                ])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .args(["-addext", "subjectKeyIdentifier=hash"]),
            t,
        );
        run_ok(
            Command::new("openssl")
                .current_dir(d)
                .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key"])
                .args(["-out", "server.csr", "-subj", "/CN=localhost"]),
            t,
        );
        std::fs::write(
            d.join("server.ext"),
            format!(
                "subjectAltName={SERVER_SANS}\nbasicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n\
                 subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
            ),
        )
        .expect("write server.ext");
        run_ok(
            Command::new("openssl")
                .current_dir(d)
                .args(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem"])
                .args(["-CAkey", "ca.key", "-CAcreateserial", "-days", "30"])
                .args(["-extfile", "server.ext", "-out", "server.pem"]),
            t,
        );
        TestPki { dir }
    }

    /// Directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate (PEM) — give it to the proxy as `--upstream-ca`.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate (PEM).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server key (PEM, PKCS#8).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

/// Runs `openssl x509 -noout <args>` on a PEM certificate given as text.
pub fn x509_text(pem: &str, args: &[&str]) -> String {
    let f = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(f.path(), pem).expect("write pem");
    run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-in"])
            .arg(f.path())
            .args(args),
        Duration::from_secs(10),
    )
}

/// The PEM blocks (`-----BEGIN CERTIFICATE-----` … `END`) found in `text`.
pub fn pem_certs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            cur = Some(String::new());
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(line);
            c.push('\n');
        }
        if line.starts_with("-----END CERTIFICATE-----")
            && let Some(c) = cur.take()
        {
            out.push(c);
        }
    }
    out
}

/// Colon-free upper-case SHA-256 fingerprint of a PEM certificate file.
pub fn fingerprint_sha256(cert: &Path) -> String {
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(cert),
        Duration::from_secs(10),
    );
    // "sha256 Fingerprint=AB:CD:..."
    out.trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .replace(':', "")
        .to_ascii_uppercase()
}
