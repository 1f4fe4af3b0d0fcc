//! `tproxy-sidecar`: the init container that locks a Kubernetes pod's egress before
//! the workload starts.
//!
//! The pipeline is split so every step but the last is pure:
//!
//! ```text
//! Args (flags + env) --Config::from_args--> Config --rules::build--> RuleSet
//!     --render::nft / render::iptables--> text --apply--> nft / iptables-restore
//! ```
//!
//! The rule set allows established traffic, loopback, IPv6 neighbour discovery, DNS
//! (only to `ALLOW_DNS` when set), TCP 80/443 and the node's standard-mode proxy port,
//! rejects the service CIDRs and everything else (TCP reset, ICMP unreachable) so that
//! clients fail fast instead of hanging.
//!
//! When the webhook passes the tproxy CA (`TPROXY_CA_CERT`), it also writes the pod's CA
//! bundle into a shared emptyDir ([`bundle`]).

pub mod apply;
pub mod backend;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod net;
pub mod render;
pub mod rules;
