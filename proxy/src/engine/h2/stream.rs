//! One HTTP/2 stream from the client = one flow: route, rules, upstream
//! (HTTP/2 stream or translated HTTP/1.1 exchange), response streamed back.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};

use super::body::{PumpError, pump};
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
    };
    // A connection found going away (GOAWAY) gets one retry on a new one.
    for attempt in 0..2 {
        let up = match super::client::get(worker, &route.target, ctx.client).await {
            Ok(u) => u,
            Err(e) => {
                let msg = e.to_string();
                send_text(&mut x.respond, e.status(), &[], error_body(&msg));
                x.flow.error = Some(msg);
                break;
            }
        };
        match up {
            Upstream::H2(h2, timings) => match x.open_h2(&head, body.is_end_stream(), &h2).await {
                Ok(opened) => {
                    let timings = c.pre_timings.take().unwrap_or(timings);
                    x.flow.timings.connect = timings.connect;
                    x.flow.timings.tls = timings.tls;
                    x.via_h2(opened, body).await;
                    break;
                }
                Err(msg) if attempt == 0 => {
                    tracing::debug!(error = %msg, "upstream HTTP/2 connection unusable; retrying on a new one");
                }
                Err(msg) => {
                    x.fail(msg);
                    break;
                }
            },
            Upstream::H1(conn, timings) => {
                let timings = c.pre_timings.take().unwrap_or(timings);
                x.flow.timings.connect = timings.connect;
                x.flow.timings.tls = timings.tls;
                super::h1_up::exchange(&mut x, head, body, *conn).await;
                break;
            }
        }
    }
    flow.timings.total = t0.elapsed();
    observe::http_done(worker, ctx, flow);
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
    pub fn fail(&mut self, msg: String) {
        self.fail_with(502, msg);
    }

    /// [`Self::fail`] with another status (504 for an upstream that never answered).
    pub fn fail_with(&mut self, status: u16, msg: String) {
        send_text(&mut self.respond, status, &[], error_body(&msg));
        self.flow.response = None;
        self.flow.error = Some(msg);
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
    /// cannot take it (closed, going away); it was retired.
    async fn open_h2(
        &mut self,
        head: &RequestHead,
        eos: bool,
        up: &H2Upstream,
    ) -> Result<Opened, String> {
        self.flow.server_addr = Some(up.addr);
        let scheme = if self.route.target.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let req = translate::h2_request(&self.edited(head.clone()), scheme)?;
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
                Err(format!("upstream HTTP/2 connection failed: {e}"))
            }
        }
    }

    async fn via_h2(&mut self, opened: Opened, mut body: RecvStream) {
        let worker = self.worker;
        let Opened {
            response: resp_fut,
            send: mut up_send,
            up,
        } = opened;
        let eos = body.is_end_stream();
        let limit = worker.shared.flowlog.body_capture_limit();
        let mut req_task = None;
        let mut idle_send = None;
        if eos {
            idle_send = Some(up_send);
        } else {
            req_task = Some(monoio::spawn(async move {
                let mut cap = Capture::new(limit);
                let r = pump(&mut body, &mut up_send, &mut cap).await;
                (r, cap)
            }));
        }
        // Wait for the response head, or for the client to reset its stream
        // (then the upstream stream is reset with the same reason).
        let mut resp_fut = resp_fut;
        let respond = &mut self.respond;
        let idle = worker.shared.cfg.idle_timeout;
        let waited = monoio::time::timeout(
            idle,
            poll_fn(|cx| {
                if let Poll::Ready(Ok(reason)) = respond.poll_reset(cx) {
                    return Poll::Ready(Err(reason));
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
            self.fail_with(
                504,
                format!("upstream did not answer within {}s", idle.as_secs()),
            );
            // A body still being pumped ends with the streams (detached).
            drop(req_task);
            return;
        };
        let waited = match waited {
            Ok(r) => r,
            Err(reason) => {
                if let Some(s) = idle_send.as_mut() {
                    s.send_reset(reason);
                }
                self.flow.error = Some(format!("client reset the stream ({reason:?})"));
                Err(h2::Error::from(reason))
            }
        };
        let resp = match waited {
            Ok(r) => Some(r),
            Err(_) if self.flow.error.is_some() => None,
            Err(e) => {
                match e.reason() {
                    Some(reason) if e.is_reset() => {
                        self.respond.send_reset(reason);
                        self.flow.error = Some(format!("upstream reset the stream ({reason:?})"));
                    }
                    _ => {
                        if e.is_go_away() {
                            up.retire(worker, &self.route.target);
                        }
                        self.fail(format!("upstream HTTP/2 stream failed: {e}"));
                    }
                }
                None
            }
        };
        if let Some(resp) = resp {
            self.flow.timings.ttfb = Some(self.t0.elapsed());
            self.respond_h2(resp).await;
        }
        if let Some(t) = req_task {
            let (r, cap) = t.await;
            match r {
                Ok(n) => self.flow.request_bytes = n,
                // RST_STREAM(NO_ERROR) after a complete response: the
                // upstream needs no more of the body (RFC 9113 §8.1), not
                // an error.
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

    async fn respond_h2(&mut self, resp: http::Response<RecvStream>) {
        let (parts, mut rbody) = resp.into_parts();
        let rhead = translate::response_head(&parts);
        self.record_response(&rhead, HttpVersion::Http2);
        let out = translate::h2_response(rhead.status, &self.response_fields(&rhead.headers));
        let eos = rbody.is_end_stream();
        let mut down = match self.respond.send_response(out, eos) {
            Ok(s) => s,
            Err(e) => {
                self.flow.error = Some(format!("client stream closed before the response: {e}"));
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
                self.flow.error = Some(format!("upstream stream failed during the response: {e}"));
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
