//! Pure renderers: [`RuleSet`] → `nft -f` script and → `iptables-restore --noflush` input.

use std::fmt::Write as _;

use crate::net::{Cidr, Family};
use crate::rules::{L4, Match, Proto, RejectWith, Rule, RuleSet, Verdict};

/// Name of the sidecar's own nftables table (family `inet`).
pub const NFT_TABLE: &str = "tproxy_sidecar";
/// Name of the base chain inside [`NFT_TABLE`].
pub const NFT_CHAIN: &str = "egress";
/// Name of the sidecar's own iptables chain in the `filter` table, jumped to from OUTPUT.
pub const IPT_CHAIN: &str = "TPROXY-EGRESS";

/// ICMPv6 types the link needs, nftables names (see [`Match::Ipv6LinkControl`]).
const NFT_LINK_TYPES: &str = "{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, mld2-listener-report }";
/// The same ICMPv6 types, iptables names/numbers.
const IPT_LINK_TYPES: [&str; 5] = [
    "router-solicitation",
    "neighbour-solicitation",
    "neighbour-advertisement",
    "131",
    "143",
];

fn ports_nft(ports: &[u16]) -> String {
    match ports {
        [one] => one.to_string(),
        many => {
            let list: Vec<String> = many.iter().map(u16::to_string).collect();
            format!("{{ {} }}", list.join(", "))
        }
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

fn nft_daddr(c: &Cidr) -> String {
    match c.family() {
        Family::V4 => format!("ip daddr {c}"),
        Family::V6 => format!("ip6 daddr {c}"),
    }
}

fn nft_l4(l4: &L4) -> String {
    let p = proto_name(l4.proto);
    if l4.dports.is_empty() {
        format!("meta l4proto {p}")
    } else {
        format!("{p} dport {}", ports_nft(&l4.dports))
    }
}

fn nft_verdict(v: Verdict, family: Option<Family>) -> String {
    let icmp = match family {
        Some(Family::V4) => "icmp",
        Some(Family::V6) => "icmpv6",
        None => "icmpx",
    };
    match v {
        Verdict::Accept => "accept".to_owned(),
        Verdict::Reject(RejectWith::TcpReset) => "reject with tcp reset".to_owned(),
        Verdict::Reject(RejectWith::PortUnreachable) => {
            format!("reject with {icmp} type port-unreachable")
        }
        Verdict::Reject(RejectWith::AdminProhibited) => {
            format!("reject with {icmp} type admin-prohibited")
        }
    }
}

/// One nft rule statement (no indentation, no newline).
fn nft_rule(rule: &Rule) -> String {
    let mut parts: Vec<String> = Vec::new();
    match &rule.matcher {
        Match::Established => parts.push("ct state established,related".to_owned()),
        Match::Loopback => parts.push("oifname \"lo\"".to_owned()),
        Match::Ipv6LinkControl => parts.push(format!("icmpv6 type {NFT_LINK_TYPES}")),
        Match::Traffic { dst, l4 } => {
            if let Some(c) = dst {
                parts.push(nft_daddr(c));
            }
            if let Some(l4) = l4 {
                parts.push(nft_l4(l4));
            }
        }
    }
    parts.push(nft_verdict(rule.verdict, rule.family()));
    parts.push(format!("comment \"{}\"", rule.purpose.comment()));
    parts.join(" ")
}

/// The `nft -f -` script that replaces table `inet tproxy_sidecar` atomically: one
/// transaction that adds the table (so the delete cannot fail), deletes it, and adds it
/// back with its chain and rules.
pub fn nft(rs: &RuleSet) -> String {
    let mut out = String::new();
    out.push_str("# tproxy-sidecar egress lock (nftables, one atomic transaction)\n");
    let _ = writeln!(out, "add table inet {NFT_TABLE}");
    let _ = writeln!(out, "delete table inet {NFT_TABLE}");
    let _ = writeln!(out, "table inet {NFT_TABLE} {{");
    let _ = writeln!(out, "\tchain {NFT_CHAIN} {{");
    out.push_str("\t\ttype filter hook output priority filter; policy accept;\n");
    for rule in &rs.rules {
        let _ = writeln!(out, "\t\t{}", nft_rule(rule));
    }
    out.push_str("\t}\n}\n");
    out
}

fn ipt_reject(r: RejectWith, family: Family) -> &'static str {
    match (r, family) {
        (RejectWith::TcpReset, _) => "tcp-reset",
        (RejectWith::PortUnreachable, Family::V4) => "icmp-port-unreachable",
        (RejectWith::PortUnreachable, Family::V6) => "icmp6-port-unreachable",
        (RejectWith::AdminProhibited, Family::V4) => "icmp-admin-prohibited",
        (RejectWith::AdminProhibited, Family::V6) => "icmp6-adm-prohibited",
    }
}

fn ipt_target(v: Verdict, family: Family) -> String {
    match v {
        Verdict::Accept => "-j ACCEPT".to_owned(),
        Verdict::Reject(r) => format!("-j REJECT --reject-with {}", ipt_reject(r, family)),
    }
}

/// The `-A` lines of one rule for `family` (several for multi-type ICMPv6 matches).
fn ipt_rule_lines(rule: &Rule, family: Family) -> Vec<String> {
    let comment = format!("-m comment --comment \"{}\"", rule.purpose.comment());
    let target = ipt_target(rule.verdict, family);
    let head = format!("-A {IPT_CHAIN}");
    let matches: Vec<String> = match &rule.matcher {
        Match::Established => vec!["-m conntrack --ctstate RELATED,ESTABLISHED".to_owned()],
        Match::Loopback => vec!["-o lo".to_owned()],
        Match::Ipv6LinkControl => IPT_LINK_TYPES
            .iter()
            .map(|t| format!("-p ipv6-icmp -m icmp6 --icmpv6-type {t}"))
            .collect(),
        Match::Traffic { dst, l4 } => {
            let mut m = Vec::new();
            if let Some(c) = dst {
                m.push(format!("-d {}/{}", c.addr(), c.prefix()));
            }
            if let Some(l4) = l4 {
                let p = proto_name(l4.proto);
                m.push(format!("-p {p}"));
                match l4.dports.as_slice() {
                    [] => {}
                    [one] => m.push(format!("-m {p} --dport {one}")),
                    many => {
                        let list: Vec<String> = many.iter().map(u16::to_string).collect();
                        m.push(format!("-m multiport --dports {}", list.join(",")));
                    }
                }
            }
            vec![m.join(" ")]
        }
    };
    matches
        .into_iter()
        .map(|m| {
            if m.is_empty() {
                format!("{head} {comment} {target}")
            } else {
                format!("{head} {m} {comment} {target}")
            }
        })
        .collect()
}

/// The `iptables-restore --noflush` (or `ip6tables-restore --noflush`) input for `family`.
///
/// Declaring the chain flushes it (noflush mode flushes declared user chains), the rules
/// refill it, and the OUTPUT hook is inserted first in OUTPUT only when `hooked` is false,
/// so the hook exists exactly once. All in one COMMIT, so it is atomic.
pub fn iptables(rs: &RuleSet, family: Family, hooked: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# tproxy-sidecar egress lock ({family})");
    out.push_str("*filter\n");
    let _ = writeln!(out, ":{IPT_CHAIN} - [0:0]");
    let _ = writeln!(out, "-F {IPT_CHAIN}");
    for rule in rs.for_family(family) {
        for line in ipt_rule_lines(rule, family) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    if !hooked {
        let _ = writeln!(out, "-I OUTPUT 1 -j {IPT_CHAIN}");
    }
    out.push_str("COMMIT\n");
    out
}

/// True when the `*filter` section of `save` (output of `iptables-save`) already jumps
/// from OUTPUT to the sidecar's chain.
pub fn output_hooked(save: &str) -> bool {
    let want = format!("-A OUTPUT -j {IPT_CHAIN}");
    let mut in_filter = false;
    for line in save.lines().map(str::trim_end) {
        if let Some(table) = line.strip_prefix('*') {
            in_filter = table == "filter";
        } else if in_filter && line == want {
            return true;
        }
    }
    false
}
