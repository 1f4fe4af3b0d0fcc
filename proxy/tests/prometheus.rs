//! A real Prometheus scrapes a real tproxy while a fixed amount of traffic
//! from two source IPs (mapped to two pods by the pod directory) goes
//! through it: exact per-pod counters come back from PromQL, the exposition
//! passes `promtool check metrics`, every dashboard panel and alert
//! expression parses and returns a non-empty, finite result, and the
//! dashboards are structurally sound.
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::nginx::Nginx;
use support::pki::TestPki;
use support::proxy::{Proxy, ProxyBuilder};
use support::*;

/// Bound on every wait for Prometheus to see something.
const SCRAPE_WAIT: Duration = Duration::from_secs(60);

const POD_A_IP: &str = "127.0.0.2";
const POD_B_IP: &str = "127.0.0.3";

/// A Prometheus server with its own data dir, killed by PID on drop.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        terminate_child(&mut self.child, Duration::from_secs(5));
    }
}

impl Prometheus {
    fn start(target: std::net::SocketAddr, rules: &Path) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("tproxy-prometheus")
            .tempdir()
            .unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: tproxy\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", cfg.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect(
                    "prometheus (apt-get install prometheus; see scripts/install-test-deps.sh)",
                );
            let base = format!("http://127.0.0.1:{port}");
            let ready = wait_until(Duration::from_secs(30), || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                let r = curl(&[&format!("{base}/-/ready")]);
                (r.status == 200).then_some(true)
            });
            if ready == Some(true) {
                return Prometheus {
                    child,
                    base,
                    _dir: dir,
                };
            }
            terminate_child(&mut child, Duration::from_secs(5));
        }
        let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
        panic!("prometheus did not become ready:\n{log}");
    }

    /// Instant query; panics unless Prometheus answers `success`.
    fn query(&self, q: &str) -> Vec<Value> {
        let r = curl(&[
            "-G",
            &format!("{}/api/v1/query", self.base),
            "--data-urlencode",
            &format!("query={q}"),
        ]);
        let v: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("query `{q}`: not JSON ({e}): {}", r.text()));
        assert_eq!(v["status"], "success", "query `{q}` failed: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Scalar value of a one-sample vector result (None when empty).
    fn value(&self, q: &str) -> Option<f64> {
        let res = self.query(q);
        res.first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|s| s.parse().ok())
    }

    /// Wait (bounded) until `q` returns exactly `want`.
    fn wait_value(&self, q: &str, want: f64) {
        let got = wait_until(SCRAPE_WAIT, || {
            let v = self.value(q);
            if v == Some(want) {
                return Some(());
            }
            std::thread::sleep(Duration::from_millis(250));
            None
        });
        assert!(
            got.is_some(),
            "`{q}` never reached {want} within {SCRAPE_WAIT:?} (last: {:?})",
            self.value(q)
        );
    }
}

fn pod_directory(path: &Path, with_b: bool) {
    let b = if with_b {
        format!(
            r#","{POD_B_IP}": {{"namespace": "jobs", "name": "batch-1", "uid": "u2",
               "workload": {{"kind": "Job", "name": "batch"}}, "labels": {{}}}}"#
        )
    } else {
        String::new()
    };
    let text = format!(
        r#"{{"version": 1, "generated_at": "2026-11-21T12:00:00Z", "node": "n1", "pods": {{
            "{POD_A_IP}": {{"namespace": "shop", "name": "web-1", "uid": "u1",
               "workload": {{"kind": "Deployment", "name": "web"}}, "labels": {{}}}}{b}}}}}"#
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Traffic<'a> {
    p: &'a Proxy,
    ng: &'a Nginx,
    closed_port: u16,
}

impl Traffic<'_> {
    /// `n` requests from `from` (None: default source address).
    fn send(&self, from: Option<&str>, n: usize, extra: &[&str], url: &str, want: u16) {
        let proxy = self.p.proxy_url();
        for _ in 0..n {
            let mut args = vec!["-x", proxy.as_str()];
            if let Some(ip) = from {
                args.extend(["--interface", ip]);
            }
            args.extend(extra);
            args.push(url);
            let r = curl(&args);
            assert_eq!(r.status, want, "{url} from {from:?}: {r:?}");
        }
    }

    fn allowed(&self) -> String {
        format!("http://localhost:{}/small.txt", self.ng.http_port)
    }
    fn denied(&self) -> String {
        format!("http://upstream.test:{}/small.txt", self.ng.http_port)
    }
    fn unnamed(&self) -> String {
        format!("http://127.0.0.1:{}/small.txt", self.ng.http_port)
    }
    fn failing(&self) -> String {
        format!("http://127.0.0.9:{}/", self.closed_port)
    }
}

fn workspace_file(rel: &str) -> PathBuf {
    workspace_root().join(rel)
}

#[test]
fn prometheus_scrapes_per_pod_metrics_and_every_dashboard_query_has_data() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "rules:\n  - name: deny-upstream\n    match: {host: upstream.test}\n    action: deny\n  - name: allow-localhost\n    match: {host: localhost}\n    action: allow\ndefault: allow\n",
    )
    .unwrap();
    let pods = dir.path().join("pods.json");
    pod_directory(&pods, true);
    let ignore = format!("^localhost:{}$", ng.https_port);
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&[
            "--rules",
            rules.to_str().unwrap(),
            "--pod-directory",
            pods.to_str().unwrap(),
            "--metrics-max-hosts",
            "1",
            "--ignore-hosts",
            &ignore,
            "--workers",
            "2",
        ])
        .spawn();
    let alerts = workspace_file("dashboards/alerts.yaml");
    let prom = Prometheus::start(p.addr("admin"), &alerts);
    prom.wait_value("sum(up{job=\"tproxy\"})", 1.0);

    let t = Traffic {
        p: &p,
        ng: &ng,
        closed_port: free_port(),
    };
    // Phase 1: every per-source series exists before Prometheus' next
    // scrape, so that phase 2 shows as a rate.
    let (a, b) = (Some(POD_A_IP), Some(POD_B_IP));
    t.send(a, 3, &[], &t.allowed(), 200);
    t.send(a, 2, &[], &t.denied(), 418);
    t.send(b, 1, &[], &t.allowed(), 200);
    t.send(b, 4, &[], &t.denied(), 418);
    t.send(None, 1, &[], &t.unnamed(), 200);
    prom.wait_value("sum(tproxy_requests_total)", 11.0);

    // Phase 2.
    let ca = p.ca_cert();
    let ca = ca.to_str().unwrap();
    let https_ip = format!("https://127.0.0.1:{}/small.txt", ng.https_port);
    t.send(a, 2, &[], &t.allowed(), 200);
    t.send(a, 1, &[], &t.denied(), 418);
    t.send(a, 1, &[], &t.failing(), 502);
    t.send(a, 1, &["--cacert", ca], &https_ip, 200);
    // The client does not trust our CA: a client-side TLS failure.
    t.send(a, 1, &[], &https_ip, 0);
    // --ignore-hosts: spliced to nginx, whose own certificate curl checks.
    let passthrough = format!("https://localhost:{}/small.txt", ng.https_port);
    let pki_ca = pki.ca_pem();
    t.send(
        a,
        1,
        &["--cacert", pki_ca.to_str().unwrap()],
        &passthrough,
        200,
    );
    t.send(b, 1, &["-d", "x"], &t.allowed(), 405);
    t.send(b, 1, &[], &t.denied(), 418);
    t.send(b, 1, &[], &t.failing(), 502);
    t.send(None, 1, &[], &t.unnamed(), 200);
    prom.wait_value("sum(tproxy_requests_total)", 20.0);
    prom.wait_value("sum(tproxy_passthrough_flows_total)", 1.0);
    // rate() needs two samples of a series: series born in phase 2 too.
    prom.wait_value(
        "min(count_over_time(tproxy_requests_total[1m]) >= bool 3)",
        1.0,
    );

    check_exact_counters(&prom);
    check_exposition(&p);
    check_active_passthrough(&p, ng.https_port);
    check_dashboards_and_alerts(&prom, &alerts);

    // The pod leaves the directory: its series stop being exported.
    pod_directory(&pods, false);
    let admin = format!("http://{}/metrics", p.addr("admin"));
    let gone = wait_until(Duration::from_secs(20), || {
        let text = curl(&[&admin]).text();
        std::thread::sleep(Duration::from_millis(200));
        (!text.contains("batch-1") && text.contains("web-1")).then_some(())
    });
    assert!(
        gone.is_some(),
        "batch-1 still exported after leaving the pod directory:\n{}",
        curl(&[&admin]).text()
    );
}

fn check_exact_counters(prom: &Prometheus) {
    let res = prom.query(
        "sum by (source_namespace, source_workload, source_pod, destination_host, method, status_class, decision, rule) (tproxy_requests_total)",
    );
    let mut got = BTreeMap::new();
    for s in &res {
        let m = &s["metric"];
        let class = match m["status_class"].as_str().unwrap() {
            "5xx" | "error" => "failed",
            c => c,
        };
        let key = [
            "source_namespace",
            "source_workload",
            "source_pod",
            "destination_host",
            "method",
            "decision",
            "rule",
        ]
        .map(|l| m[l].as_str().unwrap().to_owned())
        .join(" ");
        let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
        *got.entry(format!("{key} {class}")).or_insert(0.0) += v;
    }
    let want: BTreeMap<String, f64> = [
        (
            "shop web web-1 localhost GET allow allow-localhost 2xx",
            5.0,
        ),
        (
            "shop web web-1 upstream.test GET deny deny-upstream 4xx",
            3.0,
        ),
        ("shop web web-1 other GET allow default failed", 1.0),
        ("shop web web-1 127.0.0.1 GET allow default 2xx", 1.0),
        (
            "jobs batch batch-1 localhost GET allow allow-localhost 2xx",
            1.0,
        ),
        (
            "jobs batch batch-1 localhost POST allow allow-localhost 4xx",
            1.0,
        ),
        (
            "jobs batch batch-1 upstream.test GET deny deny-upstream 4xx",
            5.0,
        ),
        ("jobs batch batch-1 other GET allow default failed", 1.0),
        (
            "unknown unknown unknown 127.0.0.1 GET allow default 2xx",
            2.0,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(got, want, "per-pod request counters from PromQL");

    let one = |q: &str| prom.value(q).unwrap_or_else(|| panic!("`{q}` is empty"));
    assert_eq!(
        one("sum(tproxy_request_duration_seconds_count{source_pod=\"web-1\"})"),
        10.0
    );
    // The only request body: batch-1's POST of one byte.
    assert_eq!(
        one("sum(tproxy_body_bytes_total{source_pod=\"batch-1\",direction=\"from_client\"})"),
        1.0
    );
    assert_eq!(
        one("sum(tproxy_body_bytes_total{source_pod=\"web-1\",direction=\"from_client\"})"),
        0.0
    );
    assert!(
        one("sum(tproxy_body_bytes_total{source_pod=\"web-1\",direction=\"to_client\"})") > 0.0
    );
    assert!(
        one("sum(tproxy_passthrough_bytes_total{source_pod=\"web-1\",direction=\"to_client\"})")
            > 0.0
    );
    assert_eq!(
        one("sum(tproxy_passthrough_flows_total{source_pod=\"batch-1\"})"),
        0.0
    );
    assert_eq!(
        one("sum(tproxy_tls_handshake_failures_total{side=\"client\",reason=\"unknown_ca\"})"),
        1.0
    );
    assert_eq!(
        one("sum(tproxy_tls_handshakes_total{side=\"client\",result=\"ok\"})"),
        1.0
    );
    assert_eq!(
        one("sum(tproxy_cert_cache_lookups_total{result=\"miss\"})"),
        1.0
    );
    assert_eq!(
        one("sum(tproxy_connections_total{mode=\"regular\",kind=\"passthrough\"})"),
        1.0
    );
    assert_eq!(
        one(&format!(
            "tproxy_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
}

/// A held-open passthrough connection shows as active with its kind, and
/// stops when it closes.
fn check_active_passthrough(p: &Proxy, https_port: u16) {
    use std::io::Read;
    let admin = format!("http://{}/metrics", p.addr("admin"));
    let line =
        |n: u32| format!("tproxy_connections_active{{kind=\"passthrough\",mode=\"regular\"}} {n}");
    let shows = |n: u32| {
        wait_until(Duration::from_secs(10), || {
            let text = curl(&[&admin]).text();
            std::thread::sleep(Duration::from_millis(100));
            text.lines().any(|l| l == line(n)).then_some(())
        })
        .is_some()
    };
    assert!(
        shows(0),
        "no idle passthrough gauge:\n{}",
        curl(&[&admin]).text()
    );
    let mut s = std::net::TcpStream::connect(p.addr("regular")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "CONNECT localhost:{https_port} HTTP/1.1\r\nHost: localhost:{https_port}\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        shows(1),
        "open passthrough not active:\n{}",
        curl(&[&admin]).text()
    );
    drop(s);
    assert!(
        shows(0),
        "closed passthrough still active:\n{}",
        curl(&[&admin]).text()
    );
}

/// `promtool check metrics` on the live exposition.
fn check_exposition(p: &Proxy) {
    let r = curl(&[&format!("http://{}/metrics", p.addr("admin"))]);
    assert_eq!(r.status, 200, "{r:?}");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child.stdin.take().unwrap().write_all(&r.body).unwrap();
    let pid = child.id();
    let out = std::thread::spawn(move || child.wait_with_output().unwrap());
    if wait_until(Duration::from_secs(30), || out.is_finished().then_some(())).is_none() {
        // SAFETY: kill(2) on our own child that has not been reaped.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let out = out.join().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- exposition ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        r.text()
    );
}

/// Test values of the dashboards' template variables.
fn substitute(expr: &str) -> String {
    let mut s = expr.to_owned();
    for (var, val) in [
        ("$__rate_interval", "1m"),
        ("$__interval", "1m"),
        ("$__range", "1m"),
        ("$namespace", "shop"),
        ("$workload", "web"),
        ("$pod", ".*"),
        ("$instance", ".*"),
    ] {
        s = s.replace(var, val);
    }
    s
}

/// Assert `q` returns at least one sample and all are finite.
fn assert_has_data(prom: &Prometheus, what: &str, q: &str) {
    let res = prom.query(q);
    assert!(!res.is_empty(), "{what}: `{q}` returned nothing");
    for s in &res {
        let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
        assert!(
            v.is_finite(),
            "{what}: `{q}` returned {v} for {}",
            s["metric"]
        );
    }
}

fn check_dashboards_and_alerts(prom: &Prometheus, alerts: &Path) {
    let var_re = regex::Regex::new(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)").unwrap();
    let label_values = regex::Regex::new(r"^label_values\((.*),\s*([a-z_]+)\)$").unwrap();
    let mut panels_checked = 0;
    for name in ["tproxy-overview", "tproxy-pod", "tproxy-internals"] {
        let path = workspace_file(&format!("dashboards/{name}.json"));
        let d: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(d["uid"], name, "{name}: uid");
        let vars = d["templating"]["list"].as_array().unwrap();
        let defined: BTreeSet<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{name}: needs a prometheus `datasource` variable"
        );
        let check_vars = |text: &str, where_: &str| {
            for c in var_re.captures_iter(text) {
                let v = &c[1];
                assert!(
                    v.starts_with("__") || defined.contains(v),
                    "{name}: {where_} uses ${v}, not defined in templating"
                );
            }
        };
        for v in vars.iter().filter(|v| v["type"] == "query") {
            let q = v["query"]["query"].as_str().unwrap();
            check_vars(q, "variable query");
            let c = label_values.captures(q).unwrap_or_else(|| {
                panic!("{name}: variable query `{q}` is not label_values(sel, label)")
            });
            let promql = substitute(&format!("count by ({}) ({})", &c[2], &c[1]));
            assert_has_data(prom, &format!("{name} variable {}", v["name"]), &promql);
        }
        let panels = d["panels"].as_array().unwrap();
        let mut ids = BTreeSet::new();
        for p in panels {
            let title = p["title"].as_str().unwrap();
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{name}: duplicate panel id in `{title}`"
            );
            let g = &p["gridPos"];
            let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
            assert!(
                g["y"].as_u64().is_some()
                    && h.unwrap_or(0) > 0
                    && x.unwrap_or(99) + w.unwrap_or(99) <= 24,
                "{name}: `{title}` has a bad gridPos {g}"
            );
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{name}: `{title}`");
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: `{title}` has no targets");
            for t in targets {
                let expr = t["expr"].as_str().unwrap();
                check_vars(expr, title);
                assert_has_data(prom, &format!("{name} / {title}"), &substitute(expr));
                panels_checked += 1;
            }
        }
    }
    assert!(panels_checked >= 30, "only {panels_checked} panel queries");

    // Alerts: promtool accepts the file; each condition's left-hand side
    // (the measured quantity) has data.
    run_ok(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(alerts),
        Duration::from_secs(30),
    );
    let y: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(alerts).unwrap()).unwrap();
    let cond = regex::Regex::new(r"(?s)^(.*?)\s*(>|<|==|!=|>=|<=)\s*[0-9.]+\s*$").unwrap();
    let mut names = BTreeSet::new();
    for g in y["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let name = r["alert"].as_str().unwrap();
            names.insert(name.to_owned());
            let expr = r["expr"].as_str().unwrap().trim();
            let lhs = cond
                .captures(expr)
                .map_or(expr.to_owned(), |c| c[1].to_owned());
            assert_has_data(prom, &format!("alert {name}"), &lhs);
        }
    }
    for want in [
        "TproxyDown",
        "TproxyHighErrorRatio",
        "TproxyTLSFailureSpike",
        "TproxyConfigReloadErrors",
    ] {
        assert!(names.contains(want), "alerts.yaml lacks {want}");
    }
    // Prometheus itself loaded them.
    let r = curl(&[&format!("{}/api/v1/rules", prom.base)]);
    assert!(r.text().contains("TproxyTLSFailureSpike"), "{}", r.text());
}
