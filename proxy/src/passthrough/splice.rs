//! One relay direction moved by splice(2): socket → pipe → socket.
//!
//! monoio's own splice ops go through io_uring, which cannot splice
//! non-blocking and crawls (94 MB/s against 1.7–2.1 GB/s: docs/stack.md
//! "Splice"). Instead the
//! sockets are switched to `O_NONBLOCK`, each direction calls `splice` itself,
//! and on `EAGAIN` awaits readiness with `TcpStream::readable(false)` /
//! `writable(false)`: a one-shot `PollAdd` on io_uring, the driver's readiness
//! state re-checked with `poll(2)` on epoll — neither consumes data.
//!
//! When no pipe can be had (fd limit) or the kernel refuses to splice these
//! sockets (`EINVAL` before any byte moved), the direction falls back to a
//! readiness-driven `recv`/`send` loop through a userspace buffer, with the
//! same waiting and half-close behaviour.

use std::{io, os::fd::RawFd};

use monoio::net::TcpStream;

use super::{Direction, RelayError, copy::COPY_BUF_SIZE, pipe::Pipe};

/// Where bytes wait between the read side and the write side.
enum Stage {
    Pipe(Pipe),
    Buffer(Buffer),
}

/// Userspace fallback buffer: bytes `start..end` are pending.
struct Buffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buffer {
    fn new() -> Self {
        Self {
            data: vec![0; COPY_BUF_SIZE],
            start: 0,
            end: 0,
        }
    }

    fn fill_from(&mut self, fd: RawFd) -> io::Result<usize> {
        // Only called when empty (everything written out).
        self.start = 0;
        self.end = 0;
        // SAFETY: `data` is valid for writes of `data.len()` bytes; fd is open.
        let n = unsafe { libc::recv(fd, self.data.as_mut_ptr().cast(), self.data.len(), 0) };
        let n = cvt(n)?;
        self.end = n;
        Ok(n)
    }

    fn drain_into(&mut self, fd: RawFd) -> io::Result<usize> {
        let pending = self.data.get(self.start..self.end).unwrap_or_default();
        // SAFETY: `pending` is a valid initialised slice; fd is open. MSG_NOSIGNAL:
        // a closed peer yields EPIPE instead of killing the process.
        let n = unsafe {
            libc::send(
                fd,
                pending.as_ptr().cast(),
                pending.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        let n = cvt(n)?;
        self.start += n;
        Ok(n)
    }

    fn pending(&self) -> usize {
        self.end - self.start
    }
}

fn cvt(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

impl Stage {
    fn fill_from(&mut self, fd: RawFd) -> io::Result<usize> {
        match self {
            Stage::Pipe(p) => p.fill_from(fd),
            Stage::Buffer(b) => b.fill_from(fd),
        }
    }

    fn drain_into(&mut self, fd: RawFd) -> io::Result<usize> {
        match self {
            Stage::Pipe(p) => p.drain_into(fd),
            Stage::Buffer(b) => b.drain_into(fd),
        }
    }

    fn pending(&self) -> usize {
        match self {
            Stage::Pipe(p) => p.pending(),
            Stage::Buffer(b) => b.pending(),
        }
    }
}

/// Switch `stream` to non-blocking mode so splice/recv/send return EAGAIN.
pub(super) fn set_nonblocking(stream: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    // SAFETY: F_GETFL on an open fd touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: F_SETFL with an int argument touches no memory.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// Tests set this to exercise the buffer fallback on real sockets.
    pub(super) static FORCE_BUFFER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn take_pipe() -> io::Result<Pipe> {
    #[cfg(test)]
    if FORCE_BUFFER.with(std::cell::Cell::get) {
        return Err(io::Error::other("buffer fallback forced by a test"));
    }
    Pipe::take()
}

fn is_retry(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

/// Move bytes from `from` to `to` until EOF or an error.
/// Returns `Ok(())` at end of stream (the caller propagates the half-close).
pub(super) async fn pump(
    dir: &Direction<'_>,
    from: &TcpStream,
    to: &TcpStream,
) -> Result<(), RelayError> {
    let from_fd = dir.from_fd;
    let to_fd = dir.to_fd;
    let mut stage = match take_pipe() {
        Ok(pipe) => Stage::Pipe(pipe),
        Err(error) => {
            tracing::debug!(%error, "no pipe for splice; relaying through a buffer");
            Stage::Buffer(Buffer::new())
        }
    };
    let mut moved_any = false;
    loop {
        // Read side: the stage is empty here.
        let n = loop {
            match stage.fill_from(from_fd) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    from.readable(false).await.map_err(|e| dir.read_error(e))?;
                }
                Err(e) if is_retry(&e) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EINVAL)
                        && !moved_any
                        && matches!(stage, Stage::Pipe(_)) =>
                {
                    tracing::debug!("splice unsupported on this socket; relaying through a buffer");
                    stage = Stage::Buffer(Buffer::new());
                }
                Err(e) => return Err(dir.read_error(e)),
            }
        };
        if n == 0 {
            return Ok(());
        }
        moved_any = true;
        // Write side: drain everything before reading more.
        while stage.pending() > 0 {
            match stage.drain_into(to_fd) {
                Ok(0) => {
                    return Err(dir.write_error(io::Error::from(io::ErrorKind::WriteZero)));
                }
                Ok(n) => dir.count(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    to.writable(false).await.map_err(|e| dir.write_error(e))?;
                }
                Err(e) if is_retry(&e) => {}
                Err(e) => return Err(dir.write_error(e)),
            }
        }
    }
}
