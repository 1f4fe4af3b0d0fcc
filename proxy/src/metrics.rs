//! Prometheus metrics. Every handle is created once at start-up and cached
//! here; nothing on the request path looks a label up.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::config::Mode;

/// Connection handling outcome, a label on `tproxy_connections_total`.
#[derive(Debug, Clone, Copy)]
pub enum ConnKind {
    Intercepted,
    Passthrough,
    Refused,
}

/// All metrics, with cached handles.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    conns: [[IntCounter; 3]; 2],
    active: [IntGauge; 2],
    requests: [IntCounter; 6],
    pub bytes_from_client: IntCounter,
    pub bytes_to_client: IntCounter,
    pub tls_ok: [IntCounter; 2],
    pub tls_failed: [IntCounter; 2],
    pub cert_hit: IntCounter,
    pub cert_miss: IntCounter,
    pub cert_coalesced: IntCounter,
    pub cert_mint_seconds: Histogram,
    pub cert_cache_entries: IntGauge,
    pub upstream_connects: IntCounter,
    pub upstream_connect_errors: IntCounter,
    pub pool_reuse: IntCounter,
    pub workers: IntGaugeVec,
    /// Live reloads of the rules file / pod directory, by result (synced at scrape).
    pub policy_reload_ok: IntCounter,
    pub policy_reload_error: IntCounter,
    pub poddir_reload_ok: IntCounter,
    pub poddir_reload_error: IntCounter,
    /// TLS fail-open: client certificate rejections, hosts opened.
    pub failopen_rejects: IntCounter,
    pub failopen_opened: IntCounter,
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
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let conns_vec = IntCounterVec::new(
            Opts::new(
                "tproxy_connections_total",
                "Client connections accepted, by listener mode and how they were handled.",
            ),
            &["mode", "kind"],
        )?;
        let active_vec = IntGaugeVec::new(
            Opts::new(
                "tproxy_connections_active",
                "Client connections open now, by listener mode.",
            ),
            &["mode"],
        )?;
        let req_vec = IntCounterVec::new(
            Opts::new(
                "tproxy_requests_total",
                "HTTP requests handled, by response status class (error = no response).",
            ),
            &["status_class"],
        )?;
        let bytes_vec = IntCounterVec::new(
            Opts::new(
                "tproxy_body_bytes_total",
                "HTTP body bytes relayed, by direction.",
            ),
            &["direction"],
        )?;
        let tls_vec = IntCounterVec::new(
            Opts::new(
                "tproxy_tls_handshakes_total",
                "TLS handshakes, by side (client = towards the client, upstream = towards the server) and result.",
            ),
            &["side", "result"],
        )?;
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
        for c in [
            Box::new(reload_vec.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failopen_vec.clone()),
            Box::new(conns_vec.clone()),
            Box::new(active_vec.clone()),
            Box::new(req_vec.clone()),
            Box::new(bytes_vec.clone()),
            Box::new(tls_vec.clone()),
            Box::new(cert_vec.clone()),
            Box::new(cert_mint_seconds.clone()),
            Box::new(cert_cache_entries.clone()),
            Box::new(up_vec.clone()),
            Box::new(workers.clone()),
        ] {
            registry.register(c)?;
        }
        let conn = |m: &str, k: &str| conns_vec.with_label_values(&[m, k]);
        let conns = [
            [
                conn("regular", "intercepted"),
                conn("regular", "passthrough"),
                conn("regular", "refused"),
            ],
            [
                conn("transparent", "intercepted"),
                conn("transparent", "passthrough"),
                conn("transparent", "refused"),
            ],
        ];
        let requests =
            ["1xx", "2xx", "3xx", "4xx", "5xx", "error"].map(|c| req_vec.with_label_values(&[c]));
        Ok(Metrics {
            conns,
            active: [
                active_vec.with_label_values(&["regular"]),
                active_vec.with_label_values(&["transparent"]),
            ],
            requests,
            bytes_from_client: bytes_vec.with_label_values(&["from_client"]),
            bytes_to_client: bytes_vec.with_label_values(&["to_client"]),
            tls_ok: [
                tls_vec.with_label_values(&["client", "ok"]),
                tls_vec.with_label_values(&["upstream", "ok"]),
            ],
            tls_failed: [
                tls_vec.with_label_values(&["client", "failed"]),
                tls_vec.with_label_values(&["upstream", "failed"]),
            ],
            cert_hit: cert_vec.with_label_values(&["hit"]),
            cert_miss: cert_vec.with_label_values(&["miss"]),
            cert_coalesced: cert_vec.with_label_values(&["coalesced"]),
            cert_mint_seconds,
            cert_cache_entries,
            upstream_connects: up_vec.with_label_values(&["opened"]),
            upstream_connect_errors: up_vec.with_label_values(&["failed"]),
            pool_reuse: up_vec.with_label_values(&["reused"]),
            workers,
            policy_reload_ok: reload_vec.with_label_values(&["rules", "ok"]),
            policy_reload_error: reload_vec.with_label_values(&["rules", "error"]),
            poddir_reload_ok: reload_vec.with_label_values(&["pod_directory", "ok"]),
            poddir_reload_error: reload_vec.with_label_values(&["pod_directory", "error"]),
            failopen_rejects: failopen_vec.with_label_values(&["rejected"]),
            failopen_opened: failopen_vec.with_label_values(&["opened"]),
            registry,
        })
    }

    pub fn conn(&self, mode: Mode, kind: ConnKind) {
        self.conns[mode_idx(mode)][kind as usize].inc();
    }

    pub fn active(&self, mode: Mode) -> &IntGauge {
        &self.active[mode_idx(mode)]
    }

    /// Count a finished request by status (None = no response).
    pub fn request(&self, status: Option<u16>) {
        let idx = match status {
            Some(s @ 100..=599) => usize::from(s / 100) - 1,
            _ => 5,
        };
        self.requests[idx].inc();
    }

    /// Raise a counter to `value` (counters kept as atomics elsewhere are
    /// mirrored at scrape time, never on the request path).
    pub fn sync(counter: &IntCounter, value: u64) {
        let cur = counter.get();
        if value > cur {
            counter.inc_by(value - cur);
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let enc = prometheus::TextEncoder::new();
        enc.encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
