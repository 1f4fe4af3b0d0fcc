//! The admin HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/ca.pem`.
//! Runs on its own thread ([`server`]: a monoio event loop with bounded
//! input); it never runs on, or waits for, a worker.
//!
//! * `/healthz` — liveness: every worker's event loop ran within
//!   `--worker-stall-timeout` ([`crate::health`]); else `503` naming the
//!   stalled workers.
//! * `/readyz` — readiness: accepting and able to serve; `503` while
//!   shutting down, or when the flow log's output failed for good (the proxy
//!   serves but cannot log; see `docs/flow-log.md`).

pub mod server;

use std::sync::Arc;

use server::{Request, Response};

use crate::worker::Shared;

/// Serve admin requests until the process exits.
pub fn run(listener: std::net::TcpListener, shared: Arc<Shared>) {
    if let Err(error) = server::serve(listener, move |req| route(req, &shared)) {
        tracing::error!(%error, "admin listener stopped; /metrics, /healthz and /readyz are unavailable");
    }
}

fn route(req: &Request, shared: &Shared) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return Response::text(405, "use GET or HEAD\n");
    }
    match req.path.as_str() {
        "/metrics" => {
            sync_metrics(shared);
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: render_metrics(shared).into_bytes(),
            }
        }
        "/healthz" => healthz(shared),
        "/readyz" => readyz(shared),
        "/ca.pem" => Response {
            status: 200,
            content_type: "application/x-pem-file",
            body: shared.ca.cert_pem().as_bytes().to_vec(),
        },
        _ => Response::text(404, "tproxy admin: /metrics /healthz /readyz /ca.pem\n"),
    }
}

/// Liveness: `ok`, or `503` with one line per stalled worker.
fn healthz(shared: &Shared) -> Response {
    let mut stalls = shared.health.check(shared.cfg.worker_stall_timeout);
    if shared.shutting_down() {
        // Workers finishing their drain are not stalled.
        stalls.retain(|s| s.silent_for.is_some());
    }
    if stalls.is_empty() {
        return Response::text(200, "ok\n");
    }
    let mut body = format!(
        "unhealthy: the data plane is not serving (threshold --worker-stall-timeout {}s)\n",
        shared.cfg.worker_stall_timeout.as_secs_f64()
    );
    for s in &stalls {
        body.push_str(&s.to_string());
        body.push('\n');
    }
    tracing::warn!(stalled = stalls.len(), reason = %stalls[0], "/healthz failing");
    Response::text(503, body)
}

/// Readiness: accepting and able to serve.
fn readyz(shared: &Shared) -> Response {
    if shared.shutting_down() {
        return Response::text(503, "shutting down\n");
    }
    let broken = shared
        .flowlog
        .stats()
        .is_some_and(|s| s.broken.load(std::sync::atomic::Ordering::Relaxed));
    if broken {
        return Response::text(
            503,
            "flow log output failed (stdout closed or failing): flows are served but not logged; \
             see tproxy_flowlog_records_dropped_total{reason=\"output_error\"}; restart to resume logging\n",
        );
    }
    Response::text(200, "ready\n")
}

/// The exposition; sources whose pod left the pod directory are dropped.
fn render_metrics(shared: &Shared) -> String {
    let dir = shared.pods.as_ref().map(|d| d.load());
    let alive = |p: &crate::poddir::PodInfo, ip: std::net::IpAddr| {
        dir.as_ref().is_none_or(|d| {
            d.lookup(ip)
                .is_some_and(|q| q.namespace == p.namespace && q.name == p.name)
        })
    };
    shared.metrics.render(&alive)
}

/// Mirror counters that live elsewhere as atomics into the registry.
fn sync_metrics(shared: &Shared) {
    use std::sync::atomic::Ordering::Relaxed;

    use crate::metrics::Metrics;
    let m = &shared.metrics;
    m.cert_cache_entries.set(shared.certs.len() as i64);
    m.sync_active();
    if let Some(f) = &m.flows {
        f.hosts.refresh_rules(shared.policy.generation());
    }
    let p = &shared.policy;
    Metrics::sync(&m.policy_reload_ok, p.reload_ok().load(Relaxed));
    Metrics::sync(&m.policy_reload_error, p.reload_error().load(Relaxed));
    Metrics::sync(
        &m.failopen_rejects,
        p.fail_open().rejects_total.load(Relaxed),
    );
    Metrics::sync(&m.failopen_opened, p.fail_open().opened_total.load(Relaxed));
    if let Some(d) = &shared.pods {
        Metrics::sync(&m.poddir_reload_ok, d.reload_ok().load(Relaxed));
        Metrics::sync(&m.poddir_reload_error, d.reload_error().load(Relaxed));
    }
    let flowlog = shared
        .flowlog
        .stats()
        .map(|s| (s, shared.flowlog.pending()));
    m.observers
        .sync(flowlog, crate::diag::dropped(), &shared.health.ages());
}
