//! State shared by all workers ([`Shared`]) and owned by one worker
//! ([`Worker`]), and the worker thread itself: one monoio runtime per core.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use monoio::net::TcpListener;

use crate::config::{Config, Mode};
use crate::flowlog::FlowLog;
use crate::metrics::Metrics;
use crate::tls::ca::CertificateAuthority;
use crate::tls::certcache::CertCache;
use crate::upstream::Pool;

/// Everything the workers share (read-mostly).
#[derive(Debug)]
pub struct Shared {
    pub cfg: Config,
    pub ca: Arc<CertificateAuthority>,
    pub certs: CertCache,
    pub flowlog: FlowLog,
    pub metrics: Metrics,
    /// Addresses our listeners are bound to, admin included (loop guard).
    pub listen_addrs: Vec<SocketAddr>,
    /// Set on SIGTERM/SIGINT: stop accepting, finish in-flight flows.
    pub shutting_down: AtomicBool,
    /// Client connections being served, across workers.
    pub in_flight: AtomicUsize,
    /// Policy rules, reloaded live.
    pub policy: crate::policy::LivePolicy,
    /// Client IP → pod, reloaded live (absent without --pod-directory).
    pub pods: Option<crate::poddir::LiveDirectory>,
    /// Span export (absent when tracing is off).
    pub tracer: Option<crate::observe::trace::Tracer>,
    /// Upstream client configs per mirrored ALPN offer (HTTP/2 interception).
    pub upstream_alpn: crate::tls::upstream::UpstreamAlpn,
    /// One heartbeat per worker event loop (`/healthz`).
    pub health: crate::health::Heartbeats,
    /// Rate limits of the "refused a client" warnings, per [`crate::access::RefusalReason`].
    pub refusal_logs: [crate::access::RefusalLog; crate::access::RefusalReason::ALL.len()],
}

impl Shared {
    /// Whether `addr` is one of our own listeners (a request to it would loop).
    pub fn is_own_listener(&self, addr: SocketAddr) -> bool {
        let addr = crate::net::origdst::normalize(addr);
        self.listen_addrs.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip() == addr.ip()
                    || (l.ip().is_unspecified()
                        && (addr.ip().is_loopback() || is_local_ip(addr.ip()))))
        })
    }

    /// Whether a rules file is in use (without one, every request is
    /// intercepted and forwarded, and no rule is named in the logs).
    pub fn policy_configured(&self) -> bool {
        self.cfg.rules.is_some()
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// Whether `ip` is assigned to an interface of this host (network namespace).
fn is_local_ip(ip: std::net::IpAddr) -> bool {
    // Binding to a non-local address fails with EADDRNOTAVAIL.
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(SocketAddr::new(ip, 0)),
        socket2::Type::DGRAM,
        None,
    );
    sock.and_then(|s| s.bind(&SocketAddr::new(ip, 0).into()))
        .is_ok()
}

/// One worker's own state (lives on its thread; `Rc`, not `Arc`).
#[derive(Debug)]
pub struct Worker {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub pool: RefCell<Pool>,
    /// This worker's view of the live policy (one atomic load per use).
    pub policy: RefCell<crate::policy::watch::Snapshot<crate::policy::Policy>>,
    pub pods: Option<RefCell<crate::policy::watch::Snapshot<crate::poddir::PodDirectory>>>,
    /// This worker itself, for tasks that must own a handle (HTTP/2 streams).
    pub me: Weak<Worker>,
    /// Multiplexed HTTP/2 upstream connections of this worker.
    pub h2: RefCell<crate::engine::h2::client::H2Pool>,
    /// Fired by this worker's loop when the process starts shutting down.
    pub shutdown: crate::shutdown::ShutdownSignal,
}

impl Worker {
    /// An owned handle to this worker (it lives as long as its thread).
    pub fn rc(&self) -> Option<Rc<Worker>> {
        self.me.upgrade()
    }

    /// Whether `--allow-client` lets `ip` use a regular listener (the pod
    /// directory is this worker's current snapshot: pods podwatch adds are
    /// served as soon as the file reloads).
    pub fn client_allowed(&self, ip: std::net::IpAddr) -> bool {
        self.shared
            .cfg
            .allow_clients
            .allows(ip, |ip| self.source_pod(ip).is_some())
    }

    /// The pod a client IP belongs to, from the pod directory.
    pub fn source_pod(&self, ip: std::net::IpAddr) -> Option<Arc<crate::poddir::PodInfo>> {
        let pods = self.pods.as_ref()?;
        pods.borrow_mut().get().lookup(ip)
    }

    /// Return an upstream connection to the pool (or close it if full).
    pub fn release_upstream(&self, conn: crate::upstream::UpstreamConn) {
        let rejected = self.pool.borrow_mut().put(conn);
        self.closed_upstreams(rejected);
    }

    /// Log the close of upstream connections being dropped.
    pub fn closed_upstreams(&self, conns: impl IntoIterator<Item = crate::upstream::UpstreamConn>) {
        for c in conns {
            self.shared.flowlog.conn_event(crate::flowlog::ConnEvent {
                at: std::time::SystemTime::now(),
                client: c.last_client,
                kind: crate::flowlog::ConnEventKind::ServerDisconnect {
                    authority: c.target.authority(),
                    addr: c.addr,
                },
            });
        }
    }
}

/// Which I/O driver a runtime got.
pub fn driver_name<L, R>(rt: &monoio::FusionRuntime<L, R>) -> &'static str {
    match rt {
        monoio::FusionRuntime::Uring(_) => "io_uring",
        monoio::FusionRuntime::Legacy(_) => "epoll",
    }
}

/// Run one worker thread until shutdown: accept on every listener, serve
/// each connection on its own task.
pub fn run(
    id: usize,
    shared: Arc<Shared>,
    listeners: Vec<(Mode, std::net::TcpListener)>,
    ready: &std::sync::mpsc::Sender<(usize, Result<(), String>)>,
) -> std::io::Result<()> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .attach_thread_pool(Box::new(monoio::blocking::DefaultThreadPool::new(2)))
        .build()?;
    let driver = driver_name(&rt);
    tracing::info!(worker = id, driver = %driver, "worker started");
    shared
        .metrics
        .workers
        .with_label_values(&[&id.to_string(), driver])
        .set(1);
    rt.block_on(async move {
        let worker = Rc::new_cyclic(|me| Worker {
            id,
            shared: shared.clone(),
            pool: RefCell::new(Pool::default()),
            policy: RefCell::new(shared.policy.snapshot()),
            pods: shared.pods.as_ref().map(|p| RefCell::new(p.snapshot())),
            me: me.clone(),
            h2: RefCell::default(),
            shutdown: Default::default(),
        });
        let mut accept_tasks = Vec::new();
        for (mode, std_listener) in listeners {
            let listener = TcpListener::from_std(std_listener)?;
            let w = worker.clone();
            accept_tasks.push(monoio::spawn(accept_loop(w, mode, listener)));
        }
        let _ = ready.send((id, Ok(())));
        #[cfg(debug_assertions)]
        debug_stall_hook(id);
        let mut ticks = 0u32;
        while !shared.shutting_down() {
            monoio::time::sleep(crate::health::BEAT_INTERVAL).await;
            shared.health.beat(id);
            ticks += 1;
            if ticks.is_multiple_of(10) {
                let closed = worker.pool.borrow_mut().sweep();
                worker.closed_upstreams(closed);
            }
        }
        worker.shutdown.fire();
        for t in accept_tasks {
            t.await;
        }
        // Drain: wait for this process's in-flight connections (any worker's)
        // up to the shutdown timeout; tasks on this thread keep running.
        let deadline = std::time::Instant::now() + shared.cfg.shutdown_timeout;
        while shared.in_flight.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(20)).await;
            shared.health.beat(id);
        }
        let closed = worker.pool.borrow_mut().clear();
        worker.closed_upstreams(closed);
        crate::passthrough::drain_pipe_pool();
        Ok(())
    })
}

/// Debug builds only: `TPROXY_DEBUG_STALL_WORKER=ID:SECS` blocks worker ID's
/// thread for SECS, half a second after it started — a wedged event loop for
/// the `/healthz` tests. Release builds do not contain this code.
#[cfg(debug_assertions)]
fn debug_stall_hook(id: usize) {
    let Ok(spec) = std::env::var("TPROXY_DEBUG_STALL_WORKER") else {
        return;
    };
    let parsed = spec
        .split_once(':')
        .and_then(|(w, s)| Some((w.parse::<usize>().ok()?, s.parse::<f64>().ok()?)));
    let Some((worker, secs)) = parsed else {
        tracing::warn!(value = %spec, "TPROXY_DEBUG_STALL_WORKER: expected ID:SECS; ignored");
        return;
    };
    if worker != id || !(secs.is_finite() && secs > 0.0) {
        return;
    }
    monoio::spawn(async move {
        monoio::time::sleep(Duration::from_millis(500)).await;
        tracing::warn!(
            worker = id,
            secs,
            "TPROXY_DEBUG_STALL_WORKER: blocking this worker's thread"
        );
        // Deliberately blocking the event loop: that is the fault under test.
        std::thread::sleep(Duration::from_secs_f64(secs));
        tracing::warn!(
            worker = id,
            "TPROXY_DEBUG_STALL_WORKER: worker thread released"
        );
    });
}

async fn accept_loop(worker: Rc<Worker>, mode: Mode, listener: TcpListener) {
    let shared = worker.shared.clone();
    loop {
        // Wait for readiness (cancel-safe), not for `accept` itself: dropping an
        // in-flight io_uring accept could lose a connection.
        let ready = monoio::select! {
            r = listener.readable(false) => Some(r),
            _ = monoio::time::sleep(Duration::from_millis(100)) => None,
        };
        if shared.shutting_down() {
            break;
        }
        let accepted = match ready {
            None => None,
            Some(_) => Some(listener.accept().await),
        };
        match accepted {
            None => continue,
            Some(Ok((stream, peer))) => {
                shared.in_flight.fetch_add(1, Ordering::AcqRel);
                let w = worker.clone();
                monoio::spawn(async move {
                    crate::conn::serve(&w, mode, stream, peer).await;
                    w.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(worker = worker.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
