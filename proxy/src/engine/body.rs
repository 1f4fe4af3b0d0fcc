//! Streaming HTTP/1 bodies from one side to the other: never buffered whole.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::flowlog::BodyCapture;
use crate::http1::codec::{BodyKind, ChunkedDecoder, FramingError};

/// Read/write unit for bodies.
const CHUNK: usize = 64 * 1024;

/// Why a body could not be relayed; tells which side failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the body: {0}")]
    Read(io::Error),
    #[error("sender closed the connection before the body was complete")]
    Eof,
    #[error("writing the body: {0}")]
    Write(io::Error),
    #[error(transparent)]
    Framing(FramingError),
}

/// Keeps the first `limit` body bytes for the flow log (detail >= 3).
#[derive(Debug, Default)]
pub struct Capture {
    limit: usize,
    body: BodyCapture,
}

impl Capture {
    pub fn new(limit: usize) -> Self {
        Capture {
            limit,
            body: BodyCapture::default(),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.limit == 0 || self.body.truncated {
            return;
        }
        let room = self.limit - self.body.bytes.len();
        if data.len() > room {
            self.body.bytes.extend_from_slice(&data[..room]);
            self.body.truncated = true;
        } else {
            self.body.bytes.extend_from_slice(data);
        }
    }

    pub fn finish(self) -> Option<BodyCapture> {
        (self.limit > 0).then_some(self.body)
    }
}

/// Relay one body of `kind` from `src` to `dst`. `pending` holds bytes already
/// read from `src` (after the head); on return it holds bytes read past the
/// body's end (a pipelined next message). With `dechunk`, a chunked body is
/// written as its payload only (for HTTP/1.0 clients). Returns payload bytes.
pub async fn relay<R, W>(
    src: &mut R,
    pending: &mut Vec<u8>,
    dst: &mut W,
    kind: BodyKind,
    dechunk: bool,
    cap: &mut Capture,
) -> Result<u64, BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let n = match kind {
        BodyKind::Empty => 0,
        BodyKind::Length(len) => relay_length(src, pending, dst, len, cap).await?,
        BodyKind::Chunked => relay_chunked(src, pending, dst, dechunk, cap).await?,
        BodyKind::UntilClose => relay_until_close(src, pending, dst, cap).await?,
    };
    dst.flush().await.map_err(BodyError::Write)?;
    Ok(n)
}

async fn relay_length<R, W>(
    src: &mut R,
    pending: &mut Vec<u8>,
    dst: &mut W,
    len: u64,
    cap: &mut Capture,
) -> Result<u64, BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut left = len;
    let take = pending
        .len()
        .min(usize::try_from(left).unwrap_or(usize::MAX));
    if take > 0 {
        cap.push(&pending[..take]);
        dst.write_all(&pending[..take])
            .await
            .map_err(BodyError::Write)?;
        pending.drain(..take);
        left -= take as u64;
    }
    if left == 0 {
        return Ok(len);
    }
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(left).unwrap_or(CHUNK))];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = src.read(&mut buf[..want]).await.map_err(BodyError::Read)?;
        if n == 0 {
            return Err(BodyError::Eof);
        }
        cap.push(&buf[..n]);
        dst.write_all(&buf[..n]).await.map_err(BodyError::Write)?;
        left -= n as u64;
    }
    Ok(len)
}

async fn relay_chunked<R, W>(
    src: &mut R,
    pending: &mut Vec<u8>,
    dst: &mut W,
    dechunk: bool,
    cap: &mut Capture,
) -> Result<u64, BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut dec = ChunkedDecoder::new();
    let mut payload = 0u64;
    let mut plain = Vec::new();
    loop {
        if !pending.is_empty() {
            plain.clear();
            let progress = dec
                .decode(pending, &mut |d: &[u8]| {
                    payload += d.len() as u64;
                    cap.push(d);
                    if dechunk {
                        plain.extend_from_slice(d);
                    }
                })
                .map_err(BodyError::Framing)?;
            let out = if dechunk {
                &plain[..]
            } else {
                &pending[..progress.consumed]
            };
            if !out.is_empty() {
                dst.write_all(out).await.map_err(BodyError::Write)?;
            }
            pending.drain(..progress.consumed);
            if progress.done {
                return Ok(payload);
            }
        }
        pending.reserve(CHUNK);
        let n = src.read_buf(pending).await.map_err(BodyError::Read)?;
        if n == 0 {
            return Err(BodyError::Eof);
        }
    }
}

async fn relay_until_close<R, W>(
    src: &mut R,
    pending: &mut Vec<u8>,
    dst: &mut W,
    cap: &mut Capture,
) -> Result<u64, BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = pending.len() as u64;
    if !pending.is_empty() {
        cap.push(pending);
        dst.write_all(pending).await.map_err(BodyError::Write)?;
        pending.clear();
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            // A TLS server closing without close_notify: the body still ended.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(total),
            Err(e) => return Err(BodyError::Read(e)),
        };
        cap.push(&buf[..n]);
        dst.write_all(&buf[..n]).await.map_err(BodyError::Write)?;
        total += n as u64;
    }
}
