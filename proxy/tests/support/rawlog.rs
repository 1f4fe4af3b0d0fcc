//! A raw logging HTTP/1.1 upstream: every byte it receives is recorded, so a
//! test can prove what reached it (and what never did). Plain TCP, one
//! thread per connection, bounded by the test's lifetime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server answers each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Read the whole request (Content-Length or chunked), answer
    /// `200` with body `ok`, keep the connection.
    Ok,
    /// Read forever, never answer.
    Silent,
    /// Answer `413` as soon as the head is in (before any body), then keep
    /// reading until the client closes.
    RefuseBody,
    /// Answer `101 Switching Protocols` (`Upgrade: h2c`) to anything.
    Switch,
}

/// The running server; stops accepting on drop.
pub struct RawLog {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl RawLog {
    /// On 127.0.0.1, an ephemeral port.
    pub fn start(answer: Answer) -> RawLog {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind raw upstream");
        Self::serve(l, answer)
    }

    /// Serve on an already bound listener (e.g. one made inside a netns).
    pub fn serve(l: TcpListener, answer: Answer) -> RawLog {
        let addr = l.local_addr().expect("local addr");
        l.set_nonblocking(true).expect("nonblocking");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let log = log2.clone();
                        std::thread::spawn(move || conn(s, answer, &log));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        RawLog { addr, log, stop }
    }

    /// Everything received so far, all connections (lossy UTF-8).
    pub fn received(&self) -> String {
        let g = self.log.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&g).into_owned()
    }

    /// Waits up to `t` for `needle` to be received.
    pub fn wait_for(&self, needle: &str, t: Duration) -> bool {
        super::wait_until(t, || self.received().contains(needle).then_some(())).is_some()
    }
}

impl Drop for RawLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn conn(mut s: TcpStream, answer: Answer, log: &Mutex<Vec<u8>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 16384];
    let mut read = |s: &mut TcpStream, pending: &mut Vec<u8>| -> bool {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&buf[..n]);
                pending.extend_from_slice(&buf[..n]);
                true
            }
        }
    };
    loop {
        // Head.
        let end = loop {
            if let Some(i) = find(&pending, b"\r\n\r\n") {
                break i + 4;
            }
            if !read(&mut s, &mut pending) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
        pending.drain(..end);
        match answer {
            Answer::Silent => while read(&mut s, &mut pending) {},
            Answer::RefuseBody => {
                let _ = s.write_all(
                    b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n",
                );
                while read(&mut s, &mut pending) {}
                return;
            }
            Answer::Switch => {
                let _ = s.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n",
                );
                while read(&mut s, &mut pending) {}
                return;
            }
            Answer::Ok => {}
        }
        // Body.
        if head.contains("transfer-encoding: chunked") {
            loop {
                if let Some(i) = find(&pending, b"0\r\n")
                    && let Some(j) = find(&pending[i..], b"\r\n\r\n")
                {
                    pending.drain(..i + j + 4);
                    break;
                }
                if !read(&mut s, &mut pending) {
                    return;
                }
            }
        } else if let Some(cl) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            while pending.len() < cl {
                if !read(&mut s, &mut pending) {
                    return;
                }
            }
            pending.drain(..cl);
        }
        if s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-type: text/plain\r\n\r\nok\n",
        )
        .is_err()
        {
            return;
        }
    }
}
