//! Pod directory: parsing, lookup, reload by atomic rename.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

const V1: &str = r#"{
  "version": 1,
  "generated_at": "2026-11-21T15:00:00Z",
  "node": "node-a",
  "pods": {
    "10.244.1.7": {"namespace": "prod", "name": "web-5d9c-abcde", "uid": "u-1",
                   "workload": {"kind": "Deployment", "name": "web"},
                   "labels": {"app": "web", "tier": "frontend"}},
    "fd00:10:244::7": {"namespace": "prod", "name": "db-0", "uid": "u-2",
                       "workload": {"kind": "StatefulSet", "name": "db"}, "labels": {}},
    "10.244.1.9": {"namespace": "kube-system", "name": "bare", "uid": "u-3", "future_field": true}
  }
}"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn parse_and_lookup() {
    let d = PodDirectory::from_json(V1.as_bytes()).unwrap();
    assert_eq!(d.len(), 3);
    assert_eq!(d.node(), Some("node-a"));
    let web = d.lookup(ip("10.244.1.7")).unwrap();
    assert_eq!(web.namespace, "prod");
    assert_eq!(web.name, "web-5d9c-abcde");
    assert_eq!(web.uid, "u-1");
    assert_eq!(web.workload_kind.as_deref(), Some("Deployment"));
    assert_eq!(web.workload_name.as_deref(), Some("web"));
    assert_eq!(web.labels.get("tier").map(String::as_str), Some("frontend"));
    // IPv4-mapped IPv6 (a dual-stack listener's view of a v4 client).
    assert_eq!(
        d.lookup(ip("::ffff:10.244.1.7")).unwrap().name,
        "web-5d9c-abcde"
    );
    assert_eq!(d.lookup(ip("fd00:10:244::7")).unwrap().name, "db-0");
    let bare = d.lookup(ip("10.244.1.9")).unwrap();
    assert_eq!(
        (bare.workload_kind.as_deref(), bare.labels.len()),
        (None, 0)
    );
    assert!(d.lookup(ip("10.244.1.8")).is_none());
}

#[test]
fn clear_errors() {
    let e = PodDirectory::from_json(br#"{"version": 2, "pods": {}}"#).unwrap_err();
    assert!(matches!(e, PodDirError::Version(2)));
    assert!(e.to_string().contains("schema version 2"), "{e}");
    let e = PodDirectory::from_json(
        br#"{"version": 1, "pods": {"not-an-ip": {"namespace": "a", "name": "b"}}}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("`not-an-ip`"), "{e}");
    let e = PodDirectory::from_json(br#"{"version": 1, "pods": {"10.0.0.1": {"name": "b"}}}"#)
        .unwrap_err();
    assert!(e.to_string().contains("namespace"), "{e}");
    let e = PodDirectory::from_json(b"{\"version\": 1, \"pods\": ").unwrap_err();
    assert!(matches!(e, PodDirError::Json(_)), "{e}");
    assert!(
        PodDirectory::from_json(b"{}").is_err(),
        "version is required"
    );
}

/// Write like tproxy-podwatch: temp file in the same dir, then rename.
fn publish(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(15), "{what} not seen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn live_reload_by_rename_and_bad_file_keeps_old() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pods.json");
    // Missing at start: empty, not an error.
    let live = LiveDirectory::watch(&path).unwrap();
    let mut snap = live.snapshot();
    assert!(snap.get().is_empty());
    publish(&path, V1);
    wait_until("first publish", || {
        snap.get().lookup(ip("10.244.1.7")).is_some()
    });
    let g = live.generation();
    // A new version moves a pod.
    publish(&path, &V1.replace("10.244.1.7", "10.244.1.70"));
    wait_until("second publish", || {
        snap.get().lookup(ip("10.244.1.70")).is_some()
    });
    assert!(snap.get().lookup(ip("10.244.1.7")).is_none());
    assert!(live.generation() > g);
    // Unknown version: rejected, old directory stays.
    let g = live.generation();
    publish(&path, r#"{"version": 9, "pods": {}}"#);
    wait_until("rejection", || {
        live.reload_error().load(Ordering::Relaxed) >= 1
    });
    assert_eq!(live.generation(), g);
    assert!(snap.get().lookup(ip("10.244.1.70")).is_some());
    // Deleted: empty directory.
    std::fs::remove_file(&path).unwrap();
    wait_until("removal", || snap.get().is_empty());
}

#[test]
fn start_with_invalid_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pods.json");
    std::fs::write(&path, "not json").unwrap();
    assert!(matches!(
        LiveDirectory::watch(&path),
        Err(PodDirError::Json(_))
    ));
    assert!(
        PodDirectory::load(&dir.path().join("missing.json"))
            .unwrap()
            .is_empty()
    );
}

/// A looked-up pod feeds the policy's `source:` matcher.
#[test]
fn source_matcher_uses_directory_entries() {
    use crate::policy::{ConnFacts, Policy, RequestAction, RequestFacts, Scheme};
    let d = PodDirectory::from_json(V1.as_bytes()).unwrap();
    let p = Policy::from_yaml(
        "default: deny\nrules:\n  - {name: web-egress, match: {source: {namespace: prod, workload: Deployment/web, labels: {app: web}}}, action: allow}\n",
    )
    .unwrap();
    let decide = |client: &str| {
        let pod = d.lookup(ip(client));
        let c = ConnFacts {
            client: ip(client),
            dst_port: 443,
            sni: None,
            host: None,
            source: pod.as_deref(),
        };
        let r = p.decide_request(&RequestFacts {
            conn: &c,
            scheme: Scheme::Https,
            method: "GET",
            host: "x.com",
            path: "/",
            url: "https://x.com/",
        });
        (r.rule.to_owned(), r.action == RequestAction::Allow)
    };
    assert_eq!(decide("::ffff:10.244.1.7"), ("web-egress".to_owned(), true));
    assert_eq!(
        decide("fd00:10:244::7"),
        ("default".to_owned(), false),
        "db pod"
    );
    assert_eq!(
        decide("10.9.9.9"),
        ("default".to_owned(), false),
        "unknown client"
    );
}
