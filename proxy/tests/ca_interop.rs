//! CA compatibility with mitmproxy: a confdir created by the real mitmproxy
//! is used as is; `tproxy ca init` (RSA and ECDSA) creates a CA that curl,
//! Python's ssl and openssl accept, and that mitmproxy itself loads;
//! `tproxy ca show` prints subject and fingerprint.
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::nginx::{Nginx, SMALL_BODY};
use support::pki::{TestPki, fingerprint_sha256, pem_certs, x509_text};
use support::proxy::{ProxyBuilder, tproxy_bin};
use support::pyup::run_python;
use support::*;

const T: Duration = Duration::from_secs(30);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Creates a confdir with the real mitmproxy's CertStore.
const MITM_CREATE: &str = r#"
import sys
from mitmproxy.certs import CertStore
store = CertStore.from_store(sys.argv[1], "mitmproxy", 2048)
print(store.default_ca.fingerprint().hex())
"#;

fn tproxy(args: &[&str]) -> std::process::Output {
    run_bounded(Command::new(tproxy_bin()).args(args), T)
}

fn tproxy_ok(args: &[&str]) -> String {
    run_ok(Command::new(tproxy_bin()).args(args), T)
}

/// curl through a proxy on `confdir` to nginx over HTTPS, trusting `ca`.
fn curl_via_proxy_with(confdir: &Path, ca: &Path) {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let p = ProxyBuilder::new()
        .confdir(confdir)
        .upstream_ca(&pki.ca_pem())
        .spawn();
    let url = format!("{}/small.txt", ng.https_base());
    let r = curl(&["-x", &p.proxy_url(), "--cacert", s(ca), &url]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
}

#[test]
fn ca_created_by_mitmproxy_is_used_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let fp_py = run_python(MITM_CREATE, &[s(dir.path())], Duration::from_secs(60));
    let cert = dir.path().join("mitmproxy-ca-cert.pem");
    let before = std::fs::read(dir.path().join("mitmproxy-ca.pem")).unwrap();
    let fp = fingerprint_sha256(&cert);
    assert_eq!(fp.to_lowercase(), fp_py.trim().to_lowercase());
    curl_via_proxy_with(dir.path(), &cert);
    let after = std::fs::read(dir.path().join("mitmproxy-ca.pem")).unwrap();
    assert!(before == after, "tproxy rewrote mitmproxy's CA");
    assert_eq!(fingerprint_sha256(&cert), fp);
}

/// `tproxy ca init` with `key_type`; checks the files and key algorithm.
fn ca_init(key_type: Option<&str>, algo: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["ca", "init", "--confdir", s(dir.path())];
    if let Some(k) = key_type {
        args.extend(["--key-type", k]);
    }
    tproxy_ok(&args);
    let cert = dir.path().join("mitmproxy-ca-cert.pem");
    let combined = std::fs::read_to_string(dir.path().join("mitmproxy-ca.pem")).unwrap();
    assert!(
        combined.contains("PRIVATE KEY-----"),
        "mitmproxy-ca.pem lacks the key"
    );
    assert_eq!(pem_certs(&combined).len(), 1);
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert_eq!(pem_certs(&combined)[0], pem_certs(&pem)[0]);
    let text = x509_text(&pem, &["-text"]);
    assert!(text.contains(algo), "expected {algo}:\n{text}");
    assert!(text.contains("CA:TRUE"), "{text}");
    let subject = x509_text(&pem, &["-subject"]).replace(' ', "");
    assert!(subject.contains("CN=mitmproxy"), "{subject}");
    dir
}

#[test]
fn ca_init_default_is_accepted_by_curl_python_and_openssl() {
    let dir = ca_init(None, "Public Key Algorithm");
    let cert = dir.path().join("mitmproxy-ca-cert.pem");
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let p = ProxyBuilder::new()
        .confdir(dir.path())
        .upstream_ca(&pki.ca_pem())
        .spawn();
    let url = format!("{}/small.txt", ng.https_base());
    let r = curl(&["-x", &p.proxy_url(), "--cacert", s(&cert), &url]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    // Python's ssl (OpenSSL with Python's strict defaults) through CONNECT.
    let py = r#"
import socket, ssl, sys
proxy, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ph, pp = proxy.rsplit(":", 1)
s = socket.create_connection((ph, int(pp)), timeout=20)
s.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    b = s.recv(1)
    if not b: raise SystemExit("proxy closed")
    head += b
assert head.split()[1] == b"200", head
ctx = ssl.create_default_context(cafile=ca)
t = ctx.wrap_socket(s, server_hostname="localhost")
t.sendall(f"GET /small.txt HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode())
data = b""
while True:
    b = t.recv(65536)
    if not b: break
    data += b
print(data.split(b"\r\n", 1)[0].decode())
print(data.split(b"\r\n\r\n", 1)[1].decode(), end="")
"#;
    let out = run_python(
        py,
        &[
            &p.addr("regular").to_string(),
            &ng.https_port.to_string(),
            s(&cert),
        ],
        T,
    );
    assert_eq!(out, format!("HTTP/1.1 200 OK\n{SMALL_BODY}"));
    // openssl s_client verifies the minted chain against the new CA.
    let out = run_bounded(
        Command::new("openssl")
            .args(["s_client", "-proxy", &p.addr("regular").to_string()])
            .args(["-connect", &format!("localhost:{}", ng.https_port)])
            .args(["-servername", "localhost", "-CAfile", s(&cert)])
            .args(["-verify_return_error", "-verify_hostname", "localhost"]),
        T,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
}

#[test]
fn ca_init_ecdsa_works_through_the_proxy() {
    let dir = ca_init(Some("ecdsa"), "id-ecPublicKey");
    curl_via_proxy_with(dir.path(), &dir.path().join("mitmproxy-ca-cert.pem"));
}

#[test]
fn ca_init_rsa_works_through_the_proxy() {
    let dir = ca_init(Some("rsa"), "rsaEncryption");
    curl_via_proxy_with(dir.path(), &dir.path().join("mitmproxy-ca-cert.pem"));
}

/// Loads a confdir with mitmproxy and has it mint a leaf for localhost.
const MITM_MINT: &str = r#"
import sys
from cryptography import x509
from mitmproxy.certs import CertStore
store = CertStore.from_store(sys.argv[1], "mitmproxy", 2048)
entry = store.get_cert("localhost", [x509.DNSName("localhost")])
open(sys.argv[2], "wb").write(entry.cert.to_pem())
print(store.default_ca.fingerprint().hex())
"#;

#[test]
fn ca_created_by_tproxy_loads_and_signs_in_mitmproxy() {
    let dir = ca_init(Some("rsa"), "rsaEncryption");
    let cert = dir.path().join("mitmproxy-ca-cert.pem");
    let leaf = dir.path().join("mitm-leaf.pem");
    let fp_py = run_python(
        MITM_MINT,
        &[s(dir.path()), s(&leaf)],
        Duration::from_secs(60),
    );
    assert_eq!(
        fp_py.trim().to_lowercase(),
        fingerprint_sha256(&cert).to_lowercase()
    );
    // The leaf mitmproxy signed with tproxy's key verifies against tproxy's
    // certificate: key and certificate in mitmproxy-ca.pem belong together.
    let out = run_ok(
        Command::new("openssl").args(["verify", "-CAfile", s(&cert), s(&leaf)]),
        T,
    );
    assert!(out.contains(": OK"), "{out}");
}

#[test]
fn ca_show_prints_subject_fingerprint_and_pem() {
    let dir = ca_init(None, "Public Key Algorithm");
    let cert = dir.path().join("mitmproxy-ca-cert.pem");
    let out = tproxy_ok(&["ca", "show", "--confdir", s(dir.path())]);
    assert!(out.contains("mitmproxy"), "{out}");
    let flat = out.replace(':', "").to_uppercase();
    assert!(
        flat.contains(&fingerprint_sha256(&cert)),
        "fingerprint missing:\n{out}"
    );
    let pem = tproxy_ok(&["ca", "show", "--confdir", s(dir.path()), "--pem"]);
    let file = std::fs::read_to_string(&cert).unwrap();
    assert_eq!(pem_certs(&pem), pem_certs(&file), "{pem}");
}

#[test]
fn ca_init_keeps_existing_ca_unless_forced() {
    let dir = ca_init(None, "Public Key Algorithm");
    let cert = dir.path().join("mitmproxy-ca-cert.pem");
    let fp = fingerprint_sha256(&cert);
    let _ = tproxy(&["ca", "init", "--confdir", s(dir.path())]);
    assert_eq!(
        fingerprint_sha256(&cert),
        fp,
        "ca init overwrote without --force"
    );
    tproxy_ok(&["ca", "init", "--confdir", s(dir.path()), "--force"]);
    assert_ne!(fingerprint_sha256(&cert), fp, "--force kept the old CA");
}
