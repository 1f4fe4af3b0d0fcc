//! tproxy — a thread-per-core intercepting HTTP(S) proxy.
//!
//! The connection path reads as phases (see `docs/architecture.md`):
//! accept (`worker`) → destination and loop guard (`conn`, `net::origdst`) →
//! sniff (`detect`) → passthrough (`passthrough`) | intercept (`tls`,
//! `engine`, `upstream`) → flow log (`flowlog`) and metrics (`metrics`).

pub mod access;
pub mod admin;
pub mod config;
pub mod conn;
pub mod detect;
pub mod diag;
pub mod engine;
pub mod flowlog;
pub mod health;
pub mod http1;
pub mod metrics;
pub mod net;
pub mod observe;
pub mod passthrough;
pub mod poddir;
pub mod policy;
pub mod run;
pub mod shutdown;
pub mod tls;
pub mod upstream;
pub mod worker;
