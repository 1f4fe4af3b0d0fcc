use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn pod(ns: &str, name: &str, workload: Option<&str>) -> Arc<PodInfo> {
    Arc::new(PodInfo {
        namespace: ns.into(),
        name: name.into(),
        uid: String::new(),
        workload_kind: workload.map(|_| "Deployment".into()),
        workload_name: workload.map(str::to_owned),
        labels: BTreeMap::new(),
    })
}

fn req<'a>(source: Option<&'a Arc<PodInfo>>, host: &'a str, method: &'a str) -> Request<'a> {
    Request {
        source,
        client_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        destination: host,
        method,
        status: Some(200),
        decision: "allow",
        rule: Some("r1"),
        total: Duration::from_millis(3),
        ttfb: Some(Duration::from_micros(700)),
        request_bytes: 10,
        response_bytes: 100,
    }
}

fn render(stats: &FlowStats, alive: &dyn Fn(&PodInfo, IpAddr) -> bool) -> String {
    let mut s = String::new();
    stats.render(alive, &mut s);
    s
}

#[test]
fn series_merge_across_workers_and_reloaded_pods() {
    let stats = FlowStats::new(2, HostTable::new(10, None));
    let a = pod("shop", "web-1", Some("web"));
    // The same pod after a directory reload: a new Arc, same identity.
    let a2 = pod("shop", "web-1", Some("web"));
    let b = pod("jobs", "batch-1", None);
    stats.record_http(0, &req(Some(&a), "x.example:443", "GET"));
    stats.record_http(1, &req(Some(&a2), "X.example:443", "GET"));
    stats.record_http(1, &req(Some(&b), "y.example:80", "PROPFIND"));
    stats.record_http(0, &req(None, "y.example:80", "GET"));
    stats.record_tcp(0, Some(&b), IpAddr::V4(Ipv4Addr::LOCALHOST), 5, 7);
    let text = render(&stats, &|_, _| true);
    let want = [
        "tproxy_requests_total{source_namespace=\"shop\",source_workload=\"web\",source_pod=\"web-1\",destination_host=\"x.example\",method=\"GET\",status_class=\"2xx\",decision=\"allow\",rule=\"r1\"} 2",
        "tproxy_requests_total{source_namespace=\"jobs\",source_workload=\"batch-1\",source_pod=\"batch-1\",destination_host=\"y.example\",method=\"_OTHER\",status_class=\"2xx\",decision=\"allow\",rule=\"r1\"} 1",
        "tproxy_requests_total{source_namespace=\"unknown\",source_workload=\"unknown\",source_pod=\"unknown\",destination_host=\"y.example\",method=\"GET\",status_class=\"2xx\",decision=\"allow\",rule=\"r1\"} 1",
        "tproxy_request_duration_seconds_bucket{source_namespace=\"shop\",source_workload=\"web\",source_pod=\"web-1\",le=\"0.0025\"} 0",
        "tproxy_request_duration_seconds_bucket{source_namespace=\"shop\",source_workload=\"web\",source_pod=\"web-1\",le=\"0.005\"} 2",
        "tproxy_request_duration_seconds_count{source_namespace=\"shop\",source_workload=\"web\",source_pod=\"web-1\"} 2",
        "tproxy_request_duration_seconds_sum{source_namespace=\"shop\",source_workload=\"web\",source_pod=\"web-1\"} 0.006",
        "tproxy_upstream_ttfb_seconds_bucket{source_namespace=\"shop\",source_workload=\"web\",source_pod=\"web-1\",le=\"0.001\"} 2",
        "tproxy_body_bytes_total{source_namespace=\"shop\",source_workload=\"web\",source_pod=\"web-1\",direction=\"to_client\"} 200",
        "tproxy_passthrough_bytes_total{source_namespace=\"jobs\",source_workload=\"batch-1\",source_pod=\"batch-1\",direction=\"to_client\"} 7",
        "tproxy_passthrough_flows_total{source_namespace=\"jobs\",source_workload=\"batch-1\",source_pod=\"batch-1\"} 1",
    ];
    for w in want {
        assert!(text.lines().any(|l| l == w), "missing `{w}` in:\n{text}");
    }
}

#[test]
fn pods_gone_from_the_directory_stop_being_exported() {
    let stats = FlowStats::new(1, HostTable::new(10, None));
    let a = pod("shop", "web-1", Some("web"));
    let b = pod("shop", "web-2", Some("web"));
    stats.record_http(0, &req(Some(&a), "x.example:443", "GET"));
    stats.record_http(0, &req(Some(&b), "x.example:443", "GET"));
    let text = render(&stats, &|p, _| p.name != "web-2");
    assert!(text.contains("source_pod=\"web-1\""), "{text}");
    assert!(
        !text.contains("web-2"),
        "pruned pod still exported:\n{text}"
    );
    // State is gone: the pod coming back starts from zero.
    stats.record_http(0, &req(Some(&b), "x.example:443", "GET"));
    let text = render(&stats, &|_, _| true);
    assert!(
        text.contains("source_pod=\"web-2\",destination_host=\"x.example\",method=\"GET\",status_class=\"2xx\",decision=\"allow\",rule=\"r1\"} 1"),
        "{text}"
    );
}

#[test]
fn histogram_bucket_edges_are_inclusive() {
    let mut h = Hist::default();
    h.observe(Duration::from_micros(500));
    h.observe(Duration::from_micros(501));
    h.observe(Duration::from_secs(11));
    assert_eq!(h.counts[0], 1, "0.5 ms is in le=0.0005");
    assert_eq!(h.counts[1], 1);
    assert_eq!(h.counts[BUCKETS_NS.len()], 1, "11 s only in +Inf");
}

/// Cost of recording one request (run with `--ignored --nocapture`).
#[test]
#[ignore = "micro-benchmark; prints ns per request"]
fn bench_record_http() {
    let stats = FlowStats::new(1, HostTable::new(100, None));
    let pods: Vec<_> = (0..20)
        .map(|i| pod("ns", &format!("p{i}"), Some("w")))
        .collect();
    let hosts: Vec<String> = (0..50).map(|i| format!("h{i}.example:443")).collect();
    let n = 2_000_000;
    let t = Instant::now();
    for i in 0..n {
        let r = req(Some(&pods[i % pods.len()]), &hosts[i % hosts.len()], "GET");
        stats.record_http(0, std::hint::black_box(&r));
    }
    let per = t.elapsed().as_nanos() as f64 / n as f64;
    // A keep-alive connection: same pod, host and rule every time.
    let t = Instant::now();
    for _ in 0..n {
        let r = req(Some(&pods[0]), &hosts[0], "GET");
        stats.record_http(0, std::hint::black_box(&r));
    }
    let same = t.elapsed().as_nanos() as f64 / n as f64;
    let t = Instant::now();
    let text = render(&stats, &|_, _| true);
    eprintln!(
        "record_http: {per:.1} ns/request (20 pods x 50 hosts round robin), {same:.1} ns/request (same pod and host); render of {} lines: {:?}",
        text.lines().count(),
        t.elapsed()
    );
}

#[test]
fn a_host_named_by_a_reloaded_rule_gets_its_label_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, "default: allow\n").unwrap();
    let stats = FlowStats::new(1, HostTable::new(0, Some(&rules)));
    let a = pod("shop", "web-1", Some("web"));
    stats.record_http(0, &req(Some(&a), "late.example:443", "GET"));
    std::fs::write(
        &rules,
        "rules:\n- name: r1\n  match: {host: late.example}\n  action: allow\ndefault: allow\n",
    )
    .unwrap();
    stats.hosts.refresh_rules(1);
    // Same pod, host and rule as the previous request: the cached ids must
    // not survive the rules change.
    stats.record_http(0, &req(Some(&a), "late.example:443", "GET"));
    let text = render(&stats, &|_, _| true);
    for host in ["other", "late.example"] {
        let line = format!(
            "tproxy_requests_total{{source_namespace=\"shop\",source_workload=\"web\",source_pod=\"web-1\",destination_host=\"{host}\",method=\"GET\",status_class=\"2xx\",decision=\"allow\",rule=\"r1\"}} 1"
        );
        assert!(text.lines().any(|l| l == line), "missing `{line}`:\n{text}");
    }
}
