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
    parse_wrk(&out)
}

/// The numbers from wrk's output (the `BENCH` line of [`WRK_LUA`]).
pub fn parse_wrk(out: &str) -> Result<Measure, String> {
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
    let log = std::fs::read_to_string(&logf).unwrap_or_default();
    parse_h2load(&out, &log, h1)
}

/// The numbers from h2load's output and its `--log-file` (tab-separated:
/// start µs, status, duration µs).
pub fn parse_h2load(out: &str, log: &str, h1: bool) -> Result<Measure, String> {
    if !h1 && !out.contains("Application protocol: h2") {
        let why = out
            .lines()
            .find(|l| l.contains("No protocol negotiated") || l.contains("protocol"))
            .unwrap_or("h2 not negotiated");
        return Err(format!(
            "h2 not negotiated through this path ({})",
            why.trim()
        ));
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
    let lat: Vec<f64> = log
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentiles(v), (Some(500.0), Some(990.0), Some(999.0)));
        assert_eq!(percentiles(vec![7.0]), (Some(7.0), Some(7.0), Some(7.0)));
        assert_eq!(percentiles(Vec::new()), (None, None, None));
    }

    #[test]
    fn wrk_line_is_parsed_and_empty_runs_fail() {
        let out = "Running 1s test @ http://x/\nBENCH requests=1200 duration_us=2000000 errors=3 p50=150 p99=900 p999=1500\n";
        let m = parse_wrk(out).unwrap();
        assert_eq!((m.ops, m.errors), (1200, 3));
        assert!((m.rate() - 600.0).abs() < 1e-9);
        assert_eq!(
            (m.p50_us, m.p99_us, m.p999_us),
            (Some(150.0), Some(900.0), Some(1500.0))
        );
        assert!(parse_wrk("BENCH requests=0 duration_us=1 errors=5 p50=0 p99=0 p999=0").is_err());
        assert!(parse_wrk("unable to connect").is_err());
    }

    #[test]
    fn h2load_output_is_parsed_and_h1_fallback_is_refused() {
        let out = "Application protocol: h2\nfinished in 2.00s, 5000.00 req/s, 1MB/s\n\
                   requests: 10000 total, 10000 started, 10000 done, 9998 succeeded, 2 failed, 0 errored, 0 timeout\n";
        let log = "1700000000000000\t200\t100\n1700000000000001\t200\t300\n";
        let m = parse_h2load(out, log, false).unwrap();
        assert_eq!((m.ops, m.errors), (9998, 2));
        assert!((m.secs - 2.0).abs() < 1e-9);
        assert_eq!(m.p50_us, Some(100.0));
        let e = parse_h2load(
            "Application protocol: http/1.1\nfinished in 1.00s",
            "",
            false,
        )
        .unwrap_err();
        assert!(e.contains("not negotiated"), "{e}");
    }
}
