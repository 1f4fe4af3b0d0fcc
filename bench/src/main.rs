//! tproxy-bench: sets up what it needs, builds the client → node → upstream
//! namespace topology with nginx upstream, runs the scenarios against the
//! direct path, tproxy and the peers, and prints one table (Markdown), also
//! written as JSON + Markdown under bench/results/.

mod client;
mod loadgen;
mod micro;
mod procs;
mod progress;
mod proxies;
mod report;
mod runner;
mod scenarios;
mod setup;
mod sink;
mod topo;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde::Serialize;

use crate::progress::Progress;
use crate::report::{Row, Target};
use crate::runner::{Bench, Opts};

/// Benchmark tproxy against the direct path and mitmdump (and haproxy when
/// installed) in network namespaces; prints a Markdown table and writes
/// bench/results/<time>.{json,md} and latest.{json,md}.
///
/// Scenarios (ids or names, for --scenario): 1/h1 HTTPS interception h1
/// keep-alive; 2/h2 h2 multiplexed; 3/http plain HTTP; 4/handshake new TLS
/// connection per request (cert cache cold vs warm); 5/passthrough bulk
/// (splice vs copy); 6/bulk intercepted bulk (RSS over time); 7/idle idle
/// connections (RSS per connection); 8/policy policy cost 1/100/1000 rules;
/// 9/mint leaf certificate mint (miss/hit); 1r/regular explicit-proxy mode;
/// 1h/halfload latency at half of max load; obs/observability metrics +
/// OTLP tracing on vs off; soak/churn (only when named) h2 + h1 TLS load
/// for --soak-secs against nginx with its default keep-alive settings:
/// failed requests (must be 0) and RSS over time.
///
/// Needs root for everything except 8 (micro part) and 9. Ratios > 1 mean
/// better than the compared path; compare ratios, not absolute numbers.
#[derive(Debug, Parser)]
#[command(name = "tproxy-bench", version)]
struct Cli {
    /// Scenarios to run (ids or names, comma-separated or repeated). Default: all.
    #[arg(long = "scenario", value_delimiter = ',', value_name = "ID")]
    scenarios: Vec<String>,
    /// Smoke run: ~1 s per measurement, 1 MiB bulk, 200 idle connections,
    /// peers only if already installed; for CI (checks the harness works).
    #[arg(long)]
    quick: bool,
    /// The tproxy binary. Default: target/release/tproxy of this workspace,
    /// built with `cargo build --release -p tproxy` when missing.
    #[arg(long, value_name = "PATH")]
    tproxy: Option<PathBuf>,
    /// Seconds per measurement (default 10; --quick 1).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Concurrent connections for the request scenarios (default 32; --quick 8).
    #[arg(long, value_name = "N")]
    connections: Option<usize>,
    /// Bulk object size in MiB (default 100; --quick 1).
    #[arg(long, value_name = "MiB")]
    bulk_mib: Option<u64>,
    /// Idle connections in scenario 7 (default 10000; --quick 200).
    #[arg(long, value_name = "N")]
    idle: Option<usize>,
    /// Output directory. Default: bench/results of this workspace.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Do not run peers (mitmdump, haproxy).
    #[arg(long)]
    no_peers: bool,
    /// Do not install anything (apt, pip); use what is there.
    #[arg(long)]
    no_install: bool,
    /// Seconds of the soak scenario (default 300; --quick 5).
    #[arg(long, value_name = "SECS")]
    soak_secs: Option<u64>,
}

#[derive(Serialize)]
struct Report<'a> {
    started: String,
    machine: String,
    tproxy: String,
    quick: bool,
    options: String,
    rows: &'a [Row],
    targets: &'a [Target],
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    topo::install_signal_handlers();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tproxy-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn resolve_scenarios(names: &[String]) -> Result<Vec<&'static str>, String> {
    if names.is_empty() {
        return Ok(scenarios::ALL
            .iter()
            .map(|s| s.0)
            .filter(|id| !scenarios::OPT_IN.contains(id))
            .collect());
    }
    let mut out = Vec::new();
    for n in names {
        let s = scenarios::ALL
            .iter()
            .find(|s| s.0 == n || s.1 == n)
            .ok_or_else(|| {
                let known: Vec<String> = scenarios::ALL
                    .iter()
                    .map(|s| format!("{}/{}", s.0, s.1))
                    .collect();
                format!("unknown scenario `{n}`; known: {}", known.join(", "))
            })?;
        if !out.contains(&s.0) {
            out.push(s.0);
        }
    }
    // Run in the canonical order (1h uses 1's result).
    out.sort_by_key(|id| scenarios::ALL.iter().position(|s| s.0 == *id));
    Ok(out)
}

/// Ok(true): harness worked; Ok(false): a direct path or micro-benchmark broke.
fn run(cli: &Cli) -> Result<bool, String> {
    let started = time::OffsetDateTime::now_utc();
    let selected = resolve_scenarios(&cli.scenarios)?;
    let q = cli.quick;
    let opts = Opts {
        quick: q,
        secs: cli.duration.unwrap_or(if q { 1 } else { 10 }).max(1),
        warm_secs: if q { 0 } else { 2 },
        connections: cli.connections.unwrap_or(if q { 8 } else { 32 }).max(1),
        peers: !cli.no_peers,
        bulk_bytes: cli.bulk_mib.unwrap_or(if q { 1 } else { 100 }).max(1) << 20,
        bulk_count: if q { 2 } else { 5 },
        idle: cli.idle.unwrap_or(if q { 200 } else { 10_000 }),
        mint_n: if q { 200 } else { 5000 },
        policy_iters: if q { 20_000 } else { 500_000 },
        soak_secs: cli.soak_secs.unwrap_or(if q { 5 } else { 300 }).max(1),
    };
    let root = setup::is_root();
    let needs_root: Vec<&str> = selected
        .iter()
        .filter(|id| scenarios::ALL.iter().any(|s| s.0 == **id && s.3))
        .copied()
        .collect();
    if !root && !needs_root.is_empty() {
        eprintln!(
            "tproxy-bench: not root: scenarios {} need root (network namespaces, iptables) and are \
             reported n/a; run as root (sudo) for them. Running the others.",
            needs_root.join(", ")
        );
    }
    let install = root && !cli.no_install;
    if root && !needs_root.is_empty() {
        if install {
            setup::ensure_packages()?;
        }
        for cmd in [
            "ip", "iptables", "nginx", "wrk", "h2load", "curl", "openssl",
        ] {
            if setup::which(cmd).is_none() {
                return Err(format!(
                    "{cmd} not found (apt-get install iproute2 iptables nginx-light wrk nghttp2-client curl openssl)"
                ));
            }
        }
    }
    let nofile = setup::raise_nofile();
    // The topology (and so tproxy, nginx, peers) only when a root scenario runs.
    let topo_needed = root && !needs_root.is_empty();
    let tproxy_bin = if topo_needed || cli.tproxy.is_some() {
        setup::tproxy(cli.tproxy.as_deref())?
    } else {
        PathBuf::from("(not needed)")
    };
    let peers = opts.peers && root;
    let progs = proxies::Programs {
        tproxy: tproxy_bin.clone(),
        mitmdump: if peers {
            // --quick: only when already installed.
            setup::mitmdump(install && !q)?
        } else {
            None
        },
        haproxy: if peers { setup::which("haproxy") } else { None },
    };
    let mut opts = opts;
    if peers && progs.mitmdump.is_none() {
        eprintln!("tproxy-bench: mitmdump not installed: peer rows skipped");
        opts.peers = progs.haproxy.is_some() && peers;
    }
    let machine = setup::machine();
    eprintln!(
        "tproxy-bench: {machine}; tproxy {}; fd limit {nofile}",
        tproxy_bin.display()
    );

    let out_dir = cli
        .out
        .clone()
        .unwrap_or_else(|| setup::workspace().join("bench/results"));
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix("tproxy-bench")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let lua = work.path().join("report.lua");
    std::fs::write(&lua, loadgen::WRK_LUA).map_err(|e| format!("{}: {e}", lua.display()))?;

    let progress = Progress::new(selected.len());
    let mut rows = Vec::new();
    let mut broken = Vec::new();
    let topology = if topo_needed {
        Some(topo::Topology::new()?)
    } else {
        None
    };
    let pki = match &topology {
        Some(_) => Some(upstream::Pki::new(&tproxy_bin)?),
        None => None,
    };
    let _nginx = match (&topology, &pki) {
        (Some(t), Some(p)) => Some(upstream::Nginx::start(t, p, &[opts.bulk_bytes])?),
        _ => None,
    };
    if let (Some(t), Some(pki)) = (&topology, &pki) {
        let mut bench = Bench {
            topo: t,
            pki,
            progs: &progs,
            opts: &opts,
            lua: lua.clone(),
            progress: &progress,
            rows: Vec::new(),
            broken: Vec::new(),
        };
        for id in &selected {
            if topo::interrupted() {
                break;
            }
            bench.scenario(id);
            progress.advance();
        }
        rows = bench.rows;
        broken = bench.broken;
    } else {
        for id in &selected {
            let needs = scenarios::ALL.iter().any(|s| s.0 == *id && s.3);
            if needs {
                let mut r = Row::new(id, scenarios::title(id), "all", report::Unit::ReqPerSec);
                r.status = "n/a (needs root: network namespaces)".into();
                rows.push(r);
            } else {
                rows.extend(micro_rows(id, &opts, &progress, &mut broken));
            }
            progress.advance();
        }
    }
    progress.finish();
    if topo::interrupted() {
        return Err("interrupted (namespaces and processes cleaned up)".into());
    }
    report::compute_ratios(&mut rows);
    let targets = report::targets(&rows);
    let table = report::markdown(&rows);
    let ttable = report::targets_markdown(&targets);
    let stamp = started
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]-[minute]-[second]Z"
        ))
        .unwrap_or_else(|_| "run".into());
    let options = format!(
        "duration {} s, warm-up {} s, {} connections, bulk {} MiB × {}, idle {}{}",
        opts.secs,
        opts.warm_secs,
        opts.connections,
        opts.bulk_bytes >> 20,
        opts.bulk_count,
        opts.idle,
        if q { ", --quick" } else { "" }
    );
    let md = format!(
        "# tproxy-bench {stamp}\n\nMachine: {machine}\n\ntproxy: `{}`; {options}\n\n{table}\n## Targets\n\n{ttable}",
        tproxy_bin.display()
    );
    println!("{table}\n{ttable}");
    let report = Report {
        started: stamp.clone(),
        machine,
        tproxy: tproxy_bin.display().to_string(),
        quick: q,
        options,
        rows: &rows,
        targets: &targets,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| format!("json: {e}"))?;
    for (name, body) in [
        (format!("{stamp}.json"), &json),
        (format!("{stamp}.md"), &md),
        ("latest.json".to_owned(), &json),
        ("latest.md".to_owned(), &md),
    ] {
        let p = out_dir.join(name);
        std::fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    eprintln!(
        "tproxy-bench: results in {}/{stamp}.{{json,md}}",
        out_dir.display()
    );
    for b in &broken {
        eprintln!("tproxy-bench: harness problem: {b}");
    }
    Ok(broken.is_empty())
}

/// Scenarios 8 (micro part) and 9 without a topology (not root).
fn micro_rows(id: &str, opts: &Opts, progress: &Progress, broken: &mut Vec<String>) -> Vec<Row> {
    let t = scenarios::title(id);
    match id {
        "9" => scenarios::mint_rows(t, opts, progress, broken),
        "8" => scenarios::policy_rows(t, opts, progress),
        _ => Vec::new(),
    }
}
