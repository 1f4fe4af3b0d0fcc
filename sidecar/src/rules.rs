//! The typed rule set and the pure policy function `Config -> RuleSet`.
//!
//! Order (first match wins; every rule is terminal):
//! 1. IPv6 link control (neighbour discovery, MLD reports) — accept, or v6 on the pod link breaks.
//! 2. established/related — accept.
//! 3. loopback — accept.
//! 4. DNS to each `ALLOW_DNS` server — accept. Before the service-CIDR block because the
//!    cluster DNS service IP normally lies inside the service CIDR.
//! 5. each `BLOCK_SVC_CIDR` block — reject (even 80/443).
//! 6. DNS to anywhere — accept (only when `ALLOW_DNS` is unset).
//! 7. TCP web ports (80, 443) to anywhere — accept.
//! 8. TCP to each node address on the proxy port — accept.
//! 9. everything else — reject.
//!
//! Rejects are expanded per protocol so clients fail fast: TCP gets a reset, UDP an ICMP
//! port-unreachable (ECONNREFUSED), anything else ICMP admin-prohibited.

use std::net::IpAddr;

use crate::config::Config;
use crate::net::{Cidr, Family};

/// A transport protocol a rule can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A transport match: protocol and (optionally) destination ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4 {
    /// Protocol.
    pub proto: Proto,
    /// Destination ports; empty means every port.
    pub dports: Vec<u16>,
}

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// Packets of connections conntrack already knows (established or related).
    Established,
    /// Packets leaving through the loopback interface.
    Loopback,
    /// ICMPv6 the link needs: router solicitation, neighbour solicitation/advertisement,
    /// MLDv1/v2 listener reports. IPv6 only.
    Ipv6LinkControl,
    /// Packets by destination block and transport.
    Traffic {
        /// Destination block; `None` means any destination of either family.
        dst: Option<Cidr>,
        /// Transport; `None` means every protocol.
        l4: Option<L4>,
    },
}

/// How a rejected packet is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectWith {
    /// TCP reset (connect fails with ECONNREFUSED at once). Only on TCP matches.
    TcpReset,
    /// ICMP / ICMPv6 port unreachable (ECONNREFUSED on a connected UDP socket).
    PortUnreachable,
    /// ICMP / ICMPv6 administratively prohibited.
    AdminProhibited,
}

/// What happens to a matching packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it out.
    Accept,
    /// Drop it and answer the local sender.
    Reject(RejectWith),
}

/// Why a rule exists; rendered as the rule's comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// IPv6 neighbour discovery / MLD.
    Ipv6Link,
    /// Established/related traffic.
    Established,
    /// Loopback.
    Loopback,
    /// DNS to an allowed server.
    AllowedDns,
    /// Service CIDR block.
    BlockServiceCidr,
    /// DNS to any server.
    Dns,
    /// Web ports (redirected to the node proxy).
    Web,
    /// The node's standard-mode proxy.
    NodeProxy,
    /// Everything else.
    Default,
}

impl Purpose {
    /// Stable comment text.
    pub fn comment(self) -> &'static str {
        match self {
            Purpose::Ipv6Link => "tproxy-sidecar: ipv6 neighbour discovery",
            Purpose::Established => "tproxy-sidecar: established",
            Purpose::Loopback => "tproxy-sidecar: loopback",
            Purpose::AllowedDns => "tproxy-sidecar: allowed dns",
            Purpose::BlockServiceCidr => "tproxy-sidecar: block service cidr",
            Purpose::Dns => "tproxy-sidecar: dns",
            Purpose::Web => "tproxy-sidecar: web to node proxy",
            Purpose::NodeProxy => "tproxy-sidecar: node standard-mode proxy",
            Purpose::Default => "tproxy-sidecar: reject the rest",
        }
    }
}

/// One terminal rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Why it exists.
    pub purpose: Purpose,
    /// What it matches.
    pub matcher: Match,
    /// What it does.
    pub verdict: Verdict,
}

impl Rule {
    /// The single family this rule is limited to, if any.
    pub fn family(&self) -> Option<Family> {
        match &self.matcher {
            Match::Ipv6LinkControl => Some(Family::V6),
            Match::Traffic { dst: Some(c), .. } => Some(c.family()),
            _ => None,
        }
    }

    /// True when the rule belongs in the rule list of `family`.
    pub fn applies_to(&self, family: Family) -> bool {
        self.family().is_none_or(|f| f == family)
    }
}

/// The complete ordered egress policy of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// Rules, first match wins.
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// Rules that belong to `family`, in order.
    pub fn for_family(&self, family: Family) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| r.applies_to(family))
    }
}

fn accept(purpose: Purpose, matcher: Match) -> Rule {
    Rule {
        purpose,
        matcher,
        verdict: Verdict::Accept,
    }
}

fn traffic(dst: Option<Cidr>, proto: Proto, dports: Vec<u16>) -> Match {
    Match::Traffic {
        dst,
        l4: Some(L4 { proto, dports }),
    }
}

/// Pushes the fail-fast reject of everything to `dst`: TCP reset, UDP port-unreachable,
/// other protocols admin-prohibited.
fn push_reject(rules: &mut Vec<Rule>, purpose: Purpose, dst: Option<Cidr>) {
    rules.push(Rule {
        purpose,
        matcher: traffic(dst, Proto::Tcp, Vec::new()),
        verdict: Verdict::Reject(RejectWith::TcpReset),
    });
    rules.push(Rule {
        purpose,
        matcher: traffic(dst, Proto::Udp, Vec::new()),
        verdict: Verdict::Reject(RejectWith::PortUnreachable),
    });
    rules.push(Rule {
        purpose,
        matcher: Match::Traffic { dst, l4: None },
        verdict: Verdict::Reject(RejectWith::AdminProhibited),
    });
}

fn push_dns(rules: &mut Vec<Rule>, purpose: Purpose, dst: Option<Cidr>, port: u16) {
    rules.push(accept(purpose, traffic(dst, Proto::Udp, vec![port])));
    rules.push(accept(purpose, traffic(dst, Proto::Tcp, vec![port])));
}

/// The pod's egress policy for `cfg` (pure; see the module docs for the order).
pub fn build(cfg: &Config) -> RuleSet {
    let mut rules = vec![
        accept(Purpose::Ipv6Link, Match::Ipv6LinkControl),
        accept(Purpose::Established, Match::Established),
        accept(Purpose::Loopback, Match::Loopback),
    ];
    for ip in &cfg.allow_dns {
        push_dns(
            &mut rules,
            Purpose::AllowedDns,
            Some(Cidr::host(*ip)),
            cfg.dns_port,
        );
    }
    for cidr in &cfg.block_cidrs {
        push_reject(&mut rules, Purpose::BlockServiceCidr, Some(*cidr));
    }
    if cfg.allow_dns.is_empty() {
        push_dns(&mut rules, Purpose::Dns, None, cfg.dns_port);
    }
    if !cfg.web_ports.is_empty() {
        rules.push(accept(
            Purpose::Web,
            traffic(None, Proto::Tcp, cfg.web_ports.clone()),
        ));
    }
    for ip in &cfg.node_addrs {
        rules.push(accept(
            Purpose::NodeProxy,
            traffic(
                Some(Cidr::host(normalise(*ip))),
                Proto::Tcp,
                vec![cfg.proxy_port],
            ),
        ));
    }
    push_reject(&mut rules, Purpose::Default, None);
    RuleSet { rules }
}

/// IPv4-mapped IPv6 node addresses (`::ffff:a.b.c.d`) are IPv4 on the wire.
fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            block_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            allow_dns: vec!["10.96.0.10".parse().unwrap()],
            node_addrs: vec!["::ffff:192.0.2.1".parse().unwrap()],
            proxy_port: 1080,
            web_ports: vec![80, 443],
            dns_port: 53,
        }
    }

    #[test]
    fn allowed_dns_precedes_block_and_block_precedes_web() {
        let rs = build(&cfg());
        let pos = |p: Purpose| rs.rules.iter().position(|r| r.purpose == p).unwrap();
        assert!(pos(Purpose::AllowedDns) < pos(Purpose::BlockServiceCidr));
        assert!(pos(Purpose::BlockServiceCidr) < pos(Purpose::Web));
        assert!(pos(Purpose::Web) < pos(Purpose::NodeProxy));
        assert!(!rs.rules.iter().any(|r| r.purpose == Purpose::Dns));
        let last = rs.rules.last().unwrap();
        assert_eq!(last.purpose, Purpose::Default);
        assert_eq!(last.verdict, Verdict::Reject(RejectWith::AdminProhibited));
    }

    #[test]
    fn v4_only_addresses_stay_out_of_v6() {
        let rs = build(&cfg());
        assert!(
            rs.for_family(Family::V6)
                .all(|r| r.family() != Some(Family::V4))
        );
        // Mapped node address became a v4 rule.
        let node = rs
            .rules
            .iter()
            .find(|r| r.purpose == Purpose::NodeProxy)
            .unwrap();
        assert_eq!(node.family(), Some(Family::V4));
        // v6 still gets the general rules and the NDP rule, and no DNS at all.
        let v6: Vec<_> = rs.for_family(Family::V6).map(|r| r.purpose).collect();
        assert!(v6.contains(&Purpose::Ipv6Link));
        assert!(v6.contains(&Purpose::Web));
        assert!(!v6.contains(&Purpose::AllowedDns));
        assert!(
            !rs.for_family(Family::V4)
                .any(|r| r.purpose == Purpose::Ipv6Link)
        );
    }

    #[test]
    fn dns_anywhere_when_allow_dns_unset() {
        let mut c = cfg();
        c.allow_dns.clear();
        let rs = build(&c);
        let dns: Vec<_> = rs
            .rules
            .iter()
            .filter(|r| r.purpose == Purpose::Dns)
            .collect();
        assert_eq!(dns.len(), 2);
        assert!(dns.iter().all(|r| r.family().is_none()));
    }
}
