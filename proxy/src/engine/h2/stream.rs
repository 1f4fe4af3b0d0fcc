//! One HTTP/2 stream from the client = one flow: route, rules, upstream
//! (HTTP/2 stream or translated HTTP/1.1 exchange), response streamed back.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};

use super::body::{PumpError, Replay, pump, pump_kept};
use super::client::{H2Upstream, Upstream};
use super::server::Conn;
use super::translate;
use crate::engine::body::Capture;
use crate::engine::request::{self, Route, Scope};
use crate::engine::verdict::{self, Verdict};
use crate::engine::{finish_error, log_conn_error, new_flow};
use crate::flowlog::{HttpFlow, HttpVersion, ResponseSummary};
use crate::http1::codec::{Headers, RequestHead};
use crate::observe;
use crate::upstream::failure::{self, H2Budget, REPLAY_LIMIT};
use crate::worker::Worker;

/// Serve one client stream to the end and record its flow.
pub(super) async fn serve(
    c: Rc<Conn>,
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let worker = &*c.worker;
    let ctx = &c.ctx;
    let started = SystemTime::now();
    let t0 = Instant::now();
    let (parts, body) = req.into_parts();
    if parts.method == http::Method::CONNECT {
        // Tunnels inside intercepted HTTP/2 (extended CONNECT included) are
        // not relayed.
        let msg = "CONNECT is not supported inside an intercepted HTTP/2 connection";
        send_text(&mut respond, 405, &[], error_body(msg));
        log_conn_error(worker, ctx, msg.to_owned());
        return;
    }
    let head = translate::request_head(&parts);
    let scope = Scope::Fixed {
        target: c.target.clone(),
        tls: c.tls,
    };
    let route = match request::route(&scope, &head) {
        Ok(r) => r,
        Err(e) => {
            let msg = e.to_string();
            send_text(&mut respond, e.status(), &[], error_body(&msg));
            log_conn_error(
                worker,
                ctx,
                format!("refused {} {}: {msg}", head.method, head.target),
            );
            return;
        }
    };
    // The upstream gets the path the rules see (normal form).
    let mut head = head;
    head.target = route.path.clone();
    let mut flow = new_flow(worker, ctx, started, &head, &route);
    flow.request_version = HttpVersion::Http2;
    flow.trace = observe::trace::begin(worker, ctx, head.headers.get("traceparent"));
    let mut verdict = verdict::for_request(worker, ctx, c.tls, &route, &head.method);
    flow.decision = verdict.decision;
    flow.rule = verdict.rule.take();
    flow.tag = verdict.tag.take();
    verdict.redact_logged(&mut flow.request_headers, worker.shared.cfg.show_secrets);
    if let Some(deny) = &verdict.deny {
        let n = send_text(&mut respond, deny.status, &deny.headers, deny.body.clone());
        flow.response = Some(ResponseSummary {
            status: deny.status,
            reason: String::new(),
            version: HttpVersion::Http2,
            headers: Vec::new(),
            body: None,
        });
        flow.response_bytes = n;
        flow.timings.total = t0.elapsed();
        observe::http_done(worker, ctx, flow);
        return;
    }
    if let Some((status, msg)) = &c.pre_error {
        send_text(&mut respond, *status, &[], error_body(msg));
        finish_error(worker, ctx, flow, t0, msg.clone());
        return;
    }
    let mut x = Exchange {
        worker,
        route: &route,
        verdict: &verdict,
        flow: &mut flow,
        t0,
        respond,
        req_capture: None,
    };
    // A stream the upstream proved it did not process (GOAWAY, REFUSED_STREAM,
    // a connection that was going away) is sent again on a new connection,
    // a bounded number of times, with the body taken so far replayed.
    let replay = Rc::new(RefCell::new(Replay::default()));
    let mut body = Some(body);
    let mut budget = H2Budget::default();
    while let Some(b) = body.take() {
        let up = match super::client::for_attempt(worker, &route.target, ctx.client, &budget).await
        {
            Ok(u) => u,
            Err(e) => {
                let msg = e.to_string();
                send_text(&mut x.respond, e.status(), &[], error_body(&msg));
                let metrics = &worker.shared.metrics;
                failure::record(metrics, x.flow, failure::connect_cause(&e), msg);
                break;
            }
        };
        match up {
            Upstream::H2(h2, timings) => {
                let seen = h2.progress();
                let eos = b.is_end_stream() && replay.borrow().is_empty();
                let opened = match x.open_h2(&head, eos, &h2).await {
                    Ok(o) => o,
                    Err(Refused::Retry(cause, msg)) => {
                        if budget.refused(h2.progress() != seen) {
                            tracing::debug!(error = %msg, attempts = budget.attempts(), "upstream HTTP/2 connection cannot take the stream; retrying on a new one");
                            failure::record_retry(&worker.shared.metrics, x.flow, cause);
                            body = Some(b);
                            continue;
                        }
                        let n = budget.attempts();
                        x.fail(cause, format!("{msg} (after {n} attempts)"));
                        break;
                    }
                    Err(Refused::Fail(cause, msg)) => {
                        x.fail(cause, msg);
                        break;
                    }
                };
                let timings = c.pre_timings.take().unwrap_or(timings);
                x.flow.timings.connect = timings.connect;
                x.flow.timings.tls = timings.tls;
                match x.via_h2(opened, b, &replay, &mut budget, seen).await {
                    Via::Done => break,
                    Via::Retry(b, cause, msg) => {
                        tracing::debug!(error = %msg, attempts = budget.attempts(), "upstream did not process the stream; retrying on a new connection");
                        failure::record_retry(&worker.shared.metrics, x.flow, cause);
                        body = Some(b);
                    }
                }
            }
            Upstream::H1(conn, timings) => {
                if !replay.borrow().is_empty() {
                    // Cannot happen in practice (a target that spoke h2 a moment
                    // ago); the body taken so far has no HTTP/1 replay path.
                    worker.release_upstream(*conn);
                    x.fail(
                        failure::Cause::GoAway,
                        "upstream went away and its new connection speaks HTTP/1.1 only; the request body cannot be sent again".into(),
                    );
                    break;
                }
                let timings = c.pre_timings.take().unwrap_or(timings);
                x.flow.timings.connect = timings.connect;
                x.flow.timings.tls = timings.tls;
                super::h1_up::exchange(&mut x, head, b, *conn).await;
                break;
            }
        }
    }
    flow.timings.total = t0.elapsed();
    observe::http_done(worker, ctx, flow);
}

/// Why a stream could not be opened upstream.
pub(super) enum Refused {
    /// The connection cannot take new streams; nothing was sent.
    Retry(failure::Cause, String),
    /// The request cannot be sent.
    Fail(failure::Cause, String),
}

/// How a stream's exchange ended.
enum Via {
    Done,
    /// Not processed upstream: try again with the body handed back.
    Retry(RecvStream, failure::Cause, String),
}

/// The flow error of a stream the client gave up on while we waited for
/// the upstream (RST_STREAM, or an error on its connection: `None`).
pub(super) fn client_gone(reason: Option<Reason>) -> String {
    match reason {
        Some(r) => format!("client reset the stream ({r:?}) before the response"),
        None => "client connection closed before the response".to_owned(),
    }
}

/// The flow error when the response head could not be sent: the client
/// closed the stream first. (h2 reports this as the user error
/// "unexpected frame type": HEADERS on a closed stream.)
pub(super) fn client_closed_stream(respond: &mut SendResponse<Bytes>) -> String {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match respond.poll_reset(&mut cx) {
        Poll::Ready(Ok(reason)) => client_gone(Some(reason)),
        _ => client_gone(None),
    }
}

/// An upstream stream whose request head is sent.
pub(super) struct Opened {
    response: h2::client::ResponseFuture,
    send: h2::SendStream<Bytes>,
    up: H2Upstream,
}

/// One stream's exchange state, shared by the HTTP/2 and HTTP/1 upstream paths.
pub(super) struct Exchange<'a> {
    pub worker: &'a Worker,
    pub route: &'a Route,
    pub verdict: &'a Verdict,
    pub flow: &'a mut HttpFlow,
    pub t0: Instant,
    pub respond: SendResponse<Bytes>,
    /// The request body capture carried across attempts (flow log).
    pub req_capture: Option<Capture>,
}

impl Exchange<'_> {
    /// The request head sent upstream: rule edits and traceparent applied.
    pub fn edited(&self, mut head: RequestHead) -> RequestHead {
        verdict::apply(&self.verdict.request_headers, &mut head.headers);
        if let Some(tp) = self
            .flow
            .trace
            .as_ref()
            .and_then(|t| t.upstream_traceparent())
        {
            head.headers.set("traceparent", tp);
        }
        head
    }

    /// Answer the stream with a 502 naming `msg` (or reset it when the
    /// response already started) and record the error.
    pub fn fail(&mut self, cause: failure::Cause, msg: String) {
        // An upstream that accepted and never answered is a gateway timeout.
        let status = if cause == failure::Cause::Timeout {
            504
        } else {
            502
        };
        send_text(&mut self.respond, status, &[], error_body(&msg));
        self.flow.response = None;
        failure::record(&self.worker.shared.metrics, self.flow, cause, msg);
    }

    /// The response fields sent to the client (rule edits applied).
    pub fn response_fields(&self, headers: &Headers) -> Headers {
        let mut h = headers.clone();
        verdict::apply(&self.verdict.response_headers, &mut h);
        h
    }

    /// Record the response head in the flow.
    pub fn record_response(&mut self, head: &crate::http1::codec::ResponseHead, v: HttpVersion) {
        let mut s = crate::engine::summary(self.worker, head);
        s.version = v;
        if v == HttpVersion::Http2 {
            s.reason = String::new();
        }
        self.verdict
            .redact_logged(&mut s.headers, self.worker.shared.cfg.show_secrets);
        self.flow.response = Some(s);
    }

    /// Open the upstream stream (request head sent). Err: the connection
    /// cannot take it (closed, going away: retried elsewhere, it was
    /// retired), or the request cannot be sent at all.
    async fn open_h2(
        &mut self,
        head: &RequestHead,
        eos: bool,
        up: &H2Upstream,
    ) -> Result<Opened, Refused> {
        self.flow.server_addr = Some(up.addr);
        let scheme = if self.route.target.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let req = translate::h2_request(&self.edited(head.clone()), scheme)
            .map_err(|m| Refused::Fail(failure::Cause::Invalid, m))?;
        let started = match up.send.clone().ready().await {
            Ok(mut s) => s.send_request(req, eos),
            Err(e) => Err(e),
        };
        match started {
            Ok((response, send)) => Ok(Opened {
                response,
                send,
                up: up.clone(),
            }),
            Err(e) => {
                up.retire(self.worker, &self.route.target);
                let msg = format!(
                    "upstream HTTP/2 connection failed: {}",
                    failure::describe_h2(&e)
                );
                // The stream never left: any connection-level reason is safe
                // to retry; a user error is not going to get better.
                if e.is_go_away() || e.is_io() || e.is_remote() {
                    Err(Refused::Retry(failure::h2_cause(&e), msg))
                } else {
                    Err(Refused::Fail(failure::h2_cause(&e), msg))
                }
            }
        }
    }

    /// Run the stream: body up (replaying what an earlier attempt took),
    /// response down. `Via::Retry` hands the body back when the upstream
    /// proved it did not process the stream and the body can be replayed.
    async fn via_h2(
        &mut self,
        opened: Opened,
        body: RecvStream,
        replay: &Rc<RefCell<Replay>>,
        budget: &mut H2Budget,
        seen: u64,
    ) -> Via {
        let worker = self.worker;
        let Opened {
            response: resp_fut,
            send: mut up_send,
            up,
        } = opened;
        let eos = body.is_end_stream() && replay.borrow().is_empty();
        let limit = worker.shared.flowlog.body_capture_limit();
        let mut body = Some(body);
        let mut req_task = None;
        let mut idle_send = None;
        if eos {
            idle_send = Some(up_send);
        } else if let Some(mut b) = body.take() {
            let replay = replay.clone();
            let mut cap = self
                .req_capture
                .take()
                .unwrap_or_else(|| Capture::new(limit));
            req_task = Some(monoio::spawn(async move {
                // What an earlier attempt took goes first, then the rest.
                let (again, ended) = {
                    let r = replay.borrow();
                    (r.again(), r.ended())
                };
                let r = match again.send(&mut up_send).await {
                    Ok(()) if ended => Ok(0),
                    Ok(()) => pump_kept(&mut b, &mut up_send, &mut cap, Some(&replay)).await,
                    Err(e) => Err(PumpError::Dst(e)),
                };
                (r, cap, b)
            }));
        }
        // Wait for the response head, or for the client to reset its stream
        // or lose its connection (then the upstream stream is reset too).
        let mut resp_fut = resp_fut;
        let respond = &mut self.respond;
        let idle = worker.shared.cfg.idle_timeout;
        let waited = monoio::time::timeout(
            idle,
            poll_fn(|cx| {
                match respond.poll_reset(cx) {
                    Poll::Ready(Ok(reason)) => return Poll::Ready(Err(Some(reason))),
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(None)),
                    Poll::Pending => {}
                }
                Pin::new(&mut resp_fut).poll(cx).map(Ok)
            }),
        )
        .await;
        let Ok(waited) = waited else {
            // Accepted and never answered: a gateway timeout.
            if let Some(s) = idle_send.as_mut() {
                s.send_reset(Reason::CANCEL);
            }
            self.fail(
                failure::Cause::Timeout,
                format!("upstream did not answer within {}s", idle.as_secs()),
            );
            // A body still being pumped ends with the streams (detached).
            drop(req_task);
            return Via::Done;
        };
        let mut retry = None;
        let resp = match waited {
            Ok(Ok(r)) => Some(r),
            Err(reason) => {
                if let Some(s) = idle_send.as_mut() {
                    s.send_reset(reason.unwrap_or(Reason::CANCEL));
                }
                self.flow.error = Some(client_gone(reason));
                None
            }
            Ok(Err(e)) => {
                let cause = failure::h2_cause(&e);
                if e.is_go_away() {
                    up.retire(worker, &self.route.target);
                }
                let kind = failure::H2Retry::of(&e);
                let unprocessed = kind == Some(failure::H2Retry::Unprocessed);
                let progress = up.progress() != seen;
                if kind.is_some_and(|k| budget.allows(k, progress, &self.flow.method)) {
                    retry = Some((cause, failure::describe_h2(&e)));
                } else {
                    match e.reason() {
                        Some(reason) if e.is_reset() && cause != failure::Cause::Refused => {
                            self.respond.send_reset(reason);
                            let msg = format!("upstream reset the stream ({reason:?})");
                            failure::record(&worker.shared.metrics, self.flow, cause, msg);
                        }
                        _ => {
                            let tries = if unprocessed {
                                format!(" (after {} attempts)", budget.attempts())
                            } else {
                                String::new()
                            };
                            let what = failure::describe_h2(&e);
                            self.fail(
                                cause,
                                format!("upstream HTTP/2 stream failed: {what}{tries}"),
                            );
                        }
                    }
                }
                None
            }
        };
        if resp.is_some() {
            // No retry from here on: stop keeping the body.
            replay.borrow_mut().stop();
        }
        if let Some(resp) = resp {
            up.answered();
            self.flow.timings.ttfb = Some(self.t0.elapsed());
            self.respond_h2(resp).await;
        }
        if let Some(t) = req_task {
            let (r, cap, b) = t.await;
            body = Some(b);
            if let Some((cause, msg)) = retry.take() {
                if replay.borrow().replayable() {
                    self.req_capture = Some(cap);
                } else {
                    self.fail(
                        cause,
                        format!("{msg}; not retried: more than {REPLAY_LIMIT} bytes of the request body had been sent"),
                    );
                    return Via::Done;
                }
                retry = Some((cause, msg));
            } else {
                match r {
                    Ok(_) => self.flow.request_bytes = replay.borrow().taken,
                    // RST_STREAM(NO_ERROR) after a complete response: the
                    // upstream needs no more of the body (RFC 9113 §8.1),
                    // not an error.
                    Err(PumpError::DstReset(Reason::NO_ERROR)) if self.flow.response.is_some() => {}
                    Err(e) => {
                        if self.flow.error.is_none() {
                            self.flow.error = Some(format!("request body: {e}"));
                        }
                    }
                }
                self.flow.request_body = cap.finish();
            }
        }
        match (retry, body) {
            (Some((cause, msg)), Some(b)) => Via::Retry(b, cause, msg),
            _ => Via::Done,
        }
    }

    async fn respond_h2(&mut self, resp: http::Response<RecvStream>) {
        let (parts, mut rbody) = resp.into_parts();
        let rhead = translate::response_head(&parts);
        self.record_response(&rhead, HttpVersion::Http2);
        let out = translate::h2_response(rhead.status, &self.response_fields(&rhead.headers));
        let eos = rbody.is_end_stream();
        let mut down = match self.respond.send_response(out, eos) {
            Ok(s) => s,
            Err(_) => {
                self.flow.error = Some(client_closed_stream(&mut self.respond));
                return;
            }
        };
        if eos {
            return;
        }
        let mut cap = Capture::new(self.worker.shared.flowlog.body_capture_limit());
        match pump(&mut rbody, &mut down, &mut cap).await {
            Ok(n) => self.flow.response_bytes = n,
            Err(PumpError::Src(e)) => {
                let msg = format!("upstream stream failed during the response: {e}");
                let cause = failure::h2_cause(&e);
                failure::record(&self.worker.shared.metrics, self.flow, cause, msg);
            }
            Err(e) => {
                self.flow.error = Some(format!("client stream failed during the response: {e}"));
            }
        }
        if let Some(r) = self.flow.response.as_mut() {
            r.body = cap.finish();
        }
    }
}

/// tproxy's one-line error body (the HTTP/1 engine's text).
pub(super) fn error_body(msg: &str) -> String {
    format!("tproxy: {msg}\n")
}

/// Answer a stream with a complete text response; returns body bytes.
pub(super) fn send_text(
    respond: &mut SendResponse<Bytes>,
    status: u16,
    headers: &[(String, String)],
    body: String,
) -> u64 {
    let mut h = Headers::new();
    let mut has_ctype = false;
    for (k, v) in headers {
        has_ctype |= k.eq_ignore_ascii_case("content-type");
        h.append(k, v.as_bytes());
    }
    if !has_ctype {
        h.append("content-type", "text/plain; charset=utf-8");
    }
    h.append("content-length", body.len().to_string());
    let resp = translate::h2_response(status, &h);
    let len = body.len() as u64;
    match respond.send_response(resp, body.is_empty()) {
        Ok(mut s) if !body.is_empty() => {
            let _ = s.send_data(Bytes::from(body), true);
        }
        Ok(_) => {}
        Err(_) => respond.send_reset(Reason::INTERNAL_ERROR),
    }
    len
}
