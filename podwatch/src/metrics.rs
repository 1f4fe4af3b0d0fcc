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
    /// Re-lists of a watch stream after its first list (410 Gone, lost watch).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition passes Prometheus' own linter (`promtool check metrics`).
    #[test]
    fn exposition_passes_promtool() {
        let m = Metrics::new().unwrap();
        m.reconciles.inc();
        m.reconcile_errors.with_label_values(&["apply"]).inc();
        m.rules.with_label_values(&["ipv4"]).set(3);
        m.last_success.set(1_700_000_000);
        let text = m.encode();
        for name in [
            "tproxy_podwatch_rules{family=\"ipv4\"} 3",
            "tproxy_podwatch_reconciles_total 1",
            "tproxy_podwatch_reconcile_errors_total{stage=\"apply\"} 1",
            "tproxy_podwatch_reconcile_errors_total{stage=\"directory\"} 0",
            "tproxy_podwatch_watch_restarts_total 0",
            "tproxy_podwatch_directory_pods 0",
            "tproxy_podwatch_last_reconcile_timestamp_seconds 1700000000",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
        let child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("exposition_passes_promtool: promtool not run ({e}); install prometheus");
                return;
            }
            Err(e) => panic!("promtool needed in CI (scripts/install-test-deps.sh): {e}"),
        };
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
