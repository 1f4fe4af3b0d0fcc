//! Result rows, ratios, the Markdown table, the JSON file and the target
//! comparison.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::loadgen::Measure;

/// Unit of a row's headline number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Unit {
    /// Requests per second.
    ReqPerSec,
    /// New connections (each one request) per second.
    ConnPerSec,
    /// Gigabits per second of payload.
    Gbits,
    /// Microseconds per operation (lower is better).
    MicrosPerOp,
    /// KiB of proxy RSS per connection (lower is better).
    KibPerConn,
}

impl Unit {
    fn higher_is_better(self) -> bool {
        matches!(self, Unit::ReqPerSec | Unit::ConnPerSec | Unit::Gbits)
    }

    fn fmt(self, v: f64) -> String {
        match self {
            Unit::ReqPerSec => format!("{} req/s", thousands(v)),
            Unit::ConnPerSec => format!("{} conn/s", thousands(v)),
            Unit::Gbits => format!("{v:.2} Gbit/s"),
            Unit::MicrosPerOp if v < 1.0 => format!("{:.0} ns/op", v * 1000.0),
            Unit::MicrosPerOp => format!("{v:.1} µs/op"),
            Unit::KibPerConn => format!("{v:.1} KiB/conn"),
        }
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One measured (or skipped) subject in one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario id ("1", "4", "obs").
    pub scenario: String,
    /// Scenario title.
    pub title: String,
    /// Subject label ("direct", "tproxy", "mitmdump", "tproxy cold").
    pub subject: String,
    /// "ok", "n/a (reason)" or "failed: reason".
    pub status: String,
    /// Headline number in `unit`.
    pub value: Option<f64>,
    /// Unit of `value`.
    pub unit: Unit,
    /// Latency percentiles (µs).
    pub p50_us: Option<f64>,
    /// 99th percentile (µs).
    pub p99_us: Option<f64>,
    /// 99.9th percentile (µs).
    pub p999_us: Option<f64>,
    /// Proxy CPU seconds per 1000 requests.
    pub cpu_s_per_1k: Option<f64>,
    /// Proxy peak RSS (VmHWM), MiB.
    pub peak_rss_mib: Option<f64>,
    /// value / direct's value (inverted for lower-is-better units): > 1 is better.
    pub vs_direct: Option<f64>,
    /// The same against each peer.
    pub vs_peers: BTreeMap<String, f64>,
    /// Anything else worth knowing (errors, RSS range, counts).
    pub notes: String,
    /// Raw generator numbers.
    pub measure: Option<Measure>,
    /// Proxy RSS over time: (ms, KiB), sampled every 100 ms.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rss_series: Vec<(u64, u64)>,
}

impl Row {
    /// An empty row for `subject` in a scenario.
    pub fn new(scenario: &str, title: &str, subject: &str, unit: Unit) -> Row {
        Row {
            scenario: scenario.into(),
            title: title.into(),
            subject: subject.into(),
            status: "ok".into(),
            value: None,
            unit,
            p50_us: None,
            p99_us: None,
            p999_us: None,
            cpu_s_per_1k: None,
            peak_rss_mib: None,
            vs_direct: None,
            vs_peers: BTreeMap::new(),
            notes: String::new(),
            measure: None,
            rss_series: Vec::new(),
        }
    }

    /// True when it produced a number.
    pub fn ok(&self) -> bool {
        self.status == "ok" && self.value.is_some()
    }

    fn note(&mut self, s: &str) {
        if !self.notes.is_empty() {
            self.notes.push_str("; ");
        }
        self.notes.push_str(s);
    }

    /// Appends a note.
    pub fn add_note(&mut self, s: &str) {
        self.note(s);
    }
}

/// Peers that get a ratio column.
pub const PEERS: [&str; 2] = ["mitmdump", "haproxy"];

/// Fills `vs_direct` and `vs_peers` for the tproxy rows of one scenario.
pub fn compute_ratios(rows: &mut [Row]) {
    let snapshot: Vec<Row> = rows.to_vec();
    let ratio = |a: &Row, b: &Row| -> Option<f64> {
        let (x, y) = (a.value?, b.value?);
        if !a.ok() || !b.ok() || x <= 0.0 || y <= 0.0 {
            return None;
        }
        Some(if a.unit.higher_is_better() {
            x / y
        } else {
            y / x
        })
    };
    for r in rows.iter_mut() {
        let same = |s: &str| {
            snapshot
                .iter()
                .find(|o| o.scenario == r.scenario && o.subject == s && o.ok())
        };
        if r.subject != "direct"
            && let Some(d) = same("direct")
        {
            r.vs_direct = ratio(r, d);
        }
        if !r.subject.starts_with("tproxy") {
            continue;
        }
        for peer in PEERS {
            // "tproxy cold" is compared with "mitmdump cold", else "mitmdump".
            let variant = r.subject.replacen("tproxy", peer, 1);
            if let Some(p) = same(&variant).or_else(|| same(peer))
                && let Some(v) = ratio(r, p)
            {
                r.vs_peers.insert(peer.to_owned(), v);
            }
        }
    }
}

fn lat(us: Option<f64>) -> String {
    match us {
        None => "–".into(),
        Some(v) if v >= 1000.0 => format!("{:.2} ms", v / 1000.0),
        Some(v) if v < 10.0 => format!("{v:.2} µs"),
        Some(v) => format!("{v:.0} µs"),
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".into())
}

/// The Markdown results table.
pub fn markdown(rows: &[Row]) -> String {
    let has_haproxy = rows.iter().any(|r| r.vs_peers.contains_key("haproxy"));
    let mut s = String::from(
        "| # | scenario | subject | result | p50 | p99 | p99.9 | CPU s/1k req | peak RSS | vs direct | vs mitmdump |",
    );
    if has_haproxy {
        s.push_str(" vs haproxy |");
    }
    s.push_str(" notes |\n|---|---|---|---|---|---|---|---|---|---|---|");
    if has_haproxy {
        s.push_str("---|");
    }
    s.push_str("---|\n");
    for r in rows {
        let result = if r.ok() {
            r.unit.fmt(r.value.unwrap_or(0.0))
        } else {
            r.status.clone()
        };
        let x = |v: Option<f64>| opt(v, |v| format!("{v:.2}×"));
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.title,
            r.subject,
            result,
            lat(r.p50_us),
            lat(r.p99_us),
            lat(r.p999_us),
            opt(r.cpu_s_per_1k, |v| format!("{v:.3}")),
            opt(r.peak_rss_mib, |v| format!("{v:.1} MiB")),
            x(r.vs_direct),
            x(r.vs_peers.get("mitmdump").copied()),
        );
        if has_haproxy {
            let _ = write!(s, " {} |", x(r.vs_peers.get("haproxy").copied()));
        }
        let _ = writeln!(s, " {} |", r.notes.replace('|', "/"));
    }
    s
}

/// One target from the issue, compared with this run.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The target as written in the issue.
    pub target: String,
    /// What this run measured.
    pub measured: String,
    /// "met", "missed by N %", or "not measured".
    pub verdict: String,
}

fn find<'a>(rows: &'a [Row], scenario: &str, subject: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.scenario == scenario && r.subject == subject && r.ok())
}

/// `got` against a minimum or maximum.
fn verdict(got: Option<f64>, target: f64, at_least: bool) -> String {
    match got {
        None => "not measured".into(),
        Some(g) if at_least && g >= target => "met".into(),
        Some(g) if !at_least && g <= target => "met".into(),
        Some(g) => format!("missed by {:.0} %", ((g - target) / target * 100.0).abs()),
    }
}

/// The targets against the rows.
pub fn targets(rows: &[Row]) -> Vec<Target> {
    let mut out = Vec::new();
    let mut push =
        |target: &str, got: Option<f64>, want: f64, at_least: bool, fmt: &dyn Fn(f64) -> String| {
            out.push(Target {
                target: target.into(),
                measured: got.map(fmt).unwrap_or_else(|| "–".into()),
                verdict: verdict(got, want, at_least),
            });
        };
    let x = |v: f64| format!("{v:.2}×");
    let t1 = find(rows, "1", "tproxy");
    push(
        "HTTPS interception h1 keep-alive ≥ 0.6× direct",
        t1.and_then(|r| r.vs_direct),
        0.6,
        true,
        &x,
    );
    push(
        "HTTPS interception h1 keep-alive ≥ 80× mitmdump",
        t1.and_then(|r| r.vs_peers.get("mitmdump").copied()),
        80.0,
        true,
        &x,
    );
    let t2 = find(rows, "2", "tproxy");
    push(
        "h2 interception ≥ 60k req/s",
        t2.and_then(|r| r.value),
        60_000.0,
        true,
        &|v| format!("{} req/s", thousands(v)),
    );
    push(
        "h2 interception ≥ 0.65× direct",
        t2.and_then(|r| r.vs_direct),
        0.65,
        true,
        &x,
    );
    push(
        "passthrough bulk ≥ 0.9× direct (splice)",
        find(rows, "5", "tproxy splice").and_then(|r| r.vs_direct),
        0.9,
        true,
        &x,
    );
    push(
        "intercepted bulk ≥ 0.5× direct",
        find(rows, "6", "tproxy").and_then(|r| r.vs_direct),
        0.5,
        true,
        &x,
    );
    let added = match (find(rows, "1h", "tproxy"), find(rows, "1h", "direct")) {
        (Some(t), Some(d)) => t.p99_us.zip(d.p99_us).map(|(a, b)| (a - b) / 1000.0),
        _ => None,
    };
    push(
        "added p99 latency at half of max load < 1 ms",
        added,
        1.0,
        false,
        &|v| format!("{v:.2} ms"),
    );
    let small_rss = ["1", "2", "3"]
        .iter()
        .filter_map(|s| find(rows, s, "tproxy").and_then(|r| r.peak_rss_mib))
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    push(
        "proxy RSS ≤ 20 MB under small-request loads (max peak of 1–3)",
        small_rss,
        20.0,
        false,
        &|v| format!("{v:.1} MiB"),
    );
    let flat = find(rows, "6", "tproxy").and_then(|r| {
        let mut v: Vec<u64> = r.rss_series.iter().map(|s| s.1).collect();
        v.sort_unstable();
        let median = *v.get(v.len() / 2)?;
        let dev = v.iter().map(|x| x.abs_diff(median)).max()?;
        Some(dev as f64 / 1024.0)
    });
    push(
        "RSS flat (±10 MB) while streaming 100 MiB bodies (largest deviation from the median sample)",
        flat,
        10.0,
        false,
        &|v| format!("{v:.1} MiB"),
    );
    push(
        "≤ 10 KiB per idle connection (TLS, after one request)",
        find(rows, "7", "tproxy tls").and_then(|r| r.value),
        10.0,
        false,
        &|v| format!("{v:.1} KiB"),
    );
    push(
        "≤ 10 KiB per idle connection (plain TCP, nothing sent)",
        find(rows, "7", "tproxy tcp").and_then(|r| r.value),
        10.0,
        false,
        &|v| format!("{v:.1} KiB"),
    );
    push(
        "new TLS connections through the proxy ≥ 5,000/s (warm cache)",
        find(rows, "4", "tproxy warm").and_then(|r| r.value),
        5000.0,
        true,
        &|v| format!("{} conn/s", thousands(v)),
    );
    let us = |v: f64| format!("{v:.2} µs");
    push(
        "leaf mint on miss ≤ 50 µs (P-256, median: robust to scheduler stalls)",
        find(rows, "9", "mint miss P-256").and_then(|r| r.p50_us),
        50.0,
        false,
        &us,
    );
    push(
        "leaf mint hit ≤ 1 µs (median)",
        find(rows, "9", "mint hit P-256").and_then(|r| r.p50_us),
        1.0,
        false,
        &us,
    );
    let obs = |subject: &str| find(rows, "obs", subject).and_then(|r| r.value);
    push(
        "per-pod metrics pipeline costs < 3 % of throughput (metrics only ≥ 0.97× of off)",
        obs("tproxy metrics only")
            .zip(obs("tproxy obs off"))
            .map(|(a, b)| a / b),
        0.97,
        true,
        &x,
    );
    out
}

/// The targets as a Markdown table.
pub fn targets_markdown(t: &[Target]) -> String {
    let mut s = String::from("| target | measured | verdict |\n|---|---|---|\n");
    for t in t {
        let _ = writeln!(s, "| {} | {} | {} |", t.target, t.measured, t.verdict);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(s: &str, subject: &str, unit: Unit, v: f64) -> Row {
        let mut r = Row::new(s, "t", subject, unit);
        r.value = Some(v);
        r
    }

    #[test]
    fn ratios_compare_with_direct_and_the_matching_peer_variant() {
        let mut rows = vec![
            row("4", "direct", Unit::ConnPerSec, 1000.0),
            row("4", "tproxy cold", Unit::ConnPerSec, 500.0),
            row("4", "mitmdump cold", Unit::ConnPerSec, 10.0),
            row("4", "mitmdump warm", Unit::ConnPerSec, 20.0),
            row("7", "tproxy tcp", Unit::KibPerConn, 5.0),
            row("7", "mitmdump tcp", Unit::KibPerConn, 20.0),
        ];
        let mut failed = row("4", "tproxy warm", Unit::ConnPerSec, 900.0);
        failed.status = "failed: x".into();
        rows.push(failed);
        compute_ratios(&mut rows);
        assert_eq!(rows[1].vs_direct, Some(0.5));
        assert_eq!(rows[1].vs_peers.get("mitmdump"), Some(&50.0));
        // Lower is better: 4× less memory than mitmdump is 4×.
        assert_eq!(rows[4].vs_peers.get("mitmdump"), Some(&4.0));
        assert_eq!(rows[6].vs_direct, None);
        assert!(rows[2].vs_peers.is_empty(), "peers get no peer ratios");
        let md = markdown(&rows);
        assert!(md.contains("| 4 | t | tproxy cold | 500 conn/s |"), "{md}");
        assert!(md.contains("failed: x"), "{md}");
    }

    #[test]
    fn verdicts_say_by_how_much() {
        assert_eq!(verdict(Some(0.3), 0.6, true), "missed by 50 %");
        assert_eq!(verdict(Some(0.7), 0.6, true), "met");
        assert_eq!(verdict(Some(75.0), 50.0, false), "missed by 50 %");
        assert_eq!(verdict(None, 1.0, false), "not measured");
        let mut mint = row("9", "mint miss P-256", Unit::MicrosPerOp, 90.0);
        mint.p50_us = Some(40.0);
        let t = targets(&[mint]);
        let m = t
            .iter()
            .find(|t| t.target.starts_with("leaf mint on miss"))
            .unwrap();
        assert_eq!(m.verdict, "met");
    }
}
