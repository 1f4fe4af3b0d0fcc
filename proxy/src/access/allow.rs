//! `--allow-client`: the sources a regular (explicit-proxy) listener serves.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::policy::Cidr;

/// One `--allow-client` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// `any`: every IPv4 and IPv6 source (an open proxy, on purpose).
    Any,
    /// `loopback`: 127.0.0.0/8 and ::1 (processes on this host).
    Loopback,
    /// `pods`: the IPs in the pod directory right now (reloaded live).
    Pods,
    /// An address or network, e.g. `10.244.0.0/16` (the pod CIDR) or `192.0.2.7`.
    Net(Cidr),
}

impl FromStr for AllowEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "any" => Ok(AllowEntry::Any),
            "loopback" => Ok(AllowEntry::Loopback),
            "pods" => Ok(AllowEntry::Pods),
            other => other.parse::<Cidr>().map(AllowEntry::Net).map_err(|_| {
                format!(
                    "bad --allow-client `{other}`: use a CIDR (10.244.0.0/16), an address (192.0.2.7), \
                     `loopback`, `pods` or `any`"
                )
            }),
        }
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowEntry::Any => f.write_str("any"),
            AllowEntry::Loopback => f.write_str("loopback"),
            AllowEntry::Pods => f.write_str("pods"),
            AllowEntry::Net(c) => write!(f, "{c}"),
        }
    }
}

/// The effective allow-list of the regular listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<AllowEntry>,
}

/// An `--allow-client` combination that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowError {
    /// `pods` without a pod directory to take them from.
    #[error(
        "--allow-client pods needs --pod-directory FILE (the pods' IPs come from tproxy-podwatch's directory)"
    )]
    PodsWithoutDirectory,
}

impl AllowList {
    /// The list from the `--allow-client` values. None given: `loopback`,
    /// plus `pods` when a pod directory is configured (safe on a laptop and
    /// on a node). Values given replace that default entirely.
    pub fn from_flags(given: &[AllowEntry], pod_directory: bool) -> Result<Self, AllowError> {
        if given.is_empty() {
            let mut entries = vec![AllowEntry::Loopback];
            if pod_directory {
                entries.push(AllowEntry::Pods);
            }
            return Ok(AllowList { entries });
        }
        if given.contains(&AllowEntry::Pods) && !pod_directory {
            return Err(AllowError::PodsWithoutDirectory);
        }
        let mut entries: Vec<AllowEntry> = Vec::with_capacity(given.len());
        for e in given {
            if !entries.contains(e) {
                entries.push(e.clone());
            }
        }
        Ok(AllowList { entries })
    }

    /// Whether a client at `ip` may use a regular listener. `is_pod` is asked
    /// only when the list has `pods` and nothing cheaper matched.
    pub fn allows(&self, ip: IpAddr, is_pod: impl FnOnce(IpAddr) -> bool) -> bool {
        let ip = ip.to_canonical();
        let mut pods = false;
        for e in &self.entries {
            let hit = match e {
                AllowEntry::Any => true,
                AllowEntry::Loopback => ip.is_loopback(),
                AllowEntry::Net(c) => c.contains(ip),
                AllowEntry::Pods => {
                    pods = true;
                    false
                }
            };
            if hit {
                return true;
            }
        }
        pods && is_pod(ip)
    }

    /// Whether `pods` (the pod directory) is one of the entries.
    pub fn has_pods(&self) -> bool {
        self.entries.iter().any(|e| matches!(e, AllowEntry::Pods))
    }

    /// Whether only processes on this host can be served (the default
    /// without a pod directory).
    pub fn loopback_only(&self) -> bool {
        self.entries.iter().all(|e| match e {
            AllowEntry::Loopback => true,
            AllowEntry::Net(c) => c.addr.is_loopback(),
            _ => false,
        })
    }

    /// Whether every source is allowed (`any`, or both `0.0.0.0/0` and `::/0`).
    pub fn is_open(&self) -> bool {
        let all = |v4: bool| {
            self.entries.iter().any(|e| match e {
                AllowEntry::Any => true,
                AllowEntry::Net(c) => c.len == 0 && c.addr.is_ipv4() == v4,
                _ => false,
            })
        };
        all(true) && all(false)
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(flags: &[&str], poddir: bool) -> AllowList {
        let given: Vec<AllowEntry> = flags.iter().map(|f| f.parse().unwrap()).collect();
        AllowList::from_flags(&given, poddir).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_is_loopback_plus_pods_when_there_is_a_directory() {
        let l = list(&[], false);
        assert_eq!(l.to_string(), "loopback");
        assert!(l.loopback_only());
        assert!(l.allows(ip("127.0.0.1"), |_| panic!("no pods entry")));
        assert!(l.allows(ip("127.3.4.5"), |_| false));
        assert!(l.allows(ip("::1"), |_| false));
        assert!(l.allows(ip("::ffff:127.0.0.1"), |_| false));
        assert!(!l.allows(ip("10.0.0.1"), |_| true));
        let l = list(&[], true);
        assert_eq!(l.to_string(), "loopback, pods");
        assert!(!l.loopback_only());
        assert!(l.allows(ip("10.244.1.7"), |a| a == ip("10.244.1.7")));
        assert!(!l.allows(ip("10.244.1.8"), |a| a == ip("10.244.1.7")));
        // IPv4-mapped sources are looked up as IPv4.
        assert!(l.allows(ip("::ffff:10.244.1.7"), |a| a == ip("10.244.1.7")));
    }

    #[test]
    fn given_values_replace_the_default() {
        let l = list(&["10.244.0.0/16"], true);
        assert!(l.allows(ip("10.244.9.9"), |_| false));
        assert!(!l.allows(ip("127.0.0.1"), |_| true), "loopback not listed");
        assert!(!l.allows(ip("10.245.0.1"), |_| true), "pods not listed");
        let l = list(&["loopback", "192.0.2.7", "fd00::/8"], false);
        assert!(l.allows(ip("192.0.2.7"), |_| false));
        assert!(!l.allows(ip("192.0.2.8"), |_| false));
        assert!(l.allows(ip("fd12::1"), |_| false));
        assert_eq!(l.to_string(), "loopback, 192.0.2.7/32, fd00::/8");
    }

    #[test]
    fn any_and_zero_prefixes_open_it() {
        let any = list(&["any"], false);
        assert!(any.is_open());
        assert!(any.allows(ip("203.0.113.1"), |_| false));
        assert!(any.allows(ip("2001:db8::1"), |_| false));
        let v4 = list(&["0.0.0.0/0"], false);
        assert!(!v4.is_open(), "IPv6 still closed");
        assert!(v4.allows(ip("203.0.113.1"), |_| false));
        assert!(!v4.allows(ip("2001:db8::1"), |_| false));
        assert!(list(&["0.0.0.0/0", "::/0"], false).is_open());
        assert!(!list(&[], true).is_open());
    }

    #[test]
    fn bad_values_say_what_to_write() {
        let e = "10.0.0.0/33".parse::<AllowEntry>().unwrap_err();
        assert!(e.contains("10.0.0.0/33") && e.contains("loopback"), "{e}");
        assert!("localnet".parse::<AllowEntry>().is_err());
        let e = AllowList::from_flags(&[AllowEntry::Pods], false).unwrap_err();
        assert!(e.to_string().contains("--pod-directory"), "{e}");
    }

    #[test]
    fn duplicates_collapse() {
        assert_eq!(
            list(&["loopback", "loopback", "10.0.0.0/8", "10.1.2.3/8"], false).to_string(),
            "loopback, 10.0.0.0/8"
        );
    }
}
