//! HTTPS front: `POST /mutate`, `GET /healthz`, `GET /metrics`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::inject::{self, Decision, InjectError, WorkloadKind};
use crate::metrics::Metrics;
use crate::review::{self, AdmissionResponse, ReviewError};

/// Largest accepted AdmissionReview body (the API server's own limit is 3 MiB
/// per object; a review carries up to two objects).
pub const MAX_BODY: usize = 16 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open connections may take to finish after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The webhook's state: validated config, marker, metrics.
#[derive(Debug)]
pub struct Webhook {
    cfg: Config,
    marker: String,
    metrics: Arc<Metrics>,
}

/// An HTTP answer: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// `application/json` for reviews, `text/plain` for errors.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    fn text(status: StatusCode, msg: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{msg}\n").into_bytes(),
        }
    }
}

impl Webhook {
    /// Creates the webhook state.
    pub fn new(cfg: Config, metrics: Arc<Metrics>) -> Webhook {
        let marker = cfg.marker();
        Webhook {
            cfg,
            marker,
            metrics,
        }
    }

    /// Metrics handle.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Answers one AdmissionReview body. Logs one line per review. The only
    /// side effects are that log line and metrics, so dry-run requests get
    /// the same answer.
    pub fn handle_review(&self, body: &[u8]) -> Reply {
        let started = Instant::now();
        let req = match review::parse_review(body) {
            Ok(r) => r,
            Err(e) => {
                let reason = match &e {
                    ReviewError::Json(_) => "malformed_json",
                    ReviewError::WrongType { .. } => "wrong_type",
                    _ => "invalid_request",
                };
                return self.reject(StatusCode::BAD_REQUEST, reason, &e.to_string(), "");
            }
        };
        let decision = match inject::decide(&self.cfg, &self.marker, &req) {
            Ok(d) => d,
            Err(e) => {
                let (status, reason) = match &e {
                    InjectError::UnknownKind(_) => (StatusCode::BAD_REQUEST, "unknown_kind"),
                    InjectError::Shape { .. } => (StatusCode::BAD_REQUEST, "invalid_object"),
                    InjectError::Patch(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
                };
                return self.reject(status, reason, &e.to_string(), &req.uid);
            }
        };
        let kind = WorkloadKind::from_gvk(&req.kind).map_or("unknown", WorkloadKind::as_str);
        let name = if req.name.is_empty() {
            req.object
                .as_ref()
                .and_then(|o| o.pointer("/metadata/generateName"))
                .and_then(|v| v.as_str())
                .unwrap_or("")
        } else {
            req.name.as_str()
        };
        let mut resp = AdmissionResponse::allow(&req.uid);
        let (result, ops) = match decision {
            Decision::Patch { patch, json } => {
                resp = resp.with_patch(&json);
                resp.audit_annotations
                    .insert("injected".to_owned(), self.marker.clone());
                ("patched", patch.0.len())
            }
            Decision::Skip(skip) => {
                if let Some(w) = skip.warning() {
                    resp.warnings.push(w);
                    resp.audit_annotations
                        .insert("skipped".to_owned(), skip.reason().to_owned());
                }
                (skip.reason(), 0)
            }
        };
        tracing::info!(
            uid = %req.uid,
            kind = %req.kind,
            namespace = %req.namespace,
            name = %name,
            operation = req.operation.as_str(),
            dry_run = req.dry_run,
            result,
            ops,
            "admission review"
        );
        self.metrics
            .reviews
            .with_label_values(&[kind, result])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        Reply {
            status: StatusCode::OK,
            content_type: "application/json",
            body: resp.into_review_json(),
        }
    }

    fn reject(&self, status: StatusCode, reason: &'static str, msg: &str, uid: &str) -> Reply {
        tracing::warn!(status = status.as_u16(), reason, uid, error = %msg, "admission review rejected");
        self.metrics.rejected.with_label_values(&[reason]).inc();
        Reply::text(status, msg)
    }

    /// Routes one HTTP request.
    pub async fn route(&self, req: Request<Incoming>) -> Reply {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        match (&method, path.as_str()) {
            (&Method::POST, "/mutate") => {
                match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(body) => self.handle_review(&body.to_bytes()),
                    Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => self.reject(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "request body larger than 16 MiB",
                        "",
                    ),
                    Err(e) => self.reject(
                        StatusCode::BAD_REQUEST,
                        "body",
                        &format!("cannot read request body: {e}"),
                        "",
                    ),
                }
            }
            (&Method::GET, "/healthz") => Reply::text(StatusCode::OK, "ok"),
            (&Method::GET, "/metrics") => Reply {
                status: StatusCode::OK,
                content_type: "text/plain; version=0.0.4",
                body: self.metrics.render(),
            },
            (_, "/mutate" | "/healthz" | "/metrics") => {
                Reply::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => Reply::text(
                StatusCode::NOT_FOUND,
                "not found: use POST /mutate, GET /healthz or GET /metrics",
            ),
        }
    }
}

fn to_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = reply.status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(reply.content_type),
    );
    resp
}

/// Accepts TLS connections until `shutdown` completes, then lets open
/// connections finish their current request (at most [`DRAIN_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    webhook: Arc<Webhook>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        conns.spawn(connection(
            tcp,
            peer,
            acceptor.clone(),
            Arc::clone(&webhook),
            drain_rx.clone(),
        ));
    }
    tracing::info!(open_connections = conns.len(), "shutting down");
    drop(listener);
    let _ = drain_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open_connections = conns.len(),
            "drain timed out, closing connections"
        );
    }
}

/// One client connection: TLS handshake, then HTTP/1.1 until the peer closes
/// or the server drains.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    acceptor: TlsAcceptor,
    webhook: Arc<Webhook>,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            webhook.metrics.tls_handshake_errors.inc();
            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            webhook.metrics.tls_handshake_errors.inc();
            tracing::debug!(peer = %peer, "TLS handshake timed out");
            return;
        }
    };
    let svc = service_fn(|req| {
        let webhook = Arc::clone(&webhook);
        async move { Ok::<_, Infallible>(to_response(webhook.route(req).await)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = drain.wait_for(|d| *d), if !draining => {
                // Finish the request in flight, then close.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}
