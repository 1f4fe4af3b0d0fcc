//! HTTP/2 interception on both sides, and translation to and from HTTP/1.1.
//!
//! * [`server`]: the client-facing HTTP/2 server; every stream is its own
//!   task and its own flow ([`stream`]).
//! * [`client`]: multiplexed upstream connections, one per destination per
//!   worker.
//! * `h1_up`: an HTTP/2 client stream to an HTTP/1.1-only upstream;
//!   [`h1_down`]: an HTTP/1.1 client to an HTTP/2 upstream.
//! * [`translate`]: head translation; [`body`]: flow-controlled bodies.
//!
//! All of it runs on poll-io streams (tokio traits) with tokio-rustls: the
//! only adaptor path that neither panics nor crawls (docs/stack.md).

pub mod body;
pub mod client;
pub mod h1_down;
mod h1_up;
pub mod server;
mod stream;
pub mod translate;

/// Initial per-stream receive window we advertise (throughput over the
/// 64 KiB default).
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Connection-level receive window we advertise.
pub const CONN_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest DATA frame we accept.
pub const MAX_FRAME: u32 = 256 * 1024;
