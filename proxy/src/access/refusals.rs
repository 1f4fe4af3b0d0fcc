//! Refused clients: the reason (a label of `tproxy_client_refusals_total`)
//! and a rate limit on the warning that names them, so a scan of the port
//! cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a client was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// Regular listener: the source is not in `--allow-client`.
    NotAllowed,
    /// Transparent listener: the connection was not redirected (made straight
    /// to the port, or no original destination).
    NotRedirected,
    /// Regular listener: a request without the right `--proxyauth` credentials (407).
    ProxyAuth,
    /// Any listener: `--max-connections` connections were open already.
    MaxConnections,
}

impl RefusalReason {
    /// Every reason, in label-index order.
    pub const ALL: [RefusalReason; 4] = [
        RefusalReason::NotAllowed,
        RefusalReason::NotRedirected,
        RefusalReason::ProxyAuth,
        RefusalReason::MaxConnections,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NotAllowed => "not_allowed",
            RefusalReason::NotRedirected => "not_redirected",
            RefusalReason::ProxyAuth => "proxy_auth",
            RefusalReason::MaxConnections => "max_connections",
        }
    }
}

/// At most one log line per `interval`; the lines in between are counted and
/// the next line says how many were left out.
#[derive(Debug)]
pub struct RefusalLog {
    epoch: Instant,
    interval: Duration,
    /// Milliseconds since `epoch` before which nothing is logged.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

impl RefusalLog {
    /// A limiter allowing one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        RefusalLog {
            epoch: Instant::now(),
            interval,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` when this refusal should be
    /// logged, `None` when it is only counted.
    pub fn admit(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        let step = self.interval.as_millis() as u64;
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now + step, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::AcqRel);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_rest_counted() {
        let log = RefusalLog::new(Duration::from_secs(3600));
        assert_eq!(log.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(log.admit(), None);
        }
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 5);
        let log = RefusalLog::new(Duration::ZERO);
        assert_eq!(log.admit(), Some(0));
        assert_eq!(log.admit(), Some(0));
    }

    #[test]
    fn labels() {
        let labels: Vec<_> = RefusalReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "not_allowed",
                "not_redirected",
                "proxy_auth",
                "max_connections"
            ]
        );
    }
}
