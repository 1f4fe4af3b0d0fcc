//! Validated configuration: raw flag/env strings → typed [`Config`].

use std::collections::BTreeSet;
use std::net::{IpAddr, ToSocketAddrs};

use crate::cli::Args;
use crate::net::{Cidr, CidrError};

/// Why the flags/environment do not make a configuration. Nothing has been applied yet
/// when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An item of `BLOCK_SVC_CIDR` is not a CIDR block.
    #[error(
        "BLOCK_SVC_CIDR / --block-svc-cidr: item `{item}` is not a CIDR block: {source} (expected e.g. `10.96.0.0/12,fd00:10:96::/112`)"
    )]
    BadBlockCidr {
        /// The offending item.
        item: String,
        /// The parse failure.
        source: CidrError,
    },
    /// An item of `ALLOW_DNS` is not an IP address.
    #[error(
        "ALLOW_DNS / --allow-dns: item `{item}` is not an IPv4 or IPv6 address (expected e.g. `10.96.0.10,fd00:10:96::a`)"
    )]
    BadDnsAddr {
        /// The offending item.
        item: String,
    },
    /// An item of `WEB_PORTS` is not a port number.
    #[error("WEB_PORTS / --web-ports: item `{item}` is not a port number 1-65535")]
    BadPort {
        /// The offending item.
        item: String,
    },
    /// A port of 0 was given where a real port is needed.
    #[error("{what}: port 0 is not a usable port")]
    ZeroPort {
        /// Which option.
        what: &'static str,
    },
    /// `NODE_NAME` could not be resolved.
    #[error(
        "NODE_NAME / --node-name: cannot resolve `{name}`: {reason} (set NODE_NAME to the node's IP, e.g. from the downward API `status.hostIP`, or unset it)"
    )]
    NodeUnresolvable {
        /// The name.
        name: String,
        /// Resolver failure.
        reason: String,
    },
}

/// The validated policy inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Blocks rejected for every protocol and port (deduplicated, sorted).
    pub block_cidrs: Vec<Cidr>,
    /// DNS servers DNS may go to; empty means any destination.
    pub allow_dns: Vec<IpAddr>,
    /// Addresses of this pod's node; TCP to them on `proxy_port` is allowed.
    pub node_addrs: Vec<IpAddr>,
    /// The node's standard-mode proxy port.
    pub proxy_port: u16,
    /// TCP ports allowed to any destination (sorted, deduplicated).
    pub web_ports: Vec<u16>,
    /// DNS port (udp and tcp).
    pub dns_port: u16,
}

/// Splits a comma list, trimming blanks and dropping empty items.
fn items(list: Option<&str>) -> impl Iterator<Item = &str> {
    list.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Resolves a node name with the system resolver (getaddrinfo); IP literals pass through.
pub fn resolve_system(name: &str) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let addrs = (name, 0u16).to_socket_addrs().map_err(|e| e.to_string())?;
    Ok(addrs.map(|sa| sa.ip()).collect())
}

impl Config {
    /// Validates `args`; `resolve` turns `NODE_NAME` into addresses (see [`resolve_system`]).
    pub fn from_args(
        args: &Args,
        resolve: &dyn Fn(&str) -> Result<Vec<IpAddr>, String>,
    ) -> Result<Config, ConfigError> {
        let mut block = BTreeSet::new();
        for item in items(args.block_svc_cidr.as_deref()) {
            let cidr = item
                .parse::<Cidr>()
                .map_err(|source| ConfigError::BadBlockCidr {
                    item: item.to_owned(),
                    source,
                })?;
            block.insert(cidr);
        }
        let mut dns = BTreeSet::new();
        for item in items(args.allow_dns.as_deref()) {
            let ip = item
                .parse::<IpAddr>()
                .map_err(|_| ConfigError::BadDnsAddr {
                    item: item.to_owned(),
                })?;
            dns.insert(ip);
        }
        let mut web = BTreeSet::new();
        for item in items(Some(&args.web_ports)) {
            match item.parse::<u16>() {
                Ok(p) if p != 0 => {
                    web.insert(p);
                }
                _ => {
                    return Err(ConfigError::BadPort {
                        item: item.to_owned(),
                    });
                }
            }
        }
        if args.proxy_port == 0 {
            return Err(ConfigError::ZeroPort {
                what: "PROXY_PORT / --proxy-port",
            });
        }
        if args.dns_port == 0 {
            return Err(ConfigError::ZeroPort {
                what: "DNS_PORT / --dns-port",
            });
        }
        let node_addrs = match args.node_name.as_deref().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(name) => {
                let found = resolve(name).map_err(|reason| ConfigError::NodeUnresolvable {
                    name: name.to_owned(),
                    reason,
                })?;
                let set: BTreeSet<IpAddr> = found.into_iter().collect();
                if set.is_empty() {
                    return Err(ConfigError::NodeUnresolvable {
                        name: name.to_owned(),
                        reason: "no addresses".to_owned(),
                    });
                }
                set.into_iter().collect()
            }
        };
        Ok(Config {
            block_cidrs: block.into_iter().collect(),
            allow_dns: dns.into_iter().collect(),
            node_addrs,
            proxy_port: args.proxy_port,
            web_ports: web.into_iter().collect(),
            dns_port: args.dns_port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(list: &[&str]) -> Args {
        let mut v = vec!["tproxy-sidecar"];
        v.extend_from_slice(list);
        Args::try_parse_from(v).unwrap()
    }

    fn no_resolve(_: &str) -> Result<Vec<IpAddr>, String> {
        Err("resolver must not be called".to_owned())
    }

    #[test]
    fn lists_are_trimmed_sorted_and_deduplicated() {
        let a = args(&[
            "--block-svc-cidr",
            " 10.96.0.0/12, ,fd00:10:96::/112,10.96.0.0/12",
            "--allow-dns",
            "10.96.0.10,fd00::a",
            "--web-ports",
            "443,80,443",
        ]);
        let c = Config::from_args(&a, &no_resolve).unwrap();
        assert_eq!(c.block_cidrs.len(), 2);
        assert_eq!(c.allow_dns.len(), 2);
        assert_eq!(c.web_ports, vec![80, 443]);
        assert!(c.node_addrs.is_empty());
    }

    #[test]
    fn bad_cidr_names_the_variable_and_item() {
        let a = args(&["--block-svc-cidr", "10.96.0.0/12,10.0.0.0/33"]);
        let e = Config::from_args(&a, &no_resolve).unwrap_err().to_string();
        assert!(e.contains("BLOCK_SVC_CIDR"), "{e}");
        assert!(e.contains("10.0.0.0/33"), "{e}");
        let a = args(&["--allow-dns", "dns.example"]);
        let e = Config::from_args(&a, &no_resolve).unwrap_err().to_string();
        assert!(e.contains("ALLOW_DNS") && e.contains("dns.example"), "{e}");
        let a = args(&["--web-ports", "80,0"]);
        assert!(Config::from_args(&a, &no_resolve).is_err());
        let a = args(&["--proxy-port", "0"]);
        assert!(Config::from_args(&a, &no_resolve).is_err());
    }

    #[test]
    fn node_name_resolves_via_getaddrinfo() {
        let a = args(&["--node-name", "localhost"]);
        let c = Config::from_args(&a, &resolve_system).unwrap();
        assert!(c.node_addrs.iter().any(|ip| ip.is_loopback()), "{c:?}");
        let a = args(&["--node-name", "198.18.0.1"]);
        let c = Config::from_args(&a, &resolve_system).unwrap();
        assert_eq!(c.node_addrs, vec!["198.18.0.1".parse::<IpAddr>().unwrap()]);
        // Unresolvable names are tested in tests/netns.rs, inside a namespace from which no
        // DNS query can leave.
    }

    #[test]
    fn resolver_failure_and_empty_answer_are_errors() {
        let a = args(&["--node-name", "node-x"]);
        let fail = |_: &str| -> Result<Vec<IpAddr>, String> { Err("boom".to_owned()) };
        let e = Config::from_args(&a, &fail).unwrap_err().to_string();
        assert!(
            e.contains("NODE_NAME") && e.contains("node-x") && e.contains("boom"),
            "{e}"
        );
        let empty = |_: &str| -> Result<Vec<IpAddr>, String> { Ok(Vec::new()) };
        assert!(Config::from_args(&a, &empty).is_err());
    }
}
