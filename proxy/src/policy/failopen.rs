//! TLS fail-open: after a client rejected our certificate for a host N
//! times (within the TTL), that host is passed through for the TTL —
//! certificate-pinning clients keep working, and it is counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// `tls_fail_open: {after, ttl}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailOpenConfig {
    /// Rejections before the host opens (0 = never).
    pub after: u32,
    /// How long rejections are remembered and a host stays open.
    pub ttl: Duration,
}

/// Time source (injectable for tests).
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Hosts tracked at most; when full, expired entries are dropped first and
/// then all entries (bounded memory against SNI floods).
const MAX_HOSTS: usize = 10_000;

#[derive(Debug)]
struct Entry {
    rejects: u32,
    first: Instant,
    open_until: Option<Instant>,
}

/// Thread-safe fail-open tracker.
pub struct FailOpen {
    after: AtomicU32,
    ttl_ms: AtomicU64,
    open_hosts: AtomicUsize,
    hosts: Mutex<HashMap<String, Entry>>,
    clock: Clock,
    /// Client certificate rejections recorded.
    pub rejects_total: AtomicU64,
    /// Times a host was opened (passed through).
    pub opened_total: AtomicU64,
}

impl std::fmt::Debug for FailOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailOpen")
            .field("after", &self.after)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

impl FailOpen {
    /// Tracker with the real clock; `None` = disabled.
    pub fn new(cfg: Option<FailOpenConfig>) -> Self {
        Self::with_clock(cfg, Arc::new(Instant::now))
    }

    /// Tracker with an injected clock.
    pub fn with_clock(cfg: Option<FailOpenConfig>, clock: Clock) -> Self {
        let f = Self {
            after: AtomicU32::new(0),
            ttl_ms: AtomicU64::new(0),
            open_hosts: AtomicUsize::new(0),
            hosts: Mutex::new(HashMap::new()),
            clock,
            rejects_total: AtomicU64::new(0),
            opened_total: AtomicU64::new(0),
        };
        f.configure(cfg);
        f
    }

    /// Apply a (reloaded) configuration; state is kept.
    pub fn configure(&self, cfg: Option<FailOpenConfig>) {
        let cfg = cfg.unwrap_or(FailOpenConfig {
            after: 0,
            ttl: Duration::ZERO,
        });
        self.after.store(cfg.after, Ordering::Relaxed);
        self.ttl_ms.store(
            u64::try_from(cfg.ttl.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// A client aborted the handshake rejecting our certificate for `host`.
    /// Returns true when this opened the host.
    pub fn record_client_reject(&self, host: &str) -> bool {
        let after = self.after.load(Ordering::Relaxed);
        if after == 0 {
            return false;
        }
        self.rejects_total.fetch_add(1, Ordering::Relaxed);
        let now = (self.clock)();
        let ttl = self.ttl();
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(host) {
            hosts.retain(|_, e| !expired(e, now, ttl));
            if hosts.len() >= MAX_HOSTS {
                hosts.clear();
            }
            self.open_hosts.store(
                hosts.values().filter(|e| e.open_until.is_some()).count(),
                Ordering::Relaxed,
            );
        }
        let e = hosts.entry(host.to_ascii_lowercase()).or_insert(Entry {
            rejects: 0,
            first: now,
            open_until: None,
        });
        if expired(e, now, ttl) {
            if e.open_until.is_some() {
                self.open_hosts.fetch_sub(1, Ordering::Relaxed);
            }
            *e = Entry {
                rejects: 0,
                first: now,
                open_until: None,
            };
        }
        if e.open_until.is_some() {
            return false;
        }
        e.rejects += 1;
        if e.rejects >= after {
            e.open_until = Some(now + ttl);
            self.open_hosts.fetch_add(1, Ordering::Relaxed);
            self.opened_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                host,
                rejects = e.rejects,
                ttl_s = ttl.as_secs(),
                "clients reject our certificate; passing host through"
            );
            return true;
        }
        false
    }

    /// Whether `host` is currently passed through. Lock-free when no host
    /// is open.
    pub fn is_open(&self, host: &str) -> bool {
        if self.open_hosts.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let now = (self.clock)();
        let hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let found = hosts
            .get(host)
            .or_else(|| {
                host.bytes()
                    .any(|b| b.is_ascii_uppercase())
                    .then(|| hosts.get(&host.to_ascii_lowercase()))
                    .flatten()
            })
            .and_then(|e| e.open_until);
        found.is_some_and(|until| now < until)
    }
}

fn expired(e: &Entry, now: Instant, ttl: Duration) -> bool {
    match e.open_until {
        Some(until) => now >= until,
        None => now.duration_since(e.first) >= ttl,
    }
}
