//! tproxy-podwatch — the node agent of tproxy.
//!
//! Watches the pods scheduled on its node and keeps two things equal to them:
//!
//! * one owned netfilter object (nft table `inet tproxy_podwatch`, or the iptables
//!   chain `nat/TPROXY-REDIRECT` with one jump from `PREROUTING`) holding a
//!   REDIRECT rule per address of every opted-in pod, replaced atomically;
//! * the pod directory file (IP → namespace/pod/workload/labels) read by the proxy.
//!
//! The core is pure ([`pod`] → [`desired`] → [`render`]); [`apply`] talks to the
//! kernel through the netfilter tools, [`watch`] drives it from kube-rs watchers.

pub mod apply;
pub mod cli;
pub mod desired;
pub mod directory;
pub mod http;
pub mod metrics;
pub mod pod;
pub mod reconcile;
pub mod render;
pub mod store;
pub mod sysctl;
pub mod watch;
