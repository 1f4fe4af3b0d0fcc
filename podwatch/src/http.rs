//! Minimal HTTP/1.1 endpoint for `/metrics` and `/healthz` (hand-written on
//! tokio + httparse: two GET routes do not warrant a server framework).
//!
//! One request per connection, `Connection: close`, 8 KiB request-head limit
//! (`431` beyond), 5 s to send the head and 5 s to take the answer, at most
//! [`MAX_CONNECTIONS`] at once (more are closed at once): the port is on the
//! node's IP, and a client that connects and stalls must not pile up tasks
//! and buffers in the node agent.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;
use crate::reconcile::unix_now;

const MAX_HEAD: usize = 8192;
const READ_DEADLINE: Duration = Duration::from_secs(5);
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; Prometheus and the kubelet need a handful.
pub const MAX_CONNECTIONS: usize = 64;

/// Health rule: healthy until the first reconcile is `grace` seconds overdue
/// (start-up), then while the last successful reconcile is at most `max_age`
/// seconds old.
#[derive(Debug, Clone, Copy)]
pub struct Health {
    /// Unix time the agent started.
    pub started: i64,
    /// Seconds allowed before the first successful reconcile.
    pub grace: i64,
    /// Oldest acceptable successful reconcile, in seconds.
    pub max_age: i64,
}

impl Health {
    /// `Ok` when healthy, else the reason.
    pub fn check(&self, last_success: i64, now: i64) -> Result<(), &'static str> {
        if last_success == 0 {
            if now - self.started <= self.grace {
                Ok(())
            } else {
                Err("no successful reconcile since start")
            }
        } else if now - last_success <= self.max_age {
            Ok(())
        } else {
            Err("last successful reconcile is too old")
        }
    }
}

/// Binds the listener with SO_REUSEADDR + SO_REUSEPORT: during a DaemonSet
/// surge rollout the new pod's podwatch (host network) binds the port while
/// the old one still holds it.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.bind(addr)?;
    sock.listen(128)
}

/// Serves forever on `listener`.
pub async fn serve(listener: TcpListener, metrics: Metrics, health: Health) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, limit = MAX_CONNECTIONS, "http connection limit reached; closed");
                    drop(stream);
                    continue;
                };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) = handle(stream, &metrics, health).await {
                        tracing::debug!(error = %e, "http connection error");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= MAX_HEAD {
            return Ok(buf);
        }
    }
}

async fn handle(mut stream: TcpStream, metrics: &Metrics, health: Health) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_DEADLINE, read_head(&mut stream)).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let (status, ctype, body) = match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => route(
            req.method.unwrap_or(""),
            req.path.unwrap_or(""),
            metrics,
            health,
        ),
        Err(httparse::Error::TooManyHeaders) => too_large("more than 32 header fields"),
        Ok(httparse::Status::Partial) if head.len() >= MAX_HEAD => {
            too_large("request head larger than 8192 bytes")
        }
        _ => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
    };
    let head_only = req.method == Some("HEAD");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        if !head_only {
            stream.write_all(body.as_bytes()).await?;
        }
        stream.shutdown().await
    };
    match tokio::time::timeout(WRITE_DEADLINE, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client did not take the response in time",
        )),
    }
}

fn too_large(why: &str) -> (&'static str, &'static str, String) {
    (
        "431 Request Header Fields Too Large",
        "text/plain",
        format!("{why}\n"),
    )
}

fn route(
    method: &str,
    path: &str,
    metrics: &Metrics,
    health: Health,
) -> (&'static str, &'static str, String) {
    if method != "GET" && method != "HEAD" {
        return (
            "405 Method Not Allowed",
            "text/plain",
            "use GET\n".to_owned(),
        );
    }
    let path = path.split('?').next().unwrap_or("");
    match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => match health.check(metrics.last_success.get(), unix_now()) {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_owned()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_rules() {
        let h = Health {
            started: 1000,
            grace: 300,
            max_age: 180,
        };
        assert!(h.check(0, 1200).is_ok());
        assert!(h.check(0, 1301).is_err());
        assert!(h.check(1500, 1680).is_ok());
        assert!(h.check(1500, 1681).is_err());
    }

    async fn get(addr: SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// The responder on a loopback port, healthy for 300 s.
    async fn start(metrics: Metrics) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let health = Health {
            started: unix_now(),
            grace: 300,
            max_age: 180,
        };
        (addr, tokio::spawn(serve(l, metrics, health)))
    }

    #[tokio::test]
    async fn serves_metrics_healthz_and_errors() {
        let metrics = Metrics::new().unwrap();
        metrics.reconciles.inc();
        let (addr, server) = start(metrics.clone()).await;
        let m = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(m.contains("tproxy_podwatch_reconciles_total 1\n"), "{m}");
        assert!(
            m.contains("tproxy_podwatch_rules{family=\"ipv6\"} 0\n"),
            "{m}"
        );
        let h = get(addr, "GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(
            h.starts_with("HTTP/1.1 200 OK\r\n") && h.ends_with("ok\n"),
            "{h}"
        );
        let n = get(addr, "GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(n.starts_with("HTTP/1.1 404"), "{n}");
        let p = get(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(p.starts_with("HTTP/1.1 405"), "{p}");
        let b = get(addr, "\x00\x01garbage\r\n\r\n").await;
        assert!(b.starts_with("HTTP/1.1 400"), "{b}");
        let big = format!(
            "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(9000)
        );
        let t = get(addr, &big).await;
        assert!(t.starts_with("HTTP/1.1 431"), "{t}");
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        let t = get(addr, &format!("GET /metrics HTTP/1.1\r\n{many}\r\n")).await;
        assert!(t.starts_with("HTTP/1.1 431"), "{t}");
        // Stale reconcile → unhealthy.
        metrics.last_success.set(unix_now() - 1000);
        let h = get(addr, "GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(h.starts_with("HTTP/1.1 503"), "{h}");
        server.abort();
    }

    #[tokio::test]
    async fn stalled_clients_cannot_take_every_slot_for_long_or_beyond_the_limit() {
        let (addr, server) = start(Metrics::new().unwrap()).await;
        // Fill every slot with clients that send nothing.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // One more is closed at once, without an answer.
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await;
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut out)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?} {out:?}");
        // The stalled ones are dropped after the read deadline; then a
        // client is served again.
        tokio::time::sleep(READ_DEADLINE + Duration::from_millis(500)).await;
        let h = get(addr, "GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        drop(idle);
        server.abort();
    }
}
