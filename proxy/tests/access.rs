//! Who may use the proxy (issue #19): the `--allow-client` allow-list on
//! regular listeners, the loop guard on transparent ones, and `--proxyauth`.
//!
//! The namespace test plays a node: the client namespace holds a "pod"
//! (198.18.1.2, in the pod directory, REDIRECTed by source IP like
//! tproxy-podwatch's rules) and another host on the node network
//! (198.18.1.3, not a pod). Root only; the `--proxyauth` test runs anywhere.
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::netns::{CLIENT_IP, NODE_CLIENT_IP, Topology, UPSTREAM_IP};
use support::nginx::{Nginx, SMALL_BODY};
use support::pki::TestPki;
use support::proxy::{Proxy, ProxyBuilder};
use support::*;

const T: Duration = Duration::from_secs(10);
const TRANSPARENT_PORT: u16 = 15001;
const REGULAR_PORT: u16 = 15080;
/// Another host on the node network: not a pod, not in an allowed CIDR.
const OTHER_IP: &str = "198.18.1.3";

/// Write the pod directory atomically (rename), listing `ips` as pods.
fn write_pods(path: &Path, ips: &[&str]) {
    let pods: Vec<String> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            format!(
                r#""{ip}": {{"namespace": "shop", "name": "web-{i}", "uid": "u{i}",
                   "workload": {{"kind": "Deployment", "name": "web"}}, "labels": {{}}}}"#
            )
        })
        .collect();
    let text = format!(
        r#"{{"version": 1, "generated_at": "2026-12-03T12:00:00Z", "node": "n1", "pods": {{{}}}}}"#,
        pods.join(",")
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The value of one exact series in the proxy's /metrics (0 when absent).
fn metric(p: &Proxy, ns: Option<&str>, series: &str) -> f64 {
    let r = curl_in(ns, &[&format!("http://{}/metrics", p.addr("admin"))]);
    assert_eq!(r.status, 200, "{r:?}");
    r.text()
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

const REFUSED_REGULAR: &str =
    r#"tproxy_client_refusals_total{mode="regular",reason="not_allowed"}"#;
const REFUSED_TRANSPARENT: &str =
    r#"tproxy_client_refusals_total{mode="transparent",reason="not_redirected"}"#;
const POD_RELOADS: &str = r#"tproxy_config_reloads_total{file="pod_directory",result="ok"}"#;

#[test]
fn only_pods_use_the_node_proxy_and_new_pods_are_served_without_restart() {
    if !require_root("only_pods_use_the_node_proxy_and_new_pods_are_served_without_restart") {
        return;
    }
    let topo = Topology::new("acl");
    // The other host shares the pod's L2 segment to the node (the "node network").
    run_ok(
        topo.exec(&topo.client, "ip").args([
            "addr",
            "add",
            &format!("{OTHER_IP}/24"),
            "dev",
            "eth0",
        ]),
        T,
    );
    let pki = TestPki::new();
    let ng = Nginx::start_in_ns(&pki, &topo.upstream, UPSTREAM_IP, 80, 443);
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods.json");
    write_pods(&pods, &[CLIENT_IP]);
    // Default allow-list: loopback + the pods of the directory.
    let p = ProxyBuilder::new()
        .netns(&topo.node)
        .mode(&format!("transparent@0.0.0.0:{TRANSPARENT_PORT}"))
        .mode(&format!("regular@0.0.0.0:{REGULAR_PORT}"))
        .upstream_ca(&pki.ca_pem())
        .args(&["--pod-directory", pods.to_str().unwrap()])
        .spawn();
    // Like tproxy-podwatch: REDIRECT by pod source IP, not by interface.
    run_ok(
        topo.exec(&topo.node, "iptables")
            .args(["-t", "nat", "-A", "PREROUTING", "-s", CLIENT_IP])
            .args(["-p", "tcp", "-m", "multiport", "--dports", "80,443"])
            .args([
                "-j",
                "REDIRECT",
                "--to-ports",
                &TRANSPARENT_PORT.to_string(),
            ]),
        T,
    );
    let ca = p.ca_cert();
    let ca = ca.to_str().unwrap();
    let c = Some(topo.client.as_str());
    let node = Some(topo.node.as_str());
    let proxy = format!("http://{NODE_CLIENT_IP}:{REGULAR_PORT}");

    // The pod is served: explicit HTTP, explicit CONNECT+TLS, transparent.
    let r = curl_in(
        c,
        &[
            "-x",
            &proxy,
            &format!("http://{UPSTREAM_IP}/small.txt?pod-regular"),
        ],
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    let r = curl_in(
        c,
        &[
            "-x",
            &proxy,
            "--cacert",
            ca,
            &format!("https://{UPSTREAM_IP}/small.txt?pod-connect"),
        ],
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    let r = curl_in(
        c,
        &[&format!("http://{UPSTREAM_IP}/small.txt?pod-transparent")],
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    assert_eq!(metric(&p, node, REFUSED_REGULAR), 0.0);

    // The other host: refused on the regular port (HTTP and CONNECT) and on
    // the transparent port, whatever it asks for.
    let other = |args: &[&str]| {
        let mut a = vec!["--interface", OTHER_IP];
        a.extend_from_slice(args);
        curl_in(c, &a)
    };
    let attempts = [
        other(&[
            "-x",
            &proxy,
            &format!("http://{UPSTREAM_IP}/small.txt?other-regular"),
        ]),
        other(&[
            "-x",
            &proxy,
            "--cacert",
            ca,
            &format!("https://{UPSTREAM_IP}/small.txt?other-connect"),
        ]),
        other(&[&format!(
            "http://{NODE_CLIENT_IP}:{REGULAR_PORT}/small.txt?other-origin-form"
        )]),
    ];
    for r in &attempts {
        assert_eq!(
            r.status,
            0,
            "the other host got an answer: {r:?}\n{}",
            p.dump()
        );
        assert_ne!(r.exit, 0, "{r:?}");
    }
    let direct = [
        other(&[&format!(
            "http://{NODE_CLIENT_IP}:{TRANSPARENT_PORT}/small.txt?other-transparent"
        )]),
        other(&[
            "-H",
            "Host: upstream.test",
            &format!("http://{NODE_CLIENT_IP}:{TRANSPARENT_PORT}/small.txt?other-transparent-host"),
        ]),
    ];
    for r in &direct {
        assert_eq!(
            r.status,
            0,
            "the other host got an answer: {r:?}\n{}",
            p.dump()
        );
    }
    assert_eq!(
        metric(&p, node, REFUSED_REGULAR),
        attempts.len() as f64,
        "{}",
        p.dump()
    );
    assert_eq!(
        metric(&p, node, REFUSED_TRANSPARENT),
        direct.len() as f64,
        "{}",
        p.dump()
    );
    // Nothing of theirs reached the upstream; the pod's requests did.
    assert!(
        ng.wait_access_log("pod-transparent", T),
        "{}",
        ng.access_log()
    );
    let log = ng.access_log();
    assert!(
        log.contains("pod-regular") && log.contains("pod-connect"),
        "{log}"
    );
    assert!(!log.contains("other-"), "{log}");
    // Logged on stderr (rate-limited: at most one line a second); the flow log
    // never shows the other host, as nothing of its connections was served.
    assert!(
        p.wait_for_stderr(
            r"refused a client that --allow-client does not allow.*198\.18\.1\.3",
            T
        )
        .is_some(),
        "{}",
        p.dump()
    );
    assert!(
        !p.flow_lines()
            .iter()
            .any(|l| l.contains(&format!("[{OTHER_IP}:")) && l.contains("client connect")),
        "{}",
        p.dump()
    );

    // podwatch adds the other host as a pod: served without a restart once
    // the directory reloads.
    let reloads = metric(&p, node, POD_RELOADS);
    write_pods(&pods, &[CLIENT_IP, OTHER_IP]);
    assert!(
        wait_until(T, || (metric(&p, node, POD_RELOADS) > reloads)
            .then_some(()))
        .is_some(),
        "pod directory not reloaded\n{}",
        p.dump()
    );
    let r = other(&[
        "-x",
        &proxy,
        &format!("http://{UPSTREAM_IP}/small.txt?new-pod"),
    ]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    assert_eq!(metric(&p, node, REFUSED_REGULAR), attempts.len() as f64);
    // And removed again: refused again.
    let reloads = metric(&p, node, POD_RELOADS);
    write_pods(&pods, &[CLIENT_IP]);
    assert!(
        wait_until(T, || (metric(&p, node, POD_RELOADS) > reloads)
            .then_some(()))
        .is_some()
    );
    let r = other(&[
        "-x",
        &proxy,
        &format!("http://{UPSTREAM_IP}/small.txt?other-removed"),
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(
        metric(&p, node, REFUSED_REGULAR),
        attempts.len() as f64 + 1.0
    );
    assert!(!ng.access_log().contains("other-removed"));
}

#[test]
fn allow_client_cidrs_replace_the_default() {
    if !require_root("allow_client_cidrs_replace_the_default") {
        return;
    }
    let topo = Topology::new("aclc");
    run_ok(
        topo.exec(&topo.client, "ip").args([
            "addr",
            "add",
            &format!("{OTHER_IP}/24"),
            "dev",
            "eth0",
        ]),
        T,
    );
    let pki = TestPki::new();
    let ng = Nginx::start_in_ns(&pki, &topo.upstream, UPSTREAM_IP, 80, 443);
    let p = ProxyBuilder::new()
        .netns(&topo.node)
        .mode(&format!("regular@0.0.0.0:{REGULAR_PORT}"))
        .args(&["--allow-client", &format!("{OTHER_IP}/32")])
        .spawn();
    let c = Some(topo.client.as_str());
    let node = Some(topo.node.as_str());
    let proxy = format!("http://{NODE_CLIENT_IP}:{REGULAR_PORT}");
    let url = format!("http://{UPSTREAM_IP}/small.txt");
    let r = curl_in(
        c,
        &[
            "--interface",
            OTHER_IP,
            "-x",
            &proxy,
            &format!("{url}?listed"),
        ],
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    let r = curl_in(
        c,
        &[
            "--interface",
            CLIENT_IP,
            "-x",
            &proxy,
            &format!("{url}?unlisted"),
        ],
    );
    assert_eq!(r.status, 0, "{r:?}");
    // Loopback is not listed either: the list replaced the default.
    let r = curl_in(
        node,
        &[
            "-x",
            &format!("http://127.0.0.1:{REGULAR_PORT}"),
            &format!("{url}?loopback"),
        ],
    );
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(metric(&p, node, REFUSED_REGULAR), 2.0, "{}", p.dump());
    let log = ng.access_log();
    assert!(
        log.contains("listed") && !log.contains("unlisted") && !log.contains("loopback"),
        "{log}"
    );
}

#[test]
fn proxyauth_requires_basic_credentials_on_every_explicit_request() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .env("TPROXY_PROXYAUTH", "alice:s3cret")
        .spawn();
    let proxy = p.proxy_url();
    let ca = p.ca_cert();
    let ca = ca.to_str().unwrap();
    let http = format!("{}/small.txt", ng.http_base());
    let https = format!("{}/small.txt", ng.https_base());

    // No credentials: 407 with a Basic challenge, nothing upstream.
    let hdrs = tempfile::NamedTempFile::new().unwrap();
    let hdr_path = hdrs.path().to_str().unwrap();
    let r = curl(&["-x", &proxy, "-D", hdr_path, &format!("{http}?none")]);
    assert_eq!(r.status, 407, "{r:?}\n{}", p.dump());
    let head = std::fs::read_to_string(hdrs.path())
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        head.contains("proxy-authenticate: basic realm=\"tproxy\""),
        "{head}"
    );
    assert!(r.text().contains("--proxy-user"), "{r:?}");
    // Wrong password: 407; CONNECT without credentials: 407 (curl reports the
    // CONNECT status and fails).
    let r = curl(&[
        "-x",
        &proxy,
        "--proxy-user",
        "alice:nope",
        &format!("{http}?wrong"),
    ]);
    assert_eq!(r.status, 407, "{r:?}");
    let r = curl(&[
        "-x",
        &proxy,
        "--cacert",
        ca,
        &format!("{https}?connect-none"),
    ]);
    assert_ne!(r.exit, 0, "{r:?}");
    assert!(r.stderr.contains("407"), "{r:?}");
    // The right credentials: served, plain and through CONNECT.
    let r = curl(&[
        "-x",
        &proxy,
        "--proxy-user",
        "alice:s3cret",
        &format!("{http}?right"),
    ]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    let authed = format!("http://alice:s3cret@{}", p.addr("regular"));
    let r = curl(&[
        "-x",
        &authed,
        "--cacert",
        ca,
        &format!("{https}?connect-right"),
    ]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    let log = ng.access_log();
    assert!(
        log.contains("?right") && log.contains("?connect-right"),
        "{log}"
    );
    assert!(
        !log.contains("?none") && !log.contains("?wrong") && !log.contains("connect-none"),
        "{log}"
    );
    let refused = metric(
        &p,
        None,
        r#"tproxy_client_refusals_total{mode="regular",reason="proxy_auth"}"#,
    );
    assert_eq!(refused, 3.0, "{}", p.dump());
    // The password is never printed.
    assert!(!p.dump().contains("s3cret"), "{}", p.dump());
}

#[test]
fn beyond_max_connections_new_clients_are_shed_and_open_ones_keep_working() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--max-connections", "2"])
        .spawn();
    let series = r#"tproxy_client_refusals_total{mode="regular",reason="max_connections"}"#;
    let request = |s: &mut TcpStream, tag: &str| -> String {
        let req = format!(
            "GET {}/small.txt?{tag} HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
            ng.http_base(),
            ng.http_port
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains(SMALL_BODY) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let open = |tag: &str| {
        let mut s = TcpStream::connect(p.addr("regular")).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let answer = request(&mut s, tag);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        s
    };
    // Two keep-alive clients fill the ceiling.
    let mut a = open("a1");
    let mut b = open("b1");
    // A third is closed before a byte is read (the admin listener's scrape
    // below does not count: it is not a proxy listener).
    let mut c = TcpStream::connect(p.addr("regular")).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let _ = c.write_all(b"GET http://localhost/ HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut rest = Vec::new();
    let shed = c.read_to_end(&mut rest);
    // Closed at once: end of stream or a reset, nothing answered, no timeout.
    let closed = match &shed {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(
        closed && rest.is_empty(),
        "{shed:?}: {}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(metric(&p, None, series), 1.0, "{}", p.dump());
    assert!(
        p.wait_for_stderr("--max-connections limit", T).is_some(),
        "{}",
        p.dump()
    );
    // The open ones keep working.
    assert!(request(&mut a, "a2").starts_with("HTTP/1.1 200"));
    assert!(request(&mut b, "b2").starts_with("HTTP/1.1 200"));
    // One leaves: a new client is served again.
    drop(a);
    let deadline = std::time::Instant::now() + T;
    loop {
        let mut s = TcpStream::connect(p.addr("regular")).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let req = format!(
            "GET {}/small.txt?d HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            ng.http_base(),
            ng.http_port
        );
        let _ = s.write_all(req.as_bytes());
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        if String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never served again\n{}",
            p.dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(request(&mut b, "b3").starts_with("HTTP/1.1 200"));
}

#[test]
fn the_open_file_limit_is_raised_and_a_ceiling_above_it_is_reported() {
    use std::io::BufRead;
    let confdir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("prlimit")
        .args(["--nofile=256:4096", support::proxy::tproxy_bin()])
        .args([
            "--mode",
            "regular@127.0.0.1:0",
            "--admin",
            "off",
            "--confdir",
        ])
        .arg(confdir.path())
        .args(["--max-connections", "5000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = err.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let warned = wait_until(T, || {
        err.lock()
            .unwrap()
            .contains("--max-connections 5000 needs about 10064 open files")
            .then_some(())
    });
    // prlimit execs tproxy: the child's PID is the proxy's. The warning is
    // logged after the limit was raised.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = err.lock().unwrap().clone();
    assert!(warned.is_some(), "{text}");
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        open_files[3..5],
        ["4096", "4096"],
        "soft limit not raised to the hard one: {open_files:?}"
    );
}
