//! Process start-up and shutdown: build the shared state, bind listeners,
//! start one worker per core and the admin thread, wait for SIGTERM/SIGINT,
//! drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::config::{Config, Mode};
use crate::flowlog::{DropReason, FlowLog, FlowLogConfig, OnFull, OutputOptions};
use crate::metrics::Metrics;
use crate::net::listener::bind_all;
use crate::tls::ca::{CertificateAuthority, trust_instructions};
use crate::tls::certcache::CertCache;
use crate::tls::upstream::UpstreamTlsOptions;
use crate::worker::{self, Shared};

/// A start-up failure, said so the user can fix it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("certificate authority: {0}")]
    Ca(#[from] crate::tls::ca::CaError),
    #[error(
        "cannot listen on {addr}: {source} (another process on that port? pick another with --mode MODE@HOST:PORT)"
    )]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("admin listener {addr}: {source} (pick another with --admin ADDR, or --admin off)")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("worker {id} failed to start: {reason}")]
    Worker { id: usize, reason: String },
    #[error("{0}")]
    Other(String),
}

/// How a run ended (after a signal, or a broken flow-log output in block mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Flow-log records lost during the run or at the shutdown deadline.
    pub flowlog_lost: u64,
    /// The flow-log output failed for good and `--flow-log-full block` made
    /// that fatal.
    pub flowlog_output_failed: bool,
}

impl Outcome {
    /// Exit status 0: every flow was logged.
    pub const EXIT_OK: u8 = 0;
    /// Exit status 3: clean shutdown, but flow-log records were lost.
    pub const EXIT_FLOWLOG_LOST: u8 = 3;
    /// Exit status 4: stopped because stdout failed (`--flow-log-full block`).
    pub const EXIT_FLOWLOG_OUTPUT_FAILED: u8 = 4;

    /// The process exit status (documented in the README).
    pub fn exit_code(&self) -> u8 {
        if self.flowlog_output_failed {
            Self::EXIT_FLOWLOG_OUTPUT_FAILED
        } else if self.flowlog_lost > 0 {
            Self::EXIT_FLOWLOG_LOST
        } else {
            Self::EXIT_OK
        }
    }
}

/// The least time the flow log gets to drain at shutdown, even when the
/// in-flight connections used all of `--shutdown-timeout`.
const MIN_FLUSH: Duration = Duration::from_millis(200);

/// Run the proxy until SIGTERM/SIGINT; returns after draining, at the
/// latest `--shutdown-timeout` (plus [`MIN_FLUSH`]) after the signal.
pub fn run(cfg: Config) -> Result<Outcome, StartError> {
    let signals = block_signals();
    let (ca, created) = CertificateAuthority::load_or_create(&cfg.confdir, cfg.ca_key_kind)?;
    if created {
        eprintln!(
            "tproxy: created a new CA in {}\n{}",
            cfg.confdir.display(),
            trust_instructions(&cfg.confdir)
        );
    }
    let ca = Arc::new(ca);
    let certs = CertCache::new(ca.clone(), cfg.cert_cache_size)?;
    let upstream_alpn = crate::tls::upstream::UpstreamAlpn::new(&UpstreamTlsOptions {
        insecure: cfg.ssl_insecure,
        extra_roots: cfg.upstream_ca.clone(),
    })?;
    let metrics = Metrics::new(&crate::metrics::MetricsOptions {
        workers: cfg.workers,
        enabled: cfg.metrics,
        max_hosts: cfg.metrics_max_hosts,
        rules: cfg.rules.clone(),
    })?;
    let policy = match &cfg.rules {
        Some(path) => crate::policy::LivePolicy::watch(path)
            .map_err(|e| StartError::Other(format!("--rules {}: {e}", path.display())))?,
        None => crate::policy::LivePolicy::fixed(crate::policy::Policy::allow_all()),
    };
    let pods =
        match &cfg.pod_directory {
            Some(path) => Some(crate::poddir::LiveDirectory::watch(path).map_err(|e| {
                StartError::Other(format!("--pod-directory {}: {e}", path.display()))
            })?),
            None => None,
        };

    // Bind everything before starting anything, so errors are immediate.
    let mut per_worker: Vec<Vec<(Mode, std::net::TcpListener)>> =
        (0..cfg.workers).map(|_| Vec::new()).collect();
    let mut listen_addrs = Vec::new();
    let mut bound = Vec::new();
    for spec in &cfg.listeners {
        let (socks, addr) =
            bind_all(spec.addr, cfg.workers).map_err(|source| StartError::Bind {
                addr: spec.addr,
                source,
            })?;
        for (w, s) in socks.into_iter().enumerate() {
            per_worker[w].push((spec.mode, s));
        }
        listen_addrs.push(addr);
        bound.push((spec.mode, addr));
    }
    let admin = match cfg.admin {
        Some(addr) => {
            let l = crate::net::listener::bind_reuseport_blocking(addr)
                .map_err(|source| StartError::Admin { addr, source })?;
            let a = l
                .local_addr()
                .map_err(|source| StartError::Admin { addr, source })?;
            // The loop guard covers the admin listener too: `/metrics` and
            // `/ca.pem` are not a destination reachable through the proxy.
            listen_addrs.push(a);
            Some((l, a))
        }
        None => None,
    };

    let (tracer, exporter) = match &cfg.tracing {
        Some(t) => {
            let (tracer, exporter) =
                crate::observe::trace::start(t, &cfg.upstream_ca, &metrics.registry)
                    .map_err(|e| StartError::Other(format!("tracing: {e}")))?;
            (Some(tracer), Some(exporter))
        }
        None => (None, None),
    };
    let output_failed = Arc::new(AtomicBool::new(false));
    let flowlog = FlowLog::stdout_with(
        FlowLogConfig {
            format: cfg.log_format,
            detail: cfg.flow_detail,
            show_secrets: cfg.show_secrets,
        },
        OutputOptions {
            capacity: cfg.flow_log_queue,
            on_full: cfg.flow_log_full,
            on_failure: stop_on_output_failure(cfg.flow_log_full, output_failed.clone()),
        },
    );
    let workers = cfg.workers;
    let shared = Arc::new(Shared {
        cfg,
        ca,
        certs,
        flowlog: flowlog.clone(),
        metrics,
        listen_addrs,
        shutting_down: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        policy,
        pods,
        tracer,
        upstream_alpn,
        health: crate::health::Heartbeats::new(workers),
        refusal_logs: Default::default(),
    });

    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
    let mut handles = Vec::new();
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("tproxy-worker-{id}"))
            .spawn(move || {
                let res = worker::run(id, shared.clone(), listeners, &ready);
                shared.health.exited(id);
                if let Err(e) = res {
                    let _ = ready.send((id, Err(e.to_string())));
                }
            })
            .map_err(|e| StartError::Other(format!("cannot spawn worker thread: {e}")))?;
        handles.push(h);
    }
    drop(ready_tx);
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((id, Err(reason))) => return Err(StartError::Worker { id, reason }),
            Err(_) => return Err(StartError::Other("workers exited during start-up".into())),
        }
    }
    if let Some((listener, addr)) = admin {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("tproxy-admin".into())
            .spawn(move || crate::admin::run(listener, shared))
            .map_err(|e| StartError::Other(format!("cannot spawn admin thread: {e}")))?;
        tracing::info!(mode = %"admin", %addr, "listening");
    }
    for (mode, addr) in &bound {
        tracing::info!(%mode, %addr, "listening");
    }
    log_access(&shared.cfg, &bound);
    report_migrate_req(&shared.metrics);
    raise_nofile(shared.cfg.max_connections);

    let sig = wait_for_signal(&signals);
    let deadline = Instant::now() + shared.cfg.shutdown_timeout;
    let flowlog_output_failed = output_failed.load(Ordering::SeqCst);
    if flowlog_output_failed {
        tracing::error!(
            "shutting down: the flow log output failed and --flow-log-full block makes that fatal"
        );
    } else {
        tracing::info!(
            signal = sig,
            "shutting down: no new connections, draining in-flight flows"
        );
    }
    shared.shutting_down.store(true, Ordering::SeqCst);
    // Bounded whatever the workers do (one may be wedged, or waiting for a
    // stuck flow log with --flow-log-full block): past the deadline the
    // process exits without them.
    let unfinished = join_until(handles, deadline);
    let left = shared.in_flight.load(Ordering::Acquire);
    if left > 0 || unfinished > 0 {
        tracing::warn!(
            connections = left,
            workers_unfinished = unfinished,
            "shutdown timeout reached with connections still open"
        );
    }
    let flush_deadline = deadline.max(Instant::now() + MIN_FLUSH);
    let finish = flowlog.finish(flush_deadline);
    if let Some(stats) = flowlog.stats()
        && finish.lost_total > 0
    {
        tracing::warn!(
            lost = finish.lost_total,
            queue_full = stats.dropped(DropReason::QueueFull),
            output_error = stats.dropped(DropReason::OutputError),
            shutdown = stats.dropped(DropReason::Shutdown),
            "flow log incomplete: records were lost (exit status 3)"
        );
    }
    if let Some(e) = exporter {
        e.shutdown_until(flush_deadline);
    }
    crate::diag::flush(
        flush_deadline
            .saturating_duration_since(Instant::now())
            .max(MIN_FLUSH),
    );
    Ok(Outcome {
        flowlog_lost: finish.lost_total,
        flowlog_output_failed,
    })
}

/// Waits for the worker threads until `deadline`; returns how many had not
/// finished by then (they are left running; the process is about to exit).
fn join_until(handles: Vec<std::thread::JoinHandle<()>>, deadline: Instant) -> usize {
    let mut pending = handles;
    loop {
        let (done, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|h| h.is_finished());
        for h in done {
            let _ = h.join();
        }
        pending = rest;
        if pending.is_empty() || Instant::now() >= deadline {
            return pending.len();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// With `--flow-log-full block`, a broken flow-log output stops the process
/// (the kubelet restarts it and the log resumes): raise SIGTERM, which
/// `wait_for_signal` receives, and remember why. With `drop`, the proxy
/// keeps serving; the failure shows in /readyz and the metrics.
fn stop_on_output_failure(
    mode: OnFull,
    failed: Arc<AtomicBool>,
) -> Option<crate::flowlog::OnFailure> {
    match mode {
        OnFull::Drop => None,
        OnFull::Block => Some(Box::new(move |_error| {
            failed.store(true, Ordering::SeqCst);
            // SAFETY: kill(2) on our own pid with a valid signal number; the
            // signal is blocked in every thread and taken by sigwait.
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        })),
    }
}

/// Raise the open-file soft limit to the hard one (as Go programs and most
/// servers do): an intercepted connection holds two descriptors, a spliced
/// one four, and the common soft default of 1024 ends a busy laptop proxy in
/// `accept failed: Too many open files`. Warn when `--max-connections` needs
/// more than the limit allows.
fn raise_nofile(max_connections: Option<usize>) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a
    // live rlimit; they cannot affect memory safety.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|v| v.trim().parse::<libc::rlim_t>().ok())
            .unwrap_or(lim.rlim_max);
        lim.rlim_cur = lim.rlim_max.min(nr_open);
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } != 0 {
            lim.rlim_cur = before;
        }
    }
    let limit: u64 = lim.rlim_cur;
    tracing::debug!(limit, before, "open-file limit");
    if let Some(max) = max_connections {
        let needed = (max as u64).saturating_mul(2).saturating_add(64);
        if needed > limit {
            tracing::warn!(
                max_connections = max,
                open_file_limit = limit,
                "--max-connections {max} needs about {needed} open files (two per connection), more than \
                 the open-file limit {limit}: connections beyond it fail to be accepted instead of being \
                 shed; raise the limit (ulimit -n, LimitNOFILE=) or lower --max-connections"
            );
        }
    }
}

/// Say whether a restart beside a new tproxy can lose queued connections.
fn report_migrate_req(metrics: &Metrics) {
    match crate::net::listener::migrate_req() {
        Some(true) => {
            metrics.migrate_req.set(1);
            tracing::info!(
                "net.ipv4.tcp_migrate_req=1: on restart, connections queued on this process move to the next tproxy"
            );
        }
        Some(false) => {
            metrics.migrate_req.set(0);
            tracing::warn!(
                "net.ipv4.tcp_migrate_req=0: connections queued on this process's listeners are reset when \
                 it exits, so a restart can fail requests; set it to 1 (tproxy-podwatch does by default; \
                 docs/restarts.md)"
            );
        }
        None => {
            metrics.migrate_req.set(-1);
            tracing::warn!(
                "net.ipv4.tcp_migrate_req not available (Linux < 5.14): a restart can reset connections \
                 queued on the old process (docs/restarts.md)"
            );
        }
    }
}

/// Say who the regular listeners serve, and warn about settings that are
/// probably not what was meant.
fn log_access(cfg: &Config, bound: &[(Mode, std::net::SocketAddr)]) {
    let regular: Vec<_> = bound
        .iter()
        .filter(|(m, _)| *m == Mode::Regular)
        .map(|(_, a)| *a)
        .collect();
    if regular.is_empty() {
        if cfg.proxy_auth.is_some() {
            tracing::warn!("--proxyauth has no effect: there is no regular-mode listener");
        }
        return;
    }
    let allowed = &cfg.allow_clients;
    tracing::info!(%allowed, "regular listeners serve these clients (--allow-client)");
    if allowed.is_open() {
        tracing::warn!(
            "--allow-client any: the regular listeners serve every source that can reach them \
             (an open proxy); use it only behind a firewall or with --proxyauth"
        );
    } else if allowed.loopback_only() {
        for addr in regular.iter().filter(|a| !a.ip().is_loopback()) {
            tracing::warn!(
                %addr,
                "this regular listener serves only clients on this host (--allow-client default \
                 without --pod-directory); add --allow-client CIDR for others"
            );
        }
    }
    if let Some(auth) = &cfg.proxy_auth {
        tracing::info!(user = %auth.user(), "proxy authentication required (--proxyauth)");
    }
}

/// Block SIGTERM/SIGINT in this thread (and every thread it spawns) so they
/// are only received by `wait_for_signal`.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it and
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> &'static str {
    let mut sig: libc::c_int = 0;
    loop {
        // SAFETY: `set` was initialised by block_signals; sigwait writes the
        // received signal number into `sig`.
        let rc = unsafe { libc::sigwait(set, &mut sig) };
        if rc == 0 {
            return if sig == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
        }
    }
}
