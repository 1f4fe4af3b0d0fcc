//! The real watch loop (kube-rs watcher → store → debounced reconcile) against a
//! scripted API server: kube's tower-test mock pattern. The test plays the API
//! server request by request, checks what kube sends (field selector, watch
//! resume version, re-list after 410 Gone), and after each answer waits for the
//! rule set handed to the applier and the pod directory on disk to converge.

// Helpers outside #[test] functions unwrap too: in a test a panic with a
// location is the failure report we want.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

use tproxy_podwatch::apply::{ApplyError, RuleApplier};
use tproxy_podwatch::desired::{RuleSet, Settings};
use tproxy_podwatch::metrics::Metrics;
use tproxy_podwatch::reconcile::Reconciler;
use tproxy_podwatch::watch::{self, WatchConfig};

type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// Applier that records every rule set instead of touching the kernel.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<RuleSet>>>);

impl RuleApplier for Recorder {
    fn apply(&mut self, rules: &RuleSet) -> Result<(), ApplyError> {
        self.0.lock().unwrap().push(rules.clone());
        Ok(())
    }
    fn name(&self) -> &'static str {
        "recorder"
    }
}

fn pod(name: &str, rv: &str, ip: &str, opted_in: bool) -> Value {
    let annotations = if opted_in {
        json!({"initializer.kubernetes.io/tproxy": "true"})
    } else {
        json!({})
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "resourceVersion": rv, "annotations": annotations, "labels": {"app": name}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn pod_list(rv: &str, items: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": rv}, "items": items
    }))
    .unwrap()
}

fn events(evs: &[(&str, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, obj) in evs {
        out.extend(serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap());
        out.push(b'\n');
    }
    out
}

/// The query string of a request, with the few escapes kube uses decoded.
fn query(req: &Request<Body>) -> String {
    req.uri()
        .query()
        .unwrap_or("")
        .replace("%3D", "=")
        .replace("%2C", ",")
}

fn param<'a>(q: &'a str, key: &str) -> Option<&'a str> {
    q.split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Next request, checked to be a list (`watch` false) or a watch from `rv`.
async fn expect(
    handle: &mut Handle,
    watch_from: Option<&str>,
) -> mock::SendResponse<Response<Body>> {
    let (req, send) = tokio::time::timeout(Duration::from_secs(20), handle.next_request())
        .await
        .expect("kube sent the next request")
        .expect("service still alive");
    let q = query(&req);
    assert_eq!(
        req.uri().path(),
        "/api/v1/pods",
        "all-namespaces pod endpoint"
    );
    assert_eq!(
        param(&q, "fieldSelector"),
        Some("spec.nodeName=node-a"),
        "node field selector on every request: {q}"
    );
    match watch_from {
        None => assert_ne!(param(&q, "watch"), Some("true"), "expected a list: {q}"),
        Some(rv) => {
            assert_eq!(param(&q, "watch"), Some("true"), "expected a watch: {q}");
            assert_eq!(param(&q, "resourceVersion"), Some(rv), "watch resumes: {q}");
        }
    }
    send
}

fn respond(send: mock::SendResponse<Response<Body>>, body: Vec<u8>) {
    send.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(body))
            .unwrap(),
    );
}

/// Waits until the last applied rule set redirects exactly `rules` and the pod
/// directory holds exactly `dir_ips`.
async fn converged(rec: &Recorder, dir: &Path, rules: &[&str], dir_ips: &[&str]) {
    let want_rules: BTreeSet<String> = rules.iter().map(|s| s.to_string()).collect();
    let want_dir: BTreeSet<String> = dir_ips.iter().map(|s| s.to_string()).collect();
    let mut last = (BTreeSet::new(), BTreeSet::new());
    for _ in 0..200 {
        let got_rules: BTreeSet<String> = rec
            .0
            .lock()
            .unwrap()
            .last()
            .map(|rs| rs.rules.iter().map(|r| r.ip.to_string()).collect())
            .unwrap_or_default();
        let got_dir: BTreeSet<String> = std::fs::read(dir)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["pods"].as_object().map(|m| m.keys().cloned().collect()))
            .unwrap_or_default();
        if got_rules == want_rules && got_dir == want_dir && !rec.0.lock().unwrap().is_empty() {
            return;
        }
        last = (got_rules, got_dir);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("did not converge: want rules {want_rules:?} dir {want_dir:?}, have {last:?}");
}

fn reconciler(dir: &Path, rec: &Recorder, metrics: &Metrics) -> Reconciler {
    Reconciler::new(
        Settings {
            proxy_port: 1080,
            ports: vec![80, 443],
            ipv6: true,
            directory_labels: vec!["app".into()],
        },
        "node-a".into(),
        dir.to_path_buf(),
        Box::new(rec.clone()),
        metrics.clone(),
    )
}

#[tokio::test]
async fn watcher_drives_rules_and_directory() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let tmp = tempfile::tempdir().unwrap();
    let dir = PathBuf::from(tmp.path()).join("pods.json");
    let rec = Recorder::default();
    let metrics = Metrics::new().unwrap();
    let reconciler = reconciler(&dir, &rec, &metrics);
    let cfg = WatchConfig {
        node: "node-a".into(),
        namespaces: vec![],
        debounce: Duration::from_millis(20),
        resync: Duration::from_secs(3600),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(watch::run(
        client,
        cfg,
        reconciler,
        metrics.clone(),
        async move {
            let _ = stopped.await;
        },
        |_| {},
    ));

    // Initial list: one plain pod. Nothing is applied before the list completes.
    let send = expect(&mut handle, None).await;
    assert!(
        rec.0.lock().unwrap().is_empty(),
        "no reconcile before the first list"
    );
    respond(
        send,
        pod_list("10", &[pod("worker", "9", "198.18.1.3", false)]),
    );
    converged(&rec, &dir, &[], &["198.18.1.3"]).await;

    // Added: an opted-in pod gets a rule. The watch body then ends.
    let send = expect(&mut handle, Some("10")).await;
    respond(
        send,
        events(&[("ADDED", pod("web", "11", "198.18.1.2", true))]),
    );
    converged(&rec, &dir, &["198.18.1.2"], &["198.18.1.2", "198.18.1.3"]).await;

    // The ended watch resumes from the last version. Modified: annotation removed.
    let send = expect(&mut handle, Some("11")).await;
    respond(
        send,
        events(&[("MODIFIED", pod("web", "12", "198.18.1.2", false))]),
    );
    converged(&rec, &dir, &[], &["198.18.1.2", "198.18.1.3"]).await;

    // Added then deleted (two events in one body, ends).
    let send = expect(&mut handle, Some("12")).await;
    respond(
        send,
        events(&[("ADDED", pod("api", "13", "198.18.1.4", true))]),
    );
    converged(
        &rec,
        &dir,
        &["198.18.1.4"],
        &["198.18.1.2", "198.18.1.3", "198.18.1.4"],
    )
    .await;
    let send = expect(&mut handle, Some("13")).await;
    respond(
        send,
        events(&[("DELETED", pod("api", "14", "198.18.1.4", true))]),
    );
    converged(&rec, &dir, &[], &["198.18.1.2", "198.18.1.3"]).await;
    assert_eq!(metrics.watch_restarts.get(), 0);

    // 410 Gone inside the watch: kube re-lists. Meanwhile "web" was deleted and
    // "late" (opted in) was created: the re-list converges to exactly that.
    let send = expect(&mut handle, Some("14")).await;
    let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 14 (20)", "reason": "Expired", "code": 410});
    respond(send, events(&[("ERROR", gone)]));
    let send = expect(&mut handle, None).await;
    respond(
        send,
        pod_list(
            "20",
            &[
                pod("worker", "9", "198.18.1.3", false),
                pod("late", "19", "198.18.1.5", true),
            ],
        ),
    );
    converged(&rec, &dir, &["198.18.1.5"], &["198.18.1.3", "198.18.1.5"]).await;
    assert_eq!(metrics.watch_restarts.get(), 1, "one re-list");
    assert!(
        metrics.watch_errors.get() >= 1,
        "410 reported as a watch error"
    );

    // And watching resumes from the new list's version.
    let _pending = expect(&mut handle, Some("20")).await;
    let dir_json: Value = serde_json::from_slice(&std::fs::read(&dir).unwrap()).unwrap();
    assert_eq!(dir_json["node"], "node-a");
    assert_eq!(
        dir_json["pods"]["198.18.1.5"]["labels"],
        json!({"app": "late"})
    );
    assert!(metrics.reconciles.get() >= 6);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("agent stops on shutdown")
        .unwrap()
        .unwrap();
}

/// `--namespaces a,b`: one watch per namespace, nothing applied until both have
/// listed (a partial pod set would drop the other namespace's rules), then the
/// union; the periodic resync re-applies without any pod change.
#[tokio::test]
async fn namespace_list_waits_for_every_stream_and_resyncs() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let tmp = tempfile::tempdir().unwrap();
    let dir = PathBuf::from(tmp.path()).join("pods.json");
    let rec = Recorder::default();
    let metrics = Metrics::new().unwrap();
    let cfg = WatchConfig {
        node: "node-a".into(),
        namespaces: vec!["a".into(), "b".into()],
        debounce: Duration::from_millis(20),
        resync: Duration::from_millis(300),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(watch::run(
        client,
        cfg,
        reconciler(&dir, &rec, &metrics),
        metrics.clone(),
        async move {
            let _ = stopped.await;
        },
        |_| {},
    ));
    // Both namespaces list concurrently; answer one, check nothing is applied,
    // then the other. Watches (resuming from "5") are held open.
    let mut pending = Vec::new();
    let mut seen = BTreeSet::new();
    for _ in 0..8 {
        if seen.len() == 2 && pending.len() == 2 {
            break;
        }
        let (req, send) = tokio::time::timeout(Duration::from_secs(20), handle.next_request())
            .await
            .expect("kube sent the next request")
            .expect("service still alive");
        let q = query(&req);
        assert_eq!(
            param(&q, "fieldSelector"),
            Some("spec.nodeName=node-a"),
            "{q}"
        );
        if param(&q, "watch") == Some("true") {
            assert_eq!(param(&q, "resourceVersion"), Some("5"), "{q}");
            pending.push(send);
            continue;
        }
        let path = req.uri().path().to_owned();
        let ns = path
            .strip_prefix("/api/v1/namespaces/")
            .and_then(|p| p.strip_suffix("/pods"))
            .unwrap_or_else(|| panic!("namespaced list expected, got {path}"))
            .to_owned();
        let (name, ip) = if ns == "a" {
            ("pa", "198.18.1.2")
        } else {
            ("pb", "198.18.1.3")
        };
        let mut p = pod(name, "5", ip, true);
        p["metadata"]["namespace"] = json!(ns);
        respond(send, pod_list("5", &[p]));
        seen.insert(ns);
        if seen.len() == 1 {
            // Give the agent time to (wrongly) reconcile the partial set.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                rec.0.lock().unwrap().is_empty(),
                "reconciled before every namespace listed"
            );
        }
    }
    assert_eq!(seen, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    converged(
        &rec,
        &dir,
        &["198.18.1.2", "198.18.1.3"],
        &["198.18.1.2", "198.18.1.3"],
    )
    .await;
    let applied = rec.0.lock().unwrap().len();
    let mut resynced = false;
    for _ in 0..100 {
        if rec.0.lock().unwrap().len() >= applied + 2 {
            resynced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resynced, "periodic resync re-applies without changes");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("agent stops on shutdown")
        .unwrap()
        .unwrap();
    drop(pending);
}
