//! `Expect: 100-continue` forwarded: before the body is relayed, wait for
//! whichever comes first — the upstream's interim or final answer, the
//! client starting the body anyway, or a short quiet period (an upstream
//! that ignores Expect).

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::http1::codec::{Limits, ResponseHead, parse_response};
use crate::net::stream::{ClientIo, UpstreamIo};

/// How long the upstream may think before the client is told to send
/// (curl's own wait is 1 s).
const QUIET: Duration = Duration::from_secs(1);

/// What happened first.
#[derive(Debug)]
pub enum Continue {
    /// Body bytes from the client are in `buf`.
    ClientSent,
    /// The upstream answered (100, another 1xx, or a final status).
    Upstream(ResponseHead),
    /// Nothing within [`QUIET`].
    Quiet,
    ClientGone,
    UpstreamFailed(String),
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Upstream,
    Timeout,
}

enum Ready {
    Client(std::io::Result<usize>),
    Upstream(std::io::Result<usize>),
    Timeout,
}

pub async fn await_continue(
    client: &mut ClientIo,
    buf: &mut Vec<u8>,
    up: &mut UpstreamIo,
    ubuf: &mut Vec<u8>,
    limits: &Limits,
) -> Continue {
    if !buf.is_empty() {
        return Continue::ClientSent;
    }
    let deadline = Instant::now() + QUIET;
    loop {
        // Bytes of a head already read (several 1xx in one segment).
        if !ubuf.is_empty() {
            match parse_response(ubuf, limits) {
                Ok(Some((h, n))) => {
                    ubuf.drain(..n);
                    return Continue::Upstream(h);
                }
                Ok(None) => {}
                Err(e) => {
                    return Continue::UpstreamFailed(format!(
                        "upstream sent an invalid response: {e}"
                    ));
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Continue::Quiet;
        }
        buf.reserve(8192);
        ubuf.reserve(8192);
        // Reads on poll-io streams are cancel-safe: the losing read loses nothing.
        let (side, r) = monoio::select! {
            r = client.read_buf(buf) => (Side::Client, r),
            r = up.read_buf(ubuf) => (Side::Upstream, r),
            _ = monoio::time::sleep(left) => (Side::Timeout, Ok(0)),
        };
        let ready = match side {
            Side::Client => Ready::Client(r),
            Side::Upstream => Ready::Upstream(r),
            Side::Timeout => Ready::Timeout,
        };
        match ready {
            Ready::Client(Ok(0) | Err(_)) => return Continue::ClientGone,
            Ready::Client(Ok(_)) => return Continue::ClientSent,
            Ready::Upstream(Ok(0)) => {
                return Continue::UpstreamFailed(
                    "upstream closed the connection without a response".into(),
                );
            }
            Ready::Upstream(Err(e)) => {
                return Continue::UpstreamFailed(format!("reading the upstream response: {e}"));
            }
            Ready::Upstream(Ok(_)) => {}
            Ready::Timeout => return Continue::Quiet,
        }
    }
}
