//! An HTTP/2 client stream to an HTTP/1.1-only upstream: the request goes out
//! as an HTTP/1.1 message on a pooled connection of its own, the response is
//! decoded from its HTTP/1 framing and sent back as HEADERS + DATA.

use bytes::Bytes;
use h2::{Reason, RecvStream};
use tokio::io::AsyncWriteExt;

use super::body::{H2Reader, H2Writer};
use super::stream::Exchange;
use super::translate;
use crate::engine::body::{self, BodyError, Capture};
use crate::engine::{HeadError, HeadWaits, read_head, request};
use crate::flowlog::HttpVersion;
use crate::http1::codec::{self, BodyKind, RequestHead, parse_response};
use crate::upstream::UpstreamConn;
use crate::upstream::failure::{self, Cause, H1Stage};

/// Run the exchange; the connection goes back to the pool when reusable.
pub(super) async fn exchange(
    x: &mut Exchange<'_>,
    mut head: RequestHead,
    mut body: RecvStream,
    mut conn: UpstreamConn,
) {
    let worker = x.worker;
    x.flow.server_addr = Some(conn.addr);
    let reusable = run(x, &mut head, &mut body, &mut conn).await;
    if reusable {
        worker.release_upstream(conn);
    } else {
        worker.closed_upstreams([conn]);
    }
}

/// Request framing towards HTTP/1.1: the declared length, none for an ended
/// stream, chunked otherwise.
fn request_kind(head: &RequestHead, body: &RecvStream) -> BodyKind {
    if body.is_end_stream() {
        return BodyKind::Empty;
    }
    match head
        .headers
        .get("content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
    {
        Some(n) => BodyKind::Length(n),
        None => BodyKind::Chunked,
    }
}

async fn run(
    x: &mut Exchange<'_>,
    head: &mut RequestHead,
    body: &mut RecvStream,
    conn: &mut UpstreamConn,
) -> bool {
    let shared = &x.worker.shared;
    let method = head.method.clone();
    let kind = request_kind(head, body);
    if kind == BodyKind::Chunked {
        head.headers.set("transfer-encoding", "chunked");
    }
    let h = std::mem::replace(
        head,
        RequestHead {
            method: String::new(),
            target: String::new(),
            minor_version: 1,
            headers: codec::Headers::new(),
        },
    );
    let up_head = x.edited(request::upstream_head(h, x.route, kind, None));
    let mut out = Vec::with_capacity(512);
    codec::write_request_head(&up_head, &mut out);
    let limit = shared.flowlog.body_capture_limit();
    let mut ubuf = Vec::with_capacity(8192);
    // A reused connection closed by the server as the request went out is
    // retried once on a new one when safe (upstream/failure.rs).
    let resp = loop {
        let (stage, cause, msg) = match send(x, &out, kind, body, conn, &mut ubuf, limit).await {
            Ok(h) => break h,
            Err(None) => return false,
            Err(Some(f)) => f,
        };
        let body_empty = kind == BodyKind::Empty;
        if !stage.is_some_and(|st| failure::h1_retryable(conn.reused, st, &method, body_empty)) {
            x.fail(cause, msg);
            return false;
        }
        let client = x.flow.client;
        match crate::upstream::connect(x.worker, &x.route.target, client).await {
            Ok((fresh, t)) => {
                tracing::debug!(error = %msg, method = %method, "reused upstream connection closed before the response; retrying on a new one");
                failure::record_retry(&shared.metrics, x.flow, Cause::IdleCloseRace);
                crate::engine::log_server_connect_to(x.worker, client, &fresh);
                let stale = std::mem::replace(conn, fresh);
                x.worker.closed_upstreams([stale]);
                x.flow.server_addr = Some(conn.addr);
                x.flow.timings.connect = t.connect;
                x.flow.timings.tls = t.tls;
                ubuf.clear();
            }
            Err(e) => {
                x.fail(
                    failure::connect_cause(&e),
                    format!("{msg}; a new connection failed too: {e}"),
                );
                return false;
            }
        }
    };
    x.flow.timings.ttfb = Some(x.t0.elapsed());
    conn.keep_alive = resp
        .headers
        .get("keep-alive")
        .and_then(failure::keep_alive_timeout);
    let resp_kind = match codec::response_body_kind(&resp, &method) {
        Ok(k) if resp.status != 101 => k,
        Ok(_) => {
            x.fail(
                Cause::Invalid,
                "upstream switched protocols, which HTTP/2 cannot carry".into(),
            );
            return false;
        }
        Err(e) => {
            x.fail(
                Cause::Invalid,
                format!("upstream response has invalid framing: {e}"),
            );
            return false;
        }
    };
    let version = if resp.minor_version == 0 {
        HttpVersion::Http10
    } else {
        HttpVersion::Http11
    };
    x.record_response(&resp, version);
    let mut fields = resp.headers.clone();
    codec::remove_hop_by_hop(&mut fields, false);
    let fields = x.response_fields(&fields);
    let eos = resp_kind == BodyKind::Empty;
    let out = translate::h2_response(resp.status, &fields);
    let mut down = match x.respond.send_response(out, eos) {
        Ok(s) => s,
        Err(_) => {
            x.flow.error = Some(super::stream::client_closed_stream(&mut x.respond));
            return false;
        }
    };
    if eos {
        return reusable(&resp, resp_kind, &ubuf);
    }
    let mut resp_cap = Capture::new(limit);
    let res = if resp_kind == BodyKind::Chunked {
        chunked_to_h2(&mut conn.io, &mut ubuf, &mut down, &mut resp_cap).await
    } else {
        let mut w = H2Writer { send: &mut down };
        body::relay(
            &mut conn.io,
            &mut ubuf,
            &mut w,
            resp_kind,
            true,
            &mut resp_cap,
        )
        .await
        .map(|n| (n, None))
    };
    match res {
        Ok((n, trailers)) => {
            x.flow.response_bytes = n;
            let _ = match trailers {
                Some(t) => down.send_trailers(t),
                None => down.send_data(Bytes::new(), true),
            };
        }
        Err(BodyError::Write(e)) => {
            x.flow.error = Some(format!("client stream closed during the response: {e}"));
            return false;
        }
        Err(e) => {
            let msg = format!("upstream failed during the response: {e}");
            failure::record(&shared.metrics, x.flow, Cause::Closed, msg);
            down.send_reset(Reason::INTERNAL_ERROR);
            return false;
        }
    }
    if let Some(r) = x.flow.response.as_mut() {
        r.body = resp_cap.finish();
    }
    reusable(&resp, resp_kind, &ubuf)
}

/// One attempt: request head and body out, response head in (interim 1xx
/// dropped). `Err(None)`: the client side broke (recorded); `Err(Some(..))`:
/// the upstream failed, with the stage when no response byte had arrived.
async fn send(
    x: &mut Exchange<'_>,
    out: &[u8],
    kind: BodyKind,
    body: &mut RecvStream,
    conn: &mut UpstreamConn,
    ubuf: &mut Vec<u8>,
    limit: usize,
) -> Result<codec::ResponseHead, Option<(Option<H1Stage>, Cause, String)>> {
    let shared = &x.worker.shared;
    if let Err(e) = conn.io.write_all(out).await {
        return Err(Some((
            Some(H1Stage::Head),
            Cause::Closed,
            format!("upstream closed the connection: {e}"),
        )));
    }
    let mut req_cap = Capture::new(limit);
    let sent = match kind {
        BodyKind::Empty => Ok(0),
        BodyKind::Chunked => send_chunked(body, conn, &mut req_cap).await,
        k => {
            let mut reader = H2Reader::new(body);
            body::relay(
                &mut reader,
                &mut Vec::new(),
                &mut conn.io,
                k,
                false,
                &mut req_cap,
            )
            .await
        }
    };
    match sent {
        Ok(n) => x.flow.request_bytes = n,
        Err(BodyError::Write(e)) => {
            return Err(Some((
                None,
                Cause::Closed,
                format!("upstream closed the connection while receiving the request body: {e}"),
            )));
        }
        Err(e) => {
            x.flow.error = Some(format!("client: {e}"));
            x.respond.send_reset(Reason::CANCEL);
            return Err(None);
        }
    }
    x.flow.request_body = req_cap.finish();
    if let Err(e) = conn.io.flush().await {
        let stage = (kind == BodyKind::Empty).then_some(H1Stage::Head);
        return Err(Some((stage, Cause::Closed, format!("upstream: {e}"))));
    }
    let limits = shared.cfg.limits;
    loop {
        let r = read_head(
            &mut conn.io,
            ubuf,
            HeadWaits::total(shared.cfg.idle_timeout),
            crate::engine::Quit::NEVER,
            |b| parse_response(b, &limits),
        )
        .await;
        match r {
            Ok(Some((h, n))) => {
                ubuf.drain(..n);
                if (100..200).contains(&h.status) && h.status != 101 {
                    continue;
                }
                return Ok(h);
            }
            Ok(None) => {
                let cause = if conn.reused {
                    Cause::IdleCloseRace
                } else {
                    Cause::Closed
                };
                return Err(Some((
                    Some(H1Stage::AwaitingResponse),
                    cause,
                    "upstream closed the connection without a response".into(),
                )));
            }
            Err(HeadError::Parse(e)) => {
                return Err(Some((
                    None,
                    Cause::Invalid,
                    format!("upstream sent an invalid response: {e}"),
                )));
            }
            Err(HeadError::HeadTimeout) => {
                return Err(Some((
                    None,
                    Cause::Timeout,
                    "upstream response head incomplete".into(),
                )));
            }
            Err(HeadError::Io(e)) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    let msg = format!(
                        "upstream did not answer within {}s",
                        shared.cfg.idle_timeout.as_secs()
                    );
                    return Err(Some((None, Cause::Timeout, msg)));
                }
                let early = ubuf.is_empty() && failure::is_peer_close(&e);
                let cause = if early && conn.reused {
                    Cause::IdleCloseRace
                } else {
                    Cause::Closed
                };
                let stage = early.then_some(H1Stage::AwaitingResponse);
                return Err(Some((
                    stage,
                    cause,
                    format!("reading the upstream response: {e}"),
                )));
            }
        }
    }
}

fn reusable(resp: &codec::ResponseHead, kind: BodyKind, ubuf: &[u8]) -> bool {
    !matches!(kind, BodyKind::UntilClose)
        && ubuf.is_empty()
        && resp.minor_version == 1
        && !resp.headers.has_token("connection", "close")
}

/// Send an HTTP/2 request body as HTTP/1.1 chunks, trailers as the chunked
/// trailer section.
async fn send_chunked(
    body: &mut RecvStream,
    conn: &mut UpstreamConn,
    cap: &mut Capture,
) -> Result<u64, BodyError> {
    let mut n = 0u64;
    while let Some(data) = body.data().await {
        let data = data.map_err(|e| BodyError::Read(std::io::Error::other(e)))?;
        let len = data.len();
        if len > 0 {
            cap.push(&data);
            let size = format!("{len:x}\r\n");
            conn.io
                .write_all(size.as_bytes())
                .await
                .map_err(BodyError::Write)?;
            conn.io.write_all(&data).await.map_err(BodyError::Write)?;
            conn.io.write_all(b"\r\n").await.map_err(BodyError::Write)?;
            n += len as u64;
        }
        let _ = body.flow_control().release_capacity(len);
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| BodyError::Read(std::io::Error::other(e)))?;
    conn.io
        .write_all(&translate::chunked_end(trailers.as_ref()))
        .await
        .map_err(BodyError::Write)?;
    Ok(n)
}

/// Relay a chunked HTTP/1 response body as DATA frames; returns the payload
/// size and the trailer fields (for HTTP/2 trailers).
async fn chunked_to_h2(
    io: &mut crate::net::stream::UpstreamIo,
    pending: &mut Vec<u8>,
    down: &mut h2::SendStream<Bytes>,
    cap: &mut Capture,
) -> Result<(u64, Option<http::HeaderMap>), BodyError> {
    let mut dec = codec::ChunkedDecoder::new();
    // Raw bytes since the last payload byte: at the end, the last-chunk line
    // and the trailer section.
    let mut tail = Vec::new();
    let mut n = 0u64;
    loop {
        if !pending.is_empty() {
            let base = pending.as_ptr() as usize;
            let mut payload = Vec::new();
            let mut last_end = None;
            let progress = dec
                .decode(pending, &mut |d: &[u8]| {
                    payload.extend_from_slice(d);
                    last_end = Some(d.as_ptr() as usize - base + d.len());
                })
                .map_err(BodyError::Framing)?;
            match last_end {
                Some(e) => {
                    tail.clear();
                    tail.extend_from_slice(&pending[e..progress.consumed]);
                }
                None => tail.extend_from_slice(&pending[..progress.consumed]),
            }
            pending.drain(..progress.consumed);
            if !payload.is_empty() {
                cap.push(&payload);
                n += payload.len() as u64;
                super::body::send_all(down, Bytes::from(payload))
                    .await
                    .map_err(|e| BodyError::Write(std::io::Error::other(e)))?;
            }
            if progress.done {
                return Ok((n, translate::trailers_from_chunked_end(&tail)));
            }
        }
        pending.reserve(64 * 1024);
        let got = tokio::io::AsyncReadExt::read_buf(io, pending)
            .await
            .map_err(BodyError::Read)?;
        if got == 0 {
            return Err(BodyError::Eof);
        }
    }
}
