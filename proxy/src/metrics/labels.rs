//! Label values with bounded cardinality: destination hosts (named by a rule,
//! or among the first `--metrics-max-hosts` seen, else `other`), methods,
//! status classes, decisions. See docs/metrics.md.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Label value of every host that did not get its own.
pub const OTHER: &str = "other";

/// Method label values; the last one is everything non-standard.
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];

/// Index into [`METHODS`].
pub fn method_id(m: &str) -> u8 {
    match m {
        "GET" => 0,
        "HEAD" => 1,
        "POST" => 2,
        "PUT" => 3,
        "DELETE" => 4,
        "CONNECT" => 5,
        "OPTIONS" => 6,
        "TRACE" => 7,
        "PATCH" => 8,
        _ => 9,
    }
}

/// Status class label values (`error`: no response at all).
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Index into [`STATUS_CLASSES`].
pub fn status_class(status: Option<u16>) -> u8 {
    match status {
        Some(s @ 100..=599) => (s / 100 - 1) as u8,
        _ => 5,
    }
}

/// Decision label values (as the flow log writes them).
pub const DECISIONS: [&str; 5] = ["intercept", "allow", "deny", "passthrough", "other"];

/// Index into [`DECISIONS`].
pub fn decision_id(d: &str) -> u8 {
    match d {
        "intercept" => 0,
        "allow" => 1,
        "deny" => 2,
        "passthrough" => 3,
        _ => 4,
    }
}

/// The host part of a `host:port` destination (IPv6 without brackets).
pub fn host_of(destination: &str) -> &str {
    if let Some(rest) = destination.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match destination.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => destination,
    }
}

/// Escape a label value for the text exposition format.
pub fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Process-wide host → label id table. Id 0 is [`OTHER`]. Workers consult
/// it only when their own cache misses; [`HostTable::epoch`] changes when
/// the rule-named hosts change, telling workers to drop their caches.
#[derive(Debug)]
pub struct HostTable {
    inner: Mutex<Inner>,
    epoch: AtomicU64,
    rules: Option<PathBuf>,
}

#[derive(Debug)]
struct Inner {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Arc<str>>,
    pinned: HashSet<String>,
    /// Ids given to hosts not named by a rule.
    counted: usize,
    max: usize,
    policy_generation: Option<u64>,
}

impl HostTable {
    /// A table giving at most `max` hosts not named by a rule their own label;
    /// `rules` is the rules file whose exact `host`/`sni` names always get one.
    pub fn new(max: usize, rules: Option<&Path>) -> Self {
        let t = Self {
            inner: Mutex::new(Inner {
                ids: HashMap::new(),
                names: vec![Arc::from(OTHER)],
                pinned: HashSet::new(),
                counted: 0,
                max,
                policy_generation: None,
            }),
            epoch: AtomicU64::new(0),
            rules: rules.map(Path::to_owned),
        };
        t.refresh_rules(0);
        t
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes whenever an id handed out earlier may have become stale.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The label id of `host` (lower-case), assigning one if allowed. Names
    /// that are no plausible host (too long, odd characters) are `other`.
    pub fn id(&self, host: &str) -> u32 {
        let plausible = host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
        if !plausible {
            return 0;
        }
        let mut t = self.lock();
        if let Some(&id) = t.ids.get(host) {
            return id;
        }
        let pinned = t.pinned.contains(host);
        if !pinned && t.counted >= t.max {
            return 0;
        }
        if !pinned {
            t.counted += 1;
        }
        let id = t.names.len() as u32;
        t.names.push(Arc::from(host));
        t.ids.insert(host.into(), id);
        id
    }

    /// Label values by id (index = id).
    pub fn names(&self) -> Vec<Arc<str>> {
        self.lock().names.clone()
    }

    /// Re-read the exact host names of the rules file when the policy
    /// `generation` changed (called at start and at every scrape, never by
    /// workers). A file that does not parse keeps the previous names.
    pub fn refresh_rules(&self, generation: u64) {
        let Some(path) = &self.rules else { return };
        if self.lock().policy_generation == Some(generation) {
            return;
        }
        let Some(hosts) = rule_hosts(path) else {
            return;
        };
        let mut t = self.lock();
        t.policy_generation = Some(generation);
        if hosts == t.pinned {
            return;
        }
        t.pinned = hosts;
        let names = t.names.clone();
        t.counted = names
            .iter()
            .skip(1)
            .filter(|n| !t.pinned.contains(&***n))
            .count();
        drop(t);
        // Hosts cached as `other` by workers may now be named by a rule.
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

/// Exact `host` / `sni` names of every rule in a rules file.
fn rule_hosts(path: &Path) -> Option<HashSet<String>> {
    use crate::policy::raw::{HostPat, RawPolicy};
    let text = std::fs::read_to_string(path).ok()?;
    let raw: RawPolicy = serde_yaml_ng::from_str(&text).ok()?;
    let mut out = HashSet::new();
    for r in &raw.rules {
        for p in r.matcher.host.0.iter().chain(&r.matcher.sni.0) {
            if let HostPat::Exact(h) = p {
                out.insert(h.to_ascii_lowercase());
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_beyond_the_cap_collapse_but_rule_hosts_never_do() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.yaml");
        std::fs::write(
            &rules,
            "rules:\n- name: a\n  match: {host: [named.example, \"*.wild.example\"]}\n  action: allow\ndefault: deny\n",
        )
        .unwrap();
        let t = HostTable::new(2, Some(&rules));
        let a = t.id("a.example");
        let b = t.id("b.example");
        assert!(a > 0 && b > 0 && a != b);
        assert_eq!(t.id("c.example"), 0, "third unnamed host is `other`");
        assert_eq!(t.id("x.wild.example"), 0, "wildcards do not pin");
        let n = t.id("named.example");
        assert!(n > 0, "rule-named host keeps its label past the cap");
        assert_eq!(t.id("a.example"), a, "ids are stable");
        assert_eq!(&*t.names()[n as usize], "named.example");
        let t = HostTable::new(10, None);
        assert_eq!(t.id("bad\"host"), 0, "odd characters are `other`");
        assert_eq!(t.id(&"a".repeat(254)), 0, "too long is `other`");
    }

    #[test]
    fn label_value_helpers() {
        assert_eq!(host_of("example.com:443"), "example.com");
        assert_eq!(host_of("[::1]:8080"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
        assert_eq!(METHODS[method_id("PATCH") as usize], "PATCH");
        assert_eq!(METHODS[method_id("PROPFIND") as usize], "_OTHER");
        assert_eq!(STATUS_CLASSES[status_class(Some(204)) as usize], "2xx");
        assert_eq!(STATUS_CLASSES[status_class(None) as usize], "error");
        assert_eq!(STATUS_CLASSES[status_class(Some(99)) as usize], "error");
        let mut s = String::new();
        escape("a\"b\\c\n", &mut s);
        assert_eq!(s, "a\\\"b\\\\c\\n");
    }
}
