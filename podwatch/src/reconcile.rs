//! One full reconcile: current pods → rules applied + pod directory written.
//!
//! Always a full replacement rendered from the current pod set (no incremental
//! edits), so whatever was in the owned chain before — a previous run's rules, a
//! dead pod's rule, a hand edit — is gone after it.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;

use crate::apply::{ApplyError, RuleApplier};
use crate::desired::{Desired, Settings, desired};
use crate::directory::{self, DirectoryError, PodDirectory, SCHEMA_VERSION};
use crate::metrics::Metrics;
use crate::pod::{PodInfo, Skip};

/// Failure of one reconcile (the next change or resync tries again).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Rules could not be applied; the previous rules stay in force.
    #[error("applying rules: {0}")]
    Apply(#[from] ApplyError),
    /// The pod directory could not be written; the previous file stays.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// What a successful reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The state now in force.
    pub desired: Desired,
    /// The directory file was rewritten (its content changed, or first write).
    pub directory_written: bool,
}

/// Holds the applier and what is needed to write the directory.
pub struct Reconciler {
    settings: Settings,
    node: String,
    directory_path: PathBuf,
    applier: Box<dyn RuleApplier>,
    metrics: Metrics,
    /// Pods map of the last file written, to skip rewriting identical content.
    last_written: Option<PodDirectory>,
}

/// Converts API pods to [`PodInfo`], dropping those with no place on the data path.
pub fn pod_infos<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Vec<PodInfo> {
    pods.into_iter()
        .filter_map(|p| match PodInfo::from_pod(p) {
            Ok(info) => Some(info),
            Err(Skip::Incomplete) => {
                tracing::warn!("ignoring pod without namespace, name or uid");
                None
            }
            Err(_) => None,
        })
        .collect()
}

impl Reconciler {
    /// A reconciler for node `node` writing the directory to `directory_path`.
    pub fn new(
        settings: Settings,
        node: String,
        directory_path: PathBuf,
        applier: Box<dyn RuleApplier>,
        metrics: Metrics,
    ) -> Reconciler {
        Reconciler {
            settings,
            node,
            directory_path,
            applier,
            metrics,
            last_written: None,
        }
    }

    /// Applies the rules for `pods` and writes the directory. Both are attempted
    /// even when the other fails; the first error is returned. Blocking.
    pub fn reconcile(&mut self, pods: &[PodInfo]) -> Result<Outcome, ReconcileError> {
        self.metrics.reconciles.inc();
        let want = desired(pods, &self.settings);
        let applied = self.applier.apply(&want.rules);
        match &applied {
            Ok(()) => {
                let v4 = want.rules.v4().count();
                let v6 = want.rules.v6().count();
                self.metrics
                    .rules
                    .with_label_values(&["ipv4"])
                    .set(count(v4));
                self.metrics
                    .rules
                    .with_label_values(&["ipv6"])
                    .set(count(v6));
                tracing::info!(
                    backend = self.applier.name(),
                    ipv4_rules = v4,
                    ipv6_rules = v6,
                    "rules applied"
                );
            }
            Err(e) => {
                self.metrics
                    .reconcile_errors
                    .with_label_values(&["apply"])
                    .inc();
                tracing::error!(backend = self.applier.name(), error = %e, "applying rules failed");
            }
        }
        let written = self.write_directory(&want);
        if let Err(e) = &written {
            self.metrics
                .reconcile_errors
                .with_label_values(&["directory"])
                .inc();
            tracing::error!(path = %self.directory_path.display(), error = %e, "writing pod directory failed");
        }
        applied?;
        let directory_written = written?;
        self.metrics.last_success.set(unix_now());
        Ok(Outcome {
            desired: want,
            directory_written,
        })
    }

    fn write_directory(&mut self, want: &Desired) -> Result<bool, DirectoryError> {
        let mut uids: Vec<&str> = want.directory.values().map(|e| e.uid.as_str()).collect();
        uids.sort_unstable();
        uids.dedup();
        self.metrics.directory_pods.set(count(uids.len()));
        self.metrics
            .directory_entries
            .set(count(want.directory.len()));
        if let Some(last) = &self.last_written
            && last.pods == want.directory
            && last.node == self.node
        {
            return Ok(false);
        }
        let file = PodDirectory {
            version: SCHEMA_VERSION,
            generated_at: directory::now_rfc3339(),
            node: self.node.clone(),
            pods: want.directory.clone(),
        };
        directory::write_atomic(&self.directory_path, &file)?;
        tracing::info!(
            path = %self.directory_path.display(),
            entries = file.pods.len(),
            "pod directory written"
        );
        self.last_written = Some(file);
        Ok(true)
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
