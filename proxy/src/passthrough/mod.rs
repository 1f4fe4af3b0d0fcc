//! Passthrough: relay bytes between two TCP connections untouched.
//!
//! Both directions run concurrently on the calling task (`monoio::join!`), so
//! a relay costs one task on the worker that accepted the connection.
//!
//! * [`RelayMode::Splice`] moves bytes socket → pipe → socket with splice(2)
//!   and readiness waits that work on io_uring and epoll alike (see
//!   `splice.rs`); pipes come from a bounded per-thread pool (`pipe.rs`).
//! * [`RelayMode::Copy`] is a 256 KiB read/write loop on monoio's rent API.
//!
//! Half-close: when one side sends FIN, the other socket gets
//! `shutdown(Write)` and the opposite direction keeps flowing until its own
//! EOF. An error in either direction (a peer reset, a write to a closed peer)
//! or the idle timeout aborts both: `shutdown(RDWR)` on both sockets wakes the
//! other direction wherever it waits, it finishes, and the streams are closed
//! (after an error with `SO_LINGER 0`: the surviving peer gets a reset too).
//! The first error is the one reported; the relay never panics and never
//! waits for a direction that can no longer make progress.
//!
//! splice(2) into a socket whose peer is gone raises `SIGPIPE` unless it is
//! ignored; Rust programs ignore it by default (`fn main` runtime), keep it so.

mod copy;
mod pipe;
mod splice;

use std::{
    cell::{Cell, RefCell},
    fmt,
    future::Future,
    io,
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use monoio::{io::Splitable, net::TcpStream};

pub use pipe::{PIPE_POOL_MAX, PIPE_SIZE, drain_pipe_pool, pooled_pipes};

/// `--passthrough`: how bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RelayMode {
    /// splice(2) through pooled 1 MiB pipes (zero-copy).
    #[default]
    Splice,
    /// A 256 KiB userspace copy loop.
    Copy,
}

/// Bytes moved in each direction (delivered to the receiving socket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Bytes read from the client and written to the server.
    pub client_to_server: u64,
    /// Bytes read from the server and written to the client.
    pub server_to_client: u64,
}

/// Which connection of the relay an error happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The downstream connection (the one that was accepted).
    Client,
    /// The upstream connection (the one the proxy opened).
    Server,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Server => "server",
        })
    }
}

/// Why a relay ended early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Receiving from `side` failed (typically a reset by that peer).
    #[error("reading from the {side} failed: {source}")]
    Read {
        /// The connection read from.
        side: Side,
        /// The OS error.
        source: io::Error,
    },
    /// Sending to `side` failed (typically that peer reset or closed).
    #[error("writing to the {side} failed: {source}")]
    Write {
        /// The connection written to.
        side: Side,
        /// The OS error.
        source: io::Error,
    },
    /// No byte moved in either direction for the configured idle timeout.
    #[error(
        "no bytes moved for {0:?}; the connection was closed as idle (raise the idle timeout if such pauses are normal)"
    )]
    Idle(Duration),
}

impl RelayError {
    /// The connection that failed; `None` for the idle timeout.
    pub fn side(&self) -> Option<Side> {
        match self {
            RelayError::Read { side, .. } | RelayError::Write { side, .. } => Some(*side),
            RelayError::Idle(_) => None,
        }
    }

    /// The `io::ErrorKind` this error maps to (`TimedOut` for idle).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            RelayError::Read { source, .. } | RelayError::Write { source, .. } => source.kind(),
            RelayError::Idle(_) => io::ErrorKind::TimedOut,
        }
    }
}

impl From<RelayError> for io::Error {
    fn from(err: RelayError) -> Self {
        io::Error::new(err.kind(), err)
    }
}

/// Knobs for [`relay_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayOptions {
    /// How bytes are moved.
    pub mode: RelayMode,
    /// Abort when no byte moved in either direction for this long (detected
    /// between one and two periods). Needs a runtime built with `enable_timer()`.
    pub idle_timeout: Option<Duration>,
}

/// Result of [`relay_with`]: the bytes moved, and the error that ended the
/// relay early, if any. Stats are kept even when the relay failed.
#[derive(Debug)]
pub struct RelayOutcome {
    /// Bytes delivered in each direction.
    pub stats: RelayStats,
    /// The first error (later ones are consequences of aborting).
    pub error: Option<RelayError>,
}

impl RelayOutcome {
    /// `Ok(stats)` when both directions reached EOF, else the first error.
    pub fn into_result(self) -> Result<RelayStats, RelayError> {
        match self.error {
            None => Ok(self.stats),
            Some(err) => Err(err),
        }
    }
}

/// Relay until both directions reach EOF (half-close propagated with
/// `shutdown(Write)`), or an error. Never panics on peer resets.
pub async fn relay(
    client: TcpStream,
    server: TcpStream,
    mode: RelayMode,
) -> std::io::Result<RelayStats> {
    let options = RelayOptions {
        mode,
        idle_timeout: None,
    };
    relay_with(client, server, options)
        .await
        .into_result()
        .map_err(io::Error::from)
}

/// [`relay`] with options, returning stats alongside the error.
/// Both streams are closed when this returns.
pub async fn relay_with(
    client: TcpStream,
    server: TcpStream,
    options: RelayOptions,
) -> RelayOutcome {
    let shared = Shared {
        fds: [client.as_raw_fd(), server.as_raw_fd()],
        moved: [Cell::new(0), Cell::new(0)],
        error: RefCell::new(None),
    };
    let c2s = Direction::new(&shared, Side::Client);
    let s2c = Direction::new(&shared, Side::Server);
    let mut mode = options.mode;
    if mode == RelayMode::Splice
        && let Err(error) =
            splice::set_nonblocking(&client).and_then(|()| splice::set_nonblocking(&server))
    {
        tracing::debug!(%error, "cannot make sockets non-blocking; relaying by copy");
        mode = RelayMode::Copy;
    }
    match mode {
        RelayMode::Splice => {
            let a = async { c2s.finish(splice::pump(&c2s, &client, &server).await) };
            let b = async { s2c.finish(splice::pump(&s2c, &server, &client).await) };
            run_both(&shared, a, b, options.idle_timeout).await;
        }
        RelayMode::Copy => {
            let (mut client_rd, mut client_wr) = client.into_split();
            let (mut server_rd, mut server_wr) = server.into_split();
            let a = async {
                c2s.finish(copy::pump(&c2s, &mut client_rd, &mut server_wr).await);
            };
            let b = async {
                s2c.finish(copy::pump(&s2c, &mut server_rd, &mut client_wr).await);
            };
            run_both(&shared, a, b, options.idle_timeout).await;
        }
    }
    let stats = RelayStats {
        client_to_server: shared.moved[0].get(),
        server_to_client: shared.moved[1].get(),
    };
    tracing::trace!(
        client_to_server = stats.client_to_server,
        server_to_client = stats.server_to_client,
        ?mode,
        "passthrough relay finished"
    );
    RelayOutcome {
        stats,
        error: shared.error.into_inner(),
    }
}

/// Run both directions; with an idle timeout, a watcher aborts a stalled relay
/// and the directions are then awaited to their (prompt) end.
async fn run_both(
    shared: &Shared,
    a: impl Future<Output = ()>,
    b: impl Future<Output = ()>,
    idle_timeout: Option<Duration>,
) {
    let both = async {
        monoio::join!(a, b);
    };
    let Some(timeout) = idle_timeout else {
        both.await;
        return;
    };
    let mut both = std::pin::pin!(both);
    monoio::select! {
        biased;
        () = &mut both => {}
        () = watch_idle(shared, timeout) => both.await,
    }
}

async fn watch_idle(shared: &Shared, timeout: Duration) {
    let mut last = shared.total();
    loop {
        monoio::time::sleep(timeout).await;
        let now = shared.total();
        if now == last {
            shared.fail(RelayError::Idle(timeout));
            return;
        }
        last = now;
    }
}

/// State both directions of one relay share (same task, no locking).
struct Shared {
    /// Raw fds of client and server, valid for the whole relay.
    fds: [RawFd; 2],
    /// Bytes delivered client→server and server→client.
    moved: [Cell<u64>; 2],
    error: RefCell<Option<RelayError>>,
}

impl Shared {
    fn total(&self) -> u64 {
        self.moved[0].get().wrapping_add(self.moved[1].get())
    }

    /// Record the first error and abort both directions.
    ///
    /// After a failure (not an idle timeout) both sockets also get
    /// `SO_LINGER 0`, so closing them sends RST: the surviving peer learns of
    /// the reset at once instead of, when it is blocked writing into a full
    /// window, only at its next zero-window probe (up to ~2 minutes later).
    fn fail(&self, err: RelayError) {
        let reset = !matches!(err, RelayError::Idle(_));
        {
            let mut slot = self.error.borrow_mut();
            if slot.is_none() {
                *slot = Some(err);
            }
        }
        for fd in self.fds {
            if reset {
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: `linger` is a valid, initialised struct whose exact
                // size is passed; the fd is open (see below). Failure is moot.
                unsafe {
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&raw const linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    )
                };
            }
            // Wakes every readiness wait and pending op on both sockets: reads
            // then see EOF, writes EPIPE, and both directions end.
            // SAFETY: the fds belong to streams that outlive this relay state;
            // shutdown touches no memory. Errors (already closed) are moot.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }
}

/// One direction of a relay: reads from `from_side`, writes to the other.
struct Direction<'a> {
    shared: &'a Shared,
    from_side: Side,
    from_fd: RawFd,
    to_fd: RawFd,
    moved: &'a Cell<u64>,
}

impl<'a> Direction<'a> {
    fn new(shared: &'a Shared, from_side: Side) -> Self {
        let (from, to) = match from_side {
            Side::Client => (0, 1),
            Side::Server => (1, 0),
        };
        Self {
            shared,
            from_side,
            from_fd: shared.fds[from],
            to_fd: shared.fds[to],
            moved: &shared.moved[from],
        }
    }

    fn to_side(&self) -> Side {
        match self.from_side {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }

    fn read_error(&self, source: io::Error) -> RelayError {
        RelayError::Read {
            side: self.from_side,
            source,
        }
    }

    fn write_error(&self, source: io::Error) -> RelayError {
        RelayError::Write {
            side: self.to_side(),
            source,
        }
    }

    fn count(&self, n: usize) {
        self.moved.set(self.moved.get().wrapping_add(n as u64));
    }

    /// EOF: pass the half-close on. Error: abort the whole relay.
    fn finish(&self, result: Result<(), RelayError>) {
        match result {
            Ok(()) => {
                // SAFETY: `to_fd` belongs to a stream alive for the whole relay;
                // shutdown touches no memory. ENOTCONN (peer already gone) is
                // moot: the other direction reports what went wrong with that peer.
                unsafe { libc::shutdown(self.to_fd, libc::SHUT_WR) };
            }
            Err(err) => self.shared.fail(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use monoio::{
        IoUringDriver, LegacyDriver, RuntimeBuilder,
        io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt},
        net::TcpListener,
    };

    use super::*;

    fn payload(len: usize, salt: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ salt ^ ((i >> 12) as u8))
            .collect()
    }

    async fn read_all(s: &mut TcpStream) -> Vec<u8> {
        let mut all = Vec::new();
        loop {
            let (res, buf) = s.read(Vec::with_capacity(128 * 1024)).await;
            match res.unwrap() {
                0 => return all,
                _ => all.extend_from_slice(&buf),
            }
        }
    }

    /// client ↔ relay (splice mode, pipes unavailable) ↔ server, with a
    /// half-closed request and a multi-buffer response.
    async fn buffer_fallback_round_trip() {
        splice::FORCE_BUFFER.with(|f| f.set(true));
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let back = TcpListener::bind("127.0.0.1:0").unwrap();
        let front_addr: SocketAddr = front.local_addr().unwrap();
        let back_addr: SocketAddr = back.local_addr().unwrap();
        let request = payload(3 << 20, 7);
        let response = payload((1 << 20) + 12345, 9);

        let mut client = TcpStream::connect(front_addr).await.unwrap();
        let (accepted, _) = front.accept().await.unwrap();
        let upstream = TcpStream::connect(back_addr).await.unwrap();
        let (mut server, _) = back.accept().await.unwrap();
        let relay_task = monoio::spawn(relay_with(
            accepted,
            upstream,
            RelayOptions {
                mode: RelayMode::Splice,
                idle_timeout: None,
            },
        ));
        let (req, resp) = (request.clone(), response.clone());
        let server_task = monoio::spawn(async move {
            let got = read_all(&mut server).await;
            let (r, _) = server.write_all(resp).await;
            r.unwrap();
            got
        });
        let (r, _) = client.write_all(req).await;
        r.unwrap();
        client.shutdown().await.unwrap();
        let got_response = read_all(&mut client).await;
        let got_request = server_task.await;
        let outcome = relay_task.await;
        splice::FORCE_BUFFER.with(|f| f.set(false));

        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert!(got_request == request, "request corrupted");
        assert!(got_response == response, "response corrupted");
        assert_eq!(outcome.stats.client_to_server, request.len() as u64);
        assert_eq!(outcome.stats.server_to_client, response.len() as u64);
        assert_eq!(pipe::pooled_pipes(), 0, "no pipe may be used");
    }

    #[test]
    fn splice_mode_falls_back_to_a_buffer_without_pipes_on_epoll() {
        let mut rt = RuntimeBuilder::<LegacyDriver>::new().build().unwrap();
        rt.block_on(buffer_fallback_round_trip());
    }

    #[test]
    fn splice_mode_falls_back_to_a_buffer_without_pipes_on_io_uring() {
        match RuntimeBuilder::<IoUringDriver>::new().build() {
            Ok(mut rt) => rt.block_on(buffer_fallback_round_trip()),
            Err(e) => eprintln!("skipping: the io_uring runtime failed to start: {e}"),
        }
    }

    #[test]
    fn relay_error_maps_to_io_error_kind_and_side() {
        let err = RelayError::Read {
            side: Side::Server,
            source: io::Error::from(io::ErrorKind::ConnectionReset),
        };
        assert_eq!(err.side(), Some(Side::Server));
        assert_eq!(
            err.to_string(),
            "reading from the server failed: connection reset"
        );
        let io_err = io::Error::from(err);
        assert_eq!(io_err.kind(), io::ErrorKind::ConnectionReset);
        let idle = io::Error::from(RelayError::Idle(Duration::from_secs(5)));
        assert_eq!(idle.kind(), io::ErrorKind::TimedOut);
    }
}
