//! Who may use the proxy (issue #19; design in docs/access.md):
//!
//! * [`allow`]: the client allow-list (`--allow-client`), checked when a
//!   regular-mode connection is accepted, before a byte of it is read;
//! * [`auth`]: optional proxy authentication (`--proxyauth USER:PASS`,
//!   `Proxy-Authorization: Basic`), checked on every explicit-proxy request;
//! * [`refusals`]: why a client was refused (the metric label) and the
//!   rate limit on the log line that says so.
//!
//! Transparent listeners are not governed by the allow-list: only connections
//! netfilter redirected reach them usefully (the REDIRECT rules, written per
//! pod IP by tproxy-podwatch, are their access control), and a connection made
//! straight to the port is refused by the loop guard in `conn.rs`.

pub mod allow;
pub mod auth;
pub mod refusals;

pub use allow::{AllowEntry, AllowList};
pub use auth::{AuthCheck, ProxyAuth};
pub use refusals::{RefusalLog, RefusalReason};
