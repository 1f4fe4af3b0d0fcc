//! tproxy-initializer: a mutating admission webhook that opts Kubernetes
//! workloads into tproxy interception.
//!
//! Pods and pod-template workloads annotated
//! `initializer.kubernetes.io/tproxy: "true"` get the `tproxy-sidecar` init
//! container, the CA bundle mounted where distributions and runtimes look
//! for it, and (standard mode) proxy env vars. See README.md.
//!
//! * [`review`] — AdmissionReview wire format (request checks, response).
//! * [`inject`] — the decision and the JSON Patch.
//! * [`config`] — the config file and its defaults.
//! * [`tls`] — serving certificate with reload on change.
//! * [`server`] — HTTPS routes.
//! * [`metrics`] — Prometheus metrics.

pub mod config;
pub mod inject;
pub mod metrics;
pub mod review;
pub mod server;
pub mod tls;
