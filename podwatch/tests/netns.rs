//! Real netfilter: the `tproxy-podwatch` binary applies its rules inside a "node"
//! network namespace (one-shot `--pods-from-file` mode), and real TCP traffic from
//! a "pod" namespace proves the effect:
//!
//! ```text
//!   pod ns  eth0 198.18.1.2 (opted-in pod "web")  ── veth ──  node ns vpod 198.18.1.1
//!           eth0 198.18.1.3 (plain pod "worker")             vup  198.18.2.1 ── veth ── upstream ns 198.18.2.2
//!           (v6: fd00:198:18:1::2 / ::3)                      (ip_forward=1)             (fd00:198:18:2::2)
//! ```
//!
//! Both pods share the pod namespace and pick their source address with bind().
//! Needs root (CI runs as root); skips with a message only when not root and CI unset.

// Helpers outside #[test] functions unwrap too: in a test a panic with a
// location is the failure report we want.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

const PROXY_PORT: u16 = 15001;
const WEB_UID: &str = "0a0a0a0a-0000-4000-8000-000000000001";
const WORKER_UID: &str = "0a0a0a0a-0000-4000-8000-000000000002";

fn skip_unless_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: needs root for network namespaces and CI is set: refusing to skip"
    );
    eprintln!("{test}: skipped: needs root (network namespaces, netfilter)");
    true
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Network namespace deleted on drop (also when the test fails).
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "pw{}-{}-{role}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }
    fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(args);
        sh(&v)
    }
    fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        sh(&v)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`: sockets created
/// there belong to that namespace for their whole life.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.0);
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap();
        // SAFETY: the fd refers to an open network-namespace file; setns only
        // changes this (short-lived) thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

fn listener(addr: SocketAddr) -> TcpListener {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).unwrap();
    if addr.is_ipv6() {
        s.set_only_v6(true).unwrap();
    }
    s.set_reuse_address(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(16).unwrap();
    s.set_nonblocking(true).unwrap();
    s.into()
}

struct Topology {
    pod: Netns,
    node: Netns,
    upstream: Netns,
}

fn topology() -> Topology {
    let t = Topology {
        pod: Netns::new("pod"),
        node: Netns::new("node"),
        upstream: Netns::new("up"),
    };
    t.node.ip(&[
        "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", &t.pod.0,
    ]);
    t.node.ip(&[
        "link",
        "add",
        "vup",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &t.upstream.0,
    ]);
    for (ns, dev, addrs) in [
        (&t.pod, "eth0", &["198.18.1.2/24", "198.18.1.3/24"][..]),
        (&t.node, "vpod", &["198.18.1.1/24"][..]),
        (&t.node, "vup", &["198.18.2.1/24"][..]),
        (&t.upstream, "eth0", &["198.18.2.2/24"][..]),
    ] {
        for a in addrs {
            ns.ip(&["addr", "add", a, "dev", dev]);
        }
        ns.ip(&["link", "set", dev, "up"]);
    }
    for (ns, dev, addrs) in [
        (
            &t.pod,
            "eth0",
            &["fd00:198:18:1::2/64", "fd00:198:18:1::3/64"][..],
        ),
        (&t.node, "vpod", &["fd00:198:18:1::1/64"][..]),
        (&t.node, "vup", &["fd00:198:18:2::1/64"][..]),
        (&t.upstream, "eth0", &["fd00:198:18:2::2/64"][..]),
    ] {
        for a in addrs {
            ns.ip(&["-6", "addr", "add", a, "dev", dev, "nodad"]);
        }
    }
    t.pod.ip(&["route", "add", "default", "via", "198.18.1.1"]);
    t.pod
        .ip(&["-6", "route", "add", "default", "via", "fd00:198:18:1::1"]);
    t.upstream
        .ip(&["route", "add", "default", "via", "198.18.2.1"]);
    t.upstream
        .ip(&["-6", "route", "add", "default", "via", "fd00:198:18:2::1"]);
    t.node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    t.node
        .exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    t
}

fn pod_json(name: &str, uid: &str, ips: [&str; 2], opted_in: bool) -> serde_json::Value {
    let mut annotations = serde_json::Map::new();
    if opted_in {
        annotations.insert("initializer.kubernetes.io/tproxy".into(), json!("true"));
    }
    json!({
        "metadata": {"name": name, "namespace": "shop", "uid": uid,
            "annotations": annotations, "labels": {"app": name}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "podIP": ips[0],
            "podIPs": [{"ip": ips[0]}, {"ip": ips[1]}]}
    })
}

const WEB_IPS: [&str; 2] = ["198.18.1.2", "fd00:198:18:1::2"];
const WORKER_IPS: [&str; 2] = ["198.18.1.3", "fd00:198:18:1::3"];

/// Runs the real binary once in the node namespace with `pods` as the pod set.
fn podwatch_once(
    t: &Topology,
    work: &Path,
    backend: &str,
    pods: &[serde_json::Value],
    extra: &[&str],
) {
    let file = work.join("pods.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&json!({"kind": "PodList", "items": pods})).unwrap(),
    )
    .unwrap();
    let dir = work.join("directory.json");
    let port = PROXY_PORT.to_string();
    let mut args = vec![
        env!("CARGO_BIN_EXE_tproxy-podwatch"),
        "--node-name",
        "node-a",
        "--backend",
        backend,
        "--proxy-port",
        &port,
        "--pods-from-file",
        file.to_str().unwrap(),
        "--pod-directory",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    t.node.exec(&args);
}

/// Where a connection ended up.
#[derive(Debug, PartialEq, Eq)]
enum Landed {
    /// At the node's proxy port, with this SO_ORIGINAL_DST.
    Proxy(SocketAddr),
    /// At the real upstream server.
    Upstream,
}

struct Listeners {
    proxy: Vec<TcpListener>,
    upstream: Vec<TcpListener>,
}

fn listeners(t: &Topology) -> Listeners {
    let proxy = in_netns(&t.node, || {
        vec![
            listener(format!("0.0.0.0:{PROXY_PORT}").parse().unwrap()),
            listener(format!("[::]:{PROXY_PORT}").parse().unwrap()),
        ]
    });
    let upstream = in_netns(&t.upstream, || {
        let mut v = Vec::new();
        for port in [80, 443, 8080] {
            v.push(listener(format!("0.0.0.0:{port}").parse().unwrap()));
            v.push(listener(format!("[::]:{port}").parse().unwrap()));
        }
        v
    });
    Listeners { proxy, upstream }
}

/// Connects from `src` (an address of the pod namespace) to `dst` and reports
/// which listener accepted it. The accepted peer must be `src` (no SNAT).
fn connect(t: &Topology, l: &Listeners, src: &str, dst: SocketAddr) -> Landed {
    let src: IpAddr = src.parse().unwrap();
    let _client: TcpStream = in_netns(&t.pod, move || {
        let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP)).unwrap();
        s.bind(&SocketAddr::new(src, 0).into()).unwrap();
        s.connect_timeout(&SockAddr::from(dst), Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect {src} -> {dst}: {e}"));
        s.into()
    });
    let until = Instant::now() + Duration::from_secs(3);
    for _ in 0..300 {
        for (is_proxy, group) in [(true, &l.proxy), (false, &l.upstream)] {
            for lis in group {
                match lis.accept() {
                    Ok((mut stream, peer)) => {
                        assert_eq!(peer.ip(), src, "peer address was rewritten");
                        if !is_proxy {
                            return Landed::Upstream;
                        }
                        let sock = SockRef::from(&stream);
                        let orig = if dst.is_ipv4() {
                            sock.original_dst_v4()
                        } else {
                            sock.original_dst_v6()
                        }
                        .expect("SO_ORIGINAL_DST on a redirected connection");
                        let mut sink = [0u8; 1];
                        stream.set_nonblocking(true).unwrap();
                        let _ = stream.read(&mut sink);
                        return Landed::Proxy(orig.as_socket().unwrap());
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("accept: {e}"),
                }
            }
        }
        if Instant::now() > until {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("connection {src} -> {dst} accepted by no listener");
}

fn up(port: u16, v6: bool) -> SocketAddr {
    if v6 {
        format!("[fd00:198:18:2::2]:{port}").parse().unwrap()
    } else {
        format!("198.18.2.2:{port}").parse().unwrap()
    }
}

/// Text of the owned rules as the kernel has them.
fn owned_rules(t: &Topology, backend: &str) -> String {
    match backend {
        "nft" => t.node.exec(&["nft", "list", "ruleset"]),
        "iptables-nft" | "iptables-legacy" => {
            let v = if backend == "iptables-nft" {
                "nft"
            } else {
                "legacy"
            };
            let mut s = t.node.exec(&[&format!("iptables-{v}-save"), "-t", "nat"]);
            s.push_str(&t.node.exec(&[&format!("ip6tables-{v}-save"), "-t", "nat"]));
            s
        }
        _ => unreachable!(),
    }
}

fn jump_count(rules: &str) -> usize {
    rules
        .lines()
        .filter(|l| l.starts_with("-A PREROUTING") && l.ends_with("-j TPROXY-REDIRECT"))
        .count()
}

/// Injects a leftover rule redirecting the worker's address, as a previous run
/// with a different pod set could have left behind.
fn inject_stale_rule(t: &Topology, backend: &str) {
    match backend {
        "nft" => {
            t.node.exec(&[
                "nft",
                "add",
                "rule",
                "inet",
                "tproxy_podwatch",
                "prerouting",
                "ip",
                "saddr",
                "198.18.1.3",
                "tcp",
                "dport",
                "80",
                "redirect",
                "to",
                ":15001",
            ]);
        }
        _ => {
            let v = if backend == "iptables-nft" {
                "nft"
            } else {
                "legacy"
            };
            t.node.exec(&[
                &format!("iptables-{v}"),
                "-w",
                "5",
                "-t",
                "nat",
                "-A",
                "TPROXY-REDIRECT",
                "-s",
                "198.18.1.3/32",
                "-p",
                "tcp",
                "--dport",
                "80",
                "-j",
                "REDIRECT",
                "--to-ports",
                "15001",
            ]);
        }
    }
}

fn scenario(backend: &str) {
    let t = topology();
    let l = listeners(&t);
    let work = tempfile::tempdir().unwrap();
    let work = PathBuf::from(work.path());
    let web = pod_json("web", WEB_UID, WEB_IPS, true);
    let worker = pod_json("worker", WORKER_UID, WORKER_IPS, false);

    // Before podwatch: everything reaches the upstream.
    assert_eq!(connect(&t, &l, WEB_IPS[0], up(80, false)), Landed::Upstream);

    podwatch_once(&t, &work, backend, &[web.clone(), worker.clone()], &[]);
    let rules = owned_rules(&t, backend);
    assert!(
        rules.contains(&format!("tproxy:shop/web/{WEB_UID}")),
        "{rules}"
    );
    assert!(!rules.contains("tproxy:shop/worker/"), "{rules}");

    for v6 in [false, true] {
        let (web_ip, worker_ip) = if v6 {
            (WEB_IPS[1], WORKER_IPS[1])
        } else {
            (WEB_IPS[0], WORKER_IPS[0])
        };
        for port in [80, 443] {
            assert_eq!(
                connect(&t, &l, web_ip, up(port, v6)),
                Landed::Proxy(up(port, v6)),
                "{backend}: opted-in pod {web_ip} to port {port}"
            );
            assert_eq!(
                connect(&t, &l, worker_ip, up(port, v6)),
                Landed::Upstream,
                "{backend}: plain pod {worker_ip} to port {port}"
            );
        }
        assert_eq!(
            connect(&t, &l, web_ip, up(8080, v6)),
            Landed::Upstream,
            "{backend}: port 8080 is not redirected"
        );
    }

    // Pod directory: every pod address, opted in or not.
    let dir: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("directory.json")).unwrap()).unwrap();
    assert_eq!(dir["version"], 1);
    assert_eq!(dir["node"], "node-a");
    for ip in WEB_IPS.iter().chain(WORKER_IPS.iter()) {
        assert!(dir["pods"][ip]["uid"].is_string(), "{ip} missing in {dir}");
    }
    assert_eq!(
        dir["pods"]["198.18.1.2"]["workload"],
        json!({"kind": "Pod", "name": "web"})
    );

    // A leftover rule (previous run) is removed by the next full reconcile, and
    // re-running never adds a second jump.
    inject_stale_rule(&t, backend);
    assert_eq!(
        connect(&t, &l, WORKER_IPS[0], up(80, false)),
        Landed::Proxy(up(80, false)),
        "stale rule is in force before the reconcile"
    );
    podwatch_once(&t, &work, backend, &[web.clone(), worker.clone()], &[]);
    assert_eq!(
        connect(&t, &l, WORKER_IPS[0], up(80, false)),
        Landed::Upstream
    );
    let rules = owned_rules(&t, backend);
    if backend != "nft" {
        assert_eq!(jump_count(&rules), 2, "one jump per family:\n{rules}");
    }

    // The web pod is deleted: its rule goes, its traffic reaches the upstream.
    podwatch_once(&t, &work, backend, std::slice::from_ref(&worker), &[]);
    assert_eq!(connect(&t, &l, WEB_IPS[0], up(80, false)), Landed::Upstream);
    assert_eq!(connect(&t, &l, WEB_IPS[1], up(443, true)), Landed::Upstream);
    let rules = owned_rules(&t, backend);
    assert!(!rules.contains("tproxy:shop/web/"), "{rules}");
    let dir: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("directory.json")).unwrap()).unwrap();
    assert!(dir["pods"].get("198.18.1.2").is_none(), "{dir}");

    // --cleanup removes everything owned.
    podwatch_once(&t, &work, backend, &[], &["--cleanup"]);
    let rules = owned_rules(&t, backend);
    assert!(
        !rules.contains("tproxy_podwatch") && !rules.contains("TPROXY-REDIRECT"),
        "{rules}"
    );
}

#[test]
fn netns_redirect_nft() {
    if skip_unless_root("netns_redirect_nft") {
        return;
    }
    scenario("nft");
}

#[test]
fn netns_redirect_iptables_nft() {
    if skip_unless_root("netns_redirect_iptables_nft") {
        return;
    }
    scenario("iptables-nft");
}

#[test]
fn netns_redirect_iptables_legacy() {
    if skip_unless_root("netns_redirect_iptables_legacy") {
        return;
    }
    scenario("iptables-legacy");
}

/// Rules text without what changes by itself (packet counters, save-time comments).
fn normalized(rules: &str) -> String {
    rules
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.rfind(" [") {
            Some(i) if l.starts_with(':') => l[..i].to_owned(),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A podwatch restart (the process exits, a new one reconciles the same pods)
/// leaves the rules in force the whole time and converges to the same text:
/// a pod's connections are redirected before, during and after, and the
/// ruleset is identical before and after. It also set tcp_migrate_req.
fn restart_scenario(backend: &str) {
    let t = topology();
    let l = listeners(&t);
    let work = tempfile::tempdir().unwrap();
    let work = PathBuf::from(work.path());
    let web = pod_json("web", WEB_UID, WEB_IPS, true);
    let worker = pod_json("worker", WORKER_UID, WORKER_IPS, false);
    let pods = [web, worker];
    t.node
        .exec(&["sysctl", "-qw", "net.ipv4.tcp_migrate_req=0"]);
    podwatch_once(&t, &work, backend, &pods, &[]);
    let before = normalized(&owned_rules(&t, backend));
    assert!(
        before.contains(&format!("tproxy:shop/web/{WEB_UID}")),
        "{before}"
    );
    let redirected = Landed::Proxy(up(80, false));
    // The first podwatch has exited: its rules stay.
    assert_eq!(connect(&t, &l, WEB_IPS[0], up(80, false)), redirected);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let landed = std::thread::scope(|s| {
        let probe = s.spawn(|| {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && seen.len() < 5000 {
                seen.push(connect(&t, &l, WEB_IPS[0], up(80, false)));
            }
            seen
        });
        // Two restarts while the probe connects.
        podwatch_once(&t, &work, backend, &pods, &[]);
        podwatch_once(&t, &work, backend, &pods, &[]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        probe.join().unwrap()
    });
    assert!(!landed.is_empty());
    let leaked = landed.iter().filter(|x| **x != redirected).count();
    assert_eq!(
        leaked,
        0,
        "{backend}: {leaked} of {} probe connections were not redirected",
        landed.len()
    );
    let after = normalized(&owned_rules(&t, backend));
    assert_eq!(
        before, after,
        "{backend}: the rules changed across a restart"
    );
    assert_eq!(
        t.node
            .exec(&["sysctl", "-n", "net.ipv4.tcp_migrate_req"])
            .trim(),
        "1",
        "podwatch sets tcp_migrate_req by default"
    );
}

#[test]
fn restart_keeps_rules_nft() {
    if skip_unless_root("restart_keeps_rules_nft") {
        return;
    }
    restart_scenario("nft");
}

#[test]
fn restart_keeps_rules_iptables_nft() {
    if skip_unless_root("restart_keeps_rules_iptables_nft") {
        return;
    }
    restart_scenario("iptables-nft");
}

#[test]
fn restart_keeps_rules_iptables_legacy() {
    if skip_unless_root("restart_keeps_rules_iptables_legacy") {
        return;
    }
    restart_scenario("iptables-legacy");
}
