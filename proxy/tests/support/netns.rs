//! The client → node → upstream network-namespace topology (see
//! docs/stack.md "Network-namespace test topology"), torn down on drop.
//!
//! ```text
//!  client ns            node ns (ip_forward=1)            upstream ns
//!  eth0 198.18.1.2 ─── to-client 198.18.1.1 │ to-upstream 198.18.2.1 ─── eth0 198.18.2.2, .3
//! ```

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::run_ok;

/// Client address.
pub const CLIENT_IP: &str = "198.18.1.2";
/// Node address on the client side.
pub const NODE_CLIENT_IP: &str = "198.18.1.1";
/// Node address on the upstream side.
pub const NODE_UPSTREAM_IP: &str = "198.18.2.1";
/// Upstream address (nginx).
pub const UPSTREAM_IP: &str = "198.18.2.2";
/// Second upstream address (for extra servers on ports 80/443).
pub const UPSTREAM_IP2: &str = "198.18.2.3";
/// Node-side interface facing the client (REDIRECT matches `-i` on it).
pub const NODE_CLIENT_IF: &str = "to-client";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Three namespaces wired as above; deleted (with their veths) on drop.
pub struct Topology {
    /// Client namespace name.
    pub client: String,
    /// Node namespace name (the proxy runs here).
    pub node: String,
    /// Upstream namespace name.
    pub upstream: String,
    created: Vec<String>,
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args), Duration::from_secs(10));
}

impl Topology {
    /// Builds the topology; `tag` makes the names readable (`tproxy-<tag>-<pid>-<n>-client`).
    pub fn new(tag: &str) -> Topology {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("tproxy-{tag}-{}-{n}", std::process::id());
        let mut t = Topology {
            client: format!("{base}-c"),
            node: format!("{base}-n"),
            upstream: format!("{base}-u"),
            created: Vec::new(),
        };
        for ns in [t.client.clone(), t.node.clone(), t.upstream.clone()] {
            ip(&["netns", "add", &ns]);
            t.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
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
        ]);
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
        ]);
        ip(&[
            "-n",
            c,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", c, "link", "set", "eth0", "up"]);
        ip(&["-n", c, "route", "add", "default", "via", NODE_CLIENT_IP]);
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{NODE_CLIENT_IP}/24"),
            "dev",
            NODE_CLIENT_IF,
        ]);
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{NODE_UPSTREAM_IP}/24"),
            "dev",
            "to-upstream",
        ]);
        ip(&["-n", n, "link", "set", NODE_CLIENT_IF, "up"]);
        ip(&["-n", n, "link", "set", "to-upstream", "up"]);
        ip(&[
            "-n",
            u,
            "addr",
            "add",
            &format!("{UPSTREAM_IP}/24"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            u,
            "addr",
            "add",
            &format!("{UPSTREAM_IP2}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", u, "link", "set", "eth0", "up"]);
        ip(&["-n", u, "route", "add", "default", "via", NODE_UPSTREAM_IP]);
        run_ok(
            t.exec(n, "sysctl").args(["-qw", "net.ipv4.ip_forward=1"]),
            Duration::from_secs(10),
        );
        t
    }

    /// `ip netns exec <ns> <prog>` as a Command to add arguments to.
    pub fn exec(&self, ns: &str, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, prog]);
        c
    }

    /// Adds the REDIRECT of client-side ports 80 and 443 to `port` in the node.
    pub fn redirect_to(&self, port: u16) {
        run_ok(
            self.exec(&self.node, "iptables")
                .args(["-t", "nat", "-A", "PREROUTING", "-i", NODE_CLIENT_IF])
                .args(["-p", "tcp", "-m", "multiport", "--dports", "80,443"])
                .args(["-j", "REDIRECT", "--to-ports", &port.to_string()]),
            Duration::from_secs(10),
        );
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// Runs `f` on a fresh thread that has joined network namespace `ns`
/// (`/run/netns/<ns>`): sockets it creates live in that namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns(2) with a valid namespace fd we hold open; it only
        // changes this (fresh, test-owned) thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread panicked")
}
