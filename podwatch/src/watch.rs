//! The agent loop: kube-rs watchers on the node's pods → debounced full reconciles.
//!
//! Reconciles happen (1) once the first list of every stream is complete (never
//! before: an empty pod set would flush the rules of pods not seen yet), (2) a
//! debounce interval after any change (changes in that window are coalesced),
//! (3) every resync interval even without changes, which repairs rules removed or
//! edited behind the agent's back.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{BoxStream, select_all};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::{Instant, MissedTickBehavior};

use crate::metrics::Metrics;
use crate::reconcile::{Outcome, ReconcileError, Reconciler, pod_infos};
use crate::store::{Change, PodStore};

/// Timing and scope of the watch.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// This node's name: the field selector `spec.nodeName=<node>`.
    pub node: String,
    /// Namespaces to watch; empty = all namespaces (one cluster-wide watch).
    pub namespaces: Vec<String>,
    /// Delay from the first change to the reconcile covering it.
    pub debounce: Duration,
    /// Interval of unconditional full reconciles.
    pub resync: Duration,
}

/// The loop stopped for a reason other than shutdown.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The reconcile task panicked or was cancelled.
    #[error("reconcile task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// All watch streams ended (kube-rs watchers do not end; a bug if seen).
    #[error("pod watch streams ended unexpectedly")]
    StreamsEnded,
}

/// Field selector used for every list and watch.
pub fn field_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

type Events = BoxStream<'static, (usize, Result<watcher::Event<Pod>, watcher::Error>)>;

fn streams(client: &kube::Client, cfg: &WatchConfig) -> Events {
    let wc = watcher::Config::default().fields(&field_selector(&cfg.node));
    let apis: Vec<Api<Pod>> = if cfg.namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        cfg.namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let all = apis.into_iter().enumerate().map(|(i, api)| {
        watcher(api, wc.clone())
            .default_backoff()
            .map(move |ev| (i, ev))
            .boxed()
    });
    select_all(all).boxed()
}

/// Runs until `shutdown` completes. `on_reconcile` sees every reconcile result
/// (tests use it; the binary passes a no-op).
pub async fn run<F>(
    client: kube::Client,
    cfg: WatchConfig,
    reconciler: Reconciler,
    metrics: Metrics,
    shutdown: F,
    mut on_reconcile: impl FnMut(&Result<Outcome, ReconcileError>) + Send,
) -> Result<(), RunError>
where
    F: Future<Output = ()>,
{
    let streams_count = cfg.namespaces.len().max(1);
    let mut events = streams(&client, &cfg);
    let mut store = PodStore::new(streams_count);
    let mut reconciler = Some(reconciler);
    let mut due: Option<Instant> = None;
    let mut resync = tokio::time::interval_at(Instant::now() + cfg.resync, cfg.resync);
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    tracing::info!(
        node = %cfg.node,
        namespaces = ?cfg.namespaces,
        "watching pods"
    );
    loop {
        let deadline = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let reconcile_now = tokio::select! {
            () = &mut shutdown => return Ok(()),
            item = events.next() => {
                match item {
                    None => return Err(RunError::StreamsEnded),
                    Some((i, Ok(ev))) => match store.apply(i, ev) {
                        Change::Pods => {
                            due.get_or_insert_with(|| Instant::now() + cfg.debounce);
                        }
                        Change::Restart => {
                            metrics.watch_restarts.inc();
                            tracing::info!(stream = i, "pod watch restarted; re-listing");
                        }
                        Change::None => {}
                    },
                    Some((i, Err(e))) => {
                        metrics.watch_errors.inc();
                        tracing::warn!(stream = i, error = %e, "pod watch error; retrying with backoff");
                    }
                }
                false
            }
            () = tokio::time::sleep_until(deadline), if due.is_some() && store.ready() => true,
            _ = resync.tick(), if store.ready() => true,
        };
        if !reconcile_now {
            continue;
        }
        due = None;
        let infos = pod_infos(store.pods());
        let Some(mut r) = reconciler.take() else {
            return Ok(());
        };
        let (r, result) = tokio::task::spawn_blocking(move || {
            let result = r.reconcile(&infos);
            (r, result)
        })
        .await?;
        reconciler = Some(r);
        on_reconcile(&result);
    }
}
