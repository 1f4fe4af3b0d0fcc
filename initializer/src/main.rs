//! `tproxy-initializer` binary: flags, logging, start-up checks, serving.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tproxy_initializer::config::Config;
use tproxy_initializer::metrics::Metrics;
use tproxy_initializer::server::{self, Webhook};
use tproxy_initializer::tls::{self, CertFiles, ReloadingCert};

/// Mutating admission webhook: injects the tproxy sidecar, CA bundle and proxy
/// env into workloads annotated initializer.kubernetes.io/tproxy: "true".
#[derive(Debug, Parser)]
#[command(name = "tproxy-initializer", version)]
struct Cli {
    /// Address to serve HTTPS on (port 0 picks a free port; the bound
    /// address is logged as `addr=` on the "listening" line).
    #[arg(
        long,
        env = "TPROXY_INITIALIZER_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    listen: SocketAddr,
    /// Serving certificate chain, PEM (leaf first). Reloaded when it changes.
    #[arg(
        long,
        env = "TPROXY_INITIALIZER_TLS_CERT",
        required_unless_present = "print_config"
    )]
    tls_cert: Option<PathBuf>,
    /// Serving private key, PEM. Reloaded when it changes.
    #[arg(
        long,
        env = "TPROXY_INITIALIZER_TLS_KEY",
        required_unless_present = "print_config"
    )]
    tls_key: Option<PathBuf>,
    /// Seconds between checks of the certificate files for changes.
    #[arg(long, env = "TPROXY_INITIALIZER_TLS_RELOAD_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    tls_reload_secs: u64,
    /// Injection config (YAML); built-in defaults when absent.
    #[arg(long, env = "TPROXY_INITIALIZER_CONFIG")]
    config: Option<PathBuf>,
    /// The webhook's own namespace, never injected (downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Log format on stderr.
    #[arg(long, env = "TPROXY_INITIALIZER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Validate the config, print the marker and the effective injection as JSON, exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("tproxy-initializer: error: {msg}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let mut cfg = match &cli.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(ns) = &cli.pod_namespace {
        cfg.exclude_namespace(ns);
    }
    if cli.print_config {
        let out = serde_json::json!({"marker": cfg.marker(), "injection": cfg});
        let json = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        // A closed stdout (e.g. `| head`) is not worth a panic.
        let _ = writeln!(std::io::stdout().lock(), "{json}");
        return Ok(());
    }
    let (Some(cert), Some(key)) = (cli.tls_cert, cli.tls_key) else {
        return Err("--tls-cert and --tls-key are required".to_owned());
    };
    let provider = tls::provider();
    let resolver = Arc::new(
        ReloadingCert::load(CertFiles { cert, key }, Arc::clone(&provider))
            .map_err(|e| format!("serving certificate: {e}"))?,
    );
    let tls_cfg = tls::server_config(Arc::clone(&resolver), provider).map_err(|e| e.to_string())?;
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cli.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(
            addr = %addr,
            marker = %cfg.marker(),
            proxy_mode = ?cfg.proxy_mode,
            excluded_namespaces = ?cfg.excluded_namespaces,
            "listening"
        );
        tokio::spawn(resolver.watch(
            Duration::from_secs(cli.tls_reload_secs),
            Arc::clone(&metrics),
        ));
        let webhook = Arc::new(Webhook::new(cfg, metrics));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_cfg));
        server::serve(listener, acceptor, webhook, shutdown_signal()).await;
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
