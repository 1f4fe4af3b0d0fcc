//! tproxy — a thread-per-core intercepting HTTP(S) proxy.
//!
//! The connection path reads as phases (see `docs/architecture.md`):
//! accept → destination → loop guard → sniff → decide → passthrough | intercept.
//! Each phase lives in its own module below.

pub mod detect;
pub mod flowlog;
pub mod http1;
pub mod passthrough;
pub mod tls;
