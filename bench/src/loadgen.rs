//! Standard load generators run in the client namespace: wrk (HTTP/1.1
//! keep-alive, percentiles via a Lua `done()` hook), h2load (h2, per-request
//! log for percentiles), curl (bulk downloads).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::procs::run_capture;

/// What one generator run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measure {
    /// Completed operations (requests, connections, downloads).
    pub ops: u64,
    /// Measured seconds.
    pub secs: f64,
    /// Failed operations.
    pub errors: u64,
    /// Payload bytes moved (bulk).
    pub bytes: u64,
    /// Latency percentiles, microseconds.
    pub p50_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// 99.9th percentile.
    pub p999_us: Option<f64>,
}

impl Measure {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// p50/p99/p99.9 of latencies in µs.
pub fn percentiles(mut v: Vec<f64>) -> (Option<f64>, Option<f64>, Option<f64>) {
    if v.is_empty() {
        return (None, None, None);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        Some(v[i])
    };
    (at(0.50), at(0.99), at(0.999))
}

/// The wrk Lua script printing one machine-readable line at the end.
pub const WRK_LUA: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d errors=%d p50=%d p99=%d p999=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// wrk in namespace `ns` against `url` (keep-alive).
pub fn wrk(
    ns: &str,
    lua: &Path,
    url: &str,
    connections: usize,
    secs: u64,
) -> Result<Measure, String> {
    let threads = connections.clamp(1, 2);
    let out = run_capture(
        Command::new("ip")
            .args(["netns", "exec", ns, "wrk"])
            .arg(format!("-t{threads}"))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{secs}s"))
            .arg("--timeout")
            .arg("10s")
            .arg("-s")
            .arg(lua)
            .arg(url),
        Duration::from_secs(secs + 60),
    )?;
    let line = out
        .lines()
        .find(|l| l.starts_with("BENCH "))
        .ok_or_else(|| format!("wrk printed no result: {}", out.trim()))?;
    let get = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let m = Measure {
        ops: get("requests") as u64,
        secs: get("duration_us") / 1e6,
        errors: get("errors") as u64,
        bytes: 0,
        p50_us: Some(get("p50")),
        p99_us: Some(get("p99")),
        p999_us: Some(get("p999")),
    };
    if m.ops == 0 {
        return Err(format!("wrk completed no request: {}", out.trim()));
    }
    Ok(m)
}

/// h2load in namespace `ns`: `-c` connections, `-m` streams each (h2), or
/// `h1` for HTTP/1.1. Fails when h2 was not negotiated.
pub fn h2load(
    ns: &str,
    url: &str,
    connections: usize,
    streams: usize,
    secs: u64,
    h1: bool,
) -> Result<Measure, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let logf = dir.path().join("h2load.log");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "h2load"])
        .arg(format!("-c{connections}"))
        .arg(format!("-m{streams}"))
        .arg("-t1")
        .arg(format!("-D{secs}"))
        .arg("--warm-up-time=1")
        .arg("--log-file")
        .arg(&logf);
    if h1 {
        cmd.arg("--h1");
    }
    let out = run_capture(cmd.arg(url), Duration::from_secs(secs + 60))?;
    if !h1 && !out.contains("Application protocol: h2") {
        let why = out
            .lines()
            .find(|l| l.contains("No protocol negotiated") || l.contains("protocol"))
            .unwrap_or("h2 not negotiated");
        return Err(format!("h2 not negotiated through this path ({})", why.trim()));
    }
    // "finished in 10.00s, 12345.67 req/s, 1.23MB/s"
    let fin = out
        .lines()
        .find(|l| l.starts_with("finished in"))
        .ok_or_else(|| format!("h2load printed no result: {}", out.trim()))?;
    let secs_run: f64 = fin
        .trim_start_matches("finished in ")
        .split('s')
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    // "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
    let req = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_default();
    let count = |what: &str| -> u64 {
        req.split(',')
            .find(|p| p.trim().ends_with(what))
            .and_then(|p| p.split_whitespace().rev().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let ok = count("succeeded");
    let failed = count("failed") + count("errored") + count("timeout");
    let lat: Vec<f64> = std::fs::read_to_string(&logf)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2).and_then(|v| v.trim().parse().ok()))
        .collect();
    let (p50, p99, p999) = percentiles(lat);
    if ok == 0 {
        return Err(format!("h2load: no request succeeded: {}", out.trim()));
    }
    Ok(Measure {
        ops: ok,
        secs: secs_run,
        errors: failed,
        bytes: 0,
        p50_us: p50,
        p99_us: p99,
        p999_us: p999,
    })
}

/// `count` sequential curl downloads of `url` in namespace `ns`
/// (certificates not verified: the bench measures, the tests verify).
pub fn curl_bulk(ns: &str, url: &str, count: usize) -> Result<Measure, String> {
    let mut m = Measure::default();
    let mut times = Vec::new();
    for _ in 0..count {
        if crate::topo::interrupted() {
            return Err("interrupted".into());
        }
        let out = run_capture(
            Command::new("ip")
                .args(["netns", "exec", ns, "curl", "-sSk", "--max-time", "300"])
                .args(["-o", "/dev/null", "-w", "%{size_download} %{time_total}"])
                .arg(url),
            Duration::from_secs(320),
        )?;
        let mut it = out.split_whitespace();
        let bytes: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let t: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        if bytes == 0 || t <= 0.0 {
            m.errors += 1;
            continue;
        }
        m.ops += 1;
        m.bytes += bytes;
        m.secs += t;
        times.push(t * 1e6);
    }
    let (p50, p99, _) = percentiles(times);
    m.p50_us = p50;
    m.p99_us = p99;
    if m.ops == 0 {
        return Err(format!("every download of {url} failed"));
    }
    Ok(m)
}
