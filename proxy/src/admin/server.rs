//! The admin listener's HTTP/1.1 server: one thread running a monoio
//! runtime, one task per connection, bounded input.
//!
//! Why this shape: the admin endpoints are tiny and rarely hit, but they face
//! whatever can reach the port (scrapers, probes, port scanners). A thread
//! per connection lets idle or hostile clients create threads; a blocking
//! `read_line` lets one send an endless line. Here a connection is a task on
//! the admin thread's own event loop (never a worker's), the request head is
//! parsed by the data plane's HTTP/1 parser (`http1::codec`) with small
//! limits, and every phase has a deadline:
//!
//! * at most [`MAX_CONNECTIONS`] open connections (more are closed at once);
//! * the head must arrive within [`HEAD_TIMEOUT`] (else `408`), be at most
//!   [`MAX_HEAD_BYTES`] with [`MAX_HEADERS`] fields (else `431`) and be
//!   well-formed HTTP/1.x (else `400`);
//! * the response must be taken within [`WRITE_TIMEOUT`] — a scraper that
//!   never reads costs one task and its buffer, never a worker's time;
//! * one request per connection (`connection: close`), then a bounded
//!   lingering close so a `400`/`431` is not lost to a TCP reset.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::http1::codec::{Limits, ParseError, parse_request};

/// Open admin connections, at most.
pub const MAX_CONNECTIONS: usize = 512;
/// Largest request head (request line + fields).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most header fields in a request.
pub const MAX_HEADERS: usize = 64;
/// Time for the whole request head to arrive.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the client to take the whole response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After answering, how long unread request bytes are drained before close.
const LINGER: Duration = Duration::from_secs(1);
/// Bytes drained at most during the lingering close.
const LINGER_BYTES: usize = 64 * 1024;

/// A request the routes see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method as sent.
    pub method: String,
    /// Path without the query.
    pub path: String,
}

/// A response: status, content type, body (and `allow` for 405).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// `text/plain` with UTF-8.
pub const TEXT: &str = "text/plain; charset=utf-8";

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: TEXT,
            body: body.into().into_bytes(),
        }
    }

    fn head(&self, omit_body: bool) -> Vec<u8> {
        let reason = reason(self.status);
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !omit_body {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// RFC 9110 reason phrases of the statuses the admin server sends.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Serve `listener` on this thread until the process exits; `route`
/// answers each well-formed request.
pub fn serve(
    listener: std::net::TcpListener,
    route: impl Fn(&Request) -> Response + 'static,
) -> std::io::Result<()> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    let route = Rc::new(route);
    rt.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = monoio::net::TcpListener::from_std(listener)?;
        let open = Rc::new(Cell::new(0usize));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "admin accept failed");
                    monoio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if open.get() >= MAX_CONNECTIONS {
                tracing::debug!(%peer, limit = MAX_CONNECTIONS, "admin connection limit reached; closed");
                drop(stream);
                continue;
            }
            open.set(open.get() + 1);
            let (route, open) = (route.clone(), open.clone());
            monoio::spawn(async move {
                connection(stream, &*route).await;
                open.set(open.get() - 1);
            });
        }
    })
}

/// Why no request came out of the connection.
enum HeadError {
    /// Closed (or failed) before a complete head: nothing to answer.
    Gone,
    /// Answer this and close.
    Answer(Response),
}

async fn connection(mut stream: TcpStream, route: &dyn Fn(&Request) -> Response) {
    let response = match monoio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Some((
            Response::text(
                408,
                format!(
                    "request head not complete within {} s\n",
                    HEAD_TIMEOUT.as_secs()
                ),
            ),
            false,
        )),
        Ok(Err(HeadError::Gone)) => None,
        Ok(Err(HeadError::Answer(r))) => Some((r, false)),
        Ok(Ok(req)) => Some((route(&req), req.method == "HEAD")),
    };
    let Some((response, omit_body)) = response else {
        return;
    };
    let bytes = response.head(omit_body);
    match monoio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes)).await {
        Ok((Ok(_), _)) => {}
        // Failed or too slow: nothing more to do for this client.
        Ok((Err(_), _)) | Err(_) => return,
    }
    let _ = stream.shutdown().await;
    // Lingering close: read (and discard) what the client still sends, so
    // closing with unread bytes does not reset the connection before the
    // client read the answer.
    let _ = monoio::time::timeout(LINGER, async {
        let mut drained = 0usize;
        let mut buf = Vec::with_capacity(4096);
        while drained < LINGER_BYTES {
            buf.clear();
            let (res, back) = stream.read(buf).await;
            buf = back;
            match res {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

async fn read_head(stream: &mut TcpStream) -> Result<Request, HeadError> {
    let limits = Limits {
        max_head_bytes: MAX_HEAD_BYTES,
        max_headers: MAX_HEADERS,
    };
    let mut head = Vec::with_capacity(1024);
    let mut chunk = Vec::with_capacity(4096);
    loop {
        chunk.clear();
        let (res, back) = stream.read(chunk).await;
        chunk = back;
        match res {
            Ok(0) | Err(_) => return Err(HeadError::Gone),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
        match parse_request(&head, &limits) {
            Ok(None) => continue,
            Ok(Some((req, _len))) => {
                let path = match req.target.split_once('?') {
                    Some((p, _)) => p,
                    None => req.target.as_str(),
                };
                return Ok(Request {
                    method: req.method,
                    path: path.to_owned(),
                });
            }
            Err(ParseError::TooLarge(_)) => {
                return Err(HeadError::Answer(Response::text(
                    431,
                    format!("request head larger than {MAX_HEAD_BYTES} bytes\n"),
                )));
            }
            Err(ParseError::TooManyHeaders(_)) => {
                return Err(HeadError::Answer(Response::text(
                    431,
                    format!("more than {MAX_HEADERS} header fields\n"),
                )));
            }
            Err(e @ ParseError::Malformed(_)) => {
                return Err(HeadError::Answer(Response::text(400, format!("{e}\n"))));
            }
        }
    }
}
