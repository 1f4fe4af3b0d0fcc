//! Fixtures of `h2_engine.rs` (HTTP/2 interception tests): a CONNECT
//! tunnel for clients without proxy support, an HTTP/2-only Python upstream
//! and a raw HTTP/1.1 server sending chunked trailers.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::pki::TestPki;
use crate::support::venv_python;

/// A Python script next to this module.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/h2_support")
        .join(name)
}

/// A local port whose every connection is a CONNECT tunnel to `target`
/// through the proxy (for clients without proxy support). Stops on drop.
pub struct Tunnel {
    /// The local port clients connect to.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Tunnel {
    /// Listen on 127.0.0.1:0; tunnel every connection to `target` via `proxy`.
    pub fn new(proxy: SocketAddr, target: String) -> Tunnel {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        let target = target.clone();
                        std::thread::spawn(move || tunnel_one(c, proxy, &target));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Tunnel { addr, stop }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn tunnel_one(client: TcpStream, proxy: SocketAddr, target: &str) {
    let Ok(mut up) = TcpStream::connect(proxy) else {
        return;
    };
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    if up.write_all(req.as_bytes()).is_err() {
        return;
    }
    // Read the proxy's answer head byte by byte (nothing past it is consumed).
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        match up.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return;
    }
    let (mut c2, mut u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(std::net::Shutdown::Write);
    });
    let (mut c, mut u) = (client, up);
    let _ = std::io::copy(&mut u, &mut c);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}

/// The HTTP/2-only TLS upstream `h2server.py` (Python `h2` + pyOpenSSL; see
/// its docstring for the paths): `/reset…` streams are reset with
/// ENHANCE_YOUR_CALM, `/hang…` get no answer, `/goaway` is answered and
/// followed by GOAWAY, `/echo` returns the request headers as JSON, other
/// paths answer 200 with the path as body. Streams the client resets are
/// printed (`reset PATH CODE`, see `lines`). Killed on drop.
pub struct PyH2 {
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// stdout lines after the READY line.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl PyH2 {
    /// Declines a non-h2 ALPN offer silently (no ALPN), like Python's ssl
    /// module and OpenSSL-based servers.
    pub fn start(pki: &TestPki) -> PyH2 {
        Self::spawn(pki, "decline")
    }

    /// Answers a non-h2 ALPN offer with the no_application_protocol alert,
    /// like Go and rustls servers.
    pub fn strict(pki: &TestPki) -> PyH2 {
        Self::spawn(pki, "alert")
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn spawn(pki: &TestPki, alpn_mismatch: &str) -> PyH2 {
        let mut child = Command::new(venv_python())
            .arg("-u")
            .arg(script("h2server.py"))
            .args(["--host", "127.0.0.1", "--port", "0", "--tls"])
            .arg(pki.server_cert())
            .arg(pki.server_key())
            .args(["--alpn-mismatch", alpn_mismatch])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let later = lines.clone();
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(out);
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut r, &mut line);
            let _ = tx.send(line);
            for l in std::io::BufRead::lines(r).map_while(Result::ok) {
                later.lock().unwrap().push(l);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("python h2 upstream did not start: {line:?}")
            });
        PyH2 { child, port, lines }
    }
}

impl Drop for PyH2 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 server answering every request with a chunked body and a
/// trailer section (threads; runs until the test process ends).
pub fn chunked_trailer_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().take(50) {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
                    match c.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => return,
                    }
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                      5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trail: yes\r\ngrpc-status: 0\r\n\r\n",
                );
            });
        }
    });
    addr
}
