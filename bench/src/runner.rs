//! Runs one workload against one subject (direct or a started proxy) and
//! turns what the generator and /proc saw into a [`Row`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::client::{self, Load};
use crate::loadgen::{self, Measure};
use crate::procs::{RssSampler, cpu_seconds, status_kib};
use crate::progress::Progress;
use crate::proxies::{self, Programs, Spec, StartError};
use crate::report::{Row, Unit};
use crate::topo::Topology;
use crate::upstream::Pki;

/// Sizes and durations of the run.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Smoke run.
    pub quick: bool,
    /// Seconds per measurement.
    pub secs: u64,
    /// Warm-up seconds before each measurement (0: none).
    pub warm_secs: u64,
    /// Concurrent connections for the request scenarios.
    pub connections: usize,
    /// Run peers (mitmdump, haproxy).
    pub peers: bool,
    /// Bulk object size, bytes.
    pub bulk_bytes: u64,
    /// Downloads per bulk measurement.
    pub bulk_count: usize,
    /// Idle connections to open.
    pub idle: usize,
    /// Mints per micro-benchmark.
    pub mint_n: usize,
    /// Policy decisions per micro-benchmark.
    pub policy_iters: usize,
    /// Seconds of the soak scenario.
    pub soak_secs: u64,
}

/// A generator run.
#[derive(Debug, Clone)]
pub enum Work {
    /// wrk against a URL (h1 keep-alive).
    Wrk(String),
    /// h2load against a URL: connections, streams each.
    H2load(String, usize, usize),
    /// The built-in client.
    Client(Load),
    /// curl downloads of a URL.
    Bulk(String),
}

/// Everything a scenario needs.
pub struct Bench<'a> {
    /// Namespaces.
    pub topo: &'a Topology,
    /// Certificates.
    pub pki: &'a Pki,
    /// Programs.
    pub progs: &'a Programs,
    /// Sizes.
    pub opts: &'a Opts,
    /// wrk's Lua script.
    pub lua: PathBuf,
    /// The progress bar.
    pub progress: &'a Progress,
    /// Rows so far.
    pub rows: Vec<Row>,
    /// Failures of the harness itself (direct path broken…): exit non-zero.
    pub broken: Vec<String>,
}

impl<'a> Bench<'a> {
    /// Runs `work` for the configured time (warm-up first).
    pub fn run_work(&self, work: &Work, secs: u64) -> Result<Measure, String> {
        let c = &self.topo.client;
        match work {
            Work::Wrk(url) => loadgen::wrk(c, &self.lua, url, self.opts.connections, secs),
            Work::H2load(url, conns, streams) => {
                loadgen::h2load(c, url, *conns, *streams, secs, false)
            }
            Work::Client(load) => {
                let mut l = load.clone();
                l.duration = Duration::from_secs(secs);
                client::run(c, &l)
            }
            Work::Bulk(url) => loadgen::curl_bulk(c, url, self.opts.bulk_count),
        }
    }

    /// The row for `subject` (None = direct path): starts it, warms up,
    /// measures, stops it.
    pub fn measure(
        &mut self,
        scenario: &str,
        title: &str,
        unit: Unit,
        label: &str,
        spec: Option<&Spec>,
        work: &Work,
    ) -> Row {
        self.progress
            .detail(&format!("{scenario} {title}: {label}"));
        let mut row = Row::new(scenario, title, label, unit);
        let running = match spec {
            None => None,
            Some(s) => match self.start(s) {
                Ok(r) => Some(r),
                Err(status) => {
                    row.status = status;
                    return row;
                }
            },
        };
        let pid = running.as_ref().map(|r| r.proc.pid());
        if self.opts.warm_secs > 0 && !matches!(work, Work::Bulk(_)) {
            let _ = self.run_work(work, self.opts.warm_secs);
        }
        let cpu0 = pid.and_then(cpu_seconds);
        let sampler = pid.map(RssSampler::start);
        let result = self.run_work(work, self.opts.secs);
        let series = sampler.map(RssSampler::finish).unwrap_or_default();
        let cpu1 = pid.and_then(cpu_seconds);
        let hwm = pid.and_then(|p| status_kib(p, "VmHWM"));
        let died = running.map(|mut r| {
            let dead = r.proc.exited();
            let tail = r.proc.log_tail(4);
            r.proc.stop();
            dead.map(|s| format!("{label} died during the run ({s}): {tail}"))
        });
        match result {
            Ok(m) => {
                row.value = Some(match unit {
                    Unit::Gbits => m.bytes as f64 * 8.0 / m.secs.max(1e-9) / 1e9,
                    _ => m.rate(),
                });
                row.p50_us = m.p50_us;
                row.p99_us = m.p99_us;
                row.p999_us = m.p999_us;
                if let (Some(a), Some(b)) = (cpu0, cpu1) {
                    let cpu = b - a;
                    if unit == Unit::Gbits {
                        let gib = m.bytes as f64 / (1u64 << 30) as f64;
                        row.add_note(&format!("proxy CPU {:.2} s/GiB", cpu / gib.max(1e-9)));
                    } else if m.ops > 0 {
                        row.cpu_s_per_1k = Some(cpu / m.ops as f64 * 1000.0);
                    }
                }
                if m.errors > 0 {
                    row.add_note(&format!("{} errors", m.errors));
                }
                row.measure = Some(m);
            }
            Err(e) => {
                row.status = if scenario == "2" && e.contains("not negotiated") {
                    format!("n/a ({e})")
                } else {
                    format!("failed: {}", one_line(&e))
                };
                if spec.is_none() {
                    self.broken.push(format!("direct path of {scenario}: {e}"));
                }
            }
        }
        if let Some(Some(d)) = died {
            row.add_note(&one_line(&d));
        }
        row.peak_rss_mib = hwm.map(|k| k as f64 / 1024.0);
        row.rss_series = series;
        row
    }

    /// Starts a subject; Err is the row status.
    pub fn start(&self, spec: &Spec) -> Result<proxies::Running<'a>, String> {
        proxies::start(
            self.topo,
            self.progs,
            &self.pki.upstream_ca(),
            &self.pki.proxy_confdir(),
            spec,
        )
        .map_err(|e| match e {
            StartError::Unsupported(log) => {
                let why = log
                    .lines()
                    .find(|l| l.contains("error"))
                    .map(one_line)
                    .unwrap_or_else(|| one_line(&log));
                format!("n/a (flag not supported by this tproxy: {why})")
            }
            StartError::Missing(m) => format!("n/a ({m})"),
            StartError::Failed(m) => format!("failed: {}", one_line(&m)),
        })
    }

    /// The mitmdump subject (if peers are on): Some(spec) or a n/a row.
    pub fn mitmdump(&self, label: &str, args: &[&str]) -> Option<Spec> {
        self.opts
            .peers
            .then(|| Spec::new(label, proxies::Kind::Mitmdump, args))
    }

    /// Target for the built-in client: the upstream (transparent / direct).
    pub fn upstream_addr(port: u16) -> SocketAddr {
        SocketAddr::new(
            crate::topo::UPSTREAM_IP
                .parse()
                .unwrap_or(std::net::IpAddr::from([198, 18, 2, 2])),
            port,
        )
    }
}

/// The last meaningful line of a message, shortened for a table cell.
pub fn one_line(s: &str) -> String {
    let line = s
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim();
    let mut out: String = line.chars().take(160).collect();
    if line.chars().count() > 160 {
        out.push('…');
    }
    out
}
