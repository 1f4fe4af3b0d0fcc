//! The HTTP/1 proxy engine: one client connection's request loop.
//!
//! Per request: read head → framing checks → target → upstream (pooled) →
//! head + streamed body up → response head + streamed body down → flow log.

pub mod body;
pub mod h2;
mod request;
mod respond;
pub mod verdict;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Mode;
use crate::flowlog::{ConnEvent, ConnEventKind, HttpFlow, HttpVersion, ResponseSummary, Timings};
use crate::http1::codec::{
    self, BodyKind, Headers, ParseError, RequestHead, ResponseHead, parse_request, parse_response,
};
use crate::net::stream::ClientIo;
use crate::observe;
use crate::upstream::{self, UpstreamConn, UpstreamError};
use crate::worker::Worker;

use body::{BodyError, Capture};
pub use request::{Scope, split_authority};
pub use respond::error_response as respond_error;
use respond::send_error;

/// Facts about the client connection, fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    pub client: SocketAddr,
    pub mode: Mode,
    /// SNI the client sent (intercepted TLS), for the flow log and rules.
    pub sni: Option<String>,
    /// CONNECT target host (regular mode), for rules.
    pub conn_host: Option<String>,
    /// The client's pod, from the pod directory (looked up once).
    pub source: Option<std::sync::Arc<crate::poddir::PodInfo>>,
}

/// How the request loop ended.
#[derive(Debug)]
pub enum Exit {
    /// The connection is finished (closed, or must be closed).
    Done,
    /// A CONNECT request in regular mode: the caller opens the tunnel.
    Connect {
        head: RequestHead,
        leftover: Vec<u8>,
    },
}

/// Upstream state carried into the loop: a connection opened before the
/// client's TLS handshake, or the error opening it (answered per request).
#[derive(Debug)]
pub enum Preconnected {
    None,
    Conn(Box<UpstreamConn>, upstream::ConnectTimings),
    Failed(UpstreamError),
}

/// How long, once shutting down, a connection that has not sent its first
/// request yet is still waited for.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

/// Serve HTTP/1 requests on `client` until it closes.
pub async fn serve(
    worker: &Worker,
    ctx: &ConnCtx,
    client: &mut ClientIo,
    mut buf: Vec<u8>,
    scope: Scope,
    pre: Preconnected,
) -> Exit {
    let shared = &worker.shared;
    let limits = shared.cfg.limits;
    let mut current: Option<UpstreamConn> = None;
    let mut pre_timings = None;
    let mut pre_error = None;
    match pre {
        Preconnected::None => {}
        Preconnected::Conn(c, t) => {
            log_server_connect(worker, ctx, &c);
            if c.io.alpn() == Some(crate::tls::upstream::ALPN_H2) {
                // An h2-only upstream: requests are translated to HTTP/2.
                if let Err(e) = h2::client::adopt(worker, *c).await {
                    pre_error = Some(e);
                }
            } else {
                current = Some(*c);
                pre_timings = Some(t);
            }
        }
        Preconnected::Failed(e) => pre_error = Some(e),
    }
    // On shutdown an idle keep-alive connection is closed between requests,
    // but the first request of a connection accepted before the signal is
    // still awaited (for FIRST_REQUEST_GRACE): closing it unanswered would
    // fail a client that did nothing wrong (issue #16).
    let opened = Instant::now();
    let mut first = true;
    loop {
        let quit = || shared.shutting_down() && (!first || opened.elapsed() >= FIRST_REQUEST_GRACE);
        if buf.is_empty() && quit() {
            break;
        }
        // 1. Request head.
        let head = match read_head(client, &mut buf, shared.cfg.idle_timeout, &quit, |b| {
            parse_request(b, &limits)
        })
        .await
        {
            Ok(Some((h, n))) => {
                buf.drain(..n);
                h
            }
            Ok(None) => break,
            Err(HeadError::Parse(e)) => {
                let status = if matches!(e, ParseError::TooLarge(_) | ParseError::TooManyHeaders(_))
                {
                    431
                } else {
                    400
                };
                let _ = send_error(client, status, &e.to_string()).await;
                log_conn_error(worker, ctx, format!("bad request from client: {e}"));
                break;
            }
            Err(HeadError::Io(_)) => break,
        };
        first = false;
        let started = SystemTime::now();
        let t0 = Instant::now();

        // --proxyauth: every explicit-proxy request (CONNECT included) carries
        // the credentials; the requests inside an authorised tunnel do not.
        if matches!(scope, Scope::Proxy)
            && let Some(auth) = &shared.cfg.proxy_auth
        {
            let check = auth.check(head.headers.get("proxy-authorization"));
            if check != crate::access::AuthCheck::Ok {
                shared
                    .metrics
                    .refused(ctx.mode, crate::access::RefusalReason::ProxyAuth);
                let _ = client
                    .write_all(&crate::access::auth::challenge_response(check))
                    .await;
                let _ = client.flush().await;
                let what = match check {
                    crate::access::AuthCheck::Missing => "without Proxy-Authorization",
                    _ => "with wrong proxy credentials",
                };
                log_conn_error(
                    worker,
                    ctx,
                    format!("407 for {} {} {what}", head.method, head.target),
                );
                break;
            }
        }

        if head.method.eq_ignore_ascii_case("CONNECT") {
            if matches!(scope, Scope::Proxy) {
                return Exit::Connect {
                    head,
                    leftover: buf,
                };
            }
            let _ = send_error(
                client,
                405,
                "CONNECT is only accepted by a regular-mode listener",
            )
            .await;
            break;
        }

        // 2. Where it goes, and its framing.
        let route = match request::route(&scope, &head) {
            Ok(r) => r,
            Err(msg) => {
                let _ = send_error(client, 400, &msg).await;
                log_conn_error(worker, ctx, msg);
                break;
            }
        };
        let req_kind = match codec::request_body_kind(&head) {
            Ok(k) => k,
            Err(e) => {
                // Ambiguous framing: never forwarded (request smuggling).
                let msg = format!("rejected request: {e}");
                let _ = send_error(client, 400, &msg).await;
                log_conn_error(worker, ctx, msg);
                break;
            }
        };
        let mut flow = new_flow(worker, ctx, started, &head, &route);
        flow.trace = observe::trace::begin(worker, ctx, head.headers.get("traceparent"));
        // The client-facing scheme: TLS towards the upstream iff TLS was intercepted
        // (or an explicit `https://` absolute-form request).
        let tls = route.target.tls.is_some();
        let mut verdict = verdict::for_request(worker, ctx, tls, &route, &head.method);
        flow.decision = verdict.decision;
        // Moved, not copied: the exchange below only needs the edits.
        flow.rule = verdict.rule.take();
        flow.tag = verdict.tag.take();
        let show_secrets = shared.cfg.show_secrets;
        verdict.redact_logged(&mut flow.request_headers, show_secrets);
        if let Some(deny) = &verdict.deny {
            // Answered by tproxy: the upstream is never contacted.
            let keep = matches!(req_kind, BodyKind::Empty) && !request::wants_close(&head);
            let ok = client
                .write_all(&verdict::deny_response(deny, keep))
                .await
                .is_ok()
                && client.flush().await.is_ok();
            flow.response = Some(ResponseSummary {
                status: deny.status,
                reason: respond::reason(deny.status).to_owned(),
                version: HttpVersion::Http11,
                headers: Vec::new(),
                body: None,
            });
            flow.response_bytes = deny.body.len() as u64;
            flow.timings.total = t0.elapsed();
            observe::http_done(worker, ctx, flow);
            if keep && ok {
                continue;
            }
            break;
        }

        // 3. Upstream connection.
        if let Some(e) = pre_error.take() {
            let status = e.status();
            let _ = send_error(client, status, &e.to_string()).await;
            finish_error(worker, ctx, flow, t0, e.to_string());
            break;
        }
        // The worker speaks HTTP/2 to this upstream: one stream per request
        // (upgrades such as WebSocket keep an HTTP/1.1 connection).
        let h2_up = match request::upgrade_token(&head) {
            None => h2::client::lookup(worker, &route.target),
            Some(_) => None,
        };
        if let Some(up) = h2_up {
            let r = h2::h1_down::Req {
                worker,
                client,
                buf: &mut buf,
                route: &route,
                verdict: &verdict,
                flow: &mut flow,
                t0,
            };
            let keep = h2::h1_down::exchange(r, up, head, req_kind).await;
            flow.timings.total = t0.elapsed();
            observe::http_done(worker, ctx, flow);
            if keep {
                continue;
            }
            break;
        }
        let conn = match current.take() {
            Some(c) if c.target == route.target => Ok((c, pre_timings.take().unwrap_or_default())),
            other => {
                if let Some(old) = other {
                    worker.release_upstream(old);
                }
                match upstream::get(worker, &route.target, ctx.client).await {
                    Ok((c, t)) => {
                        if !c.reused {
                            log_server_connect(worker, ctx, &c);
                        }
                        Ok((c, t))
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let (mut conn, timings) = match conn {
            Ok(x) => x,
            Err(e) => {
                let _ = send_error(client, e.status(), &e.to_string()).await;
                finish_error(worker, ctx, flow, t0, e.to_string());
                break;
            }
        };
        flow.server_addr = Some(conn.addr);
        flow.timings.connect = timings.connect;
        flow.timings.tls = timings.tls;

        // 4. Exchange.
        let outcome = exchange(
            worker, client, &mut buf, &mut conn, head, req_kind, &route, &verdict, &mut flow, t0,
        )
        .await;
        flow.timings.total = t0.elapsed();
        observe::http_done(worker, ctx, flow);
        match outcome {
            Outcome::KeepAlive => current = Some(conn),
            Outcome::CloseUpstream => worker.closed_upstreams([conn]),
            Outcome::CloseBoth => {
                worker.closed_upstreams([conn]);
                break;
            }
            Outcome::CloseClient => {
                current = Some(conn);
                break;
            }
        }
    }
    if let Some(c) = current {
        worker.release_upstream(c);
    }
    let _ = client.shutdown().await;
    Exit::Done
}

/// What the connections can do after one exchange.
enum Outcome {
    KeepAlive,
    CloseUpstream,
    CloseClient,
    CloseBoth,
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    worker: &Worker,
    client: &mut ClientIo,
    buf: &mut Vec<u8>,
    conn: &mut UpstreamConn,
    head: RequestHead,
    req_kind: BodyKind,
    route: &request::Route,
    verdict: &verdict::Verdict,
    flow: &mut HttpFlow,
    t0: Instant,
) -> Outcome {
    let shared = &worker.shared;
    let capture_limit = shared.flowlog.body_capture_limit();
    let client_minor = head.minor_version;
    let client_close = request::wants_close(&head);
    let upgrade = request::upgrade_token(&head);
    let expect_continue = head
        .headers
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    let method = head.method.clone();

    // Request head upstream.
    let mut up_head = request::upstream_head(head, route, req_kind, upgrade.as_deref());
    verdict::apply(&verdict.request_headers, &mut up_head.headers);
    if let Some(tp) = flow.trace.as_ref().and_then(|t| t.upstream_traceparent()) {
        up_head.headers.set("traceparent", tp);
    }
    let mut out = Vec::with_capacity(512);
    codec::write_request_head(&up_head, &mut out);
    if let Err(e) = conn.io.write_all(&out).await {
        return upstream_failed(
            client,
            flow,
            t0,
            format!("upstream closed the connection: {e}"),
        )
        .await;
    }
    if expect_continue && !matches!(req_kind, BodyKind::Empty) {
        // We answer 100 Continue ourselves and stream the body (Expect is not
        // forwarded): robust against upstreams that ignore Expect.
        if client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
        {
            return Outcome::CloseBoth;
        }
        let _ = client.flush().await;
    }
    let mut req_cap = Capture::new(capture_limit);
    match body::relay(client, buf, &mut conn.io, req_kind, false, &mut req_cap).await {
        Ok(n) => flow.request_bytes = n,
        Err(BodyError::Write(e)) => {
            return upstream_failed(
                client,
                flow,
                t0,
                format!("upstream closed the connection while receiving the request body: {e}"),
            )
            .await;
        }
        Err(e) => {
            // Client side broke mid-body: nothing sensible to answer.
            flow.error = Some(format!("client: {e}"));
            return Outcome::CloseBoth;
        }
    }
    flow.request_body = req_cap.finish();
    if let Err(e) = conn.io.flush().await {
        return upstream_failed(client, flow, t0, format!("upstream: {e}")).await;
    }

    // Response head (skipping interim 1xx other than 101).
    let mut ubuf = Vec::with_capacity(8192);
    let limits = shared.cfg.limits;
    let resp = loop {
        match read_head(
            &mut conn.io,
            &mut ubuf,
            shared.cfg.idle_timeout,
            &|| false,
            |b| parse_response(b, &limits),
        )
        .await
        {
            Ok(Some((h, n))) => {
                ubuf.drain(..n);
                if (100..200).contains(&h.status) && h.status != 101 {
                    if h.status != 100 || !expect_continue {
                        // Forward informational responses (103 Early Hints ...).
                        let mut o = Vec::new();
                        codec::write_response_head(&h, &mut o);
                        let _ = client.write_all(&o).await;
                    }
                    continue;
                }
                break h;
            }
            Ok(None) => {
                return upstream_failed(
                    client,
                    flow,
                    t0,
                    "upstream closed the connection without a response".into(),
                )
                .await;
            }
            Err(HeadError::Parse(e)) => {
                return upstream_failed(
                    client,
                    flow,
                    t0,
                    format!("upstream sent an invalid response: {e}"),
                )
                .await;
            }
            Err(HeadError::Io(e)) => {
                let msg = if e.kind() == std::io::ErrorKind::TimedOut {
                    format!(
                        "upstream did not answer within {}s",
                        shared.cfg.idle_timeout.as_secs()
                    )
                } else {
                    format!("reading the upstream response: {e}")
                };
                return upstream_failed(client, flow, t0, msg).await;
            }
        }
    };
    flow.timings.ttfb = Some(t0.elapsed());
    let resp_kind = match codec::response_body_kind(&resp, &method) {
        Ok(k) => k,
        Err(e) => {
            return upstream_failed(
                client,
                flow,
                t0,
                format!("upstream response has invalid framing: {e}"),
            )
            .await;
        }
    };

    // 101: relay raw bytes both ways.
    if resp.status == 101 && upgrade.is_some() {
        let mut o = Vec::new();
        let mut h = resp.clone();
        codec::remove_hop_by_hop(&mut h.headers, true);
        h.headers.set("Connection", "Upgrade");
        if let Some(u) = resp.headers.get("upgrade") {
            h.headers.set("Upgrade", u.to_vec());
        }
        codec::write_response_head(&h, &mut o);
        flow.response = Some(summary(worker, &resp));
        if client.write_all(&o).await.is_err() || client.write_all(&ubuf).await.is_err() {
            return Outcome::CloseBoth;
        }
        if !buf.is_empty() {
            if conn.io.write_all(buf).await.is_err() {
                return Outcome::CloseBoth;
            }
            buf.clear();
        }
        let _ = client.flush().await;
        let _ = conn.io.flush().await;
        if let Ok((up, down)) = tokio::io::copy_bidirectional(client, &mut conn.io).await {
            flow.request_bytes += up;
            flow.response_bytes = down + ubuf.len() as u64;
        }
        return Outcome::CloseBoth;
    }

    // Response head to the client.
    let dechunk = client_minor == 0 && resp_kind == BodyKind::Chunked;
    let close_client = client_close || matches!(resp_kind, BodyKind::UntilClose) || dechunk;
    let mut down = resp.clone();
    codec::remove_hop_by_hop(&mut down.headers, !dechunk);
    verdict::apply(&verdict.response_headers, &mut down.headers);
    if dechunk {
        down.headers.remove("transfer-encoding");
    }
    if close_client {
        down.headers.set("Connection", "close");
    } else if client_minor == 0 {
        down.headers.set("Connection", "keep-alive");
    }
    let mut o = Vec::with_capacity(512);
    codec::write_response_head(&down, &mut o);
    flow.response = Some(summary(worker, &resp));
    if client.write_all(&o).await.is_err() {
        return Outcome::CloseBoth;
    }
    let mut resp_cap = Capture::new(capture_limit);
    match body::relay(
        &mut conn.io,
        &mut ubuf,
        client,
        resp_kind,
        dechunk,
        &mut resp_cap,
    )
    .await
    {
        Ok(n) => flow.response_bytes = n,
        Err(BodyError::Write(e)) => {
            flow.error = Some(format!(
                "client closed the connection during the response: {e}"
            ));
            return Outcome::CloseBoth;
        }
        Err(e) => {
            flow.error = Some(format!("upstream: {e}"));
            return Outcome::CloseBoth;
        }
    }
    if let Some(r) = flow.response.as_mut() {
        r.body = resp_cap.finish();
        verdict.redact_logged(&mut r.headers, shared.cfg.show_secrets);
    }
    let _ = client.flush().await;
    let upstream_reusable = !matches!(resp_kind, BodyKind::UntilClose)
        && ubuf.is_empty()
        && resp.minor_version == 1
        && !resp.headers.has_token("connection", "close");
    match (upstream_reusable, close_client) {
        (true, false) => Outcome::KeepAlive,
        (false, false) => Outcome::CloseUpstream,
        (true, true) => Outcome::CloseClient,
        (false, true) => Outcome::CloseBoth,
    }
}

/// Answer the client with 502 naming `msg` and close.
async fn upstream_failed(
    client: &mut ClientIo,
    flow: &mut HttpFlow,
    t0: Instant,
    msg: String,
) -> Outcome {
    let _ = send_error(client, 502, &msg).await;
    flow.response = None;
    flow.error = Some(msg);
    flow.timings.total = t0.elapsed();
    Outcome::CloseBoth
}

fn finish_error(worker: &Worker, ctx: &ConnCtx, mut flow: HttpFlow, t0: Instant, msg: String) {
    flow.error = Some(msg);
    flow.timings.total = t0.elapsed();
    observe::http_done(worker, ctx, flow);
}

fn new_flow(
    worker: &Worker,
    ctx: &ConnCtx,
    started: SystemTime,
    head: &RequestHead,
    route: &request::Route,
) -> HttpFlow {
    let fl = &worker.shared.flowlog;
    HttpFlow {
        started,
        client: ctx.client,
        mode: ctx.mode.as_str(),
        destination: route.target.authority(),
        server_addr: None,
        sni: ctx.sni.clone(),
        method: head.method.clone(),
        url: route.url.clone(),
        request_version: version(head.minor_version),
        request_headers: if fl.wants_headers() {
            header_list(&head.headers)
        } else {
            Vec::new()
        },
        request_body: None,
        response: None,
        request_bytes: 0,
        response_bytes: 0,
        timings: Timings::default(),
        decision: "intercept",
        rule: None,
        tag: None,
        trace: None,
        error: None,
    }
}

fn summary(worker: &Worker, resp: &ResponseHead) -> ResponseSummary {
    ResponseSummary {
        status: resp.status,
        reason: resp.reason.clone(),
        version: version(resp.minor_version),
        headers: if worker.shared.flowlog.wants_headers() {
            header_list(&resp.headers)
        } else {
            Vec::new()
        },
        body: None,
    }
}

fn version(minor: u8) -> HttpVersion {
    if minor == 0 {
        HttpVersion::Http10
    } else {
        HttpVersion::Http11
    }
}

fn header_list(h: &Headers) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| (n.to_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

fn log_server_connect(worker: &Worker, ctx: &ConnCtx, c: &UpstreamConn) {
    log_server_connect_to(worker, ctx.client, c);
}

/// Flow-log line: `client` made us connect to the upstream `c`.
pub fn log_server_connect_to(worker: &Worker, client: SocketAddr, c: &UpstreamConn) {
    worker.shared.flowlog.conn_event(ConnEvent {
        at: SystemTime::now(),
        client,
        kind: ConnEventKind::ServerConnect {
            authority: c.target.authority(),
            addr: c.addr,
        },
    });
}

/// A connection-level problem worth a flow-log line.
pub fn log_conn_error(worker: &Worker, ctx: &ConnCtx, message: String) {
    worker.shared.flowlog.conn_event(ConnEvent {
        at: SystemTime::now(),
        client: ctx.client,
        kind: ConnEventKind::Error { message },
    });
}

#[derive(Debug)]
enum HeadError {
    Parse(ParseError),
    Io(std::io::Error),
}

/// Read until `parse` yields a head. `Ok(None)`: clean EOF before any byte,
/// or `quit()` turned true while no byte of a new head had arrived (reads on
/// poll-io streams are cancel-safe, so waking up to check loses nothing).
async fn read_head<R, T>(
    r: &mut R,
    buf: &mut Vec<u8>,
    idle: Duration,
    quit: &dyn Fn() -> bool,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, ParseError>,
) -> Result<Option<(T, usize)>, HeadError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    const TICK: Duration = Duration::from_millis(250);
    let started = Instant::now();
    loop {
        if !buf.is_empty()
            && let Some(x) = parse(buf).map_err(HeadError::Parse)?
        {
            return Ok(Some(x));
        }
        buf.reserve(8192);
        let n = loop {
            let left = idle.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(HeadError::Io(std::io::ErrorKind::TimedOut.into()));
            }
            match monoio::time::timeout(left.min(TICK), r.read_buf(buf)).await {
                Ok(Ok(n)) => break n,
                Ok(Err(e)) => return Err(HeadError::Io(e)),
                Err(_) if buf.is_empty() && quit() => return Ok(None),
                Err(_) => {}
            }
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(HeadError::Io(std::io::ErrorKind::UnexpectedEof.into()))
            };
        }
    }
}
