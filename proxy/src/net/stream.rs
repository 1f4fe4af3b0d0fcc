//! The two concrete stream types of the HTTP path: the client side (plain or
//! TLS we terminate) and the upstream side (plain or TLS we originate). Both
//! are poll-io (tokio traits) so tokio-rustls and h2 run on them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use monoio::net::tcp::stream_poll::TcpStreamPoll;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::rewind::Rewind;

/// A TCP stream in poll-io mode.
pub type Tcp = TcpStreamPoll;

/// The client's side of a flow.
#[derive(Debug)]
pub enum ClientIo {
    Plain(Tcp),
    Tls(Box<tokio_rustls::server::TlsStream<Rewind<Tcp>>>),
}

/// The upstream server's side of a flow.
#[derive(Debug)]
pub enum UpstreamIo {
    Plain(Tcp),
    Tls(Box<tokio_rustls::client::TlsStream<Tcp>>),
}

impl ClientIo {
    /// The TCP socket underneath (for addresses and liveness checks).
    pub fn tcp(&self) -> &Tcp {
        match self {
            ClientIo::Plain(s) => s,
            ClientIo::Tls(s) => s.get_ref().0.inner_ref(),
        }
    }
}

impl UpstreamIo {
    pub fn tcp(&self) -> &Tcp {
        match self {
            UpstreamIo::Plain(s) => s,
            UpstreamIo::Tls(s) => s.get_ref().0,
        }
    }

    /// Negotiated ALPN protocol, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            UpstreamIo::Plain(_) => None,
            UpstreamIo::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

impl<S> Rewind<S> {
    /// The inner stream (the prefix is irrelevant for addresses).
    pub fn inner_ref(&self) -> &S {
        self.inner()
    }
}

macro_rules! delegate_io {
    ($ty:ident) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
                }
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_flush(cx),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_io!(ClientIo);
delegate_io!(UpstreamIo);

/// Whether an idle pooled connection is still usable: no EOF, no unexpected
/// bytes waiting (a non-blocking `MSG_PEEK`).
pub fn idle_socket_usable(tcp: &Tcp) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    // SAFETY: recv on a valid fd owned by `tcp` into a 1-byte stack buffer;
    // MSG_PEEK|MSG_DONTWAIT neither consumes data nor blocks.
    let n = unsafe {
        libc::recv(
            tcp.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}
