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
        BodyKind::Length(len) => relay_raw(src, pending, dst, Some(len), cap).await?,
        BodyKind::Chunked => relay_chunked(src, pending, dst, dechunk, cap).await?,
        BodyKind::UntilClose => relay_raw(src, pending, dst, None, cap).await?,
    };
    dst.flush().await.map_err(BodyError::Write)?;
    Ok(n)
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
    // The trailer section is held back (bounded by the decoder) until it is
    // complete, then forwarded without framing and control fields.
    let mut trailer = Vec::new();
    loop {
        if !pending.is_empty() {
            plain.clear();
            let in_trailer = dec.past_last_chunk();
            let progress = dec
                .decode(pending, &mut |d: &[u8]| {
                    payload += d.len() as u64;
                    cap.push(d);
                    if dechunk {
                        plain.extend_from_slice(d);
                    }
                })
                .map_err(BodyError::Framing)?;
            let body_end = match progress.trailer_start {
                Some(t) => t,
                None if in_trailer => 0,
                None => progress.consumed,
            };
            trailer.extend_from_slice(&pending[body_end..progress.consumed]);
            let out = if dechunk {
                &plain[..]
            } else {
                &pending[..body_end]
            };
            if !out.is_empty() {
                dst.write_all(out).await.map_err(BodyError::Write)?;
            }
            pending.drain(..progress.consumed);
            if progress.done {
                if !dechunk {
                    let kept = crate::http1::chunked::filter_trailer_section(&trailer);
                    dst.write_all(&kept).await.map_err(BodyError::Write)?;
                }
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

/// Copy raw body bytes: exactly `limit` of them (EOF first is an error), or
/// with `None` until the sender closes.
async fn relay_raw<R, W>(
    src: &mut R,
    pending: &mut Vec<u8>,
    dst: &mut W,
    limit: Option<u64>,
    cap: &mut Capture,
) -> Result<u64, BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut left = limit.unwrap_or(u64::MAX);
    let clamp = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let take = pending.len().min(clamp(left));
    if take > 0 {
        cap.push(&pending[..take]);
        dst.write_all(&pending[..take])
            .await
            .map_err(BodyError::Write)?;
        pending.drain(..take);
        left -= take as u64;
    }
    let mut buf = Vec::new();
    while left > 0 {
        if buf.is_empty() {
            buf = vec![0u8; CHUNK.min(clamp(left))];
        }
        let want = buf.len().min(clamp(left));
        let n = match src.read(&mut buf[..want]).await {
            Ok(n) => n,
            // A TLS server closing without close_notify still ended the body.
            Err(e) if limit.is_none() && e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(BodyError::Read(e)),
        };
        if n == 0 {
            return match limit {
                Some(_) => Err(BodyError::Eof),
                None => Ok(u64::MAX - left),
            };
        }
        cap.push(&buf[..n]);
        dst.write_all(&buf[..n]).await.map_err(BodyError::Write)?;
        left -= n as u64;
    }
    Ok(limit.unwrap_or(u64::MAX - left))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `relay` over an in-memory source holding `input` (after `pending`).
    fn run(
        kind: BodyKind,
        pending: &[u8],
        input: &[u8],
        dechunk: bool,
    ) -> (Result<u64, BodyError>, Vec<u8>, Vec<u8>) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut src = input;
            let mut pend = pending.to_vec();
            let mut out = Vec::new();
            let mut cap = Capture::new(4);
            let r = relay(&mut src, &mut pend, &mut out, kind, dechunk, &mut cap).await;
            (r, out, pend)
        })
    }

    #[test]
    fn length_body_stops_at_its_end_and_keeps_the_rest() {
        let (r, out, rest) = run(BodyKind::Length(5), b"he", b"lloGET /next", false);
        assert_eq!(r.unwrap(), 5);
        assert_eq!(out, b"hello");
        // Bytes past the body stay unread in the source (never over-read).
        assert!(rest.is_empty());
    }

    #[test]
    fn length_body_cut_short_is_an_error() {
        let (r, out, _) = run(BodyKind::Length(10), b"", b"abc", false);
        assert!(matches!(r, Err(BodyError::Eof)));
        assert_eq!(out, b"abc");
    }

    #[test]
    fn until_close_copies_everything() {
        let (r, out, _) = run(BodyKind::UntilClose, b"ab", b"cdef", false);
        assert_eq!(r.unwrap(), 6);
        assert_eq!(out, b"abcdef");
    }

    #[test]
    fn chunked_is_forwarded_verbatim_or_dechunked() {
        let body = b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\nNEXT";
        let (r, out, rest) = run(BodyKind::Chunked, body, b"", false);
        assert_eq!(r.unwrap(), 5);
        assert_eq!(out, &body[..body.len() - 4]);
        assert_eq!(rest, b"NEXT");
        let (r, out, _) = run(BodyKind::Chunked, body, b"", true);
        assert_eq!(r.unwrap(), 5);
        assert_eq!(out, b"abcde");
    }

    #[test]
    fn framing_fields_are_dropped_from_trailers() {
        let body = b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nContent-Length: 99\r\n\
                     Transfer-Encoding: chunked\r\nHost: evil\r\nx-t: 1\r\n\r\nNEXT";
        let want = b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nx-t: 1\r\n\r\n";
        let (r, out, rest) = run(BodyKind::Chunked, body, b"", false);
        assert_eq!(r.unwrap(), 3);
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
        assert_eq!(rest, b"NEXT");
        // Split anywhere, the same bytes go out.
        for cut in 1..body.len() - 4 {
            let (r, out, _) = run(BodyKind::Chunked, &body[..cut], &body[cut..], false);
            assert_eq!(r.unwrap(), 3, "cut {cut}");
            assert_eq!(out, want, "cut {cut}");
        }
    }

    #[test]
    fn bad_chunk_size_is_a_framing_error() {
        let (r, _, _) = run(BodyKind::Chunked, b"zz\r\n", b"", false);
        assert!(matches!(r, Err(BodyError::Framing(_))));
    }

    #[test]
    fn capture_is_bounded() {
        let mut c = Capture::new(4);
        c.push(b"abc");
        c.push(b"def");
        let got = c.finish().unwrap();
        assert_eq!(got.bytes, b"abcd");
        assert!(got.truncated);
        assert!(Capture::new(0).finish().is_none());
    }
}
