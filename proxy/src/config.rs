//! Command line (raw, clap) → validated [`Config`].
//!
//! Every option is documented once, here; `--help` and the README table are
//! generated from / kept in sync with these doc comments.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use regex::{Regex, RegexBuilder};

use crate::flowlog::LogFormat;
use crate::http1::codec::Limits;
use crate::passthrough::RelayMode;
use crate::tls::ca::KeyKind;

/// tproxy — a fast, observable intercepting HTTP(S) proxy (a much faster mitmdump).
///
/// Flow log on stdout; diagnostics on stderr (RUST_LOG=debug for more).
#[derive(Debug, Parser)]
#[command(name = "tproxy", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the certificate authority (mitmproxy-compatible files in --confdir).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Work with policy rules files.
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate a rules file offline and print the parsed rules; exits non-zero
    /// (naming the line and the problem) when it is invalid.
    Check {
        /// The rules file (YAML), as given to --rules.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA in the confdir (refuses to overwrite one without --force).
    Init {
        #[command(flatten)]
        confdir: ConfdirArg,
        /// Key algorithm: rsa (RSA-2048, what mitmproxy creates) or ecdsa (P-256, faster leaves).
        #[arg(long, value_enum, default_value = "rsa")]
        key_type: KeyTypeArg,
        /// Replace an existing CA (clients trusting the old one stop trusting tproxy).
        #[arg(long)]
        force: bool,
    },
    /// Show the CA: subject, validity, fingerprint, files, and how to trust it.
    Show {
        #[command(flatten)]
        confdir: ConfdirArg,
        /// Print only the CA certificate as PEM (e.g. `tproxy ca show --pem > ca.pem`).
        #[arg(long)]
        pem: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KeyTypeArg {
    Rsa,
    Ecdsa,
}

impl From<KeyTypeArg> for KeyKind {
    fn from(k: KeyTypeArg) -> Self {
        match k {
            KeyTypeArg::Rsa => KeyKind::Rsa2048,
            KeyTypeArg::Ecdsa => KeyKind::EcdsaP256,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ConfdirArg {
    /// Directory with the CA files (mitmproxy-ca.pem = key + cert; a mitmproxy confdir works as is).
    /// Default: ~/.tproxy.
    #[arg(long, env = "TPROXY_CONFDIR", value_name = "DIR")]
    pub confdir: Option<PathBuf>,
}

impl ConfdirArg {
    /// The confdir, defaulting to `~/.tproxy`.
    pub fn resolve(&self) -> PathBuf {
        self.confdir.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
            PathBuf::from(home).join(".tproxy")
        })
    }
}

/// Options of the proxy itself.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Listener: MODE[@[HOST:]PORT], repeatable. MODE is `regular` (explicit proxy: HTTP_PROXY /
    /// HTTPS_PROXY, absolute-form requests and CONNECT) or `transparent` (iptables REDIRECT,
    /// destination from SO_ORIGINAL_DST). HOST defaults to 127.0.0.1 (regular) / 0.0.0.0
    /// (transparent), PORT to 8080; PORT 0 picks a free port (printed on stderr).
    #[arg(
        long = "mode",
        value_name = "MODE[@[HOST:]PORT]",
        default_value = "regular@127.0.0.1:8080"
    )]
    pub modes: Vec<ModeSpec>,

    /// Worker threads, each with its own runtime and listeners. Default: number of CPUs.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    #[command(flatten)]
    pub confdir: ConfdirArg,

    /// Add the CA certificates in FILE (PEM) to the roots used to verify upstream servers.
    /// Repeatable.
    #[arg(long = "upstream-ca", value_name = "FILE")]
    pub upstream_ca: Vec<PathBuf>,

    /// Do not verify upstream server certificates (like mitmproxy's --ssl-insecure).
    #[arg(short = 'k', long)]
    pub ssl_insecure: bool,

    /// Pass connections whose `host:port` matches REGEX through without interception
    /// (case-insensitive search; host = TLS SNI, CONNECT target or destination IP;
    /// plain-HTTP requests are always proxied). Repeatable.
    /// Example: --ignore-hosts '^(.+\.)?apple\.com:443$'.
    #[arg(long = "ignore-hosts", value_name = "REGEX")]
    pub ignore_hosts: Vec<String>,

    /// Flow log detail: 0 nothing, 1 request line and status, 2 + headers, 3 + bodies
    /// (cut at 512 lines), 4 + bodies uncut.
    #[arg(long, value_name = "0..4", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=4))]
    pub flow_detail: u8,

    /// Flow log format on stdout: text (mitmdump's) or json (one object per flow).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Do not redact credentials (Authorization, Cookie, API keys, URL passwords) in the flow log.
    #[arg(long)]
    pub show_secrets: bool,

    /// Who may use the regular (explicit-proxy) listeners, repeatable: a CIDR (10.244.0.0/16, the pod
    /// CIDR), an address, `loopback` (127.0.0.0/8, ::1), `pods` (the IPs in --pod-directory, reloaded
    /// live) or `any` (every source: an open proxy, on purpose; 0.0.0.0/0 opens IPv4 only). Default:
    /// loopback, plus pods when --pod-directory is set. Values given replace the default (add
    /// `loopback` to keep it). Other clients are closed before a byte is read and counted in
    /// tproxy_client_refusals_total. Transparent listeners serve only redirected connections
    /// (docs/access.md).
    #[arg(long = "allow-client", value_name = "CIDR|loopback|pods|any")]
    pub allow_client: Vec<crate::access::AllowEntry>,

    /// Require HTTP Basic proxy authentication (Proxy-Authorization) on regular listeners, like
    /// mitmproxy's --proxyauth: requests without these credentials get 407 and go nowhere. Prefer
    /// the environment variable: a command line is visible to every user of the host.
    #[arg(
        long,
        value_name = "USER:PASS",
        env = "TPROXY_PROXYAUTH",
        hide_env_values = true
    )]
    pub proxyauth: Option<crate::access::ProxyAuth>,

    /// Admin HTTP listener (/metrics, /healthz, /readyz, /ca.pem), or `off`.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:9090")]
    pub admin: AdminAddr,

    /// How passthrough bytes are moved: splice (zero-copy) or copy (userspace loop).
    #[arg(long, value_enum, default_value = "splice")]
    pub passthrough: RelayMode,

    /// Give up connecting to an upstream server after SECS (answered with 504).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub connect_timeout: f64,

    /// Close client and upstream connections idle for SECS (waiting for a request or response).
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    pub idle_timeout: f64,

    /// A request head must be complete SECS after its first byte (else 408), however long
    /// the connection waited for it (--idle-timeout).
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub request_head_timeout: f64,

    /// A request body may keep tproxy waiting for it SECS in total, plus one second per
    /// --request-body-min-rate bytes received (else 408 and the upstream connection is closed).
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub request_body_timeout: f64,

    /// Bytes of request body that earn one more second of --request-body-timeout; 0 makes
    /// --request-body-timeout a total deadline.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub request_body_min_rate: u64,

    /// On SIGTERM/SIGINT, let in-flight flows finish for up to SECS before exiting.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub shutdown_timeout: f64,

    /// Most client connections open at once, all listeners together; more are closed as
    /// they arrive, logged and counted (tproxy_client_refusals_total{reason="max_connections"}),
    /// while the open ones keep working. Size it from the memory limit (docs/capacity.md;
    /// the Helm chart does). 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_connections: usize,

    /// Largest accepted request/response header section, in bytes (bigger: 431/502).
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,

    /// Most header fields accepted in one request or response.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_headers: usize,

    /// Leaf certificates kept in the cache shared by all workers.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub cert_cache_size: usize,

    /// Key algorithm used when tproxy has to create a CA: rsa (like mitmproxy) or ecdsa.
    #[arg(long, value_enum, default_value = "rsa")]
    pub ca_key_type: KeyTypeArg,

    /// Policy rules file (YAML; see docs/policy.md). Watched: a valid new version
    /// applies to every worker within 2 s, an invalid one is rejected and the old
    /// policy stays. Without it every request is allowed.
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,

    /// Pod directory written by tproxy-podwatch (JSON; see docs/pod-directory.md):
    /// maps client IPs to pods for `source` rule matchers. Watched like --rules;
    /// a missing file is an empty directory.
    #[arg(long, value_name = "FILE")]
    pub pod_directory: Option<PathBuf>,

    /// Record per-request Prometheus metrics (requests, latency, bytes by source
    /// pod and destination host; see docs/metrics.md). `--metrics=false` turns
    /// only these off: connection, TLS, certificate and reload metrics stay.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics: bool,

    /// Destination hosts that get their own `destination_host` label, beyond the
    /// exact host names of the rules file (which always do); later hosts are
    /// counted as `other`.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub metrics_max_hosts: usize,

    /// Export OpenTelemetry traces (OTLP/HTTP, protobuf) to URL, e.g.
    /// http://otel-collector:4318 (a URL without a path gets /v1/traces). Without this flag
    /// the standard variables apply: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is) or
    /// OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/traces); with none of them, no tracing. Sampling:
    /// OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default parentbased_always_on); also
    /// read: OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_SERVICE_NAME,
    /// OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_MAX_EXPORT_BATCH_SIZE.
    /// See docs/tracing.md.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Send a `traceparent` upstream for every traced request, starting a trace when the
    /// client sent none. Default: only requests that came with a `traceparent` get one
    /// (continuing the client's trace, with tproxy's upstream span as the parent).
    #[arg(long)]
    pub otlp_inject_traceparent: bool,

    /// Finished flows (1-2 spans each) waiting for export. When full, new spans are dropped
    /// and counted in tproxy_trace_spans_dropped_total: workers never wait for the exporter.
    #[arg(long, value_name = "N", env = "OTEL_BSP_MAX_QUEUE_SIZE", default_value_t = crate::observe::trace::settings::DEFAULT_QUEUE)]
    pub otlp_queue_size: usize,

    /// Speak HTTP/2 where client and upstream offer it (ALPN mirrored to the
    /// upstream; cleartext h2 with prior knowledge intercepted in transparent
    /// mode). `--http2=false`: HTTP/1.1 only, h2c passed through.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub http2: bool,

    /// Most concurrent HTTP/2 streams one client connection may open (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, value_name = "N", default_value_t = 250)]
    pub h2_max_concurrent_streams: u32,

    /// What workers do when the flow log cannot keep up (stdout read too slowly or not at all):
    /// `drop` (default) drops records and counts them (tproxy_flowlog_records_dropped_total;
    /// the log says how many were lost once it drains) so traffic never waits for the log;
    /// `block` makes workers wait, so no record is lost but a stuck reader stops all traffic,
    /// and a broken stdout (EPIPE) ends the process (exit status 4). See docs/flow-log.md.
    #[arg(long, value_enum, value_name = "drop|block", default_value = "drop")]
    pub flow_log_full: FlowLogFull,

    /// Flow log records accepted but not yet written to stdout, at most (the buffer that
    /// absorbs a slow reader before --flow-log-full applies).
    #[arg(long, value_name = "N", default_value_t = crate::flowlog::QUEUE_CAPACITY)]
    pub flow_log_queue: usize,

    /// /healthz fails (503, naming the worker) when a worker's event loop has not run for SECS:
    /// a wedged data plane, for the liveness probe to restart.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub worker_stall_timeout: f64,
}

/// `--flow-log-full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowLogFull {
    /// Drop and count records; traffic never waits for the log.
    Drop,
    /// Wait for the log; a stuck reader stops traffic.
    Block,
}

impl From<FlowLogFull> for crate::flowlog::OnFull {
    fn from(f: FlowLogFull) -> Self {
        match f {
            FlowLogFull::Drop => Self::Drop,
            FlowLogFull::Block => Self::Block,
        }
    }
}

/// Proxy mode of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Regular,
    Transparent,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Regular => "regular",
            Mode::Transparent => "transparent",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `--mode MODE[@[HOST:]PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeSpec {
    pub mode: Mode,
    pub addr: SocketAddr,
}

impl FromStr for ModeSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, rest) = match s.split_once('@') {
            Some((n, r)) => (n, Some(r)),
            None => (s, None),
        };
        let mode = match name {
            "regular" => Mode::Regular,
            "transparent" => Mode::Transparent,
            other => {
                return Err(format!(
                    "unknown mode `{other}`: use regular or transparent (e.g. regular@127.0.0.1:8080)"
                ));
            }
        };
        let default_ip: IpAddr = match mode {
            Mode::Regular => Ipv4Addr::LOCALHOST.into(),
            Mode::Transparent => Ipv4Addr::UNSPECIFIED.into(),
        };
        let addr = match rest {
            None => SocketAddr::new(default_ip, 8080),
            Some(r) => parse_listen(r, default_ip)?,
        };
        Ok(ModeSpec { mode, addr })
    }
}

fn parse_listen(s: &str, default_ip: IpAddr) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(default_ip, port));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        format!("bad listen address `{s}`: use PORT, HOST:PORT or [V6]:PORT (e.g. 0.0.0.0:8081)")
    })
}

/// `--admin ADDR|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddr(pub Option<SocketAddr>);

impl FromStr for AdminAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(AdminAddr(None));
        }
        parse_listen(s, Ipv4Addr::LOCALHOST.into()).map(|a| AdminAddr(Some(a)))
    }
}

/// Validated run-time configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ModeSpec>,
    pub workers: usize,
    pub confdir: PathBuf,
    pub upstream_ca: Vec<PathBuf>,
    pub ssl_insecure: bool,
    pub ignore_hosts: Vec<Regex>,
    pub flow_detail: u8,
    pub log_format: LogFormat,
    pub show_secrets: bool,
    pub admin: Option<SocketAddr>,
    /// `--allow-client`, resolved against the default.
    pub allow_clients: crate::access::AllowList,
    /// `--proxyauth`.
    pub proxy_auth: Option<crate::access::ProxyAuth>,
    pub relay_mode: RelayMode,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_head_timeout: Duration,
    pub request_body: crate::engine::pace::BodyPace,
    pub shutdown_timeout: Duration,
    /// `--max-connections` (None: no limit).
    pub max_connections: Option<usize>,
    pub limits: Limits,
    pub cert_cache_size: usize,
    pub ca_key_kind: KeyKind,
    pub rules: Option<PathBuf>,
    pub pod_directory: Option<PathBuf>,
    /// `--metrics`.
    pub metrics: bool,
    /// `--metrics-max-hosts`.
    pub metrics_max_hosts: usize,
    /// OpenTelemetry trace export; None = tracing off.
    pub tracing: Option<crate::observe::trace::TraceSettings>,

    /// `--http2`.
    pub http2: bool,
    /// `--h2-max-concurrent-streams`.
    pub h2_max_concurrent_streams: u32,
    /// `--flow-log-full`.
    pub flow_log_full: crate::flowlog::OnFull,
    /// `--flow-log-queue`.
    pub flow_log_queue: usize,
    /// `--worker-stall-timeout`.
    pub worker_stall_timeout: Duration,
}

/// A configuration problem, said so the user can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--ignore-hosts `{pattern}` is not a valid regex: {reason}")]
    BadRegex { pattern: String, reason: String },
    #[error("{option} must be a positive number of seconds, got {value}")]
    BadDuration { option: &'static str, value: f64 },
    #[error("two listeners on {0}: give each --mode its own port")]
    DuplicateListener(SocketAddr),
    #[error("{0}")]
    Other(String),
}

fn secs(option: &'static str, value: f64) -> Result<Duration, ConfigError> {
    if value.is_finite() && value > 0.0 && value < 1e9 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(ConfigError::BadDuration { option, value })
    }
}

impl TryFrom<&RunArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: &RunArgs) -> Result<Self, Self::Error> {
        let ignore_hosts = a
            .ignore_hosts
            .iter()
            .map(|p| {
                RegexBuilder::new(p)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| ConfigError::BadRegex {
                        pattern: p.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = std::collections::HashSet::new();
        for l in &a.modes {
            if l.addr.port() != 0 && !seen.insert(l.addr) {
                return Err(ConfigError::DuplicateListener(l.addr));
            }
        }
        if a.max_headers == 0 || a.max_header_bytes < 1024 {
            return Err(ConfigError::Other(
                "--max-headers must be at least 1 and --max-header-bytes at least 1024".into(),
            ));
        }
        if a.h2_max_concurrent_streams == 0 {
            return Err(ConfigError::Other(
                "--h2-max-concurrent-streams must be at least 1".into(),
            ));
        }
        if a.flow_log_queue == 0 {
            return Err(ConfigError::Other(
                "--flow-log-queue must be at least 1 (records waiting for stdout)".into(),
            ));
        }
        if a.cert_cache_size == 0 {
            return Err(ConfigError::Other(
                "--cert-cache-size must be at least 1".into(),
            ));
        }
        let workers = match a.workers {
            Some(0) => return Err(ConfigError::Other("--workers must be at least 1".into())),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Ok(Config {
            listeners: a.modes.clone(),
            workers,
            confdir: a.confdir.resolve(),
            upstream_ca: a.upstream_ca.clone(),
            ssl_insecure: a.ssl_insecure,
            ignore_hosts,
            flow_detail: a.flow_detail,
            log_format: a.log_format,
            show_secrets: a.show_secrets,
            admin: a.admin.0,
            allow_clients: crate::access::AllowList::from_flags(
                &a.allow_client,
                a.pod_directory.is_some(),
            )
            .map_err(|e| ConfigError::Other(e.to_string()))?,
            proxy_auth: a.proxyauth.clone(),
            relay_mode: a.passthrough,
            connect_timeout: secs("--connect-timeout", a.connect_timeout)?,
            idle_timeout: secs("--idle-timeout", a.idle_timeout)?,
            request_head_timeout: secs("--request-head-timeout", a.request_head_timeout)?,
            request_body: crate::engine::pace::BodyPace {
                timeout: secs("--request-body-timeout", a.request_body_timeout)?,
                min_rate: a.request_body_min_rate,
            },
            shutdown_timeout: secs("--shutdown-timeout", a.shutdown_timeout)?,
            max_connections: (a.max_connections > 0).then_some(a.max_connections),
            limits: Limits {
                max_head_bytes: a.max_header_bytes,
                max_headers: a.max_headers,
            },
            cert_cache_size: a.cert_cache_size,
            ca_key_kind: a.ca_key_type.into(),
            rules: a.rules.clone(),
            pod_directory: a.pod_directory.clone(),
            metrics: a.metrics,
            metrics_max_hosts: a.metrics_max_hosts,
            tracing: crate::observe::trace::settings::resolve(
                a.otlp_endpoint.as_deref(),
                a.otlp_inject_traceparent,
                a.otlp_queue_size,
                &|k| std::env::var(k).ok(),
            )
            .map_err(|e| ConfigError::Other(format!("tracing: {e}")))?,

            http2: a.http2,
            h2_max_concurrent_streams: a.h2_max_concurrent_streams,
            flow_log_full: a.flow_log_full.into(),
            flow_log_queue: a.flow_log_queue,
            worker_stall_timeout: secs("--worker-stall-timeout", a.worker_stall_timeout)?,
        })
    }
}

impl Config {
    /// Whether `host:port` is excluded from interception by `--ignore-hosts`.
    pub fn is_ignored(&self, host: &str, port: u16) -> bool {
        if self.ignore_hosts.is_empty() {
            return false;
        }
        let hp = format!("{host}:{port}");
        self.ignore_hosts.iter().any(|r| r.is_match(&hp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_specs() {
        let m: ModeSpec = "regular".parse().unwrap();
        assert_eq!(m.addr, "127.0.0.1:8080".parse().unwrap());
        let m: ModeSpec = "transparent@8081".parse().unwrap();
        assert_eq!(m.mode, Mode::Transparent);
        assert_eq!(m.addr, "0.0.0.0:8081".parse().unwrap());
        let m: ModeSpec = "regular@[::1]:0".parse().unwrap();
        assert_eq!(m.addr, "[::1]:0".parse().unwrap());
        assert!(
            "socks5@1080"
                .parse::<ModeSpec>()
                .unwrap_err()
                .contains("unknown mode")
        );
        assert!(
            "regular@nope"
                .parse::<ModeSpec>()
                .unwrap_err()
                .contains("bad listen")
        );
    }

    #[test]
    fn defaults_validate() {
        let cli = Cli::try_parse_from(["tproxy"]).unwrap();
        let cfg = Config::try_from(&cli.run).unwrap();
        assert_eq!(cfg.listeners.len(), 1);
        assert_eq!(cfg.admin, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(cfg.flow_detail, 1);
    }

    #[test]
    fn bad_regex_is_named() {
        let cli = Cli::try_parse_from(["tproxy", "--ignore-hosts", "a("]).unwrap();
        let err = Config::try_from(&cli.run).unwrap_err().to_string();
        assert!(err.contains("a("), "{err}");
    }

    #[test]
    fn ignore_hosts_matches_host_port() {
        let cli = Cli::try_parse_from(["tproxy", "--ignore-hosts", r"^example\.com:443$"]).unwrap();
        let cfg = Config::try_from(&cli.run).unwrap();
        assert!(cfg.is_ignored("EXAMPLE.com", 443));
        assert!(!cfg.is_ignored("example.com", 80));
    }

    #[test]
    fn http2_flag_forms() {
        let cfg = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).unwrap();
            Config::try_from(&cli.run).unwrap()
        };
        assert!(cfg(&["tproxy"]).http2);
        assert!(!cfg(&["tproxy", "--http2=false"]).http2);
        assert!(cfg(&["tproxy", "--http2"]).http2);
        assert_eq!(cfg(&["tproxy"]).h2_max_concurrent_streams, 250);
    }

    #[test]
    fn allow_client_default_and_values() {
        let cfg = |args: &[&str]| Config::try_from(&Cli::try_parse_from(args).unwrap().run);
        assert_eq!(
            cfg(&["tproxy"]).unwrap().allow_clients.to_string(),
            "loopback"
        );
        assert_eq!(
            cfg(&["tproxy", "--pod-directory", "/x/pods.json"])
                .unwrap()
                .allow_clients
                .to_string(),
            "loopback, pods"
        );
        let c = cfg(&[
            "tproxy",
            "--allow-client",
            "10.244.0.0/16",
            "--allow-client",
            "loopback",
        ]);
        assert_eq!(
            c.unwrap().allow_clients.to_string(),
            "10.244.0.0/16, loopback"
        );
        let e = cfg(&["tproxy", "--allow-client", "pods"]).unwrap_err();
        assert!(e.to_string().contains("--pod-directory"), "{e}");
        let e = Cli::try_parse_from(["tproxy", "--allow-client", "10.0.0.0/99"]).unwrap_err();
        assert!(e.to_string().contains("CIDR"), "{e}");
        let e = Cli::try_parse_from(["tproxy", "--proxyauth", "nopass"]).unwrap_err();
        assert!(e.to_string().contains("USER:PASS"), "{e}");
        assert!(
            cfg(&["tproxy", "--proxyauth", "u:p"])
                .unwrap()
                .proxy_auth
                .is_some()
        );
    }

    #[test]
    fn duplicate_listener_rejected() {
        let cli = Cli::try_parse_from([
            "tproxy",
            "--mode",
            "regular@127.0.0.1:9000",
            "--mode",
            "transparent@127.0.0.1:9000",
        ])
        .unwrap();
        assert!(Config::try_from(&cli.run).is_err());
    }
}
