//! Prometheus metrics of the agent (own registry, text exposition).

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Metric handles; cheap to clone (all handles are shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Rules in the owned chain after the last successful apply, by `family`.
    pub rules: IntGaugeVec,
    /// Reconciles run (success or not).
    pub reconciles: IntCounter,
    /// Reconcile failures by `stage` (`apply`, `directory`).
    pub reconcile_errors: IntCounterVec,
    /// Watch restarts (re-lists after the first) and watch errors.
    pub watch_restarts: IntCounter,
    /// Errors reported by the watch streams.
    pub watch_errors: IntCounter,
    /// Pods in the pod directory.
    pub directory_pods: IntGauge,
    /// IP entries in the pod directory.
    pub directory_entries: IntGauge,
    /// Unix time of the last fully successful reconcile (0 = never).
    pub last_success: IntGauge,
}

/// Metric registration failed (a name clash: a programming error).
#[derive(Debug, thiserror::Error)]
#[error("registering metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let p = "tproxy_podwatch_";
        let rules = IntGaugeVec::new(
            Opts::new(
                format!("{p}rules"),
                "REDIRECT rules in force, by address family",
            ),
            &["family"],
        )?;
        let reconciles = IntCounter::new(format!("{p}reconciles_total"), "Reconciles run")?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                format!("{p}reconcile_errors_total"),
                "Failed reconciles, by stage (apply, directory)",
            ),
            &["stage"],
        )?;
        let watch_restarts = IntCounter::new(
            format!("{p}watch_restarts_total"),
            "Re-lists of a pod watch after its first list (watch expired, 410 Gone, errors)",
        )?;
        let watch_errors = IntCounter::new(
            format!("{p}watch_errors_total"),
            "Errors reported by pod watch streams",
        )?;
        let directory_pods =
            IntGauge::new(format!("{p}directory_pods"), "Pods in the pod directory")?;
        let directory_entries = IntGauge::new(
            format!("{p}directory_entries"),
            "IP entries in the pod directory",
        )?;
        let last_success = IntGauge::new(
            format!("{p}last_reconcile_timestamp_seconds"),
            "Unix time of the last successful reconcile",
        )?;
        registry.register(Box::new(rules.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(watch_restarts.clone()))?;
        registry.register(Box::new(watch_errors.clone()))?;
        registry.register(Box::new(directory_pods.clone()))?;
        registry.register(Box::new(directory_entries.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        for f in ["ipv4", "ipv6"] {
            rules.with_label_values(&[f]).set(0);
        }
        for s in ["apply", "directory"] {
            reconcile_errors.with_label_values(&[s]).reset();
        }
        Ok(Metrics {
            registry,
            rules,
            reconciles,
            reconcile_errors,
            watch_restarts,
            watch_errors,
            directory_pods,
            directory_entries,
            last_success,
        })
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
