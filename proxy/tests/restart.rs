//! Restarts lose nothing (issue #16): a new tproxy started beside a running
//! one on the same ports (SO_REUSEPORT) takes over, the old one gets SIGTERM,
//! drains and exits 0, and bounded client loops running across every switch —
//! a new connection per request: plain HTTP and CONNECT+TLS through the
//! explicit listener, HTTP through the transparent one — see zero failures.
//! The node namespace has `net.ipv4.tcp_migrate_req=1` (docs/restarts.md: the
//! kernel moves connections queued on a closing listener to the new one).
//! Both drivers. Root only (namespaces).
//!
//! `TPROXY_RESTART_SWITCHES=N` sets the number of switches (default 3; the
//! numbers in docs/restarts.md are from 20). `TPROXY_RESTART_MIGRATE=0` runs
//! the same loop without the sysctl and reports the failures instead of
//! asserting (the baseline measurement).
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::netns::{NODE_CLIENT_IP, Topology, UPSTREAM_IP};
use support::nginx::{Nginx, SMALL_BODY};
use support::pki::TestPki;
use support::proxy::{Proxy, ProxyBuilder};
use support::*;

const T: Duration = Duration::from_secs(30);
const TRANSPARENT_PORT: u16 = 15001;
const REGULAR_PORT: u16 = 15080;

/// One client loop (support/loadloop.py) in the client namespace; killed on drop.
struct Load {
    name: &'static str,
    child: Option<Child>,
}

#[derive(Debug, serde::Deserialize)]
struct LoadResult {
    ok: u64,
    failed: u64,
    errors: Vec<String>,
    seconds: f64,
}

impl Load {
    fn start(topo: &Topology, name: &'static str, args: &[&str]) -> Load {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/loadloop.py");
        let child = topo
            .exec(&topo.client, "python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Load {
            name,
            child: Some(child),
        }
    }

    /// Wait (bounded) for the loop to end after the stop file appeared.
    fn finish(mut self) -> LoadResult {
        let mut child = self.child.take().unwrap();
        let done = wait_until(T, || child.try_wait().ok().flatten());
        if done.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "{}: no result ({e}): {text}\n{}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Node {
    topo: Topology,
    _ng: Nginx,
    pki: TestPki,
    confdir: tempfile::TempDir,
    files: tempfile::TempDir,
}

impl Node {
    fn new(tag: &str, migrate: bool) -> Node {
        let topo = Topology::new(tag);
        run_ok(
            topo.exec(&topo.node, "sysctl")
                .arg("-qw")
                .arg(format!("net.ipv4.tcp_migrate_req={}", u8::from(migrate))),
            T,
        );
        let pki = TestPki::new();
        let ng = Nginx::start_in_ns(&pki, &topo.upstream, UPSTREAM_IP, 80, 443);
        topo.redirect_to(TRANSPARENT_PORT);
        let files = tempfile::tempdir().unwrap();
        std::fs::write(files.path().join("expect"), SMALL_BODY).unwrap();
        Node {
            topo,
            _ng: ng,
            pki,
            confdir: tempfile::tempdir().unwrap(),
            files,
        }
    }

    /// A proxy generation: same ports, same CA (like the chart's Secret).
    fn proxy(&self, legacy: bool) -> Proxy {
        let mut b = ProxyBuilder::new()
            .netns(&self.topo.node)
            .confdir(self.confdir.path())
            .mode(&format!("transparent@0.0.0.0:{TRANSPARENT_PORT}"))
            .mode(&format!("regular@{NODE_CLIENT_IP}:{REGULAR_PORT}"))
            .upstream_ca(&self.pki.ca_pem())
            .args(&["--allow-client", "198.18.1.0/24", "--flow-detail", "1"]);
        if legacy {
            b = b.env("MONOIO_FORCE_LEGACY_DRIVER", "1");
        }
        b.spawn()
    }

    fn stop_file(&self) -> PathBuf {
        self.files.path().join("stop")
    }

    fn loads(&self) -> Vec<Load> {
        let stop = self.stop_file();
        let stop = stop.to_str().unwrap();
        let expect = self.files.path().join("expect");
        let expect = expect.to_str().unwrap();
        let proxy = format!("{NODE_CLIENT_IP}:{REGULAR_PORT}");
        let ca = self.confdir.path().join("mitmproxy-ca-cert.pem");
        let ca = ca.to_str().unwrap();
        let common = [
            "--host",
            UPSTREAM_IP,
            "--stop-file",
            stop,
            "--expect-file",
            expect,
        ];
        let with = |extra: &[&str]| -> Vec<String> {
            common.iter().chain(extra).map(|s| s.to_string()).collect()
        };
        let a = with(&["--kind", "proxy-http", "--proxy", &proxy]);
        let b = with(&["--kind", "connect-tls", "--proxy", &proxy, "--cafile", ca]);
        let c = with(&["--kind", "direct-http"]);
        fn refs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        vec![
            Load::start(&self.topo, "plain HTTP via regular", &refs(&a)),
            Load::start(&self.topo, "CONNECT+TLS via regular", &refs(&b)),
            Load::start(&self.topo, "HTTP via transparent", &refs(&c)),
        ]
    }
}

fn switches() -> usize {
    std::env::var("TPROXY_RESTART_SWITCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Requests this generation logged (`<< 200` lines).
fn served(p: &Proxy) -> usize {
    p.flow_lines()
        .iter()
        .filter(|l| l.contains("<< 200"))
        .count()
}

fn handover(tag: &str, legacy: bool) {
    let migrate = std::env::var("TPROXY_RESTART_MIGRATE").as_deref() != Ok("0");
    let node = Node::new(tag, migrate);
    let mut old = node.proxy(legacy);
    let loads = node.loads();
    // Traffic flows before the first switch.
    assert!(
        wait_until(T, || (served(&old) >= 30).then_some(())).is_some(),
        "{}",
        old.dump()
    );
    let mut starts = Vec::new();
    let mut drains = Vec::new();
    for i in 0..switches() {
        let t0 = Instant::now();
        let new = node.proxy(legacy);
        starts.push(t0.elapsed());
        let t1 = Instant::now();
        old.signal(libc::SIGTERM);
        let status = old.wait_exit(T);
        drains.push(t1.elapsed());
        assert!(
            status.is_some_and(|s| s.success()),
            "switch {i}: old proxy did not exit 0: {status:?}\n{}",
            old.dump()
        );
        // The new generation serves before the next switch.
        assert!(
            wait_until(T, || (served(&new) >= 30).then_some(())).is_some(),
            "switch {i}: new proxy serves nothing\n{}",
            new.dump()
        );
        old = new;
    }
    std::fs::write(node.stop_file(), "").unwrap();
    let results: Vec<(&str, LoadResult)> =
        loads.into_iter().map(|l| (l.name, l.finish())).collect();
    let ms = |v: &[Duration]| {
        let mut m: Vec<u128> = v.iter().map(Duration::as_millis).collect();
        m.sort_unstable();
        format!(
            "min {} median {} max {} ms",
            m[0],
            m[m.len() / 2],
            m[m.len() - 1]
        )
    };
    eprintln!(
        "restart {tag}: {} switches, tcp_migrate_req={}, start-to-listening {}, SIGTERM-to-exit {}",
        switches(),
        u8::from(migrate),
        ms(&starts),
        ms(&drains)
    );
    for (name, r) in &results {
        eprintln!(
            "  {name}: {} ok, {} failed in {:.1}s {:?}",
            r.ok, r.failed, r.seconds, r.errors
        );
    }
    if !migrate {
        return; // Baseline measurement: reported, not asserted.
    }
    for (name, r) in &results {
        assert!(r.ok > 0, "{name}: no request succeeded: {r:?}");
        assert_eq!(
            r.failed,
            0,
            "{name}: requests failed across the switches: {r:?}\n{}",
            old.dump()
        );
    }
}

#[test]
fn handover_loses_no_request() {
    if !require_root("handover_loses_no_request") {
        return;
    }
    handover("rst", false);
}

#[test]
fn handover_loses_no_request_epoll() {
    if !require_root("handover_loses_no_request_epoll") {
        return;
    }
    handover("rste", true);
}

/// `kill -9`: redirected connections are refused while nothing listens
/// (egress fails closed), and a new process serves again; the time from its
/// start to the first successful request is printed (docs/restarts.md).
#[test]
fn crash_fails_closed_and_a_new_process_serves() {
    if !require_root("crash_fails_closed_and_a_new_process_serves") {
        return;
    }
    let node = Node::new("crash", true);
    let mut p = node.proxy(false);
    let url = format!("http://{UPSTREAM_IP}/small.txt");
    let c = Some(node.topo.client.as_str());
    let r = curl_in(c, &[&url]);
    assert_eq!((r.status, r.text().as_str()), (200, SMALL_BODY), "{r:?}");
    p.signal(libc::SIGKILL);
    assert!(p.wait_exit(T).is_some());
    // Nothing listens: the REDIRECTed connection is refused, never passed on.
    let r = curl_in(c, &["--max-time", "5", &url]);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(r.stderr.contains("refused") || r.exit == 7, "{r:?}");
    let t0 = Instant::now();
    let _p = node.proxy(false);
    let listening = t0.elapsed();
    let r = curl_in(c, &[&url]);
    let serving = t0.elapsed();
    assert_eq!((r.status, r.text().as_str()), (200, SMALL_BODY), "{r:?}");
    eprintln!(
        "crash: new process listening after {} ms, first request answered after {} ms",
        listening.as_millis(),
        serving.as_millis()
    );
}
