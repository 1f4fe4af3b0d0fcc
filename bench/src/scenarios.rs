//! The scenarios of issue 5 (plus regular mode, latency at half load and
//! observability cost). Each appends its rows to [`Bench::rows`]; a failing
//! subject becomes a row saying so, never an abort.

use std::time::Duration;

use tproxy::tls::ca::KeyKind;

use crate::client::{IdleConns, Load};
use crate::micro;
use crate::procs::status_kib;
use crate::progress::Progress;
use crate::proxies::{Kind, REGULAR_PORT, Spec};
use crate::report::{Row, Unit};
use crate::runner::{Bench, Opts, Work, one_line};
use crate::sink::Sink;
use crate::topo::{NODE_CLIENT_IP, UPSTREAM_HOST};
use crate::upstream::{CHURN_HTTPS_PORT, SMALL_PATH, bulk_name};

/// Every scenario: id, aliases, title, needs root.
pub const ALL: &[(&str, &str, &str, bool)] = &[
    ("9", "mint", "leaf certificate mint (micro)", false),
    ("8", "policy", "policy cost, 1/100/1000 rules", false),
    ("1", "h1", "HTTPS interception, h1 keep-alive, 64 B", true),
    ("3", "http", "plain HTTP, h1 keep-alive, 64 B", true),
    (
        "1r",
        "regular",
        "regular mode (CONNECT), HTTPS h1 keep-alive, 64 B",
        true,
    ),
    ("5", "passthrough", "passthrough bulk, splice vs copy", true),
    ("6", "bulk", "intercepted bulk", true),
    ("4", "handshake", "new TLS connection per request", true),
    ("7", "idle", "idle client connections", true),
    ("2", "h2", "HTTPS interception, h2 multiplexed, 64 B", true),
    (
        "1h",
        "halfload",
        "latency at half of max load, HTTPS h1",
        true,
    ),
    (
        "obs",
        "observability",
        "observability cost (metrics + OTLP traces)",
        true,
    ),
    (
        "soak",
        "churn",
        "soak: upstream churn with nginx keep-alive defaults, h2 + h1 TLS at once",
        true,
    ),
];

/// Scenarios run only when asked for by name (they take minutes).
pub const OPT_IN: &[&str] = &["soak"];

/// Title of a scenario id.
pub fn title(id: &str) -> &'static str {
    ALL.iter()
        .find(|s| s.0 == id)
        .map(|s| s.2)
        .unwrap_or("unknown")
}

fn https_url(path: &str) -> String {
    format!("https://{UPSTREAM_HOST}{path}")
}

fn tproxy(label: &str, args: &[&str]) -> Spec {
    Spec::new(label, Kind::Tproxy, args)
}

impl Bench<'_> {
    /// Runs scenario `id`.
    pub fn scenario(&mut self, id: &str) {
        let t = title(id);
        match id {
            "9" => self.mint(t),
            "8" => self.policy(t),
            "1" => self.trio(
                id,
                t,
                Unit::ReqPerSec,
                &Work::Wrk(https_url(SMALL_PATH)),
                &[],
            ),
            "3" => {
                let w = Work::Wrk(format!("http://{UPSTREAM_HOST}{SMALL_PATH}"));
                self.trio(id, t, Unit::ReqPerSec, &w, &[]);
            }
            "2" => {
                let c = (self.opts.connections / 8).max(1);
                let w = Work::H2load(https_url(SMALL_PATH), c, 16);
                self.trio(id, t, Unit::ReqPerSec, &w, &[]);
            }
            "1r" => self.regular(t),
            "5" => self.passthrough(t),
            "6" => {
                let w = Work::Bulk(https_url(&format!("/{}", bulk_name(self.opts.bulk_bytes))));
                self.trio(id, t, Unit::Gbits, &w, &[]);
                if let Some(r) = self
                    .rows
                    .iter_mut()
                    .find(|r| r.scenario == "6" && r.subject.starts_with("tproxy"))
                {
                    rss_range_note(r);
                }
            }
            "4" => self.handshake(t),
            "7" => self.idle(t),
            "1h" => self.half_load(t),
            "obs" => self.observability(t),
            "soak" => self.soak(t),
            _ => {}
        }
    }

    /// direct, tproxy, mitmdump with the same work.
    fn trio(&mut self, id: &str, t: &str, unit: Unit, w: &Work, targs: &[&str]) {
        let r = self.measure(id, t, unit, "direct", None, w);
        self.rows.push(r);
        let r = self.measure(id, t, unit, "tproxy", Some(&tproxy("tproxy", targs)), w);
        self.rows.push(r);
        if let Some(m) = self.mitmdump("mitmdump", &[]) {
            let r = self.measure(id, t, unit, "mitmdump", Some(&m), w);
            self.rows.push(r);
        }
    }

    fn client_load(&self, port: u16, tls: bool) -> Load {
        Load {
            target: Bench::upstream_addr(port),
            via_connect: false,
            tls,
            new_conn: false,
            unique_sni: false,
            connections: self.opts.connections,
            duration: Duration::from_secs(self.opts.secs),
            rate: None,
            path: SMALL_PATH.into(),
        }
    }

    fn regular(&mut self, t: &str) {
        let direct = Work::Client(self.client_load(443, true));
        let r = self.measure("1r", t, Unit::ReqPerSec, "direct", None, &direct);
        self.rows.push(r);
        let mut via = self.client_load(443, true);
        via.via_connect = true;
        via.target = std::net::SocketAddr::new(
            NODE_CLIENT_IP
                .parse()
                .unwrap_or(std::net::IpAddr::from([198, 18, 1, 1])),
            REGULAR_PORT,
        );
        let via = Work::Client(via);
        let mut spec = tproxy("tproxy", &[]);
        spec.regular = true;
        let r = self.measure("1r", t, Unit::ReqPerSec, "tproxy", Some(&spec), &via);
        self.rows.push(r);
        if let Some(mut m) = self.mitmdump("mitmdump", &[]) {
            m.regular = true;
            let r = self.measure("1r", t, Unit::ReqPerSec, "mitmdump", Some(&m), &via);
            self.rows.push(r);
        }
    }

    fn passthrough(&mut self, t: &str) {
        let w = Work::Bulk(https_url(&format!("/{}", bulk_name(self.opts.bulk_bytes))));
        let r = self.measure("5", t, Unit::Gbits, "direct", None, &w);
        self.rows.push(r);
        for mode in ["splice", "copy"] {
            let spec = tproxy(
                &format!("tproxy {mode}"),
                &["--ignore-hosts", ".", "--passthrough", mode],
            );
            let r = self.measure("5", t, Unit::Gbits, &spec.label.clone(), Some(&spec), &w);
            self.rows.push(r);
        }
        if self.opts.peers {
            if self.progs.haproxy.is_some() {
                let spec = Spec::new("haproxy", Kind::Haproxy, &[]);
                let r = self.measure("5", t, Unit::Gbits, "haproxy", Some(&spec), &w);
                self.rows.push(r);
            } else {
                let mut r = Row::new("5", t, "haproxy", Unit::Gbits);
                r.status = "n/a (haproxy not installed)".into();
                self.rows.push(r);
            }
        }
        if let Some(m) = self.mitmdump("mitmdump", &["--ignore-hosts", "."]) {
            let r = self.measure("5", t, Unit::Gbits, "mitmdump", Some(&m), &w);
            self.rows.push(r);
        }
    }

    fn handshake(&mut self, t: &str) {
        let mut load = self.client_load(443, true);
        load.new_conn = true;
        load.connections = self.opts.connections.min(8);
        let warm = Work::Client(load.clone());
        load.unique_sni = true;
        let cold = Work::Client(load);
        let r = self.measure("4", t, Unit::ConnPerSec, "direct", None, &warm);
        self.rows.push(r);
        for (label, w) in [("tproxy warm", &warm), ("tproxy cold", &cold)] {
            let r = self.measure(
                "4",
                t,
                Unit::ConnPerSec,
                label,
                Some(&tproxy(label, &[])),
                w,
            );
            self.rows.push(r);
        }
        for (label, w) in [("mitmdump warm", &warm), ("mitmdump cold", &cold)] {
            if let Some(m) = self.mitmdump(label, &[]) {
                let r = self.measure("4", t, Unit::ConnPerSec, label, Some(&m), w);
                self.rows.push(r);
            }
        }
        for r in self.rows.iter_mut().filter(|r| r.scenario == "4") {
            if r.subject.ends_with("cold") {
                r.add_note("unique SNI per connection: every leaf minted");
            }
        }
    }

    fn half_load(&mut self, t: &str) {
        let max = self
            .rows
            .iter()
            .find(|r| r.scenario == "1" && r.subject == "tproxy" && r.ok())
            .and_then(|r| r.value);
        let max = match max {
            Some(m) => m,
            None => {
                // Scenario 1 did not run: measure tproxy's maximum first.
                let r = self.measure(
                    "1h",
                    t,
                    Unit::ReqPerSec,
                    "tproxy max",
                    Some(&tproxy("tproxy", &[])),
                    &Work::Wrk(https_url(SMALL_PATH)),
                );
                match r.value.filter(|_| r.ok()) {
                    Some(v) => v,
                    None => {
                        self.rows.push(r);
                        return;
                    }
                }
            }
        };
        let mut load = self.client_load(443, true);
        load.rate = Some(max / 2.0);
        let w = Work::Client(load);
        let r = self.measure("1h", t, Unit::ReqPerSec, "direct", None, &w);
        self.rows.push(r);
        let r = self.measure(
            "1h",
            t,
            Unit::ReqPerSec,
            "tproxy",
            Some(&tproxy("tproxy", &[])),
            &w,
        );
        self.rows.push(r);
        let (d, p) = (
            self.rows
                .iter()
                .rev()
                .find(|r| r.scenario == "1h" && r.subject == "direct"),
            self.rows
                .iter()
                .rev()
                .find(|r| r.scenario == "1h" && r.subject == "tproxy"),
        );
        let added = match (d.and_then(|r| r.p99_us), p.and_then(|r| r.p99_us)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        if let Some(r) = self
            .rows
            .iter_mut()
            .rev()
            .find(|r| r.scenario == "1h" && r.subject == "tproxy")
        {
            r.add_note(&format!(
                "offered {:.0} req/s (half of tproxy max {max:.0})",
                max / 2.0
            ));
            if let Some(a) = added {
                r.add_note(&format!("added p99 {:.2} ms", a / 1000.0));
            }
        }
    }

    fn observability(&mut self, t: &str) {
        let w = Work::Wrk(https_url(SMALL_PATH));
        let off = tproxy("tproxy obs off", &["--metrics=false"]);
        let r = self.measure("obs", t, Unit::ReqPerSec, "tproxy obs off", Some(&off), &w);
        let offv = r.value.filter(|_| r.ok());
        self.rows.push(r);
        // Metrics alone (the default): the per-pod metrics pipeline's cost.
        let metrics = tproxy("tproxy metrics only", &[]);
        let mut r = self.measure(
            "obs",
            t,
            Unit::ReqPerSec,
            "tproxy metrics only",
            Some(&metrics),
            &w,
        );
        if let (Some(a), Some(b)) = (r.value.filter(|_| r.ok()), offv) {
            r.add_note(&format!("{:.2}× of obs off", a / b));
        }
        self.rows.push(r);
        let sink = match Sink::start(Some(&self.topo.node), 0) {
            Ok(s) => s,
            Err(e) => {
                let mut r = Row::new("obs", t, "tproxy obs on", Unit::ReqPerSec);
                r.status = format!("failed: {e}");
                self.rows.push(r);
                return;
            }
        };
        let endpoint = format!("http://127.0.0.1:{}/v1/traces", sink.port());
        let mut on = tproxy("tproxy obs on", &["--otlp-endpoint", &endpoint]);
        on.env
            .push(("OTEL_TRACES_SAMPLER".into(), "always_on".into()));
        let mut r = self.measure("obs", t, Unit::ReqPerSec, "tproxy obs on", Some(&on), &w);
        r.add_note(&format!(
            "OTLP export requests received: {}",
            sink.exports()
        ));
        drop(sink);
        if let (Some(a), Some(b)) = (r.value.filter(|_| r.ok()), offv) {
            r.add_note(&format!("{:.2}× of obs off", a / b));
        }
        self.rows.push(r);
    }

    fn idle(&mut self, t: &str) {
        let n = self.opts.idle;
        // Each intercepted idle connection holds a client and an upstream
        // socket in the proxy: keep both under the fd limit.
        let nofile = nofile_limit();
        let n_req = n.min((nofile.saturating_sub(400) / 2) as usize);
        let cases: Vec<(&str, Kind, u16, bool, bool, usize)> = vec![
            ("tproxy tcp", Kind::Tproxy, 80, false, false, n),
            ("tproxy http", Kind::Tproxy, 80, false, true, n_req),
            ("tproxy tls", Kind::Tproxy, 443, true, true, n_req),
            ("mitmdump tcp", Kind::Mitmdump, 80, false, false, n),
            ("mitmdump http", Kind::Mitmdump, 80, false, true, n_req),
        ];
        for (label, kind, port, tls, request, count) in cases {
            if kind == Kind::Mitmdump && !self.opts.peers {
                continue;
            }
            self.progress.detail(&format!("7 {t}: {label} ×{count}"));
            let mut row = Row::new("7", t, label, Unit::KibPerConn);
            let spec = Spec::new(label, kind, &[]);
            let running = match self.start(&spec) {
                Ok(r) => r,
                Err(s) => {
                    row.status = s;
                    self.rows.push(row);
                    continue;
                }
            };
            let pid = running.proc.pid();
            let target = Bench::upstream_addr(port);
            // Warm: a few connections so lazily built state exists.
            let warm = IdleConns::open(
                &self.topo.client,
                target,
                tls,
                request,
                20,
                Duration::from_secs(10),
            );
            drop(warm);
            std::thread::sleep(Duration::from_millis(500));
            let before = status_kib(pid, "VmRSS");
            let limit = Duration::from_secs(if self.opts.quick { 20 } else { 120 });
            match IdleConns::open(&self.topo.client, target, tls, request, count, limit) {
                Ok(conns) if !conns.is_empty() => {
                    std::thread::sleep(Duration::from_secs(1));
                    let after = status_kib(pid, "VmRSS");
                    if let (Some(a), Some(b)) = (before, after) {
                        row.value = Some((b as f64 - a as f64).max(0.0) / conns.len() as f64);
                        row.add_note(&format!(
                            "{} connections{}, RSS {:.1} → {:.1} MiB",
                            conns.len(),
                            if request {
                                " after one request each"
                            } else {
                                ", nothing sent"
                            },
                            a as f64 / 1024.0,
                            b as f64 / 1024.0
                        ));
                    }
                    if conns.failed > 0 {
                        row.add_note(&format!("{} failed to open", conns.failed));
                    }
                }
                Ok(c) => row.status = format!("failed: no connection opened ({} failed)", c.failed),
                Err(e) => row.status = format!("failed: {}", one_line(&e)),
            }
            row.peak_rss_mib = status_kib(pid, "VmHWM").map(|k| k as f64 / 1024.0);
            drop(running);
            self.rows.push(row);
        }
    }

    /// Scenario soak: h2load (h2) and wrk (HTTP/1.1 over TLS) at the same
    /// time for `--soak-secs` through tproxy (transparent) to nginx with its
    /// default keep-alive settings, so upstream connections end all the
    /// time (GOAWAY / Connection: close every 1000 requests). Reports the
    /// failed requests (must be 0) and the proxy's RSS over the run.
    fn soak(&mut self, t: &str) {
        let secs = self.opts.soak_secs;
        self.progress.detail(&format!("soak {t}: {secs} s"));
        let spec = tproxy("tproxy", &[]);
        let running = match self.start(&spec) {
            Ok(r) => r,
            Err(status) => {
                let mut row = Row::new("soak", t, "tproxy", Unit::ReqPerSec);
                row.status = status;
                self.rows.push(row);
                return;
            }
        };
        let pid = running.proc.pid();
        let sampler = crate::procs::RssSampler::start(pid);
        let ns = self.topo.client.clone();
        let lua = self.lua.clone();
        let h2url = format!("https://{UPSTREAM_HOST}:{CHURN_HTTPS_PORT}{SMALL_PATH}");
        let h1url = h2url.clone();
        let h2conns = (self.opts.connections / 8).max(1);
        let h1conns = (self.opts.connections / 2).max(1);
        let (h2, h1) = std::thread::scope(|s| {
            let a = s.spawn(|| crate::loadgen::h2load(&ns, &h2url, h2conns, 16, secs, false));
            let b = s.spawn(|| crate::loadgen::wrk(&ns, &lua, &h1url, h1conns, secs));
            (
                a.join()
                    .unwrap_or_else(|_| Err("h2load thread panicked".into())),
                b.join()
                    .unwrap_or_else(|_| Err("wrk thread panicked".into())),
            )
        });
        let series = sampler.finish();
        let hwm = status_kib(pid, "VmHWM");
        let mut running = running;
        let died = running.proc.exited();
        running.proc.stop();
        let rss = rss_quartiles(&series);
        for (label, res) in [("tproxy h2 (h2load)", h2), ("tproxy h1 TLS (wrk)", h1)] {
            let mut row = Row::new("soak", t, label, Unit::ReqPerSec);
            match res {
                Ok(m) => {
                    row.value = Some(m.rate());
                    row.add_note(&format!(
                        "{} failed of {} requests in {:.0} s",
                        m.errors,
                        m.ops + m.errors,
                        m.secs
                    ));
                    if m.errors > 0 {
                        row.status = format!("failed: {} requests failed", m.errors);
                    }
                    row.p50_us = m.p50_us;
                    row.p99_us = m.p99_us;
                    row.p999_us = m.p999_us;
                    row.measure = Some(m);
                }
                Err(e) => row.status = format!("failed: {}", one_line(&e)),
            }
            if let Some(r) = &rss {
                row.add_note(r);
            }
            if let Some(d) = &died {
                row.add_note(&format!("tproxy died during the run ({d})"));
            }
            row.peak_rss_mib = hwm.map(|k| k as f64 / 1024.0);
            if label.contains("h2") {
                row.rss_series = series.clone();
            }
            self.rows.push(row);
        }
    }

    fn mint(&mut self, t: &str) {
        let rows = mint_rows(t, self.opts, self.progress, &mut self.broken);
        self.rows.extend(rows);
    }

    fn policy(&mut self, t: &str) {
        let rows = policy_rows(t, self.opts, self.progress);
        self.rows.extend(rows);
        self.policy_end_to_end(t);
    }

    /// Plain-HTTP keep-alive through tproxy with no rules / 1 / 1000 rules
    /// (the allowing rule last).
    fn policy_end_to_end(&mut self, t: &str) {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(_) => return,
        };
        let w = Work::Wrk(format!("http://{UPSTREAM_HOST}{SMALL_PATH}"));
        let mut base = None;
        for n in [0usize, 1, 1000] {
            let label = format!("tproxy {n} rule{}", if n == 1 { "" } else { "s" });
            let file = dir.path().join(format!("rules-{n}.yaml"));
            let args: Vec<String> = if n == 0 {
                Vec::new()
            } else {
                if std::fs::write(&file, micro::rules_yaml(n)).is_err() {
                    continue;
                }
                vec!["--rules".into(), file.display().to_string()]
            };
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut r = self.measure(
                "8",
                t,
                Unit::ReqPerSec,
                &label,
                Some(&tproxy(&label, &argv)),
                &w,
            );
            match (n, r.value.filter(|_| r.ok())) {
                (0, v) => base = v,
                (_, Some(v)) => {
                    if let Some(b) = base {
                        r.add_note(&format!(
                            "{:.2}× of no rules (plain HTTP, end to end)",
                            v / b
                        ));
                    }
                }
                _ => {}
            }
            self.rows.push(r);
        }
    }
}

/// Notes the RSS range seen while streaming.
/// "RSS MiB at 0/25/50/75/100 % of the run: a → b → c → d → e".
fn rss_quartiles(series: &[(u64, u64)]) -> Option<String> {
    if series.len() < 5 {
        return None;
    }
    let at = |q: usize| series[(series.len() - 1) * q / 4].1 as f64 / 1024.0;
    Some(format!(
        "RSS MiB at 0/25/50/75/100 % of the run: {:.1} → {:.1} → {:.1} → {:.1} → {:.1}",
        at(0),
        at(1),
        at(2),
        at(3),
        at(4)
    ))
}

fn rss_range_note(r: &mut Row) {
    let min = r.rss_series.iter().map(|s| s.1).min();
    let max = r.rss_series.iter().map(|s| s.1).max();
    if let (Some(a), Some(b)) = (min, max) {
        r.add_note(&format!(
            "RSS while streaming {:.1}–{:.1} MiB ({} samples)",
            a as f64 / 1024.0,
            b as f64 / 1024.0,
            r.rss_series.len()
        ));
    }
}

/// The soft RLIMIT_NOFILE (children inherit it).
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur
    } else {
        1024
    }
}

/// Scenario 9: leaf mint miss/hit with a P-256 and an RSA-2048 CA.
pub fn mint_rows(t: &str, opts: &Opts, progress: &Progress, broken: &mut Vec<String>) -> Vec<Row> {
    let mut rows = Vec::new();
    let n = opts.mint_n;
    for (kind, name) in [
        (KeyKind::EcdsaP256, "P-256"),
        (KeyKind::Rsa2048, "RSA-2048"),
    ] {
        progress.detail(&format!("9 {t}: {name}"));
        let n = if kind == KeyKind::Rsa2048 {
            (n / 10).max(20)
        } else {
            n
        };
        match micro::mint(kind, n) {
            Ok((miss, hit)) => {
                for (what, m) in [("miss", miss), ("hit", hit)] {
                    let mut r = Row::new("9", t, &format!("mint {what} {name}"), Unit::MicrosPerOp);
                    r.value = Some(m.secs * 1e6 / m.ops.max(1) as f64);
                    r.p50_us = m.p50_us;
                    r.p99_us = m.p99_us;
                    r.p999_us = m.p999_us;
                    r.add_note(&format!("{} ops, CA {name}, leaf key P-256", m.ops));
                    r.measure = Some(m);
                    rows.push(r);
                }
            }
            Err(e) => {
                let mut r = Row::new("9", t, &format!("mint {name}"), Unit::MicrosPerOp);
                r.status = format!("failed: {e}");
                rows.push(r);
                broken.push(format!("mint micro-benchmark: {e}"));
            }
        }
    }
    rows
}

/// Scenario 8, micro part: `decide_request` with 1 / 100 / 1000 rules.
pub fn policy_rows(t: &str, opts: &Opts, progress: &Progress) -> Vec<Row> {
    let mut rows = Vec::new();
    for n in [1usize, 100, 1000] {
        progress.detail(&format!("8 {t}: decide, {n} rules"));
        match micro::policy(n, opts.policy_iters) {
            Ok((miss, hit)) => {
                for (what, m) in [("no rule matches", miss), ("last rule matches", hit)] {
                    let mut r = Row::new(
                        "8",
                        t,
                        &format!("decide, {n} rule{}, {what}", if n == 1 { "" } else { "s" }),
                        Unit::MicrosPerOp,
                    );
                    r.value = Some(m.secs * 1e6 / m.ops.max(1) as f64);
                    r.add_note("micro-benchmark, per request");
                    r.measure = Some(m);
                    rows.push(r);
                }
            }
            Err(e) => {
                let mut r = Row::new("8", t, &format!("decide {n} rules"), Unit::MicrosPerOp);
                r.status = format!("failed: {e}");
                rows.push(r);
            }
        }
    }
    rows
}
