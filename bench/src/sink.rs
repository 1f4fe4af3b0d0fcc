//! A minimal OTLP/HTTP sink for the observability-cost scenario: accepts
//! POSTs on 127.0.0.1 in the node namespace, drains them, answers 200, and
//! counts exports. Stops (and joins its threads) on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::topo::enter_netns;

/// The running sink.
pub struct Sink {
    stop: Arc<AtomicBool>,
    exports: Arc<AtomicU64>,
    port: u16,
    handle: Option<JoinHandle<()>>,
}

impl Sink {
    /// Listens on 127.0.0.1:`port` inside namespace `ns` (None: the bench's
    /// own namespace; port 0: any free port, see [`Sink::port`]).
    pub fn start(ns: Option<&str>, port: u16) -> Result<Sink, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let exports = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let path = ns.map(|ns| format!("/run/netns/{ns}"));
        let (s, e) = (Arc::clone(&stop), Arc::clone(&exports));
        let handle = std::thread::spawn(move || {
            let l = match path.as_deref() {
                Some(p) => enter_netns(p),
                None => Ok(()),
            }
            .and_then(|()| {
                TcpListener::bind(("127.0.0.1", port)).map_err(|e| format!("OTLP sink bind: {e}"))
            });
            let l = match l.and_then(|l| {
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
                let port = l.local_addr().map_err(|e| e.to_string())?.port();
                Ok((l, port))
            }) {
                Ok((l, port)) => {
                    let _ = tx.send(Ok(port));
                    l
                }
                Err(err) => {
                    let _ = tx.send(Err(err));
                    return;
                }
            };
            let mut workers = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let (s, e) = (Arc::clone(&s), Arc::clone(&e));
                        workers.push(std::thread::spawn(move || serve(c, &s, &e)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| "OTLP sink did not start".to_owned())??;
        Ok(Sink {
            stop,
            exports,
            port,
            handle: Some(handle),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Export requests received so far.
    pub fn exports(&self) -> u64 {
        self.exports.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Serves keep-alive POSTs on one connection until it closes or the sink stops.
fn serve(mut c: TcpStream, stop: &AtomicBool, exports: &AtomicU64) {
    let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        // Complete request in buf?
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = req.parse(&buf) {
            let len: usize = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= head + len {
                buf.drain(..head + len);
                exports.fetch_add(1, Ordering::Relaxed);
                let resp = "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                if c.write_all(resp.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        match c.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        if buf.len() > 64 * 1024 * 1024 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_answers_keep_alive_posts_and_counts_them() {
        let sink = Sink::start(None, 0).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", sink.port())).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let body = [7u8; 3000];
        for _ in 0..2 {
            let head = format!(
                "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            c.write_all(head.as_bytes()).unwrap();
            c.write_all(&body).unwrap();
            let mut buf = [0u8; 256];
            let n = c.read(&mut buf).unwrap();
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 200 OK"),
                "{:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
        assert_eq!(sink.exports(), 2);
    }
}
