//! Listening sockets: one SO_REUSEPORT socket per worker and listener, so the
//! kernel spreads connections over the workers.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Bind a non-blocking, SO_REUSEADDR + SO_REUSEPORT listener on `addr`.
/// (A blocking listener hangs monoio's epoll driver: docs/stack.md "Listeners".)
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // Dual-stack on [::] so one transparent listener covers v4 and v6.
        sock.set_only_v6(false)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// Bind a blocking SO_REUSEADDR + SO_REUSEPORT listener for the admin
/// thread. SO_REUSEPORT lets a new tproxy (a DaemonSet surge pod on host
/// network) bind the admin port while the old one still serves it, as the
/// data listeners do; the kernel only shares the port between sockets of the
/// same user.
pub fn bind_reuseport_blocking(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(128)?;
    Ok(sock.into())
}

/// Bind `addr` once per worker. When the port is 0, the first bind picks the
/// port and the others reuse it. Returns the sockets and the bound address.
pub fn bind_all(
    addr: SocketAddr,
    workers: usize,
) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    let first = bind_reuseport(addr)?;
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(bind_reuseport(bound)?);
    }
    Ok((all, bound))
}

/// The sysctl that lets a restart lose no queued connection (Linux ≥ 5.14).
pub const MIGRATE_REQ_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// `net.ipv4.tcp_migrate_req` of this network namespace: when 1, connections
/// queued on (or still handshaking with) a listener that closes move to
/// another listener of its SO_REUSEPORT group instead of being reset — so an
/// old tproxy exiting beside a new one hands its accept queue over
/// (docs/restarts.md). `None`: not readable (kernel before 5.14).
pub fn migrate_req() -> Option<bool> {
    std::fs::read_to_string(MIGRATE_REQ_SYSCTL)
        .ok()
        .map(|s| s.trim() != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_port_shared_by_all_workers() {
        let (ls, bound) = bind_all("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_ne!(bound.port(), 0);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap(), bound);
        }
    }
}
