//! Process start-up and shutdown: build the shared state, bind listeners,
//! start one worker per core and the admin thread, wait for SIGTERM/SIGINT,
//! drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use crate::config::{Config, Mode};
use crate::flowlog::{FlowLog, FlowLogConfig};
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

/// Run the proxy until SIGTERM/SIGINT; returns after draining.
pub fn run(cfg: Config) -> Result<(), StartError> {
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
            let l = std::net::TcpListener::bind(addr)
                .map_err(|source| StartError::Admin { addr, source })?;
            let a = l
                .local_addr()
                .map_err(|source| StartError::Admin { addr, source })?;
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
    let flowlog = FlowLog::stdout(FlowLogConfig {
        format: cfg.log_format,
        detail: cfg.flow_detail,
        show_secrets: cfg.show_secrets,
    });
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
                let res = worker::run(id, shared, listeners, &ready);
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

    let sig = wait_for_signal(&signals);
    tracing::info!(
        signal = sig,
        "shutting down: no new connections, draining in-flight flows"
    );
    shared.shutting_down.store(true, Ordering::SeqCst);
    for h in handles {
        let _ = h.join();
    }
    let left = shared.in_flight.load(Ordering::Acquire);
    if left > 0 {
        tracing::warn!(
            connections = left,
            "shutdown timeout reached with connections still open"
        );
    }
    flowlog.flush();
    if let Some(e) = exporter {
        e.shutdown();
    }
    Ok(())
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
