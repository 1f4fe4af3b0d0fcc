//! Prometheus metrics. Process-level handles are created once at start-up
//! and cached here; per-request metrics labelled by source pod live in
//! [`flows`] (per-worker accumulation merged at scrape). Nothing on the
//! request path looks a label up. The metric list: docs/metrics.md.

mod exposition;
pub mod flows;
pub mod labels;
pub mod observers;
pub mod tls;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::access::RefusalReason;
use crate::config::Mode;

/// Connection handling outcome, a label on `tproxy_connections_total`.
#[derive(Debug, Clone, Copy)]
pub enum ConnKind {
    Intercepted,
    Passthrough,
    /// Refused before any request: deny rule, loop guard, no destination
    /// (label `blocked`).
    Refused,
}

/// All metrics, with cached handles.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    conns: [[IntCounter; 3]; 2],
    /// `tproxy_client_refusals_total{mode,reason}` (index: mode, [`RefusalReason`] order).
    refusals: [[IntCounter; RefusalReason::ALL.len()]; 2],
    /// Open client connections per listener mode (moved by conn.rs).
    active: [IntGauge; 2],
    /// Open passthrough connections per listener mode.
    passthrough_active: [IntGauge; 2],
    /// `tproxy_connections_active{mode,kind}`, derived from the two above at scrape.
    active_by_kind: [[IntGauge; 2]; 2],
    pub tls_ok: [IntCounter; 2],
    tls_failed: [IntCounter; 2],
    tls_reasons: [[IntCounter; tls::REASONS.len()]; 2],
    pub cert_hit: IntCounter,
    pub cert_miss: IntCounter,
    pub cert_coalesced: IntCounter,
    pub cert_mint_seconds: Histogram,
    pub cert_cache_entries: IntGauge,
    pub upstream_connects: IntCounter,
    pub upstream_connect_errors: IntCounter,
    pub pool_reuse: IntCounter,
    /// Requests answered with an error because of the upstream, by cause
    /// (indexed by [`crate::upstream::failure::Cause::index`]).
    pub upstream_failures: [IntCounter; 8],
    /// Requests sent again on a new upstream connection, by the cause of
    /// the failure that was hidden from the client.
    pub upstream_retries: [IntCounter; 8],
    pub workers: IntGaugeVec,
    /// `tproxy_tcp_migrate_req`: the sysctl at start (1, 0, or -1 unreadable).
    pub migrate_req: IntGauge,
    /// `tproxy_start_time_seconds`: when this process started (restarts show as changes).
    pub start_time: prometheus::Gauge,
    /// Live reloads of the rules file / pod directory, by result (synced at scrape).
    pub policy_reload_ok: IntCounter,
    pub policy_reload_error: IntCounter,
    pub poddir_reload_ok: IntCounter,
    pub poddir_reload_error: IntCounter,
    /// TLS fail-open: client certificate rejections, hosts opened.
    pub failopen_rejects: IntCounter,
    pub failopen_opened: IntCounter,
    /// Per-request metrics by source pod (None with `--metrics=false`).
    pub flows: Option<flows::FlowStats>,
    /// The flow log, stderr and worker heartbeats.
    pub observers: observers::Observers,
}

/// What [`Metrics::new`] needs from the configuration.
#[derive(Debug, Clone)]
pub struct MetricsOptions {
    /// Worker threads (one accumulator each).
    pub workers: usize,
    /// Record per-request metrics (`--metrics`).
    pub enabled: bool,
    /// `--metrics-max-hosts`.
    pub max_hosts: usize,
    /// The rules file, whose exact host names always get their own label.
    pub rules: Option<std::path::PathBuf>,
}

fn mode_idx(m: Mode) -> usize {
    match m {
        Mode::Regular => 0,
        Mode::Transparent => 1,
    }
}

/// TLS side label index: 0 = client, 1 = upstream.
pub const CLIENT: usize = 0;
pub const UPSTREAM: usize = 1;

impl Metrics {
    /// Register every metric.
    pub fn new(opts: &MetricsOptions) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let conns_vec = IntCounterVec::new(
            Opts::new(
                "tproxy_connections_total",
                "Client connections accepted, by listener mode and how they were handled.",
            ),
            &["mode", "kind"],
        )?;
        let refusals_vec = IntCounterVec::new(
            Opts::new(
                "tproxy_client_refusals_total",
                "Clients turned away, by listener mode and reason: not_allowed (source not in --allow-client; closed before a byte is read), not_redirected (transparent port reached without a REDIRECT), proxy_auth (407: missing or wrong --proxyauth credentials).",
            ),
            &["mode", "reason"],
        )?;
        let active_vec = IntGaugeVec::new(
            Opts::new(
                "tproxy_connections_active",
                "Client connections open now, by listener mode and kind (intercepted includes connections still being classified).",
            ),
            &["mode", "kind"],
        )?;
        let gauge = |name: &str| IntGauge::new(name, "internal (not exported)");
        let tls_vec = IntCounterVec::new(
            Opts::new(
                "tproxy_tls_handshakes_total",
                "TLS handshakes, by side (client = towards the client, upstream = towards the server) and result.",
            ),
            &["side", "result"],
        )?;
        let tls_reason_vec = IntCounterVec::new(
            Opts::new(
                "tproxy_tls_handshake_failures_total",
                "Failed TLS handshakes, by side (client or upstream) and reason (unknown_ca, bad_certificate, handshake_timeout, eof, protocol, other).",
            ),
            &["side", "reason"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "tproxy_build_info",
                "Always 1; the version label says which tproxy is running.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let cert_vec = IntCounterVec::new(
            Opts::new(
                "tproxy_cert_cache_lookups_total",
                "Leaf certificate cache lookups, by result.",
            ),
            &["result"],
        )?;
        let cert_mint_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tproxy_cert_mint_duration_seconds",
                "Time to mint (sign) one leaf certificate.",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
            ]),
        )?;
        let cert_cache_entries = IntGauge::new(
            "tproxy_cert_cache_entries",
            "Leaf certificates in the shared cache.",
        )?;
        let up_vec = IntCounterVec::new(
            Opts::new(
                "tproxy_upstream_connections_total",
                "Upstream connections: opened, failed to open, or reused from the pool.",
            ),
            &["result"],
        )?;
        let failures_vec = IntCounterVec::new(
            Opts::new(
                "tproxy_upstream_failures_total",
                "Requests that failed because of the upstream (answered 502/504 or reset), by cause (goaway, refused, reset, idle_close_race, closed, timeout, invalid_response, connect).",
            ),
            &["cause"],
        )?;
        let retries_vec = IntCounterVec::new(
            Opts::new(
                "tproxy_upstream_retries_total",
                "Requests sent again on a new upstream connection after a failure the upstream proved harmless (HTTP/2 GOAWAY or REFUSED_STREAM, keep-alive close race), by the cause of that failure.",
            ),
            &["cause"],
        )?;
        let workers = IntGaugeVec::new(
            Opts::new(
                "tproxy_worker_info",
                "One series per worker thread with the I/O driver it runs (io_uring or epoll).",
            ),
            &["worker", "driver"],
        )?;
        let reload_vec = IntCounterVec::new(
            Opts::new(
                "tproxy_config_reloads_total",
                "Live reloads of watched files (rules, pod directory), by result; a rejected file keeps the previous version.",
            ),
            &["file", "result"],
        )?;
        let failopen_vec = IntCounterVec::new(
            Opts::new(
                "tproxy_tls_fail_open_total",
                "TLS fail-open: client rejections of our certificate (rejected) and hosts passed through for the TTL (opened).",
            ),
            &["event"],
        )?;
        let migrate_req = IntGauge::new(
            "tproxy_tcp_migrate_req",
            "net.ipv4.tcp_migrate_req in tproxy's network namespace at start: 1 = a restart hands queued connections to the new process, 0 = they are reset when this process exits, -1 = unknown (kernel < 5.14). See docs/restarts.md.",
        )?;
        let start_time = prometheus::Gauge::new(
            "tproxy_start_time_seconds",
            "Start time of this tproxy process, seconds since the Unix epoch (changes() counts restarts).",
        )?;
        start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        for c in [
            Box::new(reload_vec.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(migrate_req.clone()),
            Box::new(start_time.clone()),
            Box::new(failopen_vec.clone()),
            Box::new(conns_vec.clone()),
            Box::new(refusals_vec.clone()),
            Box::new(active_vec.clone()),
            Box::new(tls_vec.clone()),
            Box::new(tls_reason_vec.clone()),
            Box::new(build_info.clone()),
            Box::new(cert_vec.clone()),
            Box::new(cert_mint_seconds.clone()),
            Box::new(cert_cache_entries.clone()),
            Box::new(up_vec.clone()),
            Box::new(failures_vec.clone()),
            Box::new(retries_vec.clone()),
            Box::new(workers.clone()),
        ] {
            registry.register(c)?;
        }
        let conn = |m: &str, k: &str| conns_vec.with_label_values(&[m, k]);
        let conns = [
            [
                conn("regular", "intercepted"),
                conn("regular", "passthrough"),
                conn("regular", "blocked"),
            ],
            [
                conn("transparent", "intercepted"),
                conn("transparent", "passthrough"),
                conn("transparent", "blocked"),
            ],
        ];
        let refusals = ["regular", "transparent"]
            .map(|m| RefusalReason::ALL.map(|r| refusals_vec.with_label_values(&[m, r.as_str()])));
        let reasons =
            |side: &str| tls::REASONS.map(|r| tls_reason_vec.with_label_values(&[side, r]));
        let flows = opts.enabled.then(|| {
            flows::FlowStats::new(
                opts.workers,
                labels::HostTable::new(opts.max_hosts, opts.rules.as_deref()),
            )
        });
        let observers = observers::Observers::new(&registry, opts.workers)?;
        Ok(Metrics {
            observers,
            conns,
            refusals,
            active: [gauge("active_regular")?, gauge("active_transparent")?],
            passthrough_active: [gauge("pt_regular")?, gauge("pt_transparent")?],
            active_by_kind: ["regular", "transparent"].map(|m| {
                ["intercepted", "passthrough"].map(|k| active_vec.with_label_values(&[m, k]))
            }),
            tls_ok: [
                tls_vec.with_label_values(&["client", "ok"]),
                tls_vec.with_label_values(&["upstream", "ok"]),
            ],
            tls_failed: [
                tls_vec.with_label_values(&["client", "failed"]),
                tls_vec.with_label_values(&["upstream", "failed"]),
            ],
            tls_reasons: [reasons("client"), reasons("upstream")],
            flows,
            cert_hit: cert_vec.with_label_values(&["hit"]),
            cert_miss: cert_vec.with_label_values(&["miss"]),
            cert_coalesced: cert_vec.with_label_values(&["coalesced"]),
            cert_mint_seconds,
            cert_cache_entries,
            upstream_connects: up_vec.with_label_values(&["opened"]),
            upstream_connect_errors: up_vec.with_label_values(&["failed"]),
            pool_reuse: up_vec.with_label_values(&["reused"]),
            upstream_failures: crate::upstream::failure::Cause::ALL
                .map(|c| failures_vec.with_label_values(&[c.as_str()])),
            upstream_retries: crate::upstream::failure::Cause::ALL
                .map(|c| retries_vec.with_label_values(&[c.as_str()])),
            workers,
            migrate_req,
            start_time,
            policy_reload_ok: reload_vec.with_label_values(&["rules", "ok"]),
            policy_reload_error: reload_vec.with_label_values(&["rules", "error"]),
            poddir_reload_ok: reload_vec.with_label_values(&["pod_directory", "ok"]),
            poddir_reload_error: reload_vec.with_label_values(&["pod_directory", "error"]),
            failopen_rejects: failopen_vec.with_label_values(&["rejected"]),
            failopen_opened: failopen_vec.with_label_values(&["opened"]),
            registry,
        })
    }

    /// Count a connection of `kind` (a passthrough one stays active until
    /// [`Metrics::passthrough_done`]).
    pub fn conn(&self, mode: Mode, kind: ConnKind) {
        self.conns[mode_idx(mode)][kind as usize].inc();
        if let ConnKind::Passthrough = kind {
            self.passthrough_active[mode_idx(mode)].inc();
        }
    }

    /// Count a client turned away (see [`RefusalReason`]).
    pub fn refused(&self, mode: Mode, reason: RefusalReason) {
        self.refusals[mode_idx(mode)][reason as usize].inc();
    }

    /// A passthrough connection counted by [`Metrics::conn`] ended.
    pub fn passthrough_done(&self, mode: Mode) {
        self.passthrough_active[mode_idx(mode)].dec();
    }

    /// Derive the exported active-connection gauges (called at scrape).
    pub fn sync_active(&self) {
        for m in 0..2 {
            let all = self.active[m].get();
            let pt = self.passthrough_active[m].get().clamp(0, all.max(0));
            self.active_by_kind[m][0].set(all - pt);
            self.active_by_kind[m][1].set(pt);
        }
    }

    /// Open client connections of a listener mode (conn.rs moves it).
    pub fn active(&self, mode: Mode) -> &IntGauge {
        &self.active[mode_idx(mode)]
    }

    /// Count a failed TLS handshake on `side` ([`CLIENT`] or [`UPSTREAM`]).
    pub fn tls_failure(&self, side: usize, reason: tls::Reason) {
        let side = side.min(1);
        self.tls_failed[side].inc();
        self.tls_reasons[side][reason as usize].inc();
    }

    /// Count a request that failed because of the upstream.
    pub fn upstream_failure(&self, cause: crate::upstream::failure::Cause) {
        self.upstream_failures[cause.index()].inc();
    }

    /// Count a request sent again after a hidden upstream failure.
    pub fn upstream_retry(&self, cause: crate::upstream::failure::Cause) {
        self.upstream_retries[cause.index()].inc();
    }

    /// Raise a counter to `value` (counters kept as atomics elsewhere are
    /// mirrored at scrape time, never on the request path).
    pub fn sync(counter: &IntCounter, value: u64) {
        let cur = counter.get();
        if value > cur {
            counter.inc_by(value - cur);
        }
    }

    /// Prometheus text exposition: the registry, then the per-request
    /// families (sources for which `alive` is false are dropped first).
    pub fn render(
        &self,
        alive: &dyn Fn(&crate::poddir::PodInfo, std::net::IpAddr) -> bool,
    ) -> String {
        let enc = prometheus::TextEncoder::new();
        let mut out = enc
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default();
        if let Some(f) = &self.flows {
            f.render(alive, &mut out);
        }
        out
    }
}
