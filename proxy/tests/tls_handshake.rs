//! Real TLS handshakes over 127.0.0.1: our server config with a minted leaf
//! (rustls and curl as clients), our upstream client config against a server
//! whose certificate comes from a test CA, and the error descriptions.

// Test helpers outside #[test] fns unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, RootCertStore, ServerConnection};
use tproxy::tls::ca::{CA_CERT_PEM_FILE, CertificateAuthority, KeyKind};
use tproxy::tls::certcache::{CertCache, LeafName};
use tproxy::tls::server::server_config;
use tproxy::tls::upstream::{
    UpstreamTlsOptions, client_config, client_rejected_our_cert, describe_upstream_error,
};

const TIMEOUT: Duration = Duration::from_secs(10);

fn alpn(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|p| p.as_bytes().to_vec()).collect()
}

struct Ca {
    dir: tempfile::TempDir,
    cache: CertCache,
}

fn test_ca() -> Ca {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create(dir.path(), KeyKind::EcdsaP256, false).unwrap();
    let cache = CertCache::new(Arc::new(ca), 10).unwrap();
    Ca { dir, cache }
}

/// Accept one connection (bounded wait), handshake with `config`, then
/// answer one HTTP/1.1 request if `http`. Returns the negotiated ALPN.
fn serve_once(
    config: Arc<rustls::ServerConfig>,
    http: bool,
) -> (u16, JoinHandle<io::Result<Option<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let h = std::thread::spawn(move || {
        let deadline = Instant::now() + TIMEOUT;
        let mut sock = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(e),
            }
        };
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(TIMEOUT))?;
        sock.set_write_timeout(Some(TIMEOUT))?;
        let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        let negotiated = conn.alpn_protocol().map(<[u8]>::to_vec);
        if http {
            let mut tls = rustls::Stream::new(&mut conn, &mut sock);
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
                let n = tls.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")?;
            tls.conn.send_close_notify();
            tls.flush()?;
        }
        Ok(negotiated)
    });
    (port, h)
}

/// Handshake as a client; returns the negotiated ALPN.
fn connect(
    config: Arc<rustls::ClientConfig>,
    port: u16,
    name: &str,
) -> io::Result<Option<Vec<u8>>> {
    let mut sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.set_write_timeout(Some(TIMEOUT))?;
    let name = ServerName::try_from(name.to_string()).map_err(io::Error::other)?;
    let mut conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    while conn.wants_write() {
        conn.write_tls(&mut sock)?;
    }
    let negotiated = conn.alpn_protocol().map(<[u8]>::to_vec);
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut sock)?;
    }
    Ok(negotiated)
}

fn trusting(ca: &CertCache, offer: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.ca().cert_der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(tproxy::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn(offer);
    Arc::new(config)
}

#[test]
fn client_trusting_the_ca_completes_a_handshake_with_alpn() {
    let ca = test_ca();
    let (leaf, _) = ca.cache.get(&LeafName::Dns("example.test".into())).unwrap();
    for (server_alpn, client_alpn, want) in [
        (
            &["h2", "http/1.1"][..],
            &["http/1.1", "h2"][..],
            Some(b"h2".to_vec()),
        ),
        (
            &["h2", "http/1.1"][..],
            &["http/1.1"][..],
            Some(b"http/1.1".to_vec()),
        ),
        (&[][..], &["h2"][..], None),
    ] {
        let (port, server) = serve_once(server_config(leaf.clone(), &alpn(server_alpn)), false);
        let got = connect(trusting(&ca.cache, client_alpn), port, "example.test").unwrap();
        assert_eq!(got, want, "client view, server offers {server_alpn:?}");
        assert_eq!(server.join().unwrap().unwrap(), want, "server view");
    }
}

#[test]
fn an_ip_leaf_is_accepted_for_an_ip_connection() {
    let ca = test_ca();
    let (leaf, _) = ca
        .cache
        .get(&LeafName::Ip("127.0.0.1".parse().unwrap()))
        .unwrap();
    let (port, server) = serve_once(server_config(leaf, &[]), false);
    connect(trusting(&ca.cache, &[]), port, "127.0.0.1").unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn curl_trusting_the_ca_fetches_and_one_without_it_is_detected() {
    let ca = test_ca();
    let (leaf, _) = ca
        .cache
        .get(&LeafName::Dns("curl.example.test".into()))
        .unwrap();
    let cafile = ca.dir.path().join(CA_CERT_PEM_FILE);

    let (port, server) = serve_once(server_config(leaf.clone(), &alpn(&["http/1.1"])), true);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&cafile)
        .args(["--resolve", &format!("curl.example.test:{port}:127.0.0.1")])
        .arg(format!("https://curl.example.test:{port}/"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"ok");
    assert_eq!(server.join().unwrap().unwrap(), Some(b"http/1.1".to_vec()));

    // curl with an empty trust store refuses our certificate: the server sees
    // the client's alert, and client_rejected_our_cert says so.
    let empty = ca.dir.path().join("other-ca.pem");
    let other = test_ca();
    std::fs::copy(other.dir.path().join(CA_CERT_PEM_FILE), &empty).unwrap();
    let (port, server) = serve_once(server_config(leaf, &alpn(&["http/1.1"])), true);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&empty)
        .args(["--resolve", &format!("curl.example.test:{port}:127.0.0.1")])
        .arg(format!("https://curl.example.test:{port}/"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = server.join().unwrap().unwrap_err();
    assert!(client_rejected_our_cert(&err), "{err:?}");
}

#[test]
fn rustls_client_rejecting_our_cert_is_detected() {
    let ca = test_ca();
    let other = test_ca();
    let (leaf, _) = ca.cache.get(&LeafName::Dns("example.test".into())).unwrap();
    // `other` has the same name as our CA (all mitmproxy-style CAs do): the
    // client finds it, the signature does not verify, it sends decrypt_error.
    let (port, server) = serve_once(server_config(leaf.clone(), &[]), false);
    let client_err = connect(trusting(&other.cache, &[]), port, "example.test").unwrap_err();
    let server_err = server.join().unwrap().unwrap_err();
    assert!(client_rejected_our_cert(&server_err), "{server_err:?}");
    // A client trusting only an unrelated CA (another name): unknown_ca.
    let mut roots = RootCertStore::empty();
    roots.add(unrelated_ca()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(tproxy::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (port, server) = serve_once(server_config(leaf, &[]), false);
    connect(Arc::new(config), port, "example.test").unwrap_err();
    let server_err = server.join().unwrap().unwrap_err();
    assert!(client_rejected_our_cert(&server_err), "{server_err:?}");
    assert!(
        format!("{server_err:?}").contains("UnknownCA"),
        "{server_err:?}"
    );
    assert!(!client_rejected_our_cert(&client_err));
    assert!(!client_rejected_our_cert(&io::Error::other("plain")));
}

/// A self-signed CA certificate with a name of its own.
fn unrelated_ca() -> rustls::pki_types::CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "unrelated test CA");
    params.self_signed(&key).unwrap().der().clone()
}

fn upstream(opts: &UpstreamTlsOptions, name: &str) -> io::Result<Option<Vec<u8>>> {
    // The "upstream": a server with a leaf from a private test CA.
    let ca = test_ca_for_upstream();
    let (leaf, _) = ca
        .cache
        .get(&LeafName::Dns("upstream.example.test".into()))
        .unwrap();
    let (port, server) = serve_once(server_config(leaf, &alpn(&["h2", "http/1.1"])), false);
    let config = client_config(opts, alpn(&["h2"])).unwrap();
    let result = connect(config, port, name);
    let _ = server.join();
    result
}

/// One CA for all upstream tests, kept in a directory that lives as long as
/// the test process (its certificate file is passed as --upstream-ca).
fn test_ca_for_upstream() -> &'static Ca {
    static CA: std::sync::OnceLock<Ca> = std::sync::OnceLock::new();
    CA.get_or_init(test_ca)
}

#[test]
fn upstream_verification_uses_extra_roots_and_explains_failures() {
    let cafile = test_ca_for_upstream().dir.path().join(CA_CERT_PEM_FILE);
    let with_ca = UpstreamTlsOptions {
        insecure: false,
        extra_roots: vec![cafile.clone()],
    };
    assert_eq!(
        upstream(&with_ca, "upstream.example.test").unwrap(),
        Some(b"h2".to_vec())
    );

    let err = upstream(&UpstreamTlsOptions::default(), "upstream.example.test").unwrap_err();
    let line = describe_upstream_error(&err);
    eprintln!("described: {line}");
    assert!(
        line.contains("unknown issuer")
            && line.contains("--upstream-ca")
            && line.contains("--ssl-insecure"),
        "{line}"
    );
    assert!(!line.contains('\n'));

    let err = upstream(&with_ca, "other.example.test").unwrap_err();
    let line = describe_upstream_error(&err);
    eprintln!("described: {line}");
    assert!(line.contains("not valid for other.example.test"), "{line}");
    assert!(
        line.contains("(it names upstream.example.test)"),
        "names what the certificate is for: {line}"
    );

    let insecure = UpstreamTlsOptions {
        insecure: true,
        extra_roots: vec![],
    };
    assert_eq!(
        upstream(&insecure, "other.example.test").unwrap(),
        Some(b"h2".to_vec())
    );
}

#[test]
fn upstream_describes_a_server_that_does_not_speak_tls() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
    });
    let config = client_config(&UpstreamTlsOptions::default(), vec![]).unwrap();
    let err = connect(config, port, "plain.example.test").unwrap_err();
    h.join().unwrap();
    let line = describe_upstream_error(&err);
    eprintln!("described: {line}");
    assert!(line.starts_with("upstream"), "{line}");
    assert!(line.contains("TLS"), "{line}");
}

#[test]
fn extra_roots_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = client_config(
        &UpstreamTlsOptions {
            insecure: false,
            extra_roots: vec![missing.clone()],
        },
        vec![],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(missing.to_str().unwrap()), "{err}");

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").unwrap();
    let err = client_config(
        &UpstreamTlsOptions {
            insecure: false,
            extra_roots: vec![empty.clone()],
        },
        vec![],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(empty.to_str().unwrap()) && err.contains("CERTIFICATE"),
        "{err}"
    );
}

#[test]
fn client_config_is_cheap_after_the_first_call() {
    let opts = UpstreamTlsOptions::default();
    let start = Instant::now();
    client_config(&opts, alpn(&["h2", "http/1.1"])).unwrap();
    let first = start.elapsed();
    let start = Instant::now();
    for _ in 0..100 {
        client_config(&opts, alpn(&["http/1.1"])).unwrap();
    }
    let next = start.elapsed() / 100;
    eprintln!("client_config: first {first:?} (reads the system trust store), then {next:?}");
}

#[test]
fn upstream_with_an_expired_certificate_is_described() {
    // A private CA (rcgen) and a leaf that expired yesterday.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "expiry test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(vec!["old.example.test".into()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    leaf_params.not_before = now - time::Duration::days(30);
    leaf_params.not_after = now - time::Duration::days(1);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let signer = tproxy::tls::provider()
        .key_provider
        .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(
            leaf_key.serialize_der().into(),
        ))
        .unwrap();
    let certified = Arc::new(rustls::sign::CertifiedKey::new(
        vec![leaf.der().clone()],
        signer,
    ));

    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("expiry-ca.pem");
    std::fs::write(&roots, ca_cert.pem()).unwrap();
    let opts = UpstreamTlsOptions {
        insecure: false,
        extra_roots: vec![roots],
    };
    let (port, server) = serve_once(server_config(certified, &[]), false);
    let err = connect(
        client_config(&opts, vec![]).unwrap(),
        port,
        "old.example.test",
    )
    .unwrap_err();
    let _ = server.join();
    let line = describe_upstream_error(&err);
    eprintln!("described: {line}");
    assert!(line.contains("expired on"), "{line}");
}

/// One connection: server sends "hi" after the handshake (so the client also
/// processes the session tickets that precede it). Returns both views of the
/// handshake kind.
fn resumable_exchange(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> (Option<rustls::HandshakeKind>, Option<rustls::HandshakeKind>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut conn = ServerConnection::new(server).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        let kind = conn.handshake_kind();
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        tls.write_all(b"hi").unwrap();
        tls.flush().unwrap();
        let mut buf = [0u8; 16];
        let _ = tls.read(&mut buf); // until the client closes
        kind
    });
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut conn =
        ClientConnection::new(client, ServerName::try_from("example.test").unwrap()).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let mut buf = [0u8; 2];
    tls.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
    let client_kind = tls.conn.handshake_kind();
    tls.conn.send_close_notify();
    let _ = tls.flush();
    drop(sock);
    (h.join().unwrap(), client_kind)
}

#[test]
fn sessions_resume_across_separately_built_server_configs() {
    let ca = test_ca();
    let (leaf, _) = ca.cache.get(&LeafName::Dns("example.test".into())).unwrap();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cache.ca().cert_der().clone()).unwrap();
        let client = Arc::new(
            rustls::ClientConfig::builder_with_provider(tproxy::tls::provider())
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let first = resumable_exchange(server_config(leaf.clone(), &[]), client.clone());
        assert_eq!(
            first,
            (
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Full)
            )
        );
        // A config built anew (as per connection in the proxy) still resumes.
        let second = resumable_exchange(server_config(leaf.clone(), &[]), client);
        assert_eq!(
            second,
            (
                Some(rustls::HandshakeKind::Resumed),
                Some(rustls::HandshakeKind::Resumed)
            ),
            "{version:?}"
        );
    }
}
