//! Upstream HTTP/2: one multiplexed connection per destination (target incl.
//! SNI) per worker, reused by every stream and every client connection of
//! the worker; dropped from the map when it closes or is going away.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use h2::client::SendRequest;

use crate::flowlog::{ConnEvent, ConnEventKind};
use crate::net::stream::UpstreamIo;
use crate::tls::upstream::{ALPN_H1, ALPN_H2};
use crate::upstream::failure::H2Budget;
use crate::upstream::recent::{MAX_REMEMBERED, RecentSet};
use crate::upstream::{self, ConnectTimings, Target, UpstreamConn, UpstreamError};
use crate::worker::Worker;

/// A live multiplexed upstream connection.
#[derive(Clone)]
pub struct H2Upstream {
    pub send: SendRequest<Bytes>,
    pub addr: SocketAddr,
    alive: Rc<Cell<bool>>,
    /// Streams answered by this destination (all its connections of the
    /// worker): a refused retry while it grows is progress, not futility.
    progress: Rc<Cell<u64>>,
}

impl H2Upstream {
    /// Streams the destination has answered so far.
    pub fn progress(&self) -> u64 {
        self.progress.get()
    }

    /// A response head arrived on this connection.
    pub fn answered(&self) {
        self.progress.set(self.progress.get().wrapping_add(1));
    }

    /// Stop using this connection for new streams (GOAWAY, error).
    pub fn retire(&self, worker: &Worker, target: &Target) {
        self.alive.set(false);
        let mut pool = worker.h2.borrow_mut();
        if pool
            .conns
            .get(target)
            .is_some_and(|c| Rc::ptr_eq(&c.alive, &self.alive))
        {
            pool.conns.remove(target);
        }
    }
}

/// Entries in the connection map above which ended connections are swept
/// out when a new one is added.
const PRUNE_CONNS_AT: usize = 64;

/// Per-worker HTTP/2 upstream state.
#[derive(Default)]
pub struct H2Pool {
    conns: HashMap<Target, H2Upstream>,
    connecting: HashSet<Target>,
    /// Targets that answered http/1.1 when offered h2 (use the HTTP/1 pool).
    h1_only: RecentSet<Target>,
    /// Targets this worker has spoken h2 to: after their connection went
    /// away, HTTP/1.1 clients get a new h2 connection rather than an
    /// HTTP/1.1 one an h2-only server would refuse.
    h2_known: RecentSet<Target>,
    /// Answered-stream counters per destination (see [`H2Upstream::progress`]);
    /// counters no connection holds any more are dropped when there are more
    /// than [`MAX_REMEMBERED`].
    progress: HashMap<Target, Rc<Cell<u64>>>,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool")
            .field("conns", &self.conns.len())
            .field("h1_only", &self.h1_only.len())
            .finish()
    }
}

/// The live HTTP/2 connection to `target`, if this worker has one.
pub fn lookup(worker: &Worker, target: &Target) -> Option<H2Upstream> {
    let mut pool = worker.h2.borrow_mut();
    match pool.conns.get(target) {
        Some(c) if c.alive.get() => Some(c.clone()),
        Some(_) => {
            pool.conns.remove(target);
            None
        }
        None => None,
    }
}

/// Whether `target` is known to answer http/1.1 when offered h2.
pub fn is_h1_only(worker: &Worker, target: &Target) -> bool {
    worker.h2.borrow().h1_only.contains(target)
}

/// Remember that `target` chose http/1.1 over h2.
pub fn mark_h1_only(worker: &Worker, target: &Target) {
    let mut pool = worker.h2.borrow_mut();
    pool.h2_known.remove(target);
    pool.h1_only.insert(target.clone());
}

/// The HTTP/2 upstream for a request of an HTTP/1.1 client: the live
/// connection to `target`, or a new one when `target` spoke h2 before
/// (its connection ended: GOAWAY, idle close). `None`: use the HTTP/1 pool.
pub async fn for_http1_client(
    worker: &Worker,
    target: &Target,
    client: SocketAddr,
) -> Option<Result<Upstream, UpstreamError>> {
    if let Some(up) = lookup(worker, target) {
        return Some(Ok(Upstream::H2(up, ConnectTimings::default())));
    }
    if !worker.h2.borrow().h2_known.contains(target) {
        return None;
    }
    Some(get(worker, target, client).await)
}

/// Window sizes and limits of upstream connections.
fn builder(worker: &Worker) -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(super::STREAM_WINDOW)
        .initial_connection_window_size(super::CONN_WINDOW)
        .max_frame_size(super::MAX_FRAME)
        .max_header_list_size(
            u32::try_from(worker.shared.cfg.limits.max_head_bytes).unwrap_or(u32::MAX),
        )
        .enable_push(false);
    b
}

/// Take over a connection that negotiated h2 (or plain TCP for h2c with
/// prior knowledge): handshake, spawn its driver, register it for reuse.
pub async fn adopt(worker: &Worker, conn: UpstreamConn) -> Result<H2Upstream, UpstreamError> {
    adopt_checked(worker, conn, false).await
}

/// [`adopt`]; with `verify`, a PING must come back first (h2c prior
/// knowledge: an HTTP/1-only server answers the preface with garbage).
async fn adopt_checked(
    worker: &Worker,
    conn: UpstreamConn,
    verify: bool,
) -> Result<H2Upstream, UpstreamError> {
    let authority = conn.target.authority();
    let timeout = worker.shared.cfg.connect_timeout;
    let fail = |reason: String| UpstreamError::Connect {
        authority: authority.clone(),
        reason,
    };
    let target = conn.target.clone();
    let hs = builder(worker).handshake::<UpstreamIo, Bytes>(conn.io);
    let (send, mut connection) = match monoio::time::timeout(timeout, hs).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(fail(format!("HTTP/2 handshake failed: {e}"))),
        Err(_) => return Err(fail("HTTP/2 handshake timed out".into())),
    };
    let ping = if verify { connection.ping_pong() } else { None };
    let alive = Rc::new(Cell::new(true));
    let progress = {
        let mut pool = worker.h2.borrow_mut();
        if pool.progress.len() >= MAX_REMEMBERED {
            pool.progress.retain(|_, c| Rc::strong_count(c) > 1);
        }
        pool.progress.entry(target.clone()).or_default().clone()
    };
    let up = H2Upstream {
        send,
        addr: conn.addr,
        alive: alive.clone(),
        progress,
    };
    let shared: Arc<crate::worker::Shared> = worker.shared.clone();
    let (addr, client) = (conn.addr, conn.last_client);
    let authority2 = authority.clone();
    monoio::spawn(async move {
        let authority = authority2;
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, %addr, "upstream HTTP/2 connection ended with an error");
        }
        alive.set(false);
        shared.flowlog.conn_event(ConnEvent {
            at: SystemTime::now(),
            client,
            kind: ConnEventKind::ServerDisconnect { authority, addr },
        });
    });
    if let Some(mut ping) = ping {
        let pong = monoio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await;
        if !matches!(pong, Ok(Ok(_))) {
            up.alive.set(false);
            return Err(fail(
                "does not speak HTTP/2 (no answer to the h2c preface)".into(),
            ));
        }
    }
    let mut pool = worker.h2.borrow_mut();
    pool.h1_only.remove(&target);
    pool.h2_known.insert(target.clone());
    if pool.conns.len() >= PRUNE_CONNS_AT {
        // Connections that ended stay in the map until their target is
        // looked up again; many distinct targets must not keep them all.
        pool.conns.retain(|_, c| c.alive.get());
    }
    pool.conns.insert(target, up.clone());
    Ok(up)
}

/// Where one stream goes upstream.
pub enum Upstream {
    /// A stream on a multiplexed HTTP/2 connection (timings of opening it
    /// when this stream caused the connect).
    H2(H2Upstream, ConnectTimings),
    /// An HTTP/1.1 connection of its own (translated).
    H1(Box<UpstreamConn>, ConnectTimings),
}

/// The upstream for one stream of an HTTP/2 client: the worker's HTTP/2
/// connection to `target`, else a pooled HTTP/1 connection to a target known
/// to be HTTP/1-only, else a new connection offering h2 and http/1.1 (plain
/// targets: h2c with prior knowledge). Concurrent callers share one connect.
pub async fn get(
    worker: &Worker,
    target: &Target,
    client: SocketAddr,
) -> Result<Upstream, UpstreamError> {
    let deadline = Instant::now() + worker.shared.cfg.connect_timeout * 2;
    loop {
        if let Some(up) = lookup(worker, target) {
            return Ok(Upstream::H2(up, ConnectTimings::default()));
        }
        if is_h1_only(worker, target) {
            let (c, t) = upstream::get(worker, target, client).await?;
            return Ok(Upstream::H1(Box::new(c), t));
        }
        let busy = worker.h2.borrow().connecting.contains(target);
        if !busy {
            break;
        }
        if Instant::now() > deadline {
            return Err(UpstreamError::Timeout {
                authority: target.authority(),
                secs: worker.shared.cfg.connect_timeout.as_secs(),
            });
        }
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
    worker.h2.borrow_mut().connecting.insert(target.clone());
    let res = connect(worker, target, client).await;
    worker.h2.borrow_mut().connecting.remove(target);
    res
}

/// The upstream for the next attempt of a stream the destination refused
/// (`budget`): [`get`], or once the stream has lost several rounds
/// ([`H2Budget::wants_own_connection`]) a new connection on which it is the
/// first stream (the caller opens it before yielding; the connection then
/// serves every stream of the worker, as one from [`get`] would).
pub async fn for_attempt(
    worker: &Worker,
    target: &Target,
    client: SocketAddr,
    budget: &H2Budget,
) -> Result<Upstream, UpstreamError> {
    if !budget.wants_own_connection() || is_h1_only(worker, target) {
        return get(worker, target, client).await;
    }
    connect(worker, target, client).await
}

async fn connect(
    worker: &Worker,
    target: &Target,
    client: SocketAddr,
) -> Result<Upstream, UpstreamError> {
    let tls = worker.shared.upstream_alpn.for_offer(&[ALPN_H2, ALPN_H1]);
    let (conn, timings) = upstream::connect_with(worker, target, client, tls).await?;
    crate::engine::log_server_connect_to(worker, client, &conn);
    if matches!(conn.io, UpstreamIo::Plain(_)) {
        // h2c with prior knowledge; an HTTP/1-only server gets HTTP/1.1.
        return match adopt_checked(worker, conn, true).await {
            Ok(up) => Ok(Upstream::H2(up, timings)),
            Err(_) => {
                mark_h1_only(worker, target);
                let (c, t) = upstream::get(worker, target, client).await?;
                Ok(Upstream::H1(Box::new(c), t))
            }
        };
    }
    if conn.io.alpn() == Some(ALPN_H2) {
        Ok(Upstream::H2(adopt(worker, conn).await?, timings))
    } else {
        mark_h1_only(worker, target);
        Ok(Upstream::H1(Box::new(conn), timings))
    }
}
