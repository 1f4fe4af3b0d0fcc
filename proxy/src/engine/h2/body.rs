//! Streaming HTTP/2 bodies with flow control: capacity is reserved before
//! sending and released only once the data was handed on, so memory stays
//! bounded by the windows whatever the body size.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::engine::body::Capture;
use crate::upstream::failure::REPLAY_LIMIT;

/// Why an HTTP/2 → HTTP/2 body relay stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// The sending side failed or reset its stream (the other side was reset
    /// with the same reason).
    #[error("{0}")]
    Src(h2::Error),
    /// The receiving side reset its stream with this reason.
    #[error("stream reset by the peer ({0:?})")]
    DstReset(Reason),
    /// Writing to the receiving side failed.
    #[error("{0}")]
    Dst(h2::Error),
}

/// Send all of `data` on `dst`, waiting for flow-control capacity.
pub async fn send_all(dst: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        dst.reserve_capacity(data.len());
        let mut n = dst.capacity();
        if n == 0 {
            n = match poll_fn(|cx| dst.poll_capacity(cx)).await {
                Some(r) => r?,
                None => return Err(h2::Error::from(Reason::CANCEL)),
            };
        }
        let chunk = data.split_to(n.min(data.len()));
        dst.send_data(chunk, false)?;
    }
    Ok(())
}

/// Request body already taken from the client, kept (up to
/// [`REPLAY_LIMIT`]) so that a stream the upstream refused can be sent
/// again on another connection.
#[derive(Debug, Default)]
pub struct Replay {
    chunks: Vec<Bytes>,
    kept: usize,
    /// Body bytes taken from the client in all.
    pub taken: u64,
    /// More was taken than kept, or keeping stopped: not replayable.
    overflow: bool,
    /// The client's body ended (with these trailers, if any).
    ended: bool,
    trailers: Option<http::HeaderMap>,
}

impl Replay {
    /// Keep `data`, taken from the client.
    pub fn push(&mut self, data: &Bytes) {
        self.taken += data.len() as u64;
        if self.overflow {
            return;
        }
        if self.kept + data.len() > REPLAY_LIMIT {
            self.stop();
            return;
        }
        self.kept += data.len();
        self.chunks.push(data.clone());
    }

    /// Keep a copy of `data` (no copy is made once keeping stopped).
    pub fn push_slice(&mut self, data: &[u8]) {
        if self.overflow {
            self.taken += data.len() as u64;
        } else {
            self.push(&Bytes::copy_from_slice(data));
        }
    }

    /// The client's body ended with `trailers`.
    pub fn end(&mut self, trailers: Option<&http::HeaderMap>) {
        self.ended = true;
        self.trailers = trailers.cloned();
    }

    /// Nothing will be replayed (the response started): drop what is kept.
    pub fn stop(&mut self) {
        self.overflow = true;
        self.chunks = Vec::new();
        self.kept = 0;
    }

    /// Whether everything taken so far can be sent again.
    pub fn replayable(&self) -> bool {
        !self.overflow
    }

    /// Whether anything was taken (DATA or the end with trailers).
    pub fn is_empty(&self) -> bool {
        self.taken == 0 && self.trailers.is_none()
    }

    /// Whether the client's body is complete in here.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// What to send again on a new stream (cheap: `Bytes` are shared).
    pub fn again(&self) -> Again {
        Again {
            chunks: self.chunks.clone(),
            end: self.ended.then(|| self.trailers.clone()),
        }
    }
}

/// A snapshot of a [`Replay`] to send on a new stream.
#[derive(Debug)]
pub struct Again {
    chunks: Vec<Bytes>,
    /// Set when the body had ended: the trailers to end it with.
    end: Option<Option<http::HeaderMap>>,
}

impl Again {
    /// Send it on `dst`, ending the stream when the client's body had ended.
    pub async fn send(self, dst: &mut SendStream<Bytes>) -> Result<(), h2::Error> {
        for c in self.chunks {
            send_all(dst, c).await?;
        }
        match self.end {
            Some(Some(t)) => dst.send_trailers(t),
            Some(None) => dst.send_data(Bytes::new(), true),
            None => Ok(()),
        }
    }
}

/// Relay `src`'s DATA and trailers to `dst` (ending its stream). A reset
/// or error of `src` resets `dst` with the same reason. Returns body bytes.
pub async fn pump(
    src: &mut RecvStream,
    dst: &mut SendStream<Bytes>,
    cap: &mut Capture,
) -> Result<u64, PumpError> {
    pump_kept(src, dst, cap, None).await
}

/// [`pump`], keeping what is taken from `src` in `replay`.
pub async fn pump_kept(
    src: &mut RecvStream,
    dst: &mut SendStream<Bytes>,
    cap: &mut Capture,
    replay: Option<&RefCell<Replay>>,
) -> Result<u64, PumpError> {
    let mut n = 0u64;
    loop {
        let next = poll_fn(|cx| {
            if let Poll::Ready(r) = dst.poll_reset(cx) {
                return Poll::Ready(Err(match r {
                    Ok(reason) => PumpError::DstReset(reason),
                    Err(e) => PumpError::Dst(e),
                }));
            }
            src.poll_data(cx).map(Ok)
        })
        .await?;
        match next {
            Some(Ok(data)) => {
                let len = data.len();
                cap.push(&data);
                if let Some(r) = replay {
                    r.borrow_mut().push(&data);
                }
                n += len as u64;
                let sent = send_all(dst, data).await;
                // Released either way: a copy is kept in `replay` if needed.
                let _ = src.flow_control().release_capacity(len);
                sent.map_err(PumpError::Dst)?;
            }
            Some(Err(e)) => {
                dst.send_reset(e.reason().unwrap_or(Reason::CANCEL));
                return Err(PumpError::Src(e));
            }
            None => {
                let trailers = match src.trailers().await {
                    Ok(t) => t,
                    Err(e) => {
                        dst.send_reset(e.reason().unwrap_or(Reason::CANCEL));
                        return Err(PumpError::Src(e));
                    }
                };
                if let Some(r) = replay {
                    r.borrow_mut().end(trailers.as_ref());
                }
                match trailers {
                    Some(t) => dst.send_trailers(t),
                    None => dst.send_data(Bytes::new(), true),
                }
                .map_err(PumpError::Dst)?;
                return Ok(n);
            }
        }
    }
}

/// An HTTP/2 send stream as a tokio writer (for the HTTP/1 body relay):
/// each write sends as much as the flow-control window allows.
pub struct H2Writer<'a> {
    pub send: &'a mut SendStream<Bytes>,
}

fn h2_io(e: h2::Error) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

impl AsyncWrite for H2Writer<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.send.reserve_capacity(buf.len());
        let mut n = this.send.capacity();
        if n == 0 {
            n = match this.send.poll_capacity(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(h2_io(e))),
                Poll::Ready(Some(Ok(n))) => n,
            };
        }
        let n = n.min(buf.len());
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// An HTTP/2 receive stream as a tokio reader (for the HTTP/1 body relay);
/// capacity is released as DATA is taken (one frame is held at most).
pub struct H2Reader<'a> {
    pub recv: &'a mut RecvStream,
    pending: Bytes,
}

impl<'a> H2Reader<'a> {
    pub fn new(recv: &'a mut RecvStream) -> Self {
        H2Reader {
            recv,
            pending: Bytes::new(),
        }
    }
}

impl AsyncRead for H2Reader<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            match this.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io::Error::other(e))),
                Poll::Ready(Some(Ok(data))) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}
