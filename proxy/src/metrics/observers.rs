//! Metrics about the observers themselves: the flow log, stderr and the
//! workers' heartbeats. Their state lives in atomics owned by `flowlog`,
//! `diag` and `health` (which know nothing of Prometheus); [`Observers::sync`]
//! mirrors it into the registry at scrape time.

use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::Metrics;
use crate::flowlog::{DropReason, Stats};

/// Registered handles.
#[derive(Debug)]
pub struct Observers {
    flowlog_dropped: [IntCounter; 3],
    flowlog_written: IntCounter,
    flowlog_pending: IntGauge,
    flowlog_output_ok: IntGauge,
    stderr_dropped: IntCounter,
    heartbeat_age: Vec<Gauge>,
}

impl Observers {
    /// Register the families (one heartbeat series per worker).
    pub fn new(registry: &Registry, workers: usize) -> Result<Self, prometheus::Error> {
        let dropped = IntCounterVec::new(
            Opts::new(
                "tproxy_flowlog_records_dropped_total",
                "Flow log records lost, by reason: queue_full (stdout not read fast enough, --flow-log-full drop), output_error (stdout failed for good, e.g. EPIPE), shutdown (still queued at the --shutdown-timeout deadline).",
            ),
            &["reason"],
        )?;
        let written = IntCounter::new(
            "tproxy_flowlog_records_written_total",
            "Flow log records written to stdout.",
        )?;
        let pending = IntGauge::new(
            "tproxy_flowlog_records_pending",
            "Flow log records accepted and not yet written (at most --flow-log-queue).",
        )?;
        let output_ok = IntGauge::new(
            "tproxy_flowlog_output_ok",
            "1 while the flow log output works, 0 once it failed for good (the proxy serves without a log; /readyz fails).",
        )?;
        let stderr_dropped = IntCounter::new(
            "tproxy_stderr_lines_dropped_total",
            "Diagnostic lines not written because stderr was not read fast enough.",
        )?;
        let age = GaugeVec::new(
            Opts::new(
                "tproxy_worker_heartbeat_age_seconds",
                "Time since the worker's event loop last ran its heartbeat (every 100 ms); /healthz fails above --worker-stall-timeout.",
            ),
            &["worker"],
        )?;
        for c in [
            Box::new(dropped.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(written.clone()),
            Box::new(pending.clone()),
            Box::new(output_ok.clone()),
            Box::new(stderr_dropped.clone()),
            Box::new(age.clone()),
        ] {
            registry.register(c)?;
        }
        output_ok.set(1);
        Ok(Self {
            flowlog_dropped: DropReason::ALL.map(|r| dropped.with_label_values(&[r.as_str()])),
            flowlog_written: written,
            flowlog_pending: pending,
            flowlog_output_ok: output_ok,
            stderr_dropped,
            heartbeat_age: (0..workers)
                .map(|w| age.with_label_values(&[&w.to_string()]))
                .collect(),
        })
    }

    /// Mirror the observers' atomics (called at scrape).
    pub fn sync(
        &self,
        flowlog: Option<(&Stats, usize)>,
        stderr_dropped: u64,
        heartbeat_ages: &[Option<std::time::Duration>],
    ) {
        if let Some((stats, pending)) = flowlog {
            for (c, r) in self.flowlog_dropped.iter().zip(DropReason::ALL) {
                Metrics::sync(c, stats.dropped(r));
            }
            Metrics::sync(
                &self.flowlog_written,
                stats.written.load(std::sync::atomic::Ordering::Relaxed),
            );
            self.flowlog_pending
                .set(i64::try_from(pending).unwrap_or(i64::MAX));
            let broken = stats.broken.load(std::sync::atomic::Ordering::Relaxed);
            self.flowlog_output_ok.set(i64::from(!broken));
        }
        Metrics::sync(&self.stderr_dropped, stderr_dropped);
        for (g, age) in self.heartbeat_age.iter().zip(heartbeat_ages) {
            // An exited worker (shutdown) shows as -1.
            g.set(age.map_or(-1.0, |a| a.as_secs_f64()));
        }
    }
}
