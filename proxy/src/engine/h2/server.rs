//! The client-facing HTTP/2 server: one connection, each stream served by its
//! own task as its own flow.

use std::future::poll_fn;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::engine::{ConnCtx, Preconnected, log_conn_error, log_server_connect};
use crate::tls::upstream::ALPN_H2;
use crate::upstream::Target;
use crate::worker::Worker;

/// How long a client may take to close after our GOAWAY once idle.
const GOAWAY_GRACE: Duration = Duration::from_secs(5);

/// What every stream of one client connection shares.
pub(super) struct Conn {
    pub worker: Rc<Worker>,
    pub ctx: ConnCtx,
    /// Where the streams go (SNI / original destination).
    pub target: Target,
    /// The client side is TLS we terminated (scheme https).
    pub tls: bool,
    /// The upstream could not be reached before the client handshake:
    /// status and message answered on every stream.
    pub pre_error: Option<(u16, String)>,
    /// Connect/TLS timings of the connection opened before the handshake,
    /// for the first stream's flow.
    pub pre_timings: std::cell::Cell<Option<crate::upstream::ConnectTimings>>,
}

/// Serve HTTP/2 on `io` (TLS we terminated, or plain TCP with the prior
/// knowledge preface still unread) until the client closes or the proxy
/// shuts down (graceful GOAWAY, in-flight streams finish).
pub async fn serve<T>(
    worker: &Worker,
    ctx: &ConnCtx,
    io: T,
    target: Target,
    tls: bool,
    pre: Preconnected,
) where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let Some(me) = worker.rc() else { return };
    let shared = &worker.shared;
    let mut pre_error = None;
    let mut pre_timings = None;
    match pre {
        Preconnected::None => {}
        Preconnected::Conn(c, t) => {
            pre_timings = Some(t);
            log_server_connect(worker, ctx, &c);
            if c.io.alpn() == Some(ALPN_H2) {
                if let Err(e) = super::client::adopt(worker, *c).await {
                    pre_error = Some((e.status(), e.to_string()));
                }
            } else {
                // Streams take it from the pool (translated to HTTP/1.1).
                super::client::mark_h1_only(worker, &target);
                worker.release_upstream(*c);
            }
        }
        Preconnected::Failed(e) => pre_error = Some((e.status(), e.to_string())),
    }
    let max_list = u32::try_from(shared.cfg.limits.max_head_bytes).unwrap_or(u32::MAX);
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(super::STREAM_WINDOW)
        .initial_connection_window_size(super::CONN_WINDOW)
        .max_frame_size(super::MAX_FRAME)
        .max_concurrent_streams(shared.cfg.h2_max_concurrent_streams)
        .max_header_list_size(max_list);
    let hs = builder.handshake::<T, Bytes>(io);
    let mut conn = match monoio::time::timeout(shared.cfg.idle_timeout, hs).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            log_conn_error(
                worker,
                ctx,
                format!("HTTP/2 handshake with client failed: {e}"),
            );
            return;
        }
        Err(_) => return,
    };
    let state = Rc::new(Conn {
        worker: me,
        ctx: ctx.clone(),
        target,
        tls,
        pre_error,
        pre_timings: std::cell::Cell::new(pre_timings),
    });
    let mut going_away: Option<Instant> = None;
    let mut idle_since = Instant::now();
    let signal = &worker.shutdown;
    loop {
        // Wake for a stream, the shutdown signal, or the next check: every
        // 250 ms while going away, every second while streams run (to date
        // the idle start), else when --idle-timeout would run out. An idle
        // connection costs no wake-ups.
        let check = if going_away.is_some() || signal.fired() {
            Duration::from_millis(250)
        } else if conn.has_streams() {
            Duration::from_secs(1)
        } else {
            shared
                .cfg
                .idle_timeout
                .saturating_sub(idle_since.elapsed())
                .max(Duration::from_millis(1))
        };
        let next = monoio::select! {
            r = conn.accept() => Some(r),
            () = signal.wait(), if !signal.fired() => None,
            _ = monoio::time::sleep(check) => None,
        };
        match next {
            None => {
                if conn.has_streams() {
                    idle_since = Instant::now();
                }
                // Shutdown, or no stream for --idle-timeout: graceful GOAWAY.
                let idle = idle_since.elapsed() >= shared.cfg.idle_timeout;
                if (shared.shutting_down() || idle) && going_away.is_none() {
                    conn.graceful_shutdown();
                    going_away = Some(Instant::now());
                }
                // A client that does not complete the GOAWAY exchange (PING
                // ack) is dropped once it has no streams left.
                if going_away.is_some_and(|t| t.elapsed() >= GOAWAY_GRACE) && !conn.has_streams() {
                    return;
                }
            }
            Some(None) => break,
            Some(Some(Err(e))) => {
                if !e.is_io() && !e.is_go_away() {
                    log_conn_error(worker, ctx, format!("HTTP/2 client connection: {e}"));
                }
                break;
            }
            Some(Some(Ok((req, respond)))) => {
                idle_since = Instant::now();
                monoio::spawn(super::stream::serve(state.clone(), req, respond));
            }
        }
    }
    let _ = poll_fn(|cx| conn.poll_closed(cx)).await;
}
