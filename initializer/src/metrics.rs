//! Prometheus metrics of the webhook (text exposition, own registry).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// All metrics, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reviews answered, by object kind and result (`patched` or a skip reason).
    pub reviews: IntCounterVec,
    /// Requests rejected with 4xx/5xx, by reason.
    pub rejected: IntCounterVec,
    /// Time to answer a review, by object kind.
    pub duration: HistogramVec,
    /// Serving certificate reloads, by result.
    pub tls_reloads: IntCounterVec,
    /// TLS handshakes that failed.
    pub tls_handshake_errors: IntCounter,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let reviews = IntCounterVec::new(
            Opts::new(
                "tproxy_initializer_reviews_total",
                "Admission reviews answered, by object kind and result (patched or why not).",
            ),
            &["kind", "result"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "tproxy_initializer_rejected_requests_total",
                "HTTP requests answered with an error status, by reason.",
            ),
            &["reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tproxy_initializer_review_duration_seconds",
                "Time to parse, decide and answer one admission review.",
            )
            .buckets(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1]),
            &["kind"],
        )?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "tproxy_initializer_tls_reloads_total",
                "Serving certificate reloads after the files changed, by result.",
            ),
            &["result"],
        )?;
        let tls_handshake_errors = IntCounter::new(
            "tproxy_initializer_tls_handshake_errors_total",
            "TLS handshakes that failed or timed out.",
        )?;
        registry.register(Box::new(reviews.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(tls_reloads.clone()))?;
        registry.register(Box::new(tls_handshake_errors.clone()))?;
        Ok(Metrics {
            registry,
            reviews,
            rejected,
            duration,
            tls_reloads,
            tls_handshake_errors,
        })
    }

    /// Text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}
