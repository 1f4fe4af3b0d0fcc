//! Command line and environment (clap). Flags override environment variables.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Which netfilter front end applies the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// nftables if `nft` works here, else iptables (legacy if only legacy has rules, else nft variant).
    Auto,
    /// Native nftables: one `inet tproxy_sidecar` table, replaced atomically.
    Nft,
    /// iptables on the nf_tables kernel API (`iptables-nft-restore`).
    IptablesNft,
    /// iptables on the legacy x_tables kernel API (`iptables-legacy-restore`).
    IptablesLegacy,
}

/// Locks the pod's egress: established, loopback, IPv6 neighbour discovery, DNS, TCP 80/443
/// and the node's proxy port are allowed; service CIDRs and everything else are rejected
/// (TCP reset / ICMP unreachable). Run as a privileged init container (CAP_NET_ADMIN).
#[derive(Debug, Clone, Parser)]
#[command(name = "tproxy-sidecar", version)]
pub struct Args {
    /// Comma-separated CIDRs (IPv4 and/or IPv6; a bare IP is a single host) to reject, even on
    /// ports 80/443. Typically the cluster's service CIDR(s).
    #[arg(long, env = "BLOCK_SVC_CIDR", value_name = "CIDRS")]
    pub block_svc_cidr: Option<String>,

    /// Comma-separated DNS server IPs (IPv4 and/or IPv6). When set, DNS (udp+tcp) goes only to
    /// these (allowed even inside a blocked CIDR); when unset, DNS goes anywhere.
    #[arg(long, env = "ALLOW_DNS", value_name = "IPS")]
    pub allow_dns: Option<String>,

    /// The node this pod runs on (downward API `spec.nodeName`, or an IP literal such as
    /// `status.hostIP`). Resolved with getaddrinfo; TCP to its addresses on --proxy-port is allowed.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// The standard-mode (explicit) proxy port on the node.
    #[arg(long, env = "PROXY_PORT", value_name = "PORT", default_value_t = 1080)]
    pub proxy_port: u16,

    /// Comma-separated TCP ports allowed to any destination (the node agent redirects them to
    /// the node's transparent proxy).
    #[arg(
        long,
        env = "WEB_PORTS",
        value_name = "PORTS",
        default_value = "80,443"
    )]
    pub web_ports: String,

    /// DNS port (udp and tcp).
    #[arg(long, env = "DNS_PORT", value_name = "PORT", default_value_t = 53)]
    pub dns_port: u16,

    /// Netfilter front end.
    #[arg(long, env = "SIDECAR_BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// Print the rules that would be applied (for the chosen backend) to stdout and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// The tproxy CA certificate (PEM). With --ca-bundle-dir: after the lock, write the system
    /// roots + this CA to DIR/ca-certificates.crt and the CA alone to DIR/tproxy-ca.crt, for the
    /// pod's other containers to mount (set by the tproxy webhook).
    #[arg(
        long,
        env = "TPROXY_CA_CERT",
        value_name = "PEM",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub ca_cert: Option<String>,

    /// Directory (a volume shared with the app containers) to write the CA bundle into.
    #[arg(long, env = "TPROXY_CA_BUNDLE_DIR", value_name = "DIR")]
    pub ca_bundle_dir: Option<PathBuf>,

    /// The system roots the bundle starts with (this image's Debian ca-certificates).
    #[arg(
        long,
        env = "TPROXY_SYSTEM_ROOTS",
        value_name = "FILE",
        default_value = "/etc/ssl/certs/ca-certificates.crt"
    )]
    pub system_roots: PathBuf,
}
