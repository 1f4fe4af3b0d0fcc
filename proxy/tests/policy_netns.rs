//! The shipped example policy (examples/rules/allow-bucket.yaml, the original
//! project's mitm-script.py) in the namespace topology, in transparent and
//! regular mode: the bucket's URLs reach the upstream, every other HTTP and
//! HTTPS URL gets 418 "Access Denied by Administrator", and the flow log
//! names the deciding rule. Root only.
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::netns::{NODE_CLIENT_IP, Topology, UPSTREAM_IP};
use support::nginx::{Nginx, SMALL_BODY};
use support::pki::TestPki;
use support::proxy::ProxyBuilder;
use support::*;

const T: Duration = Duration::from_secs(10);
const TRANSPARENT_PORT: u16 = 15001;
const REGULAR_PORT: u16 = 15080;
const DENIED: &str = "Access Denied by Administrator";

/// `/etc/netns/NS/hosts`: `ip netns exec` bind-mounts it over /etc/hosts, so
/// the proxy in the node namespace resolves the bucket names to the upstream.
struct NsHosts(PathBuf);

impl NsHosts {
    fn new(ns: &str, text: &str) -> NsHosts {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), text).unwrap();
        NsHosts(dir)
    }
}

impl Drop for NsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn example_bucket_policy_in_transparent_and_regular_mode() {
    if !require_root("example_bucket_policy_in_transparent_and_regular_mode") {
        return;
    }
    let topo = Topology::new("pbkt");
    let _hosts = NsHosts::new(
        &topo.node,
        &format!(
            "127.0.0.1 localhost\n{UPSTREAM_IP} my-bucket.s3.amazonaws.com s3.amazonaws.com upstream.test\n"
        ),
    );
    let pki = TestPki::new();
    let ng = Nginx::start_in_ns(&pki, &topo.upstream, UPSTREAM_IP, 80, 443);
    let rules = workspace_root().join("examples/rules/allow-bucket.yaml");
    let p = ProxyBuilder::new()
        .netns(&topo.node)
        .mode(&format!("transparent@0.0.0.0:{TRANSPARENT_PORT}"))
        .mode(&format!("regular@{NODE_CLIENT_IP}:{REGULAR_PORT}"))
        .upstream_ca(&pki.ca_pem())
        .args(&["--rules", rules.to_str().unwrap()])
        // The client namespace is not loopback and not a pod (issue #19).
        .args(&["--allow-client", "198.18.1.0/24"])
        .spawn();
    topo.redirect_to(TRANSPARENT_PORT);
    let ca = p.ca_cert();
    let ca = ca.to_str().unwrap();
    let c = Some(topo.client.as_str());
    let proxy = format!("http://{NODE_CLIENT_IP}:{REGULAR_PORT}");
    let resolve = |host: &str| format!("{host}:443:{UPSTREAM_IP}");

    // (curl args, expected status, expected body or None)
    let bucket = "https://my-bucket.s3.amazonaws.com/small.txt";
    let path_style = "https://s3.amazonaws.com/my-bucket/small.txt";
    let other_https = "https://upstream.test/small.txt";
    let other_http = format!("http://{UPSTREAM_IP}/small.txt");
    for (mode, via) in [("transparent", None), ("regular", Some(proxy.as_str()))] {
        // Transparent clients resolve the name themselves (--resolve); regular
        // mode leaves resolution to the proxy (its namespace's hosts file).
        let get = |url: &str, host: Option<&str>| {
            let pinned = host.map(resolve);
            let mut args = vec!["--cacert", ca];
            match (via, &pinned) {
                (Some(proxy), _) => args.extend(["-x", proxy]),
                (None, Some(r)) => args.extend(["--resolve", r.as_str()]),
                (None, None) => {}
            }
            args.push(url);
            curl_in(c, &args)
        };
        let r = get(bucket, Some("my-bucket.s3.amazonaws.com"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, SMALL_BODY),
            "{mode} {bucket}: {r:?}\n{}",
            p.dump()
        );
        // Allowed: the upstream answers (it has no such file: 404, not 418).
        let r = get(path_style, Some("s3.amazonaws.com"));
        assert_eq!(r.status, 404, "{mode} {path_style}: {r:?}\n{}", p.dump());
        let r = get(other_https, Some("upstream.test"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (418, DENIED),
            "{mode} {other_https}: {r:?}\n{}",
            p.dump()
        );
        let r = get(&other_http, None);
        assert_eq!(
            (r.status, r.text().as_str()),
            (418, DENIED),
            "{mode} {other_http}: {r:?}\n{}",
            p.dump()
        );
    }
    assert!(
        p.wait_for_stdout(
            r"<< (HTTP/2\.0 )?200 OK .*\[rule bucket-virtual-host tag s3\]",
            T
        )
        .is_some(),
        "{}",
        p.dump()
    );
    assert!(
        p.wait_for_stdout(
            r"<< (HTTP/2\.0 )?404 .*\[rule bucket-path-style tag s3\]",
            T
        )
        .is_some(),
        "{}",
        p.dump()
    );
    assert!(
        p.wait_for_stdout(r"<< 418 .*\[deny rule default\]", T)
            .is_some(),
        "{}",
        p.dump()
    );
    // Denied requests never reached the upstream.
    let log = ng.access_log();
    assert!(
        !log.contains("host=upstream.test") && !log.contains(&format!("host={UPSTREAM_IP}")),
        "{log}"
    );
}
