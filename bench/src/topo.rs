//! The transparent topology: client ns → node ns (REDIRECT to the proxy
//! port) → upstream ns, addresses from 198.18.0.0/15, torn down on drop and
//! on SIGINT/SIGTERM (the signal only sets a flag; the run stops at the next
//! check and the guards clean up).
//!
//! ```text
//!  client ns           node ns (ip_forward=1)             upstream ns
//!  eth0 198.18.1.2 ─── to-client 198.18.1.1 │ to-upstream 198.18.2.1 ─── eth0 198.18.2.2
//! ```

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::procs::run_capture;

/// Client address.
pub const CLIENT_IP: &str = "198.18.1.2";
/// Node address on the client side (regular-mode proxies listen here).
pub const NODE_CLIENT_IP: &str = "198.18.1.1";
/// Upstream (nginx) address.
pub const UPSTREAM_IP: &str = "198.18.2.2";
/// The name clients use for the upstream (hosts files in every namespace).
pub const UPSTREAM_HOST: &str = "upstream.test";
/// Node interface facing the client; the REDIRECT rule matches it.
const NODE_CLIENT_IF: &str = "to-client";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Makes SIGINT/SIGTERM set the interrupted flag instead of killing the
/// bench (so namespaces and processes are cleaned up).
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe);
        // the function pointer is valid for the program's lifetime.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// True once SIGINT/SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Three namespaces wired as above; deleted on drop.
pub struct Topology {
    /// Client namespace.
    pub client: String,
    /// Node namespace (proxies run here).
    pub node: String,
    /// Upstream namespace (nginx).
    pub upstream: String,
    created: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    run_capture(Command::new("ip").args(args), Duration::from_secs(10)).map(|_| ())
}

impl Topology {
    /// Creates `tpb-<pid>-{c,n,u}` and their hosts files.
    pub fn new() -> Result<Topology, String> {
        let base = format!("tpb-{}", std::process::id());
        let mut t = Topology {
            client: format!("{base}-c"),
            node: format!("{base}-n"),
            upstream: format!("{base}-u"),
            created: Vec::new(),
        };
        for ns in [t.client.clone(), t.node.clone(), t.upstream.clone()] {
            ip(&["netns", "add", &ns])?;
            t.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // `ip netns exec` bind-mounts this over /etc/hosts.
            let dir = format!("/etc/netns/{ns}");
            std::fs::create_dir_all(&dir).map_err(|e| format!("{dir}: {e}"))?;
            std::fs::write(
                format!("{dir}/hosts"),
                format!("127.0.0.1 localhost\n{UPSTREAM_IP} {UPSTREAM_HOST}\n"),
            )
            .map_err(|e| format!("{dir}/hosts: {e}"))?;
        }
        let (c, n, u) = (t.client.as_str(), t.node.as_str(), t.upstream.as_str());
        ip(&[
            "-n",
            n,
            "link",
            "add",
            NODE_CLIENT_IF,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            c,
        ])?;
        ip(&[
            "-n",
            n,
            "link",
            "add",
            "to-upstream",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            u,
        ])?;
        ip(&[
            "-n",
            c,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", c, "link", "set", "eth0", "up"])?;
        ip(&["-n", c, "route", "add", "default", "via", NODE_CLIENT_IP])?;
        let node_if = format!("{NODE_CLIENT_IP}/24");
        ip(&["-n", n, "addr", "add", &node_if, "dev", NODE_CLIENT_IF])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            "198.18.2.1/24",
            "dev",
            "to-upstream",
        ])?;
        ip(&["-n", n, "link", "set", NODE_CLIENT_IF, "up"])?;
        ip(&["-n", n, "link", "set", "to-upstream", "up"])?;
        ip(&[
            "-n",
            u,
            "addr",
            "add",
            &format!("{UPSTREAM_IP}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", u, "link", "set", "eth0", "up"])?;
        ip(&["-n", u, "route", "add", "default", "via", "198.18.2.1"])?;
        run_capture(
            t.exec(n, "sysctl").args(["-qw", "net.ipv4.ip_forward=1"]),
            Duration::from_secs(10),
        )?;
        Ok(t)
    }

    /// `ip netns exec <ns> <prog>`.
    pub fn exec(&self, ns: &str, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, prog]);
        c
    }

    /// Adds the REDIRECT of client ports 80/443 (and the soak scenario's
    /// 8080/8443) to `port`; removed when the
    /// guard drops (the direct path is the same topology without it).
    pub fn redirect(&self, port: u16) -> Result<Redirect<'_>, String> {
        self.iptables("-A", port)?;
        Ok(Redirect { topo: self, port })
    }

    fn iptables(&self, op: &str, port: u16) -> Result<(), String> {
        run_capture(
            self.exec(&self.node, "iptables")
                .args(["-t", "nat", op, "PREROUTING", "-i", NODE_CLIENT_IF])
                .args([
                    "-p",
                    "tcp",
                    "-m",
                    "multiport",
                    "--dports",
                    "80,443,8080,8443",
                ])
                .args(["-j", "REDIRECT", "--to-ports", &port.to_string()]),
            Duration::from_secs(10),
        )
        .map(|_| ())
    }
}

/// An installed REDIRECT rule.
pub struct Redirect<'a> {
    topo: &'a Topology,
    port: u16,
}

impl Drop for Redirect<'_> {
    fn drop(&mut self) {
        let _ = self.topo.iptables("-D", self.port);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
    }
}

/// Runs `f` on a fresh thread that joined network namespace `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(&path)?;
        Ok(f())
    })
    .join()
    .map_err(|_| "a bench thread panicked".to_owned())?
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &str) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    // SAFETY: setns(2) with a namespace fd we hold open; it changes only the
    // calling thread's network namespace (threads the bench itself made).
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("setns {path}: {}", std::io::Error::last_os_error()))
    }
}

/// Waits until a TCP connect from namespace `ns` to `addr` succeeds.
pub fn wait_listening(ns: &str, addr: std::net::SocketAddr, limit: Duration) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit && !interrupted() {
        let ok = in_netns(ns, move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
        })
        .unwrap_or(false);
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
