//! Pure desired state: the current pod set → the rule set and the pod directory.
//!
//! State is keyed by pod uid and rendered from the current pod set only, so a
//! reused pod IP never inherits a dead pod's rule: when two pods claim one IP, the
//! IP belongs to exactly one of them (not terminating first, then the newest, then
//! the greater uid) and that pod alone decides both the rule and the directory entry.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::directory::DirectoryEntry;
use crate::pod::PodInfo;

/// Inputs of the rendering that do not come from pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Node port of the proxy's transparent listener (REDIRECT target).
    pub proxy_port: u16,
    /// Destination ports redirected (default 80, 443).
    pub ports: Vec<u16>,
    /// Render IPv6 rules (IPv6 pod addresses are otherwise left alone).
    pub ipv6: bool,
    /// Labels copied into the pod directory.
    pub directory_labels: Vec<String>,
}

/// One REDIRECT rule: traffic from `ip` to the redirected ports goes to the proxy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    /// Source pod address.
    pub ip: IpAddr,
    /// Comment naming the pod: `tproxy:<namespace>/<name>/<uid>` (sanitised, capped).
    pub comment: String,
}

/// The complete content of the owned chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// REDIRECT target port.
    pub proxy_port: u16,
    /// Redirected destination ports, sorted and unique.
    pub ports: Vec<u16>,
    /// Rules sorted by address (all IPv4 before IPv6).
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// Rules whose source is IPv4.
    pub fn v4(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|r| r.ip.is_ipv4())
    }
    /// Rules whose source is IPv6.
    pub fn v6(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|r| r.ip.is_ipv6())
    }
}

/// Everything one reconcile renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The owned chain's rules.
    pub rules: RuleSet,
    /// Pod directory entries keyed by the IP's canonical text.
    pub directory: BTreeMap<String, DirectoryEntry>,
}

/// Longest comment rendered (nft caps comments at 128 bytes including the NUL).
pub const MAX_COMMENT: usize = 127;

/// Renders the desired state from the pods currently on the node.
pub fn desired(pods: &[PodInfo], settings: &Settings) -> Desired {
    // IP → index of the pod that owns it.
    let mut owner: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for (i, p) in pods.iter().enumerate() {
        for ip in &p.ips {
            match owner.get(ip) {
                Some(&j) if !wins(p, &pods[j]) => {}
                _ => {
                    owner.insert(*ip, i);
                }
            }
        }
    }
    let mut ports = settings.ports.clone();
    ports.sort_unstable();
    ports.dedup();
    let mut rules = Vec::new();
    let mut directory = BTreeMap::new();
    for (ip, &i) in &owner {
        let p = &pods[i];
        if p.opted_in && (ip.is_ipv4() || settings.ipv6) {
            rules.push(Rule {
                ip: *ip,
                comment: comment(p),
            });
        }
        directory.insert(
            ip.to_string(),
            DirectoryEntry::new(p, &settings.directory_labels),
        );
    }
    // BTreeMap<IpAddr> orders all V4 before V6 and each family numerically.
    Desired {
        rules: RuleSet {
            proxy_port: settings.proxy_port,
            ports,
            rules,
        },
        directory,
    }
}

/// Does `a` take an IP over `b`? Running beats terminating, newer beats older,
/// and the uid breaks ties so the result never depends on watch order.
fn wins(a: &PodInfo, b: &PodInfo) -> bool {
    (!a.terminating, a.created, &a.uid) > (!b.terminating, b.created, &b.uid)
}

/// `tproxy:ns/name/uid` with anything outside `[A-Za-z0-9._:/-]` replaced by `_`
/// (the text is embedded in nft/iptables input) and the name shortened so the whole
/// fits [`MAX_COMMENT`]; the uid is always kept whole.
pub fn comment(p: &PodInfo) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let ns = clean(&p.namespace);
    let mut name = clean(&p.name);
    let uid = clean(&p.uid);
    let fixed = "tproxy:".len() + ns.len() + 2 + uid.len();
    let room = MAX_COMMENT.saturating_sub(fixed);
    name.truncate(room);
    let mut out = format!("tproxy:{ns}/{name}/{uid}");
    out.truncate(MAX_COMMENT);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::Workload;

    pub(crate) fn info(ns: &str, name: &str, uid: &str, ips: &[&str], opted: bool) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            opted_in: opted,
            terminating: false,
            created: 100,
            workload: Workload {
                kind: "Pod".into(),
                name: name.into(),
            },
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
        }
    }

    fn settings() -> Settings {
        Settings {
            proxy_port: 1080,
            ports: vec![443, 80, 443],
            ipv6: true,
            directory_labels: vec!["app".into()],
        }
    }

    #[test]
    fn only_opted_in_pods_get_rules_but_all_are_in_directory() {
        let pods = [
            info("a", "x", "u1", &["198.18.1.2", "fd00:198:18:1::2"], true),
            info("a", "y", "u2", &["198.18.1.3"], false),
        ];
        let d = desired(&pods, &settings());
        assert_eq!(d.rules.ports, vec![80, 443]);
        let ips: Vec<String> = d.rules.rules.iter().map(|r| r.ip.to_string()).collect();
        assert_eq!(ips, ["198.18.1.2", "fd00:198:18:1::2"]);
        assert_eq!(d.rules.rules[0].comment, "tproxy:a/x/u1");
        assert_eq!(
            d.directory.keys().collect::<Vec<_>>(),
            ["198.18.1.2", "198.18.1.3", "fd00:198:18:1::2"]
        );
    }

    #[test]
    fn ipv6_off_keeps_directory_but_drops_v6_rules() {
        let pods = [info("a", "x", "u1", &["198.18.1.2", "fd00::2"], true)];
        let mut s = settings();
        s.ipv6 = false;
        let d = desired(&pods, &s);
        assert_eq!(d.rules.rules.len(), 1);
        assert_eq!(d.directory.len(), 2);
    }

    #[test]
    fn reused_ip_never_inherits_a_dead_pods_rule() {
        // Old opted-in pod is terminating; a new, not opted-in pod got its IP.
        let mut old = info("a", "old", "u-old", &["198.18.1.2"], true);
        old.terminating = true;
        old.created = 500;
        let new = info("b", "new", "u-new", &["198.18.1.2"], false);
        for pods in [[old.clone(), new.clone()], [new.clone(), old.clone()]] {
            let d = desired(&pods, &settings());
            assert!(d.rules.rules.is_empty());
            assert_eq!(d.directory["198.18.1.2"].uid, "u-new");
        }
        // Both running: the newer pod owns the IP.
        let mut older = info("a", "old", "u-old", &["198.18.1.2"], true);
        older.created = 1;
        let d = desired(&[older, new], &settings());
        assert!(d.rules.rules.is_empty());
    }

    #[test]
    fn comment_is_sanitised_and_capped_keeping_uid() {
        let long = "n".repeat(300);
        let uid = "0b7c3f2e-1111-2222-3333-444455556666";
        let c = comment(&info("ns", &long, uid, &["198.18.1.2"], true));
        assert_eq!(c.len(), MAX_COMMENT);
        assert!(c.ends_with(&format!("/{uid}")));
        let c = comment(&info("ns", "a\"b c;d", "u", &["198.18.1.2"], true));
        assert_eq!(c, "tproxy:ns/a_b_c_d/u");
    }
}
