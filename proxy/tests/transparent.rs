//! Transparent mode in the namespace topology: unmodified clients in the
//! client namespace, iptables REDIRECT in the node namespace where the proxy
//! runs, nginx and raw TCP servers in the upstream namespace. Root only.
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::netns::{self, NODE_CLIENT_IP, NODE_UPSTREAM_IP, Topology, UPSTREAM_IP, UPSTREAM_IP2};
use support::nginx::{Nginx, SMALL_BODY};
use support::pki::TestPki;
use support::proxy::{Proxy, ProxyBuilder};
use support::pyup::{Kind, PyUpstream};
use support::*;

const T: Duration = Duration::from_secs(10);
/// Fixed proxy port: the node namespace is fresh, so it is free.
const PROXY_PORT: u16 = 15001;
const TS: &str = r"(\[\d{2}:\d{2}:\d{2}\.\d{3}\])?";

struct Setup {
    pki: TestPki,
    ng: Nginx,
    p: Proxy,
    // Dropped last: namespaces outlive the processes inside them.
    topo: Topology,
}

fn setup(tag: &str) -> Setup {
    let topo = Topology::new(tag);
    let pki = TestPki::new();
    let ng = Nginx::start_in_ns(&pki, &topo.upstream, UPSTREAM_IP, 80, 443);
    let p = ProxyBuilder::new()
        .netns(&topo.node)
        .mode(&format!("transparent@0.0.0.0:{PROXY_PORT}"))
        .upstream_ca(&pki.ca_pem())
        .spawn();
    topo.redirect_to(PROXY_PORT);
    Setup { pki, ng, p, topo }
}

#[test]
fn transparent_http_and_https_reach_upstream_via_proxy() {
    if !require_root("transparent_http_and_https_reach_upstream_via_proxy") {
        return;
    }
    let st = setup("tpx");
    let (pki, ng, p, topo) = (&st.pki, &st.ng, &st.p, &st.topo);
    let c = Some(topo.client.as_str());
    let r = curl_in(c, &[&format!("http://{UPSTREAM_IP}/small.txt")]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    let resolve = format!("upstream.test:443:{UPSTREAM_IP}");
    let ca = p.ca_cert();
    let r = curl_in(
        c,
        &[
            "--resolve",
            &resolve,
            "--cacert",
            ca.to_str().unwrap(),
            "https://upstream.test/small.txt",
        ],
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    // Intercepted: trusting only the upstream's CA fails.
    let upstream_ca = pki.ca_pem();
    let r = curl_in(
        c,
        &[
            "--resolve",
            &resolve,
            "--cacert",
            upstream_ca.to_str().unwrap(),
            "https://upstream.test/small.txt",
        ],
    );
    assert_eq!(r.exit, 60, "expected a certificate error: {r:?}");
    // The flow log names the original destination (default ports omitted).
    for url in [
        format!("http://{UPSTREAM_IP}/small.txt"),
        "https://upstream.test/small.txt".to_owned(),
    ] {
        let re = format!(
            r"^{TS}198\.18\.1\.2:\d+: GET {}( HTTP/2\.0)?$",
            regex::escape(&url)
        );
        assert!(p.wait_for_stdout(&re, T).is_some(), "no {re}\n{}", p.dump());
    }
    // nginx saw the proxy's address, not the client's: the proxy made the calls.
    assert!(ng.wait_access_log(
        &format!("{NODE_UPSTREAM_IP} \"GET /small.txt HTTP/1.1\" 200"),
        T
    ));
    assert!(
        !ng.access_log().contains("198.18.1.2 "),
        "{}",
        ng.access_log()
    );
}

/// Sends `payload` from the client namespace to `dst`, half-closes, returns
/// everything read back.
fn exchange(ns: &str, dst: SocketAddr, payload: Vec<u8>) -> Vec<u8> {
    netns::in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            w.write_all(&payload).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        writer.join().unwrap();
        got
    })
}

#[test]
fn transparent_non_http_bytes_pass_through_untouched() {
    if !require_root("transparent_non_http_bytes_pass_through_untouched") {
        return;
    }
    let st = setup("tpraw");
    let (p, topo) = (&st.p, &st.topo);
    let _e443 = PyUpstream::start(
        Kind::TcpEcho,
        UPSTREAM_IP2,
        443,
        None,
        Some(topo.upstream.as_str()),
    );
    let _e80 = PyUpstream::start(
        Kind::TcpEcho,
        UPSTREAM_IP2,
        80,
        None,
        Some(topo.upstream.as_str()),
    );
    // Neither a TLS record nor an HTTP request line.
    let mut payload = b"\x00\x01\x02 NOT-HTTP binary protocol \xfe\xff\r\n".to_vec();
    payload.extend((0..256 * 1024u32).map(|i| (i * 13 % 251) as u8));
    for port in [443u16, 80] {
        let dst: SocketAddr = format!("{UPSTREAM_IP2}:{port}").parse().unwrap();
        let got = exchange(&topo.client, dst, payload.clone());
        assert!(
            got == payload,
            "port {port}: {} of {} bytes echoed\n{}",
            got.len(),
            payload.len(),
            p.dump()
        );
        let re = format!(r"^{TS}198\.18\.1\.2:\d+: passthrough {UPSTREAM_IP2}:{port} ");
        assert!(p.wait_for_stdout(&re, T).is_some(), "no {re}\n{}", p.dump());
    }
}

#[test]
fn transparent_loop_guard_refuses_direct_connection_to_proxy_port() {
    if !require_root("transparent_loop_guard_refuses_direct_connection_to_proxy_port") {
        return;
    }
    let st = setup("tploop");
    let (p, topo) = (&st.p, &st.topo);
    // Port 15001 is not redirected: SO_ORIGINAL_DST is the proxy itself.
    let dst: SocketAddr = format!("{NODE_CLIENT_IP}:{PROXY_PORT}").parse().unwrap();
    let got = netns::in_netns(&topo.client, move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: 198.18.1.1:15001\r\n\r\n");
        let mut got = Vec::new();
        // Ends with EOF or a reset; a timeout (WouldBlock) means it hung.
        match s.read_to_end(&mut got) {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("connection to the proxy's own port hung (loop?)")
            }
            _ => got,
        }
    });
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.starts_with("HTTP/1.1 2"),
        "served a looped request: {text}"
    );
    let logged = wait_until(T, || {
        p.stderr_lines()
            .iter()
            .chain(p.flow_lines().iter())
            .find(|l| l.to_lowercase().contains("loop"))
            .cloned()
    });
    assert!(logged.is_some(), "no log line about the loop\n{}", p.dump());
    // Still healthy: a normal redirected request works.
    let r = curl_in(
        Some(topo.client.as_str()),
        &[&format!("http://{UPSTREAM_IP}/small.txt")],
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", p.dump());
    let client_connects = p
        .flow_lines()
        .iter()
        .filter(|l| l.ends_with("client connect"))
        .count();
    assert!(
        client_connects < 10,
        "connection storm: {client_connects} client connects\n{}",
        p.dump()
    );
}
