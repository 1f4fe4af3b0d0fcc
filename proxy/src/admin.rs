//! The admin HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/ca.pem`.
//! Runs on its own thread with blocking I/O: it never touches the workers.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::worker::Shared;

/// Serve admin requests until the process exits.
pub fn run(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let shared = shared.clone();
        // One short-lived thread per scrape: a slow client never blocks others.
        let spawned = std::thread::Builder::new()
            .name("tproxy-admin-conn".into())
            .spawn(move || {
                let _ = handle(stream, &shared);
            });
        if spawned.is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn handle(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Drain the header section (bounded).
    let mut hdr = String::new();
    for _ in 0..100 {
        hdr.clear();
        if reader.read_line(&mut hdr)? == 0 || hdr == "\r\n" || hdr == "\n" {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");
    let (status, ctype, body) = route(method, path, shared);
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
}

fn route(method: &str, path: &str, shared: &Shared) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "use GET\n".into());
    }
    match path {
        "/metrics" => {
            sync_metrics(shared);
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                render_metrics(shared),
            )
        }
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => {
            if shared.shutting_down() {
                ("503 Service Unavailable", TEXT, "shutting down\n".into())
            } else {
                ("200 OK", TEXT, "ready\n".into())
            }
        }
        "/ca.pem" => (
            "200 OK",
            "application/x-pem-file",
            shared.ca.cert_pem().to_owned(),
        ),
        _ => (
            "404 Not Found",
            TEXT,
            "tproxy admin: /metrics /healthz /readyz /ca.pem\n".into(),
        ),
    }
}

/// The exposition; sources whose pod left the pod directory are dropped.
fn render_metrics(shared: &Shared) -> String {
    let dir = shared.pods.as_ref().map(|d| d.load());
    let alive = |p: &crate::poddir::PodInfo, ip: std::net::IpAddr| {
        dir.as_ref().is_none_or(|d| {
            d.lookup(ip)
                .is_some_and(|q| q.namespace == p.namespace && q.name == p.name)
        })
    };
    shared.metrics.render(&alive)
}

/// Mirror counters that live elsewhere as atomics into the registry.
fn sync_metrics(shared: &Shared) {
    use std::sync::atomic::Ordering::Relaxed;

    use crate::metrics::Metrics;
    let m = &shared.metrics;
    m.cert_cache_entries.set(shared.certs.len() as i64);
    m.sync_active();
    if let Some(f) = &m.flows {
        f.hosts.refresh_rules(shared.policy.generation());
    }
    let p = &shared.policy;
    Metrics::sync(&m.policy_reload_ok, p.reload_ok().load(Relaxed));
    Metrics::sync(&m.policy_reload_error, p.reload_error().load(Relaxed));
    Metrics::sync(
        &m.failopen_rejects,
        p.fail_open().rejects_total.load(Relaxed),
    );
    Metrics::sync(&m.failopen_opened, p.fail_open().opened_total.load(Relaxed));
    if let Some(d) = &shared.pods {
        Metrics::sync(&m.poddir_reload_ok, d.reload_ok().load(Relaxed));
        Metrics::sync(&m.poddir_reload_error, d.reload_error().load(Relaxed));
    }
}
