//! An HTTP/1.1 client to an HTTP/2 upstream (inside the HTTP/1 engine's
//! request loop): the request becomes a stream on the worker's multiplexed
//! connection; the response is written back as HTTP/1.1 (chunked when the
//! length is unknown, trailers as chunked trailers).

use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::body::{H2Writer, Replay};
use super::client::{H2Upstream, Upstream};
use super::translate;
use crate::engine::body::{self, BodyError, Capture};
use crate::engine::request::{self, Route};
use crate::engine::respond::send_error;
use crate::engine::verdict::{self, Verdict};
use crate::flowlog::{HttpFlow, HttpVersion};
use crate::http1::codec::{self, BodyKind, RequestHead};
use crate::net::stream::ClientIo;
use crate::upstream::failure::{self, Cause, H2Budget, H2Retry};
use crate::worker::Worker;

/// Everything one request needs (borrowed from the HTTP/1 engine's loop).
pub struct Req<'a> {
    pub worker: &'a Worker,
    pub client: &'a mut ClientIo,
    /// Bytes read from the client past the request head.
    pub buf: &'a mut Vec<u8>,
    pub route: &'a Route,
    pub verdict: &'a Verdict,
    pub flow: &'a mut HttpFlow,
    pub t0: Instant,
}

/// Forward one request over HTTP/2. Returns whether the client connection
/// can carry another request.
pub async fn exchange(r: Req<'_>, up: H2Upstream, head: RequestHead, req_kind: BodyKind) -> bool {
    let Req {
        worker,
        client,
        buf,
        route,
        verdict,
        flow,
        t0,
    } = r;
    flow.server_addr = Some(up.addr);
    let client_minor = head.minor_version;
    let client_close = request::wants_close(&head);
    let method = head.method.clone();
    let expect_continue = head
        .headers
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    let mut up_head = head;
    up_head.headers.remove("expect");
    if up_head.headers.get("host") != Some(route.host_header.as_bytes()) {
        up_head.headers.set("host", route.host_header.clone());
    }
    up_head.target = route.path.clone();
    verdict::apply(&verdict.request_headers, &mut up_head.headers);
    if let Some(tp) = flow.trace.as_ref().and_then(|t| t.upstream_traceparent()) {
        up_head.headers.set("traceparent", tp);
    }
    let scheme = if route.target.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let eos = req_kind == BodyKind::Empty;
    let limit = worker.shared.flowlog.body_capture_limit();
    let metrics = &worker.shared.metrics;
    // The body as sent, kept (up to REPLAY_LIMIT) to send it again when the
    // upstream proves it did not process the stream (GOAWAY, REFUSED_STREAM).
    let mut kept: Option<Replay> = None;
    let mut up = up;
    let mut budget = H2Budget::default();
    let resp = loop {
        let seen = up.progress();
        let req = match translate::h2_request(&up_head, scheme) {
            Ok(r) => r,
            Err(msg) => {
                let _ = send_error(client, 502, &msg).await;
                flow.response = None;
                failure::record(metrics, flow, Cause::Invalid, msg);
                return false;
            }
        };
        flow.server_addr = Some(up.addr);
        let started = match up.send.clone().ready().await {
            Ok(mut s) => s.send_request(req, eos),
            Err(e) => Err(e),
        };
        // The error, and why it may be sent again (if it may).
        let (e, retryable, what) = match started {
            Err(e) => {
                up.retire(worker, &route.target);
                let never_sent = e.is_go_away() || e.is_io() || e.is_remote();
                (
                    e,
                    never_sent.then_some(H2Retry::Unprocessed),
                    "upstream HTTP/2 connection failed",
                )
            }
            Ok((resp_fut, mut up_send)) => {
                if !eos {
                    match kept.as_ref() {
                        // A retry: the whole body was kept.
                        // (A failure shows in the response future.)
                        Some(r) => {
                            let _ = r.again().send(&mut up_send).await;
                        }
                        None => {
                            if expect_continue {
                                if client
                                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                                    .await
                                    .is_err()
                                {
                                    return false;
                                }
                                let _ = client.flush().await;
                            }
                            let mut cap = Capture::new(limit);
                            let mut replay = Replay::default();
                            let mut w = Keeping {
                                inner: H2Writer { send: &mut up_send },
                                replay: &mut replay,
                            };
                            match body::relay(client, buf, &mut w, req_kind, true, &mut cap).await {
                                Ok(n) => {
                                    flow.request_bytes = n;
                                    let _ = up_send.send_data(Bytes::new(), true);
                                    replay.end(None);
                                    kept = Some(replay);
                                }
                                Err(BodyError::Write(e)) => {
                                    let msg = format!(
                                        "upstream HTTP/2 stream closed while receiving the request body: {e}"
                                    );
                                    let _ = send_error(client, 502, &msg).await;
                                    flow.response = None;
                                    failure::record(metrics, flow, Cause::Closed, msg);
                                    return false;
                                }
                                Err(e) => {
                                    up_send.send_reset(h2::Reason::CANCEL);
                                    flow.error = Some(format!("client: {e}"));
                                    return false;
                                }
                            }
                            flow.request_body = cap.finish();
                        }
                    }
                }
                match resp_fut.await {
                    Ok(r) => {
                        up.answered();
                        break r;
                    }
                    Err(e) => {
                        if e.is_go_away() {
                            up.retire(worker, &route.target);
                        }
                        let replayable = eos || kept.as_ref().is_some_and(Replay::replayable);
                        let retry = H2Retry::of(&e).filter(|_| replayable);
                        (e, retry, "upstream HTTP/2 stream failed")
                    }
                }
            }
        };
        let cause = failure::h2_cause(&e);
        let progress = up.progress() != seen;
        let again = retryable.is_some_and(|r| budget.allows(r, progress, &method));
        if !again {
            let tries = if retryable.is_some() && budget.attempts() > 0 {
                format!(" (after {} attempts)", budget.attempts())
            } else {
                String::new()
            };
            let msg = format!("{what}: {}{tries}", failure::describe_h2(&e));
            let _ = send_error(client, 502, &msg).await;
            flow.response = None;
            failure::record(metrics, flow, cause, msg);
            return false;
        }
        tracing::debug!(error = %e, "upstream did not process the request; retrying on a new connection");
        failure::record_retry(metrics, flow, cause);
        match super::client::for_attempt(worker, &route.target, flow.client, &budget).await {
            Ok(Upstream::H2(next, _)) => up = next,
            Ok(Upstream::H1(conn, _)) => {
                // The destination answered HTTP/1.1 this time: not worth a
                // second path for a moment's change of mind.
                worker.release_upstream(*conn);
                let msg = format!("{what}: {e}; its new connection speaks HTTP/1.1 only");
                let _ = send_error(client, 502, &msg).await;
                flow.response = None;
                failure::record(metrics, flow, cause, msg);
                return false;
            }
            Err(err) => {
                let msg = format!("{what}: {e}; a new connection failed: {err}");
                let _ = send_error(client, err.status(), &msg).await;
                flow.response = None;
                failure::record(metrics, flow, failure::connect_cause(&err), msg);
                return false;
            }
        }
    };
    flow.timings.ttfb = Some(t0.elapsed());
    let (parts, mut rbody) = resp.into_parts();
    let rhead = translate::response_head(&parts);
    let mut s = crate::engine::summary(worker, &rhead);
    s.version = HttpVersion::Http2;
    s.reason = String::new();
    verdict.redact_logged(&mut s.headers, worker.shared.cfg.show_secrets);
    flow.response = Some(s);

    // Framing towards the HTTP/1 client.
    let mut down = rhead.clone();
    codec::remove_hop_by_hop(&mut down.headers, false);
    verdict::apply(&verdict.response_headers, &mut down.headers);
    let no_body = method.eq_ignore_ascii_case("HEAD")
        || rhead.status == 204
        || rhead.status == 304
        || (100..200).contains(&rhead.status);
    let has_len = down.headers.get("content-length").is_some();
    let ended = rbody.is_end_stream();
    let chunked = !no_body && !has_len && !ended && client_minor == 1;
    let until_close = !no_body && !has_len && !ended && client_minor == 0;
    if !no_body && !has_len && ended {
        down.headers.set("content-length", "0");
    }
    if chunked {
        down.headers.set("transfer-encoding", "chunked");
    }
    let close = client_close || until_close;
    if close {
        down.headers.set("connection", "close");
    } else if client_minor == 0 {
        down.headers.set("connection", "keep-alive");
    }
    down.minor_version = 1;
    let mut o = Vec::with_capacity(512);
    codec::write_response_head(&down, &mut o);
    if client.write_all(&o).await.is_err() {
        return false;
    }
    let mut cap = Capture::new(limit);
    let mut n = 0u64;
    loop {
        let Some(data) = rbody.data().await else {
            break;
        };
        let data = match data {
            Ok(d) => d,
            Err(e) => {
                let msg = format!("upstream stream failed during the response: {e}");
                failure::record(&worker.shared.metrics, flow, failure::h2_cause(&e), msg);
                return false;
            }
        };
        let len = data.len();
        cap.push(&data);
        n += len as u64;
        let res = if chunked && len > 0 {
            let size = format!("{len:x}\r\n");
            let r1 = client.write_all(size.as_bytes()).await;
            let r2 = client.write_all(&data).await;
            let r3 = client.write_all(b"\r\n").await;
            r1.and(r2).and(r3)
        } else {
            client.write_all(&data).await
        };
        if let Err(e) = res {
            flow.error = Some(format!(
                "client closed the connection during the response: {e}"
            ));
            return false;
        }
        let _ = rbody.flow_control().release_capacity(len);
    }
    if chunked {
        let trailers = rbody.trailers().await.ok().flatten();
        if client
            .write_all(&translate::chunked_end(trailers.as_ref()))
            .await
            .is_err()
        {
            return false;
        }
    }
    let _ = client.flush().await;
    flow.response_bytes = n;
    if let Some(r) = flow.response.as_mut() {
        r.body = cap.finish();
    }
    !close
}

/// A writer that keeps what it writes in a [`Replay`] (which stops keeping
/// past its limit).
struct Keeping<'a, W> {
    inner: W,
    replay: &'a mut Replay,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Keeping<'_, W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            this.replay.push_slice(&buf[..*n]);
        }
        r
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
