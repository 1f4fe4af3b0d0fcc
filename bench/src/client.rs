//! The built-in HTTP/1.1 client (std threads + blocking rustls) for what wrk
//! and h2load cannot do: explicit-proxy CONNECT, a new TLS connection per
//! request with a fresh SNI each time (cold certificate cache), a paced
//! request rate, and thousands of idle connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use crate::loadgen::{Measure, percentiles};
use crate::topo::{UPSTREAM_HOST, enter_netns, interrupted};

/// What the client threads do.
#[derive(Debug, Clone)]
pub struct Load {
    /// Where to connect (the upstream, or the proxy for `connect_via`).
    pub target: SocketAddr,
    /// Send `CONNECT upstream.test:443` first (explicit proxy).
    pub via_connect: bool,
    /// TLS (HTTPS) or plain HTTP.
    pub tls: bool,
    /// A new connection for every request.
    pub new_conn: bool,
    /// A unique SNI per connection (`c<thread>-<n>.upstream.test`).
    pub unique_sni: bool,
    /// Concurrent connections (one thread each).
    pub connections: usize,
    /// Measured time.
    pub duration: Duration,
    /// Total requests per second to pace to (None: as fast as possible).
    pub rate: Option<f64>,
    /// Request path.
    pub path: String,
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Client TLS config: certificates not verified (signatures are), no
/// session resumption (every handshake is a full one), ALPN http/1.1.
pub fn tls_config() -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("rustls: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(b),
            Conn::Tls(s) => s.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(b),
            Conn::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

fn io_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Reads one HTTP/1.1 response (Content-Length framing); returns the status.
fn read_response(c: &mut impl Read, buf: &mut Vec<u8>) -> Result<u16, String> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = c.read(&mut chunk).map_err(io_err)?;
        if n == 0 {
            return Err("connection closed before a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = resp.parse(buf).map_err(io_err)? {
            let status = resp.code.unwrap_or(0);
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut have = buf.len() - head;
            while have < len {
                let n = c.read(&mut chunk).map_err(io_err)?;
                if n == 0 {
                    return Err("connection closed inside a body".into());
                }
                have += n;
            }
            return Ok(status);
        }
        if buf.len() > 64 * 1024 {
            return Err("response head too large".into());
        }
    }
}

/// Opens one connection as `load` says (CONNECT, TLS).
fn open(load: &Load, cfg: &Arc<ClientConfig>, sni: &str) -> Result<Conn, String> {
    let s = TcpStream::connect_timeout(&load.target, Duration::from_secs(5)).map_err(io_err)?;
    s.set_nodelay(true).map_err(io_err)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io_err)?;
    let mut s = s;
    if load.via_connect {
        let port = if load.tls { 443 } else { 80 };
        write!(
            s,
            "CONNECT {UPSTREAM_HOST}:{port} HTTP/1.1\r\nHost: {UPSTREAM_HOST}:{port}\r\n\r\n"
        )
        .map_err(io_err)?;
        let mut buf = Vec::new();
        let mut b = [0u8; 1];
        // Byte by byte: nothing after the CONNECT response may be consumed.
        while !buf.ends_with(b"\r\n\r\n") && buf.len() < 8192 {
            if s.read(&mut b).map_err(io_err)? == 0 {
                return Err("proxy closed after CONNECT".into());
            }
            buf.push(b[0]);
        }
        if !buf.starts_with(b"HTTP/1.1 200") && !buf.starts_with(b"HTTP/1.0 200") {
            return Err(format!(
                "CONNECT refused: {}",
                String::from_utf8_lossy(&buf)
                    .lines()
                    .next()
                    .unwrap_or_default()
            ));
        }
    }
    if !load.tls {
        return Ok(Conn::Plain(s));
    }
    let name = ServerName::try_from(sni.to_owned()).map_err(io_err)?;
    let mut conn = ClientConnection::new(Arc::clone(cfg), name).map_err(io_err)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut s).map_err(io_err)?;
    }
    Ok(Conn::Tls(Box::new(StreamOwned::new(conn, s))))
}

/// Runs `load` from namespace `ns`; latency is per request (including
/// connect + handshake with `new_conn`).
pub fn run(ns: &str, load: &Load) -> Result<Measure, String> {
    let cfg = tls_config()?;
    let path = format!("/run/netns/{ns}");
    let start = Instant::now() + Duration::from_millis(200);
    let deadline = start + load.duration;
    let threads: Vec<_> = (0..load.connections.max(1))
        .map(|t| {
            let (load, cfg, path) = (load.clone(), Arc::clone(&cfg), path.clone());
            std::thread::spawn(move || -> Result<(Vec<f64>, u64), String> {
                enter_netns(&path)?;
                let interval = load
                    .rate
                    .map(|r| Duration::from_secs_f64(load.connections as f64 / r.max(1.0)));
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut conn: Option<Conn> = None;
                let mut buf = Vec::with_capacity(16 * 1024);
                let close = if load.new_conn {
                    "Connection: close\r\n"
                } else {
                    ""
                };
                let req = format!(
                    "GET {} HTTP/1.1\r\nHost: {UPSTREAM_HOST}\r\n{close}\r\n",
                    load.path
                );
                let mut next = start;
                let mut i = 0u64;
                std::thread::sleep(start.saturating_duration_since(Instant::now()));
                while Instant::now() < deadline && !interrupted() {
                    if let Some(iv) = interval {
                        // Stagger the threads' first requests over one interval.
                        if i == 0 {
                            next += iv.mul_f64(t as f64 / load.connections.max(1) as f64);
                        }
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next += iv;
                    }
                    i += 1;
                    let t0 = Instant::now();
                    let result = (|| -> Result<(), String> {
                        if conn.is_none() {
                            let sni = if load.unique_sni {
                                format!("c{t}-{i}.{UPSTREAM_HOST}")
                            } else {
                                UPSTREAM_HOST.to_owned()
                            };
                            conn = Some(open(&load, &cfg, &sni)?);
                        }
                        let c = conn.as_mut().ok_or("no connection")?;
                        c.write_all(req.as_bytes()).map_err(io_err)?;
                        let status = read_response(c, &mut buf)?;
                        if status != 200 {
                            return Err(format!("status {status}"));
                        }
                        Ok(())
                    })();
                    match result {
                        Ok(()) => lat.push(t0.elapsed().as_secs_f64() * 1e6),
                        Err(_) => {
                            errors += 1;
                            conn = None;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    if load.new_conn {
                        conn = None;
                    }
                }
                Ok((lat, errors))
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for th in threads {
        let (lat, e) = th.join().map_err(|_| "client thread panicked")??;
        all.extend(lat);
        errors += e;
    }
    let secs = load.duration.as_secs_f64();
    let ops = all.len() as u64;
    if ops == 0 {
        return Err(format!("no request succeeded ({errors} errors)"));
    }
    let (p50, p99, p999) = percentiles(all);
    Ok(Measure {
        ops,
        secs,
        errors,
        bytes: 0,
        p50_us: p50,
        p99_us: p99,
        p999_us: p999,
    })
}

/// Idle connections held open from a namespace; dropped together.
pub struct IdleConns {
    conns: Vec<Conn>,
    /// Connections that failed to open.
    pub failed: usize,
}

impl IdleConns {
    /// Opens up to `n` connections from `ns` to `target` (time-bounded by
    /// `limit`); with `request`, each completes one keep-alive request first.
    pub fn open(
        ns: &str,
        target: SocketAddr,
        tls: bool,
        request: bool,
        n: usize,
        limit: Duration,
    ) -> Result<IdleConns, String> {
        let cfg = tls_config()?;
        let path = format!("/run/netns/{ns}");
        let load = Load {
            target,
            via_connect: false,
            tls,
            new_conn: false,
            unique_sni: false,
            connections: 1,
            duration: Duration::ZERO,
            rate: None,
            path: crate::upstream::SMALL_PATH.into(),
        };
        std::thread::spawn(move || -> Result<IdleConns, String> {
            enter_netns(&path)?;
            let t0 = Instant::now();
            let mut conns = Vec::with_capacity(n);
            let mut failed = 0;
            let mut buf = Vec::new();
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: {UPSTREAM_HOST}\r\n\r\n",
                load.path
            );
            while conns.len() < n && t0.elapsed() < limit && !interrupted() && failed < 100 {
                let r = (|| -> Result<Conn, String> {
                    let mut c = open(&load, &cfg, UPSTREAM_HOST)?;
                    if request {
                        c.write_all(req.as_bytes()).map_err(io_err)?;
                        read_response(&mut c, &mut buf)?;
                    }
                    Ok(c)
                })();
                match r {
                    Ok(c) => conns.push(c),
                    Err(_) => failed += 1,
                }
            }
            Ok(IdleConns { conns, failed })
        })
        .join()
        .map_err(|_| "idle-connection thread panicked".to_owned())?
    }

    /// Connections held.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True when none are held.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}
