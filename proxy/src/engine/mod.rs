//! The HTTP/1 proxy engine: one client connection's request loop.
//!
//! Per request: read head → framing checks → target → upstream (pooled) →
//! head + streamed body up → response head + streamed body down → flow log.

pub mod body;
mod expect;
pub mod h2;
pub mod pace;
pub mod path;
mod request;
mod respond;
pub mod verdict;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Mode;
use crate::flowlog::{
    ConnEvent, ConnEventKind, HttpFlow, HttpVersion, ResponseSummary, TcpFlow, Timings,
};
use crate::http1::codec::{
    self, BodyKind, Headers, ParseError, RequestHead, ResponseHead, parse_request, parse_response,
};
use crate::net::stream::ClientIo;
use crate::observe;
use crate::upstream::{self, UpstreamConn, UpstreamError, failure};
use crate::worker::Worker;

use body::{BodyError, Capture};
pub use request::{Scope, same_host, split_authority};
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
    // Shutdown closes connections idle *between* requests. The first request
    // of a connection accepted before the signal is still awaited (for
    // FIRST_REQUEST_GRACE): a client the kernel handed to this process just
    // before SIGTERM (a DaemonSet surge rollout) is mid-handshake or sending
    // it, and closing it unanswered would fail a request (issue #16).
    let opened = Instant::now();
    let mut first = true;
    loop {
        let quit = || shared.shutting_down() && (!first || opened.elapsed() >= FIRST_REQUEST_GRACE);
        if buf.is_empty() && quit() {
            break;
        }
        // 1. Request head.
        let waits = HeadWaits {
            idle: shared.cfg.idle_timeout,
            head: shared.cfg.request_head_timeout,
        };
        let quitting = Quit {
            signal: Some(&worker.shutdown),
            now: &quit,
        };
        let head = match read_head(client, &mut buf, waits, quitting, |b| {
            parse_request(b, &limits)
        })
        .await
        {
            Ok(Some((h, n))) => {
                buf.drain(..n);
                first = false;
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
            Err(HeadError::HeadTimeout) => {
                let msg = format!(
                    "request head not complete within {}s of its first byte (--request-head-timeout)",
                    waits.head.as_secs()
                );
                let _ = send_error(client, 408, &msg).await;
                log_conn_error(worker, ctx, msg);
                break;
            }
            Err(HeadError::Io(_)) => break,
        };
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
            Err(e) => {
                let msg = e.to_string();
                let _ = send_error(client, e.status(), &msg).await;
                log_conn_error(
                    worker,
                    ctx,
                    format!("refused {} {}: {msg}", head.method, head.target),
                );
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
            finish_upstream_error(worker, ctx, flow, t0, &e);
            break;
        }
        // The worker speaks HTTP/2 to this upstream (a live connection, or
        // the target negotiated h2 before and its connection went away): one
        // stream per request (upgrades such as WebSocket keep HTTP/1.1).
        let h2_up = match request::upgrade_token(&head) {
            None => h2::client::for_http1_client(worker, &route.target, ctx.client).await,
            Some(_) => None,
        };
        let mut fresh_h1 = None;
        match h2_up {
            Some(Ok(h2::client::Upstream::H2(up, timings))) => {
                flow.timings.connect = timings.connect;
                flow.timings.tls = timings.tls;
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
            Some(Ok(h2::client::Upstream::H1(c, t))) => fresh_h1 = Some((*c, t)),
            Some(Err(e)) => {
                let _ = send_error(client, e.status(), &e.to_string()).await;
                finish_upstream_error(worker, ctx, flow, t0, &e);
                break;
            }
            None => {}
        }
        let conn = match (current.take(), fresh_h1) {
            (other, Some(fresh)) => {
                if let Some(old) = other {
                    worker.release_upstream(old);
                }
                Ok(fresh)
            }
            (Some(c), None) if c.target == route.target => {
                Ok((c, pre_timings.take().unwrap_or_default()))
            }
            (other, None) => {
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
                finish_upstream_error(worker, ctx, flow, t0, &e);
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
        // A kept connection is a reused one for the next request (the
        // keep-alive race applies to it as to a pooled one).
        conn.reused = true;
        match outcome {
            Outcome::KeepAlive => current = Some(conn),
            Outcome::CloseUpstream => worker.closed_upstreams([conn]),
            Outcome::CloseBoth => {
                worker.closed_upstreams([conn]);
                break;
            }
            Outcome::Upgraded(tcp) => {
                worker.closed_upstreams([conn]);
                shared.flowlog.tcp(*tcp);
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
    /// A `101` turned the connection into a relay, now ended (logged as its
    /// own flow after the request's).
    Upgraded(Box<TcpFlow>),
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

    // Framing errors already readable in the bytes that came with the head
    // are refused before anything is forwarded (the rest is validated as it
    // streams: nothing past an error is ever written upstream).
    if req_kind == BodyKind::Chunked && !buf.is_empty() {
        let mut check = codec::ChunkedDecoder::new();
        if let Err(e) = check.decode(buf, &mut |_| {}) {
            return client_framing_error(client, flow, t0, &e.to_string()).await;
        }
    }

    // Request head upstream.
    let mut up_head = request::upstream_head(head, route, req_kind, upgrade.as_deref());
    verdict::apply(&verdict.request_headers, &mut up_head.headers);
    if let Some(tp) = flow.trace.as_ref().and_then(|t| t.upstream_traceparent()) {
        up_head.headers.set("traceparent", tp);
    }
    let mut out = Vec::with_capacity(512);
    codec::write_request_head(&up_head, &mut out);
    let body_empty = matches!(req_kind, BodyKind::Empty);
    let mut sent_continue = false;
    // The upstream answered (413, 401 …) before the body was sent (`Expect`).
    let mut answered_early = false;
    let mut ubuf = Vec::with_capacity(8192);
    // A reused connection the server closed as the request went out (the
    // keep-alive race) gets the request once more on a new connection when
    // that is safe (upstream/failure.rs).
    let resp = loop {
        let mut s = Send {
            worker,
            client,
            buf,
            out: &out,
            req_kind,
            expect_continue,
            sent_continue: &mut sent_continue,
            answered_early: &mut answered_early,
            flow,
            ubuf: &mut ubuf,
        };
        let (stage, cause, msg) = match s.run(conn).await {
            Ok(h) => break h,
            Err(SendError::Client) => return Outcome::CloseBoth,
            Err(SendError::Answer { status, msg }) => {
                return answer_failure(client, flow, t0, status, msg).await;
            }
            Err(SendError::Upstream { stage, cause, msg }) => (stage, cause, msg),
        };
        let retry =
            stage.is_some_and(|st| failure::h1_retryable(conn.reused, st, &method, body_empty));
        if !retry {
            return upstream_failed(worker, client, flow, t0, cause, msg).await;
        }
        let cause = failure::Cause::IdleCloseRace;
        tracing::debug!(error = %msg, method = %method, "reused upstream connection closed before the response; retrying on a new one");
        match upstream::connect(worker, &route.target, flow.client).await {
            Ok((fresh, t)) => {
                failure::record_retry(&shared.metrics, flow, cause);
                log_server_connect_to(worker, flow.client, &fresh);
                let stale = std::mem::replace(conn, fresh);
                worker.closed_upstreams([stale]);
                flow.server_addr = Some(conn.addr);
                flow.timings.connect = t.connect;
                flow.timings.tls = t.tls;
                ubuf.clear();
            }
            Err(e) => {
                let msg = format!("{msg}; a new connection failed too: {e}");
                let status = e.status();
                let _ = send_error(client, status, &msg).await;
                failure::record(&shared.metrics, flow, failure::connect_cause(&e), msg);
                flow.response = None;
                return Outcome::CloseBoth;
            }
        }
    };
    flow.timings.ttfb = Some(t0.elapsed());
    let resp_kind = match codec::response_body_kind(&resp, &method) {
        Ok(k) => k,
        Err(e) => {
            return upstream_failed(
                worker,
                client,
                flow,
                t0,
                failure::Cause::Invalid,
                format!("upstream response has invalid framing: {e}"),
            )
            .await;
        }
    };

    if resp.status == 101 && !(upgrade.is_some() && request::upgrade_accepted(&resp)) {
        // A switch nobody asked for (or to another protocol): never relayed.
        return upstream_failed(
            worker,
            client,
            flow,
            t0,
            failure::Cause::Invalid,
            "upstream switched protocols (101) to something other than the WebSocket upgrade tproxy forwarded"
                .into(),
        )
        .await;
    }
    // 101: relay raw bytes both ways (a WebSocket, admitted by the rules).
    if resp.status == 101 {
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
        let early = buf.len() as u64;
        if !buf.is_empty() {
            if conn.io.write_all(buf).await.is_err() {
                return Outcome::CloseBoth;
            }
            buf.clear();
        }
        let _ = client.flush().await;
        let _ = conn.io.flush().await;
        let started = SystemTime::now();
        let t1 = Instant::now();
        let relayed = tokio::io::copy_bidirectional(client, &mut conn.io).await;
        // The upgraded connection is its own flow-log line: what follows the
        // 101 is relayed as bytes, admitted by the rule that allowed the GET.
        let mut reason = format!("websocket upgrade of {} {}", flow.method, flow.url);
        if let Some(rule) = &flow.rule {
            reason.push_str(&format!(", rule {rule}"));
        }
        let mut tcp = TcpFlow {
            started,
            client: flow.client,
            mode: flow.mode,
            destination: flow.destination.clone(),
            server_addr: Some(conn.addr),
            sni: flow.sni.clone(),
            client_to_server: early,
            server_to_client: ubuf.len() as u64,
            duration: Duration::ZERO,
            reason,
            error: None,
        };
        match relayed {
            Ok((up, down)) => {
                tcp.client_to_server += up;
                tcp.server_to_client += down;
            }
            Err(e) => tcp.error = Some(e.to_string()),
        }
        tcp.duration = t1.elapsed();
        return Outcome::Upgraded(Box::new(tcp));
    }

    // Response head to the client.
    let dechunk = client_minor == 0 && resp_kind == BodyKind::Chunked;
    // After an answer before the body, the client may still send it: the
    // connection cannot be reused for a next request.
    let close_client =
        client_close || matches!(resp_kind, BodyKind::UntilClose) || dechunk || answered_early;
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
            let msg = format!("upstream failed during the response: {e}");
            failure::record(&shared.metrics, flow, failure::Cause::Closed, msg);
            return Outcome::CloseBoth;
        }
    }
    if let Some(r) = flow.response.as_mut() {
        r.body = resp_cap.finish();
        verdict.redact_logged(&mut r.headers, shared.cfg.show_secrets);
    }
    let _ = client.flush().await;
    conn.keep_alive = resp
        .headers
        .get("keep-alive")
        .and_then(failure::keep_alive_timeout);
    let upstream_reusable = !answered_early
        && !matches!(resp_kind, BodyKind::UntilClose)
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

/// Answer the client with 502 (504 when the upstream never answered) naming
/// `msg` and close; the failure is counted under `cause`.
async fn upstream_failed(
    worker: &Worker,
    client: &mut ClientIo,
    flow: &mut HttpFlow,
    t0: Instant,
    cause: failure::Cause,
    msg: String,
) -> Outcome {
    // Accepted and never answered: a gateway timeout, not a bad gateway.
    let status = if cause == failure::Cause::Timeout {
        504
    } else {
        502
    };
    let _ = send_error(client, status, &msg).await;
    flow.response = None;
    failure::record(&worker.shared.metrics, flow, cause, msg);
    flow.timings.total = t0.elapsed();
    Outcome::CloseBoth
}

/// The client's body framing is broken: `400`, both connections closed.
async fn client_framing_error(
    client: &mut ClientIo,
    flow: &mut HttpFlow,
    t0: Instant,
    what: &str,
) -> Outcome {
    let msg = format!("rejected request body: {what}");
    answer_failure(client, flow, t0, 400, msg).await
}

/// Answer the client with `status` naming `msg` and close (a failure on the
/// client's side: not an upstream failure).
async fn answer_failure(
    client: &mut ClientIo,
    flow: &mut HttpFlow,
    t0: Instant,
    status: u16,
    msg: String,
) -> Outcome {
    let _ = send_error(client, status, &msg).await;
    flow.response = None;
    flow.error = Some(msg);
    flow.timings.total = t0.elapsed();
    Outcome::CloseBoth
}

/// Why sending a request and reading its response head failed.
enum SendError {
    /// The client side broke (the flow's error says how).
    Client,
    /// The client is answered with this status (a body too slow: 408; broken
    /// framing: 400) and both connections are closed.
    Answer { status: u16, msg: String },
    /// The upstream side failed; `stage` is set when no response byte had
    /// arrived (the failure may be the keep-alive race).
    Upstream {
        stage: Option<failure::H1Stage>,
        cause: failure::Cause,
        msg: String,
    },
}

/// One attempt at sending a request head (+ body) and reading the
/// response head, interim responses forwarded.
struct Send<'a> {
    worker: &'a Worker,
    client: &'a mut ClientIo,
    buf: &'a mut Vec<u8>,
    /// The serialized request head.
    out: &'a [u8],
    req_kind: BodyKind,
    expect_continue: bool,
    /// `100 Continue` went to the client already (never twice).
    sent_continue: &'a mut bool,
    /// Set when the upstream answered before the body was sent.
    answered_early: &'a mut bool,
    flow: &'a mut HttpFlow,
    ubuf: &'a mut Vec<u8>,
}

impl Send<'_> {
    async fn run(&mut self, conn: &mut UpstreamConn) -> Result<ResponseHead, SendError> {
        use failure::{Cause, H1Stage};
        let shared = &self.worker.shared;
        let up = |stage, cause, msg| SendError::Upstream { stage, cause, msg };
        if let Err(e) = conn.io.write_all(self.out).await {
            return Err(up(
                Some(H1Stage::Head),
                Cause::Closed,
                format!("upstream closed the connection: {e}"),
            ));
        }
        let limits = shared.cfg.limits;
        let body_empty = matches!(self.req_kind, BodyKind::Empty);
        // `Expect: 100-continue` was forwarded: the upstream may refuse the
        // body before it is sent (413, 401, 417 …), or say 100.
        if self.expect_continue
            && !body_empty
            && !*self.sent_continue
            && let Some(h) = self.await_continue(conn, &limits).await?
        {
            *self.answered_early = true;
            return Ok(h);
        }
        self.send_body(conn).await?;
        if let Err(e) = conn.io.flush().await {
            let stage = body_empty.then_some(H1Stage::Head);
            return Err(up(stage, Cause::Closed, format!("upstream: {e}")));
        }
        self.read_response_head(conn, &limits).await
    }

    /// Waits for the upstream's `100` (relayed), its early final answer
    /// (returned), or the client sending the body anyway.
    async fn await_continue(
        &mut self,
        conn: &mut UpstreamConn,
        limits: &crate::http1::codec::Limits,
    ) -> Result<Option<ResponseHead>, SendError> {
        loop {
            match expect::await_continue(self.client, self.buf, &mut conn.io, self.ubuf, limits)
                .await
            {
                expect::Continue::ClientSent => return Ok(None),
                expect::Continue::Quiet => {
                    // An upstream ignoring Expect: unblock the client (curl
                    // would send after 1 s anyway).
                    *self.sent_continue = true;
                    if self
                        .client
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return Err(SendError::Client);
                    }
                    let _ = self.client.flush().await;
                    return Ok(None);
                }
                expect::Continue::Upstream(h)
                    if (100..200).contains(&h.status) && h.status != 101 =>
                {
                    let mut o = Vec::new();
                    codec::write_response_head(&h, &mut o);
                    if self.client.write_all(&o).await.is_err() {
                        return Err(SendError::Client);
                    }
                    let _ = self.client.flush().await;
                    if h.status == 100 {
                        *self.sent_continue = true;
                        return Ok(None);
                    }
                }
                expect::Continue::Upstream(h) => return Ok(Some(h)),
                expect::Continue::ClientGone => {
                    self.flow.error =
                        Some("client closed the connection before sending the body".into());
                    return Err(SendError::Client);
                }
                expect::Continue::UpstreamFailed(msg) => {
                    return Err(SendError::Upstream {
                        stage: None,
                        cause: failure::Cause::Closed,
                        msg,
                    });
                }
            }
        }
    }

    /// Relays the request body, paced (`--request-body-timeout`,
    /// `--request-body-min-rate`).
    async fn send_body(&mut self, conn: &mut UpstreamConn) -> Result<(), SendError> {
        let shared = &self.worker.shared;
        let mut req_cap = Capture::new(shared.flowlog.body_capture_limit());
        let relayed = {
            let mut paced = pace::Paced::new(&mut *self.client, shared.cfg.request_body);
            body::relay(
                &mut paced,
                self.buf,
                &mut conn.io,
                self.req_kind,
                false,
                &mut req_cap,
            )
            .await
        };
        match relayed {
            Ok(n) => self.flow.request_bytes = n,
            Err(BodyError::Read(e)) if pace::Paced::<ClientIo>::is_too_slow(&e) => {
                let msg = format!("{e} (--request-body-timeout, --request-body-min-rate)");
                return Err(SendError::Answer { status: 408, msg });
            }
            Err(BodyError::Write(e)) => {
                return Err(SendError::Upstream {
                    stage: None,
                    cause: failure::Cause::Closed,
                    msg: format!(
                        "upstream closed the connection while receiving the request body: {e}"
                    ),
                });
            }
            Err(BodyError::Framing(e)) => {
                // Nothing past the error was forwarded; the upstream
                // connection (holding an incomplete request) is closed.
                let msg = format!("rejected request body: {e}");
                return Err(SendError::Answer { status: 400, msg });
            }
            Err(e) => {
                // Client side broke mid-body: nothing sensible to answer.
                self.flow.error = Some(format!("client: {e}"));
                return Err(SendError::Client);
            }
        }
        self.flow.request_body = req_cap.finish();
        Ok(())
    }

    /// Reads the response head, forwarding interim 1xx other than 101 (a
    /// `100` only when the client has not had one).
    async fn read_response_head(
        &mut self,
        conn: &mut UpstreamConn,
        limits: &crate::http1::codec::Limits,
    ) -> Result<ResponseHead, SendError> {
        use failure::{Cause, H1Stage};
        let idle = self.worker.shared.cfg.idle_timeout;
        let up = |stage, cause, msg| SendError::Upstream { stage, cause, msg };
        let mut interim = false;
        loop {
            let waiting = (!interim).then_some(H1Stage::AwaitingResponse);
            match read_head(
                &mut conn.io,
                self.ubuf,
                HeadWaits::total(idle),
                Quit::NEVER,
                |b| parse_response(b, limits),
            )
            .await
            {
                Ok(Some((h, n))) => {
                    self.ubuf.drain(..n);
                    if (100..200).contains(&h.status) && h.status != 101 {
                        interim = true;
                        if h.status != 100 || !*self.sent_continue {
                            // Forward informational responses (103 Early Hints ...).
                            let mut o = Vec::new();
                            codec::write_response_head(&h, &mut o);
                            let _ = self.client.write_all(&o).await;
                        }
                        continue;
                    }
                    return Ok(h);
                }
                Ok(None) => {
                    return Err(up(
                        waiting,
                        if conn.reused {
                            Cause::IdleCloseRace
                        } else {
                            Cause::Closed
                        },
                        "upstream closed the connection without a response".into(),
                    ));
                }
                Err(HeadError::Parse(e)) => {
                    return Err(up(
                        None,
                        Cause::Invalid,
                        format!("upstream sent an invalid response: {e}"),
                    ));
                }
                Err(HeadError::HeadTimeout) => {
                    let msg = "upstream response head incomplete".into();
                    return Err(up(None, Cause::Timeout, msg));
                }
                Err(HeadError::Io(e)) => {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        let msg = format!("upstream did not answer within {}s", idle.as_secs());
                        return Err(up(None, Cause::Timeout, msg));
                    }
                    // A reset before any byte is the same race as a close.
                    let stage = (self.ubuf.is_empty() && failure::is_peer_close(&e))
                        .then_some(())
                        .and(waiting);
                    let cause = if stage.is_some() && conn.reused {
                        Cause::IdleCloseRace
                    } else {
                        Cause::Closed
                    };
                    return Err(up(
                        stage,
                        cause,
                        format!("reading the upstream response: {e}"),
                    ));
                }
            }
        }
    }
}

/// [`finish_error`] for a connection that could not be made, counted by cause.
fn finish_upstream_error(
    worker: &Worker,
    ctx: &ConnCtx,
    mut flow: HttpFlow,
    t0: Instant,
    e: &UpstreamError,
) {
    flow.error_cause = Some(failure::connect_cause(e).as_str());
    worker
        .shared
        .metrics
        .upstream_failure(failure::connect_cause(e));
    finish_error(worker, ctx, flow, t0, e.to_string());
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
        error_cause: None,
        upstream_retries: 0,
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
    /// The head started but did not complete within [`HeadWaits::head`].
    HeadTimeout,
}

/// How long [`read_head`] waits: for the first byte, then for the rest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadWaits {
    /// Before the first byte (an idle keep-alive connection).
    idle: Duration,
    /// From the first byte to the end of the head.
    head: Duration,
}

impl HeadWaits {
    /// One deadline for the whole head.
    pub(crate) fn total(d: Duration) -> Self {
        HeadWaits { idle: d, head: d }
    }
}

/// When [`read_head`] gives up waiting for a new head because tproxy is
/// shutting down: `now()` says whether to quit; it is asked when `signal`
/// fires and, from then on, every 250 ms (it may turn true later, e.g. at
/// the end of the first request's grace). Before the signal the read sleeps
/// until data or its deadline: an idle connection costs no wake-ups.
#[derive(Clone, Copy)]
pub(crate) struct Quit<'a> {
    signal: Option<&'a crate::shutdown::ShutdownSignal>,
    now: &'a dyn Fn() -> bool,
}

impl Quit<'_> {
    /// Never quit (response heads: the exchange is in flight).
    pub(crate) const NEVER: Quit<'static> = Quit {
        signal: None,
        now: &|| false,
    };
}

/// Read until `parse` yields a head. `Ok(None)`: clean EOF before any byte,
/// or `quit` said so while no byte of a new head had arrived (reads on
/// poll-io streams are cancel-safe, so waking up to check loses nothing).
/// Waits `waits.idle` for the first byte (`Io(TimedOut)`), then `waits.head`
/// from the first byte to the end of the head (`HeadTimeout`).
async fn read_head<R, T>(
    r: &mut R,
    buf: &mut Vec<u8>,
    waits: HeadWaits,
    quit: Quit<'_>,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, ParseError>,
) -> Result<Option<(T, usize)>, HeadError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    const TICK: Duration = Duration::from_millis(250);
    let started = Instant::now();
    let mut first_byte = (!buf.is_empty()).then_some(started);
    loop {
        if !buf.is_empty()
            && let Some(x) = parse(buf).map_err(HeadError::Parse)?
        {
            return Ok(Some(x));
        }
        if first_byte.is_none() && !buf.is_empty() {
            first_byte = Some(Instant::now());
        }
        buf.reserve(8192);
        let n = loop {
            let left = match first_byte {
                Some(t) => waits.head.saturating_sub(t.elapsed()),
                None => waits.idle.saturating_sub(started.elapsed()),
            };
            if left.is_zero() {
                return Err(match first_byte {
                    Some(_) => HeadError::HeadTimeout,
                    None => HeadError::Io(std::io::ErrorKind::TimedOut.into()),
                });
            }
            let read = match quit.signal {
                // Between requests, not shutting down: data, the deadline or
                // the signal.
                Some(signal) if buf.is_empty() && !signal.fired() => monoio::select! {
                    r = monoio::time::timeout(left, r.read_buf(buf)) => r,
                    () = signal.wait() => continue,
                },
                // Shutting down: ask `quit.now` every TICK.
                Some(_) if buf.is_empty() => {
                    monoio::time::timeout(left.min(TICK), r.read_buf(buf)).await
                }
                // Inside a head, or never quitting: data or the deadline.
                _ => monoio::time::timeout(left, r.read_buf(buf)).await,
            };
            match read {
                Ok(Ok(n)) => break n,
                Ok(Err(e)) => return Err(HeadError::Io(e)),
                Err(_) if buf.is_empty() && (quit.now)() => return Ok(None),
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
