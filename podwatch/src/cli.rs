//! Command line (every flag also reads an environment variable) and the
//! top-level run modes: watch (default), `--cleanup`, `--pods-from-file` (tests).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use k8s_openapi::api::core::v1::Pod;

use crate::apply::{ApplyError, Backend, BackendChoice, CommandApplier, detect};
use crate::desired::Settings;
use crate::directory::DEFAULT_LABELS;
use crate::http::{self, Health};
use crate::metrics::{Metrics, MetricsError};
use crate::reconcile::{ReconcileError, Reconciler, pod_infos, unix_now};
use crate::watch::{self, RunError, WatchConfig};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// tproxy-podwatch: keeps this node's REDIRECT rules and pod directory equal to
/// the pods scheduled on it.
#[derive(Debug, Clone, Parser)]
#[command(name = "tproxy-podwatch", version, about, long_about = None)]
pub struct Args {
    /// This node's name (pods are selected with spec.nodeName=<name>).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Comma-separated namespaces to watch; empty = all namespaces.
    #[arg(long, env = "PODWATCH_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Netfilter backend: nft, iptables-nft, iptables-legacy or auto.
    #[arg(long, env = "PODWATCH_BACKEND", default_value = "auto")]
    pub backend: BackendChoice,
    /// Port of the proxy's transparent listener on the node (REDIRECT target).
    #[arg(long, env = "PROXY_PORT", default_value_t = 1080)]
    pub proxy_port: u16,
    /// Comma-separated destination ports to redirect (at most 15).
    #[arg(
        long,
        env = "PODWATCH_PORTS",
        value_delimiter = ',',
        default_value = "80,443"
    )]
    pub ports: Vec<u16>,
    /// Also redirect pods' IPv6 addresses (false: leave ip6tables/IPv6 alone).
    #[arg(long, env = "PODWATCH_IPV6", default_value_t = true, action = ArgAction::Set)]
    pub ipv6: bool,
    /// Pod directory JSON file, written atomically.
    #[arg(
        long,
        env = "POD_DIRECTORY",
        default_value = "/var/run/tproxy/pods.json"
    )]
    pub pod_directory: PathBuf,
    /// Comma-separated pod labels copied into the pod directory.
    #[arg(long, env = "PODWATCH_DIRECTORY_LABELS", value_delimiter = ',', default_value = DEFAULT_LABELS)]
    pub directory_labels: Vec<String>,
    /// Address of the /metrics and /healthz endpoint.
    #[arg(long, env = "PODWATCH_LISTEN", default_value = "0.0.0.0:9091")]
    pub listen: SocketAddr,
    /// Milliseconds from a pod change to the reconcile covering it.
    #[arg(long, env = "PODWATCH_DEBOUNCE_MS", default_value_t = 200)]
    pub debounce_ms: u64,
    /// Seconds between unconditional full reconciles.
    #[arg(long, env = "PODWATCH_RESYNC_SECS", default_value_t = 60)]
    pub resync_secs: u64,
    /// Log format (filter with RUST_LOG, default info).
    #[arg(long, env = "PODWATCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Set net.ipv4.tcp_migrate_req=1 in the node's network namespace at start (Linux >= 5.14), so
    /// that a proxy restart hands the old process's queued connections to the new one instead of
    /// resetting them (docs/restarts.md). Needs a privileged container; failure is only logged.
    #[arg(long, env = "PODWATCH_TCP_MIGRATE_REQ", default_value_t = true, action = ArgAction::Set)]
    pub tcp_migrate_req: bool,
    /// Remove every rule podwatch owns (table/chain and jump), then exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Testing aid: reconcile once from a PodList JSON file (pods filtered by
    /// spec.nodeName like the API server would), then exit. No API server needed.
    #[arg(long, hide = true)]
    pub pods_from_file: Option<PathBuf>,
}

/// Anything that stops the agent.
#[derive(Debug, thiserror::Error)]
pub enum MainError {
    /// A flag value is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Metric registration failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// `--cleanup` failed.
    #[error("cleanup: {0}")]
    Cleanup(#[from] ApplyError),
    /// The one-shot reconcile failed.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    /// The metrics listener could not be bound.
    #[error("binding --listen {addr}: {source} (pick a free address with --listen)")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// No Kubernetes client configuration.
    #[error(
        "connecting to the Kubernetes API: {0} (run in-cluster with a service account, or set KUBECONFIG)"
    )]
    Kube(#[from] kube::Error),
    /// The pod file could not be read or parsed.
    #[error("--pods-from-file {path}: {reason}")]
    PodsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The watch loop stopped.
    #[error(transparent)]
    Run(#[from] RunError),
}

impl Args {
    /// Checks values clap cannot check and returns the rendering settings.
    pub fn validate(&self) -> Result<Settings, MainError> {
        let bad = |m: String| Err(MainError::Config(m));
        if self.node_name.trim().is_empty() || self.node_name.contains([',', ' ']) {
            return bad(format!(
                "--node-name/NODE_NAME {:?} must be the node's name (set it from spec.nodeName via the downward API)",
                self.node_name
            ));
        }
        if self.ports.is_empty() || self.ports.len() > 15 || self.ports.contains(&0) {
            return bad("--ports needs 1 to 15 non-zero ports".into());
        }
        if self.proxy_port == 0 {
            return bad("--proxy-port must be non-zero".into());
        }
        if self.resync_secs == 0 {
            return bad("--resync-secs must be at least 1".into());
        }
        if self.debounce_ms > 60_000 {
            return bad("--debounce-ms must be at most 60000".into());
        }
        if self.namespaces.iter().any(|n| n.trim().is_empty()) {
            return bad("--namespaces has an empty entry".into());
        }
        if self.namespaces.len() > 1 {
            let mut unique = self.namespaces.clone();
            unique.sort();
            unique.dedup();
            if unique.len() != self.namespaces.len() {
                return bad("--namespaces lists a namespace twice".into());
            }
        }
        Ok(Settings {
            proxy_port: self.proxy_port,
            ports: self.ports.clone(),
            ipv6: self.ipv6,
            directory_labels: self
                .directory_labels
                .iter()
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect(),
        })
    }
}

/// Reads pods from a PodList (`{"items":[...]}`) or a JSON array of pods and keeps
/// those with `spec.nodeName == node`.
pub fn pods_from_file(path: &Path, node: &str) -> Result<Vec<Pod>, MainError> {
    let err = |reason: String| MainError::PodsFile {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| err(format!("not JSON: {e}")))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(mut o) => match o.remove("items") {
            Some(serde_json::Value::Array(items)) => items,
            _ => return Err(err("expected a PodList with \"items\" or an array".into())),
        },
        _ => return Err(err("expected a PodList with \"items\" or an array".into())),
    };
    let mut pods = Vec::new();
    for item in items {
        let pod: Pod = serde_json::from_value(item).map_err(|e| err(format!("not a Pod: {e}")))?;
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node) {
            pods.push(pod);
        }
    }
    Ok(pods)
}

fn backend(choice: BackendChoice) -> Backend {
    match choice {
        BackendChoice::Fixed(b) => b,
        BackendChoice::Auto => {
            let b = detect();
            tracing::info!(backend = b.as_str(), "backend detected");
            b
        }
    }
}

/// Runs the mode the flags select. Needs a tokio runtime.
pub async fn run(args: Args) -> Result<(), MainError> {
    let settings = args.validate()?;
    let applier = CommandApplier::new(backend(args.backend), args.ipv6);
    if args.cleanup {
        tokio::task::spawn_blocking(move || applier.cleanup())
            .await
            .map_err(RunError::from)??;
        tracing::info!("owned rules removed");
        return Ok(());
    }
    if args.tcp_migrate_req {
        crate::sysctl::enable_and_log();
    }
    let metrics = Metrics::new()?;
    let mut reconciler = Reconciler::new(
        settings,
        args.node_name.clone(),
        args.pod_directory.clone(),
        Box::new(applier),
        metrics.clone(),
    );
    if let Some(path) = &args.pods_from_file {
        let pods = pods_from_file(path, &args.node_name)?;
        let infos = pod_infos(&pods);
        tokio::task::spawn_blocking(move || reconciler.reconcile(&infos))
            .await
            .map_err(RunError::from)??;
        return Ok(());
    }
    let listener = http::bind(args.listen)
        .await
        .map_err(|source| MainError::Bind {
            addr: args.listen,
            source,
        })?;
    let resync = Duration::from_secs(args.resync_secs);
    let health = Health {
        started: unix_now(),
        grace: 300,
        max_age: i64::try_from(args.resync_secs.saturating_mul(3)).unwrap_or(i64::MAX),
    };
    tracing::info!(listen = %args.listen, "serving /metrics and /healthz");
    tokio::spawn(http::serve(listener, metrics.clone(), health));
    let client = kube::Client::try_default().await?;
    let cfg = WatchConfig {
        node: args.node_name.clone(),
        namespaces: args.namespaces.clone(),
        debounce: Duration::from_millis(args.debounce_ms),
        resync,
    };
    watch::run(client, cfg, reconciler, metrics, shutdown_signal(), |_| {}).await?;
    tracing::info!("shutting down; rules stay in force");
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
