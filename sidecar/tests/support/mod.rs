//! Network-namespace test harness: a "pod" namespace joined by a veth pair to a "world"
//! namespace that hosts DNS responders and TCP listeners. Everything is torn down by Drop.

#![allow(dead_code)] // Not every test binary uses every helper.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The sidecar binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tproxy-sidecar");

/// Pod address on the veth.
pub const POD_V4: &str = "198.18.0.2";
/// World (and node) address on the veth.
pub const NODE_V4: &str = "198.18.0.1";
/// DNS server the pod may use.
pub const DNS_ALLOWED: &str = "198.18.1.53";
/// DNS server the pod must not reach.
pub const DNS_OTHER: &str = "198.18.1.54";
/// An address inside the blocked service CIDR (v4).
pub const SVC_V4: &str = "198.18.2.10";
/// The blocked service CIDRs (v4 and v6).
pub const SVC_CIDRS: &str = "198.18.2.0/24,fd00:198:20::/64";
/// A v6 host in the world outside the blocked CIDR.
pub const WORLD_V6: &str = "fd00:198:19::80";
/// A v6 address inside the blocked service CIDR.
pub const SVC_V6: &str = "fd00:198:20::10";
/// Node name the pod resolves through its /etc/netns hosts file.
pub const NODE_NAME: &str = "tproxy-test-node";
/// TCP ports the world listens on (all addresses, v4 and v6).
pub const TCP_PORTS: [u16; 5] = [80, 443, 22, 8080, 1080];
/// The address the DNS responders answer with.
pub const DNS_ANSWER: [u8; 4] = [198, 18, 9, 9];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// True when netns tests can run. Not root: skip with a reason, unless CI is set (fail).
pub fn can_run() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if root {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "network-namespace tests need root, and CI is set: refusing to skip"
    );
    eprintln!("skipping: network-namespace tests need root (and CI is unset)");
    false
}

/// Runs a command, panicking with its output on failure.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Stdout of a command run inside namespace `ns` (panics on failure).
pub fn ns_out(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    String::from_utf8(sh(&v).stdout).unwrap()
}

/// A named network namespace, deleted on drop (with its /etc/netns directory).
pub struct Netns {
    /// Name (unique per test).
    pub name: String,
    etc: PathBuf,
}

impl Netns {
    /// Creates `tps-<role>-<pid>-<n>`, with loopback up.
    pub fn new(role: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("tps-{role}-{}-{n}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns {
            etc: PathBuf::from("/etc/netns").join(&name),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v);
    }

    /// Gives the namespace its own /etc/hosts (bind-mounted by `ip netns exec`).
    pub fn set_hosts(&self, text: &str) {
        std::fs::create_dir_all(&self.etc).unwrap();
        std::fs::write(self.etc.join("hosts"), text).unwrap();
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created there stay in it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap();
            // SAFETY: `file` is an open namespace fd for the duration of the call; setns only
            // changes the network namespace of this (fresh, dedicated) thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// Background servers in the world namespace; stopped and joined on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Upper bound on any server thread's life.
const SERVER_LIFETIME: Duration = Duration::from_secs(300);

fn serve_tcp(l: TcpListener, stop: Arc<AtomicBool>, dns: bool) -> JoinHandle<()> {
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let start = Instant::now();
        while !stop.load(Ordering::SeqCst) && start.elapsed() < SERVER_LIFETIME {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    if dns {
                        let mut len = [0u8; 2];
                        if s.read_exact(&mut len).is_ok() {
                            let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                            if s.read_exact(&mut q).is_ok()
                                && let Some(r) = dns_answer(&q)
                            {
                                let mut msg = (r.len() as u16).to_be_bytes().to_vec();
                                msg.extend_from_slice(&r);
                                let _ = s.write_all(&msg);
                            }
                        }
                    } else {
                        let _ = s.write_all(b"hello\n");
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

fn serve_udp_dns(s: UdpSocket, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::SeqCst) && start.elapsed() < SERVER_LIFETIME {
            if let Ok((n, from)) = s.recv_from(&mut buf)
                && let Some(r) = dns_answer(&buf[..n])
            {
                let _ = s.send_to(&r, from);
            }
        }
    })
}

/// A DNS response with one A record ([`DNS_ANSWER`]) to a single-question query.
pub fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // Question: name labels, then type and class.
    let mut i = 12;
    while *q.get(i)? != 0 {
        i += 1 + usize::from(q[i]);
    }
    let qend = i + 5;
    let question = q.get(12..qend)?;
    let mut r = Vec::with_capacity(qend + 16);
    r.extend_from_slice(&q[0..2]); // id
    r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    r.extend_from_slice(question);
    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    r.extend_from_slice(&DNS_ANSWER);
    Some(r)
}

/// A query for `example.test A` with the given id.
pub fn dns_query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["example", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Checks a response: same id, one answer ending in [`DNS_ANSWER`].
pub fn dns_ok(id: u16, r: &[u8]) -> bool {
    r.len() > 16 && r[0..2] == id.to_be_bytes() && r[6..8] == [0, 1] && r.ends_with(&DNS_ANSWER)
}

/// The test world: pod and world namespaces, veth, addresses, servers.
pub struct Topology {
    /// Servers (dropped first).
    pub servers: Servers,
    /// The pod namespace (the sidecar runs here).
    pub pod: Netns,
    /// The world namespace (DNS, listeners, node).
    pub world: Netns,
}

impl Topology {
    /// Builds the topology and starts the world's servers.
    pub fn new() -> Topology {
        let pod = Netns::new("pod");
        let world = Netns::new("world");
        pod.set_hosts(&format!(
            "127.0.0.1 localhost\n::1 localhost\n{NODE_V4} {NODE_NAME}\n"
        ));
        pod.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "w0",
            "netns",
            &world.name,
        ]);
        pod.ip(&["addr", "add", &format!("{POD_V4}/24"), "dev", "eth0"]);
        pod.ip(&["addr", "add", "fd00:198:18::2/64", "dev", "eth0", "nodad"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        // Let root open ICMP ping sockets (for the ping probes) in the pod.
        ns_out(
            &pod.name,
            &["sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 0"],
        );
        pod.ip(&["route", "add", "default", "via", NODE_V4]);
        pod.ip(&["-6", "route", "add", "default", "via", "fd00:198:18::1"]);
        world.ip(&["addr", "add", &format!("{NODE_V4}/24"), "dev", "w0"]);
        world.ip(&["addr", "add", "fd00:198:18::1/64", "dev", "w0", "nodad"]);
        world.ip(&["link", "set", "w0", "up"]);
        for a in [DNS_ALLOWED, DNS_OTHER, SVC_V4] {
            world.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        for a in [WORLD_V6, SVC_V6] {
            world.ip(&["addr", "add", &format!("{a}/128"), "dev", "lo", "nodad"]);
        }
        let (tcp, udp) = world.run(|| {
            let mut tcp = Vec::new();
            for p in TCP_PORTS {
                // Dual-stack: one socket serves every v4 and v6 address of the world.
                tcp.push((TcpListener::bind(("::", p)).unwrap(), false));
            }
            let mut udp = Vec::new();
            for a in [DNS_ALLOWED, DNS_OTHER] {
                let ip: IpAddr = a.parse().unwrap();
                tcp.push((TcpListener::bind((ip, 53)).unwrap(), true));
                udp.push(UdpSocket::bind((ip, 53)).unwrap());
            }
            (tcp, udp)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (l, dns) in tcp {
            threads.push(serve_tcp(l, stop.clone(), dns));
        }
        for s in udp {
            threads.push(serve_udp_dns(s, stop.clone()));
        }
        Topology {
            servers: Servers { stop, threads },
            pod,
            world,
        }
    }

    /// Runs the sidecar in the pod namespace with the standard test environment.
    pub fn sidecar(&self, extra: &[&str]) -> Output {
        sidecar_in(
            &self.pod.name,
            &[
                ("BLOCK_SVC_CIDR", SVC_CIDRS),
                ("ALLOW_DNS", DNS_ALLOWED),
                ("NODE_NAME", NODE_NAME),
            ],
            extra,
        )
    }
}

/// Runs the sidecar binary inside `ns` with `env` and arguments `args`.
pub fn sidecar_in(ns: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    // Resolved with the test's PATH: `env` may replace the child's PATH.
    let ip = tproxy_sidecar::backend::which("ip").unwrap();
    let mut cmd = Command::new(ip);
    cmd.args(["netns", "exec", ns, BIN]).args(args);
    for k in [
        "BLOCK_SVC_CIDR",
        "ALLOW_DNS",
        "NODE_NAME",
        "PROXY_PORT",
        "WEB_PORTS",
        "DNS_PORT",
        "SIDECAR_BACKEND",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

/// Result of a probe: Ok, or the io error kind that ended it.
pub type Probe = Result<(), io::ErrorKind>;

/// Connects over TCP (2 s cap) and reads the greeting.
pub fn tcp_probe(addr: SocketAddr) -> Probe {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.kind())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.kind())?;
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).map_err(|e| e.kind())?;
    assert_eq!(&buf, b"hello\n");
    Ok(())
}

/// One DNS query over UDP on a connected socket (2 s cap).
///
/// A locally rejected datagram fails `send` with EPERM (netfilter dropped it in OUTPUT),
/// which a plain DROP does too; what tells a reject apart is the ICMP error it queues on
/// the socket. So after a refused send the probe reads the socket and reports that error
/// (ECONNREFUSED for a port-unreachable; a silent drop would time out instead).
pub fn udp_dns_probe(server: IpAddr) -> Probe {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let s = UdpSocket::bind(bind).map_err(|e| e.kind())?;
    s.connect((server, 53)).map_err(|e| e.kind())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.kind())?;
    match s.send(&dns_query(0x1234)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
        Err(e) => return Err(e.kind()),
    }
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).map_err(|e| e.kind())?;
    assert!(dns_ok(0x1234, &buf[..n]), "bad DNS answer {:?}", &buf[..n]);
    Ok(())
}

/// One DNS query over TCP (2 s cap).
pub fn tcp_dns_probe(server: IpAddr) -> Probe {
    let mut s = TcpStream::connect_timeout(&SocketAddr::new(server, 53), Duration::from_secs(2))
        .map_err(|e| e.kind())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.kind())?;
    let q = dns_query(0x4321);
    let mut msg = (q.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(&q);
    s.write_all(&msg).map_err(|e| e.kind())?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(|e| e.kind())?;
    let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut r).map_err(|e| e.kind())?;
    assert!(dns_ok(0x4321, &r), "bad DNS answer {r:?}");
    Ok(())
}

/// One ICMP echo (v4) or ICMPv6 echo (v6) over a kernel ping socket (2 s cap). The namespace
/// must allow ping sockets (see [`Topology::new`]). Like [`udp_dns_probe`], a locally refused
/// send is followed by a read that reports the ICMP error the reject queued.
pub fn ping_probe(dst: IpAddr) -> Probe {
    use std::os::fd::FromRawFd as _;
    let (domain, proto, echo_type) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8),
    };
    // SAFETY: plain socket(2) call with constant arguments; the result is checked below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error().kind());
    }
    // SAFETY: `fd` is a fresh, valid socket owned by nobody else; UdpSocket takes ownership
    // and closes it. Its datagram calls (connect/send/recv) are valid on a ping socket.
    let s = unsafe { UdpSocket::from_raw_fd(fd) };
    s.connect(SocketAddr::new(dst, 0)).map_err(|e| e.kind())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.kind())?;
    // Echo request; the kernel fills in the identifier and checksum.
    let req = [echo_type, 0, 0, 0, 0, 0, 0, 1, b'p', b'i', b'n', b'g'];
    match s.send(&req) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
        Err(e) => return Err(e.kind()),
    }
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf).map_err(|e| e.kind())?;
    assert!(
        n >= 8 && buf[8..n] == req[8..],
        "unexpected echo reply {:?}",
        &buf[..n]
    );
    Ok(())
}
