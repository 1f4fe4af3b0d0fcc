//! Upstream connections: name resolution off the worker thread, connect with
//! a timeout, TLS towards the server, and the per-worker keep-alive pool.

pub mod failure;
pub mod idle;
pub mod recent;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use monoio::io::IntoPollIo;
use monoio::net::TcpStream;
use rustls_pki_types::ServerName;

use crate::net::stream::{Tcp, UpstreamIo, idle_socket_usable};
use crate::tls::upstream::ALPN_H1;
use crate::worker::Worker;
use idle::IdleSet;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Host as the client named it (DNS name or IP literal, no brackets).
    pub host: String,
    pub port: u16,
    /// Already known address (transparent mode): no DNS.
    pub addr: Option<SocketAddr>,
    /// TLS towards the server, with this SNI (None: no SNI, verify the IP).
    pub tls: Option<Option<String>>,
}

impl Target {
    /// `host:port` with IPv6 hosts bracketed.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

/// `host:port`, bracketing IPv6 literals.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Why an upstream connection could not be made. Decides the status code.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to {authority}: {reason}")]
    Connect { authority: String, reason: String },
    #[error("timed out connecting to {authority} after {secs}s")]
    Timeout { authority: String, secs: u64 },
    #[error("TLS handshake with {authority} failed: {reason}")]
    Tls { authority: String, reason: String },
    #[error("refusing to connect to {0}: it is this proxy's own listener (request loop)")]
    Loop(String),
    /// The server accepts none of the offered ALPN protocols (e.g. an
    /// h2-only server offered http/1.1): worth one retry offering h2.
    #[error("TLS handshake with {authority} failed: {reason}")]
    NoAlpn { authority: String, reason: String },
}

impl UpstreamError {
    /// The HTTP status a client gets for this error.
    pub fn status(&self) -> u16 {
        match self {
            UpstreamError::Timeout { .. } => 504,
            UpstreamError::Loop(_) => 508,
            _ => 502,
        }
    }
}

/// An open upstream connection.
#[derive(Debug)]
pub struct UpstreamConn {
    pub io: UpstreamIo,
    pub target: Target,
    pub addr: SocketAddr,
    /// Set when this connection came from the pool.
    pub reused: bool,
    /// The client that used it last (flow-log attribution of its close).
    pub last_client: SocketAddr,
    /// The keep-alive timeout the server announced (`Keep-Alive:
    /// timeout=N`): the connection is not reused once idle close to it.
    pub keep_alive: Option<Duration>,
}

/// Phase durations of opening a connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectTimings {
    pub connect: Option<Duration>,
    pub tls: Option<Duration>,
}

/// Per-worker pool of idle upstream connections (bounded per destination
/// and in total, see [`idle`]) and the worker's DNS cache.
#[derive(Debug)]
pub struct Pool {
    idle: IdleSet<Target, UpstreamConn>,
    dns: HashMap<String, (Vec<IpAddr>, Instant)>,
}

const MAX_IDLE_PER_TARGET: usize = 32;
/// Idle upstream connections per worker, all destinations together.
const MAX_IDLE_TOTAL: usize = 256;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DNS_TTL: Duration = Duration::from_secs(30);

impl Default for Pool {
    fn default() -> Self {
        Self {
            idle: IdleSet::new(MAX_IDLE_PER_TARGET, MAX_IDLE_TOTAL),
            dns: HashMap::new(),
        }
    }
}

/// Whether a pooled connection may still be used: idle for less than the
/// pool's timeout and well within the server's announced keep-alive
/// timeout, and not closed by the server meanwhile.
fn still_usable(conn: &UpstreamConn, since: Instant) -> bool {
    let budget = conn.keep_alive.map_or(POOL_IDLE_TIMEOUT, |t| {
        failure::keep_alive_budget(t).min(POOL_IDLE_TIMEOUT)
    });
    since.elapsed() < budget && idle_socket_usable(conn.io.tcp())
}

impl Pool {
    /// A usable idle connection to `target`, if any. Connections found dead
    /// (closed by the server, expired) are moved to `closed`.
    pub fn take(
        &mut self,
        target: &Target,
        closed: &mut Vec<UpstreamConn>,
    ) -> Option<UpstreamConn> {
        let mut conn = self.idle.take(target, still_usable, closed)?;
        conn.reused = true;
        Some(conn)
    }

    /// Keep a connection for reuse after a complete exchange; returns the
    /// connection the caller must close: this one when its target already
    /// has enough idle ones, or the longest-idle one when the pool is full.
    pub fn put(&mut self, conn: UpstreamConn) -> Option<UpstreamConn> {
        self.idle.put(conn.target.clone(), conn)
    }

    /// Remove idle connections past their timeout or closed by the server
    /// (called periodically); returns them.
    pub fn sweep(&mut self) -> Vec<UpstreamConn> {
        self.dns.retain(|_, (_, at)| at.elapsed() < DNS_TTL);
        self.idle.sweep(still_usable)
    }

    /// Remove every idle connection (shutdown); returns them.
    pub fn clear(&mut self) -> Vec<UpstreamConn> {
        self.idle.drain()
    }
}

/// Resolve `host` without blocking the worker: IP literals directly, names
/// on the blocking thread pool, cached for a short TTL per worker.
pub async fn resolve(
    worker: &Worker,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, UpstreamError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if let Some((ips, at)) = worker.pool.borrow().dns.get(host)
        && at.elapsed() < DNS_TTL
    {
        return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
    }
    let name = host.to_owned();
    let res = monoio::spawn_blocking(move || {
        (name.as_str(), 0u16)
            .to_socket_addrs()
            .map(|a| a.collect::<Vec<_>>())
    })
    .await
    .map_err(|_| UpstreamError::Resolve {
        host: host.to_owned(),
        reason: "resolver thread failed".into(),
    })?;
    let addrs = res.map_err(|e| UpstreamError::Resolve {
        host: host.to_owned(),
        reason: e.to_string(),
    })?;
    if addrs.is_empty() {
        return Err(UpstreamError::Resolve {
            host: host.to_owned(),
            reason: "no addresses".into(),
        });
    }
    let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
    worker
        .pool
        .borrow_mut()
        .dns
        .insert(host.to_owned(), (ips.clone(), Instant::now()));
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// A pooled connection to `target`, or a new one.
pub async fn get(
    worker: &Worker,
    target: &Target,
    client: SocketAddr,
) -> Result<(UpstreamConn, ConnectTimings), UpstreamError> {
    let mut closed = Vec::new();
    let pooled = worker.pool.borrow_mut().take(target, &mut closed);
    worker.closed_upstreams(closed);
    if let Some(mut conn) = pooled {
        worker.shared.metrics.pool_reuse.inc();
        conn.last_client = client;
        return Ok((conn, ConnectTimings::default()));
    }
    connect(worker, target, client).await
}

/// Open a TCP connection to `target` (resolving its host if needed), with
/// the loop guard and the connect timeout. Returns the stream and address.
pub async fn connect_tcp(
    worker: &Worker,
    target: &Target,
) -> Result<(TcpStream, SocketAddr), UpstreamError> {
    let shared = &worker.shared;
    let authority = target.authority();
    let addrs = match target.addr {
        Some(a) => vec![a],
        None => resolve(worker, &target.host, target.port).await?,
    };
    if let Some(a) = addrs.iter().find(|a| shared.is_own_listener(**a)) {
        return Err(UpstreamError::Loop(a.to_string()));
    }
    let timeout = shared.cfg.connect_timeout;
    let mut last_err = None;
    for addr in &addrs {
        match monoio::time::timeout(timeout, TcpStream::connect_addr(*addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                shared.metrics.upstream_connects.inc();
                return Ok((s, *addr));
            }
            Ok(Err(e)) => last_err = Some(e),
            Err(_) => {
                shared.metrics.upstream_connect_errors.inc();
                return Err(UpstreamError::Timeout {
                    authority,
                    secs: timeout.as_secs(),
                });
            }
        }
    }
    shared.metrics.upstream_connect_errors.inc();
    let reason = last_err.map_or_else(|| "no address".to_owned(), |e| io_reason(&e));
    Err(UpstreamError::Connect { authority, reason })
}

/// Open a new connection to `target` (TCP, then TLS offering http/1.1).
pub async fn connect(
    worker: &Worker,
    target: &Target,
    client: SocketAddr,
) -> Result<(UpstreamConn, ConnectTimings), UpstreamError> {
    let tls = worker.shared.upstream_alpn.for_offer(&[ALPN_H1]);
    connect_with(worker, target, client, tls).await
}

/// Open a new connection to `target` (TCP, then TLS with `tls`, whose ALPN
/// list is what the server is offered).
pub async fn connect_with(
    worker: &Worker,
    target: &Target,
    client: SocketAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> Result<(UpstreamConn, ConnectTimings), UpstreamError> {
    let shared = &worker.shared;
    let authority = target.authority();
    let started = Instant::now();
    let timeout = shared.cfg.connect_timeout;
    let (tcp, addr) = connect_tcp(worker, target).await?;
    let connect_time = started.elapsed();
    let tcp: Tcp = tcp.into_poll_io().map_err(|e| UpstreamError::Connect {
        authority: authority.clone(),
        reason: e.to_string(),
    })?;
    let mut timings = ConnectTimings {
        connect: Some(connect_time),
        tls: None,
    };
    let io = match &target.tls {
        None => UpstreamIo::Plain(tcp),
        Some(sni) => {
            let tls_started = Instant::now();
            let name = match sni {
                Some(n) => ServerName::try_from(n.clone()).map_err(|_| UpstreamError::Tls {
                    authority: authority.clone(),
                    reason: format!("`{n}` is not a valid server name"),
                })?,
                None => ServerName::IpAddress(addr.ip().into()),
            };
            let connector = tokio_rustls::TlsConnector::from(tls);
            let res = monoio::time::timeout(timeout, connector.connect(name, tcp)).await;
            match res {
                Ok(Ok(s)) => {
                    shared.metrics.tls_ok[crate::metrics::UPSTREAM].inc();
                    timings.tls = Some(tls_started.elapsed());
                    UpstreamIo::Tls(Box::new(s))
                }
                Ok(Err(e)) => {
                    shared
                        .metrics
                        .tls_failure(crate::metrics::UPSTREAM, crate::metrics::tls::reason(&e));
                    if crate::tls::upstream::is_no_alpn_error(&e) {
                        return Err(UpstreamError::NoAlpn {
                            authority,
                            reason: crate::tls::upstream::describe_upstream_error(&e),
                        });
                    }
                    return Err(UpstreamError::Tls {
                        authority,
                        reason: crate::tls::upstream::describe_upstream_error(&e),
                    });
                }
                Err(_) => {
                    shared.metrics.tls_failure(
                        crate::metrics::UPSTREAM,
                        crate::metrics::tls::Reason::HandshakeTimeout,
                    );
                    return Err(UpstreamError::Timeout {
                        authority,
                        secs: timeout.as_secs(),
                    });
                }
            }
        }
    };
    Ok((
        UpstreamConn {
            io,
            target: target.clone(),
            addr,
            reused: false,
            last_client: client,
            keep_alive: None,
        },
        timings,
    ))
}

/// "connection refused" rather than "Connection refused (os error 111)".
fn io_reason(e: &io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    };
    s.to_lowercase()
}
