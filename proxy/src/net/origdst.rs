//! Transparent mode: the destination a client meant before iptables REDIRECT
//! (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::SockRef;

/// The address the client connected to before NAT. For a connection that
/// was not redirected this is the proxy's own listen address — callers
/// compare against their listeners (loop guard).
pub fn original_dst(sock: &impl AsRawFd, local: SocketAddr) -> io::Result<SocketAddr> {
    // SAFETY: the fd belongs to `sock`, which outlives this borrow (used only
    // within this function for getsockopt calls).
    let fd = unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    let s = SockRef::from(&fd);
    let addr = match local {
        SocketAddr::V4(_) => s.original_dst_v4()?,
        SocketAddr::V6(_) => match s.original_dst_v6() {
            Ok(a) => a,
            // An IPv4 connection on a dual-stack socket is NATed by iptables (v4).
            Err(_) => s.original_dst_v4()?,
        },
    };
    let addr = addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an inet address",
        )
    })?;
    Ok(normalize(addr))
}

/// `::ffff:a.b.c.d` → `a.b.c.d`.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}
