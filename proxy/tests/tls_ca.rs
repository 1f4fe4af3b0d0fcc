//! The CA store against real tools: files and modes as mitmproxy writes them,
//! read by openssl and by mitmproxy itself; CAs made by mitmproxy and openssl
//! loaded; minted leaves verified by `openssl verify`.

// Test helpers outside #[test] fns unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tproxy::tls::ca::{
    CA_CERT_CER_FILE, CA_CERT_P12_FILE, CA_CERT_PEM_FILE, CA_FILE, CA_P12_FILE, CaError,
    CertificateAuthority, DHPARAM_FILE, KeyKind,
};
use tproxy::tls::certcache::{CertCache, LeafName};

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The test venv's python (scripts/install-test-deps.sh), or None outside CI
/// when it was not built (the caller then skips, saying so).
fn venv_python() -> Option<PathBuf> {
    let venv = std::env::var_os("TPROXY_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv"));
    let py = venv.join("bin/python");
    if py.exists() {
        return Some(py);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} missing: run scripts/install-test-deps.sh",
        py.display()
    );
    eprintln!(
        "skipping: {} missing (run scripts/install-test-deps.sh)",
        py.display()
    );
    None
}

fn openssl_text(cert: &Path) -> String {
    run(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(cert))
}

fn check_file_set(dir: &Path, kind: KeyKind) {
    for f in [
        CA_FILE,
        CA_P12_FILE,
        CA_CERT_PEM_FILE,
        CA_CERT_CER_FILE,
        CA_CERT_P12_FILE,
        DHPARAM_FILE,
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(dir), 0o700, "confdir created 0700");
    assert_eq!(mode(&dir.join(CA_FILE)), 0o600);
    assert_eq!(mode(&dir.join(CA_P12_FILE)), 0o600);
    assert_eq!(
        std::fs::read(dir.join(CA_CERT_PEM_FILE)).unwrap(),
        std::fs::read(dir.join(CA_CERT_CER_FILE)).unwrap()
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let text = openssl_text(&dir.join(CA_CERT_PEM_FILE));
    for needle in [
        "Subject: CN = mitmproxy, O = mitmproxy",
        "Issuer: CN = mitmproxy, O = mitmproxy",
        "X509v3 Basic Constraints: critical",
        "CA:TRUE",
        "X509v3 Key Usage: critical",
        "Certificate Sign, CRL Sign",
        "X509v3 Subject Key Identifier",
        "TLS Web Server Authentication",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    match kind {
        KeyKind::Rsa2048 => {
            assert!(text.contains("Public-Key: (2048 bit)") && text.contains("rsaEncryption"))
        }
        KeyKind::EcdsaP256 => {
            assert!(text.contains("id-ecPublicKey") && text.contains("prime256v1"))
        }
    }
    // Ten years of validity.
    let dates = run(Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-checkend",
            &(9 * 365 * 86400).to_string(),
            "-in",
        ])
        .arg(dir.join(CA_CERT_PEM_FILE)));
    assert!(dates.contains("will not expire"), "{dates}");

    // The key in mitmproxy-ca.pem belongs to the certificate in it.
    let ca_pem = dir.join(CA_FILE);
    let from_key = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&ca_pem));
    let from_cert = run(Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(&ca_pem));
    assert_eq!(from_key, from_cert);

    // PKCS#12 files open with the empty password and pass the MAC check.
    let p12 = run(Command::new("openssl")
        .args(["pkcs12", "-noenc", "-passin", "pass:", "-in"])
        .arg(dir.join(CA_P12_FILE)));
    assert!(
        p12.contains("BEGIN CERTIFICATE") && p12.contains("BEGIN PRIVATE KEY"),
        "{p12}"
    );
    assert!(p12.contains("friendlyName: mitmproxy"), "{p12}");
    let p12 = run(Command::new("openssl")
        .args(["pkcs12", "-noenc", "-passin", "pass:", "-in"])
        .arg(dir.join(CA_CERT_P12_FILE)));
    assert!(
        p12.contains("BEGIN CERTIFICATE") && !p12.contains("PRIVATE KEY"),
        "{p12}"
    );
    run(Command::new("openssl")
        .args(["dhparam", "-check", "-noout", "-in"])
        .arg(dir.join(DHPARAM_FILE)));
}

#[test]
fn creates_rsa_and_ecdsa_cas_like_mitmproxy() {
    for kind in [KeyKind::Rsa2048, KeyKind::EcdsaP256] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("confdir");
        let ca = CertificateAuthority::create(&dir, kind, false).unwrap();
        assert_eq!(ca.key_kind(), Some(kind));
        check_file_set(&dir, kind);

        let loaded = CertificateAuthority::load(&dir).unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.key_kind(), Some(kind));

        // describe() agrees with openssl's fingerprint.
        let fp = run(Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(dir.join(CA_CERT_PEM_FILE)));
        let fp = fp.trim().rsplit('=').next().unwrap().to_string();
        let d = loaded.describe();
        for needle in [
            "CN=mitmproxy",
            "O=mitmproxy",
            &fp,
            CA_FILE,
            CA_CERT_PEM_FILE,
            "not after",
        ] {
            assert!(d.contains(needle), "{needle:?} not in:\n{d}");
        }
        let want = match kind {
            KeyKind::Rsa2048 => "RSA 2048-bit",
            KeyKind::EcdsaP256 => "ECDSA P-256",
        };
        assert!(d.contains(want), "{d}");
    }
}

#[test]
fn create_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert!(matches!(
        CertificateAuthority::load(dir),
        Err(CaError::NotFound { .. })
    ));
    let (first, created) = CertificateAuthority::load_or_create(dir, KeyKind::EcdsaP256).unwrap();
    assert!(created);
    let before = std::fs::read(dir.join(CA_FILE)).unwrap();

    let err = CertificateAuthority::create(dir, KeyKind::EcdsaP256, false).unwrap_err();
    assert!(matches!(err, CaError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(
        std::fs::read(dir.join(CA_FILE)).unwrap(),
        before,
        "untouched"
    );

    let (again, created) = CertificateAuthority::load_or_create(dir, KeyKind::EcdsaP256).unwrap();
    assert!(!created);
    assert_eq!(again.cert_der(), first.cert_der());

    let replaced = CertificateAuthority::create(dir, KeyKind::EcdsaP256, true).unwrap();
    assert_ne!(replaced.fingerprint_sha256(), first.fingerprint_sha256());
    assert_eq!(
        CertificateAuthority::load(dir).unwrap().cert_der(),
        replaced.cert_der()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(CA_CERT_PEM_FILE)).unwrap(),
        replaced.cert_pem()
    );
}

#[test]
fn bad_ca_files_give_errors_that_say_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join(CA_FILE), "not pem").unwrap();
    let err = CertificateAuthority::load(dir).unwrap_err().to_string();
    assert!(
        err.contains("mitmproxy-ca.pem") && err.contains("PRIVATE KEY"),
        "{err}"
    );

    // Key of one CA with the certificate of another.
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    CertificateAuthority::create(a.path(), KeyKind::EcdsaP256, false).unwrap();
    CertificateAuthority::create(b.path(), KeyKind::EcdsaP256, false).unwrap();
    let key_a = std::fs::read_to_string(a.path().join(CA_FILE)).unwrap();
    let key_a = &key_a[..key_a.find("-----BEGIN CERTIFICATE").unwrap()];
    let cert_b = std::fs::read_to_string(b.path().join(CA_CERT_PEM_FILE)).unwrap();
    std::fs::write(dir.join(CA_FILE), format!("{key_a}{cert_b}")).unwrap();
    let err = CertificateAuthority::load(dir).unwrap_err().to_string();
    assert!(err.contains("does not belong"), "{err}");
}

/// Mint a leaf for `name` and check it with `openssl verify` against the
/// confdir's client-facing certificate file.
fn mint_and_verify(dir: &Path, ca: CertificateAuthority, name: &str) {
    let cache = CertCache::new(Arc::new(ca), 10).unwrap();
    let (leaf, _) = cache.get(&LeafName::Dns(name.into())).unwrap();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64_lines(&leaf.cert[0])
    );
    let leaf_path = dir.join(format!("leaf-{name}.pem"));
    std::fs::write(&leaf_path, pem).unwrap();
    let out = run(Command::new("openssl")
        .args([
            "verify",
            "-purpose",
            "sslserver",
            "-verify_hostname",
            name,
            "-CAfile",
        ])
        .arg(dir.join(CA_CERT_PEM_FILE))
        .arg(&leaf_path));
    assert!(out.contains(": OK"), "{out}");
    let text = openssl_text(&leaf_path);
    assert!(text.contains(&format!("DNS:{name}")), "{text}");
    assert!(text.contains(&format!("Subject: CN = {name}")), "{text}");
    let ca_subject = openssl_text(&dir.join(CA_CERT_PEM_FILE));
    let ca_subject = ca_subject
        .lines()
        .find(|l| l.trim_start().starts_with("Subject:"))
        .unwrap();
    let issuer = text
        .lines()
        .find(|l| l.trim_start().starts_with("Issuer:"))
        .unwrap();
    assert_eq!(
        issuer.trim().trim_start_matches("Issuer:"),
        ca_subject.trim().trim_start_matches("Subject:")
    );
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
}

fn base64_lines(der: &[u8]) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    b.as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn loads_a_ca_made_by_mitmproxy_and_mints_verifiable_leaves() {
    let Some(py) = venv_python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mitm");
    run(Command::new(&py).arg("-c").arg(format!(
        "from mitmproxy.certs import CertStore; CertStore.from_store({:?}, 'mitmproxy', 2048)",
        dir.to_str().unwrap()
    )));
    let key_pem = std::fs::read_to_string(dir.join(CA_FILE)).unwrap();
    assert!(
        key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "mitmproxy writes PKCS#1"
    );
    let ca = CertificateAuthority::load(&dir).unwrap();
    assert_eq!(ca.key_kind(), Some(KeyKind::Rsa2048));
    assert_eq!(ca.subject(), "CN=mitmproxy, O=mitmproxy");
    mint_and_verify(&dir, ca, "example.test");
}

#[test]
fn mitmproxy_loads_a_ca_made_by_tproxy() {
    let Some(py) = venv_python() else { return };
    for kind in [KeyKind::Rsa2048, KeyKind::EcdsaP256] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ours");
        let ca = CertificateAuthority::create(&dir, kind, false).unwrap();
        mint_and_verify(
            &dir,
            CertificateAuthority::load(&dir).unwrap(),
            "shop.example.test",
        );
        // mitmproxy reads our mitmproxy-ca.pem and mints with it; Python's
        // cryptography opens our PKCS#12 files.
        let script = format!(
            r#"
from pathlib import Path
from cryptography.hazmat.primitives.serialization import pkcs12
from mitmproxy.certs import CertStore
d = Path({dir:?})
store = CertStore.from_store(d, "mitmproxy", 2048)
entry = store.get_cert("api.example.test", [])
print("issuer", entry.cert.issuer)
key, cert, extra = pkcs12.load_key_and_certificates((d / "mitmproxy-ca.p12").read_bytes(), None)
assert key is not None and cert is not None
key, cert2, extra = pkcs12.load_key_and_certificates((d / "mitmproxy-ca-cert.p12").read_bytes(), None)
# A certificate without its key is an "additional" certificate.
assert key is None and (cert2 or extra[0]) == cert
print("fingerprint", cert.fingerprint(__import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256()).hex())
"#,
            dir = dir.to_str().unwrap()
        );
        let out = run(Command::new(&py).arg("-c").arg(script));
        assert!(out.contains("issuer") && out.contains("mitmproxy"), "{out}");
        let fp = ca.fingerprint_sha256().replace(':', "").to_lowercase();
        assert!(out.contains(&fp), "{out}");
    }
}

#[test]
fn loads_openssl_made_cas_with_every_key_encoding() {
    let tmp = tempfile::tempdir().unwrap();
    // (name, key generation command) → SEC1 "EC PRIVATE KEY", PKCS#8 EC,
    // PKCS#8 RSA, PKCS#1 RSA, P-384.
    let cases: [(&str, &[&str]); 5] = [
        (
            "ec-sec1",
            &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
        ),
        (
            "ec-pkcs8",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
        ),
        (
            "rsa-pkcs8",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
        ),
        ("rsa-pkcs1", &["genrsa", "-traditional", "2048"]),
        (
            "ec-p384",
            &["ecparam", "-name", "secp384r1", "-genkey", "-noout"],
        ),
    ];
    for (name, keygen) in cases {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let key = dir.join("key.pem");
        // `-out` right after the subcommand: genrsa wants the bit count last.
        run(Command::new("openssl")
            .arg(keygen[0])
            .arg("-out")
            .arg(&key)
            .args(&keygen[1..]));
        let head = std::fs::read_to_string(&key).unwrap();
        let head = head.lines().next().unwrap().to_string();
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-new",
                "-subj",
                &format!("/CN={name} CA"),
                "-days",
                "30",
            ])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-key")
            .arg(&key)
            .arg("-out")
            .arg(dir.join(CA_CERT_PEM_FILE)));
        let both = std::fs::read_to_string(&key).unwrap()
            + &std::fs::read_to_string(dir.join(CA_CERT_PEM_FILE)).unwrap();
        std::fs::write(dir.join(CA_FILE), both).unwrap();
        let ca =
            CertificateAuthority::load(&dir).unwrap_or_else(|e| panic!("{name} ({head}): {e}"));
        eprintln!("{name}: {head} -> {:?}", ca.key_kind());
        mint_and_verify(&dir, ca, "openssl-ca.example.test");
    }
}
