//! Compiled matchers: host sets, the per-policy host index and the per-rule
//! condition checks. Nothing here allocates while matching (hosts longer
//! than [`HOST_BUF`] bytes are the one exception).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::ops::Range;

use regex::RegexSet;

use super::PolicyError;
use super::raw::{Cidr, HostPat, NamePat, PortRange, RawMatch, RawSource, Scheme};
use crate::poddir::PodInfo;

/// Hosts up to this length are lower-cased on the stack.
pub const HOST_BUF: usize = 256;

/// Lists longer than this are hashed instead of scanned.
const SCAN_MAX: usize = 8;

/// Exact names, `*.suffix` wildcards and `~regex` patterns for one field.
#[derive(Debug)]
pub struct HostSet {
    exact_list: Vec<Box<str>>,
    exact_set: Option<HashSet<Box<str>>>,
    suffixes: Vec<Box<str>>,
    regex: Option<RegexSet>,
}

impl HostSet {
    fn compile(field: &str, pats: &[HostPat]) -> Result<Option<Self>, PolicyError> {
        if pats.is_empty() {
            return Ok(None);
        }
        let mut exact_list = Vec::new();
        let mut suffixes = Vec::new();
        let mut regexes = Vec::new();
        for p in pats {
            match p {
                HostPat::Exact(h) => exact_list.push(h.as_str().into()),
                HostPat::Wildcard(s) => suffixes.push(s.as_str().into()),
                HostPat::Regex(r) => regexes.push(r.as_str()),
            }
        }
        let exact_set = (exact_list.len() > SCAN_MAX).then(|| exact_list.iter().cloned().collect());
        Ok(Some(Self {
            exact_list,
            exact_set,
            suffixes,
            regex: regex_set(field, &regexes)?,
        }))
    }

    /// `host` must be normalised (lower-case, no trailing dot).
    pub fn matches(&self, host: &str) -> bool {
        self.matches_pre(host, None)
    }

    /// As [`Self::matches`]; regexes are skipped when `pre` says no regex
    /// of the policy can match.
    fn matches_pre(&self, host: &str, pre: Option<&Lazy<'_>>) -> bool {
        let exact = match &self.exact_set {
            Some(s) => s.contains(host),
            None => self.exact_list.iter().any(|e| **e == *host),
        };
        exact
            || self.suffixes.iter().any(|s| wildcard_matches(s, host))
            || self
                .regex
                .as_ref()
                .is_some_and(|r| pre.is_none_or(Lazy::possible) && r.is_match(host))
    }

    fn has_regex(&self) -> bool {
        self.regex.is_some()
    }
}

/// `*.suffix` semantics: `host` is `<one or more labels>.suffix`.
pub fn wildcard_matches(suffix: &str, host: &str) -> bool {
    host.len() > suffix.len() + 1
        && host.ends_with(suffix)
        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
}

fn regex_set(field: &str, pats: &[&str]) -> Result<Option<RegexSet>, PolicyError> {
    if pats.is_empty() {
        return Ok(None);
    }
    RegexSet::new(pats)
        .map(Some)
        .map_err(|e| PolicyError::Invalid(format!("{field}: regexes too large together: {e}")))
}

/// Conditions on the client pod.
#[derive(Debug)]
pub struct SourceMatch {
    namespace: Vec<NamePat>,
    pod: Vec<NamePat>,
    workload: Vec<NamePat>,
    labels: Vec<(String, String)>,
}

impl SourceMatch {
    fn compile(s: &RawSource) -> Self {
        Self {
            namespace: s.namespace.0.clone(),
            pod: s.pod.0.clone(),
            workload: s.workload.0.clone(),
            labels: s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    fn matches(&self, p: &PodInfo) -> bool {
        let any = |pats: &[NamePat], v: &str| pats.is_empty() || pats.iter().any(|x| x.matches(v));
        any(&self.namespace, &p.namespace)
            && any(&self.pod, &p.name)
            && (self.workload.is_empty() || self.workload.iter().any(|w| workload_matches(w, p)))
            && self
                .labels
                .iter()
                .all(|(k, v)| p.labels.get(k).is_some_and(|x| x == v))
    }
}

fn workload_matches(w: &NamePat, p: &PodInfo) -> bool {
    let Some(name) = p.workload_name.as_deref() else {
        return false;
    };
    match w.0.split_once('/') {
        Some((kind, n)) => {
            p.workload_kind.as_deref() == Some(kind) && NamePat(n.to_owned()).matches(name)
        }
        None => w.matches(name),
    }
}

/// Exact hosts, wildcard suffixes, has regexes.
type HostKeys<'a> = (&'a [Box<str>], &'a [Box<str>], bool);

/// Three-valued answer of a connection-level check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    /// Cannot match.
    No,
    /// Matches on connection facts alone.
    Yes,
    /// Needs a request to tell.
    Unknown,
}

/// All conditions of one rule.
#[derive(Debug)]
pub struct Matcher {
    host: Option<HostSet>,
    sni: Option<HostSet>,
    url: Option<RegexSet>,
    /// This rule's patterns in the policy-wide url set (rule order).
    url_ids: Range<usize>,
    method: Vec<String>,
    path_prefix: Vec<String>,
    port: Vec<PortRange>,
    scheme: Vec<Scheme>,
    client: Vec<Cidr>,
    source: Option<SourceMatch>,
}

/// Normalised inputs shared by all rules of one decision.
pub struct Inputs<'a> {
    /// Request host (or connection host/SNI at connection level).
    pub host: Option<&'a str>,
    /// TLS server name.
    pub sni: Option<&'a str>,
    /// Destination port.
    pub port: u16,
    /// Client address.
    pub client: std::net::IpAddr,
    /// Client pod.
    pub source: Option<&'a PodInfo>,
    /// Policy-wide prefilter over `host` regexes, for `host`.
    pub host_pre: Option<&'a Lazy<'a>>,
}

/// Request-only inputs.
pub struct ReqInputs<'a> {
    /// Scheme.
    pub scheme: Scheme,
    /// Method as received.
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Pretty URL.
    pub url: &'a str,
    /// Policy-wide prefilter over `url` regexes, for `url`.
    pub url_pre: &'a Lazy<'a>,
}

/// Combined regex sets over all rules: one search tells whether any rule's
/// `url` (or `host` regex) can match at all; when none can, per-rule
/// regexes are skipped. Built best-effort (absent when too large).
#[derive(Debug, Default)]
pub struct Prefilter {
    url: Option<RegexSet>,
    /// All rules' url regexes in rule order: one overlapping search per
    /// request tells each rule whether its url condition holds.
    url_all: Option<regex_automata::meta::Regex>,
    host: Option<RegexSet>,
}

thread_local! {
    /// Per-thread result of the last url search (reused, no allocation
    /// unless the policy's pattern count changes).
    static URL_HITS: RefCell<regex_automata::PatternSet> = RefCell::new(regex_automata::PatternSet::new(0));
}

impl Prefilter {
    /// Build from all rules' `match:` blocks.
    pub fn build<'a>(raws: impl Iterator<Item = &'a RawMatch> + Clone) -> Self {
        let urls: Vec<&str> = raws
            .clone()
            .flat_map(|m| m.url.0.iter().map(|u| u.0.as_str()))
            .collect();
        let hosts: Vec<&str> = raws
            .flat_map(|m| m.host.0.iter())
            .filter_map(|h| match h {
                HostPat::Regex(r) => Some(r.as_str()),
                _ => None,
            })
            .collect();
        let set = |v: &[&str]| (!v.is_empty()).then(|| RegexSet::new(v).ok()).flatten();
        let url_all = (!urls.is_empty())
            .then(|| regex_automata::meta::Regex::new_many(&urls).ok())
            .flatten();
        Self {
            url: set(&urls),
            url_all,
            host: set(&hosts),
        }
    }

    /// Lazy prefilter answer for a URL.
    pub fn url<'a>(&'a self, url: &'a str) -> Lazy<'a> {
        let mut l = Lazy::new(self.url.as_ref(), url);
        l.all = self.url_all.as_ref();
        l
    }

    /// Lazy prefilter answer for a host.
    pub fn host<'a>(&'a self, host: &'a str) -> Lazy<'a> {
        Lazy::new(self.host.as_ref(), host)
    }
}

/// A prefilter search run at most once, on first need.
pub struct Lazy<'a> {
    set: Option<&'a RegexSet>,
    hay: &'a str,
    state: Cell<u8>,
    all: Option<&'a regex_automata::meta::Regex>,
    all_done: Cell<bool>,
}

impl<'a> Lazy<'a> {
    fn new(set: Option<&'a RegexSet>, hay: &'a str) -> Self {
        Self {
            set,
            hay,
            state: Cell::new(0),
            all: None,
            all_done: Cell::new(false),
        }
    }

    /// Whether any pattern in `ids` of the policy-wide url set matches;
    /// `None` when there is no such set (check the rule's own regexes).
    pub fn which(&self, ids: &Range<usize>) -> Option<bool> {
        let all = self.all?;
        if !self.possible() {
            return Some(false);
        }
        URL_HITS
            .try_with(|cell| {
                let mut hits = cell.borrow_mut();
                if !self.all_done.get() {
                    if hits.capacity() != all.pattern_len() {
                        *hits = regex_automata::PatternSet::new(all.pattern_len());
                    }
                    hits.clear();
                    all.which_overlapping_matches(&regex_automata::Input::new(self.hay), &mut hits);
                    self.all_done.set(true);
                }
                ids.clone()
                    .any(|i| regex_automata::PatternID::new(i).is_ok_and(|p| hits.contains(p)))
            })
            .ok()
    }

    /// Whether some regex of the set can match (true without a set).
    pub fn possible(&self) -> bool {
        match self.state.get() {
            1 => true,
            2 => false,
            _ => {
                let yes = self.set.is_none_or(|s| s.is_match(self.hay));
                self.state.set(if yes { 1 } else { 2 });
                yes
            }
        }
    }
}

impl Matcher {
    /// Compile the `match:` block of `rules[idx]`.
    pub fn compile(where_: &str, m: &RawMatch) -> Result<Self, PolicyError> {
        let url: Vec<&str> = m.url.0.iter().map(|u| u.0.as_str()).collect();
        Ok(Self {
            host: HostSet::compile(&format!("{where_}.match.host"), &m.host.0)?,
            sni: HostSet::compile(&format!("{where_}.match.sni"), &m.sni.0)?,
            url: regex_set(&format!("{where_}.match.url"), &url)?,
            url_ids: 0..0,
            method: m.method.0.iter().map(|x| x.0.clone()).collect(),
            path_prefix: m.path_prefix.0.iter().map(|x| x.0.clone()).collect(),
            port: m.port.0.clone(),
            scheme: m.scheme.0.clone(),
            client: m.client_cidr.0.clone(),
            source: m.source.as_ref().map(SourceMatch::compile),
        })
    }

    /// Set this rule's pattern range in the policy-wide url set.
    pub fn set_url_ids(&mut self, ids: Range<usize>) {
        self.url_ids = ids;
    }

    /// No conditions: matches everything.
    pub fn empty() -> Self {
        Self {
            host: None,
            sni: None,
            url: None,
            url_ids: 0..0,
            method: Vec::new(),
            path_prefix: Vec::new(),
            port: Vec::new(),
            scheme: Vec::new(),
            client: Vec::new(),
            source: None,
        }
    }

    /// Has request-level conditions (url, method, path_prefix, scheme).
    pub fn has_request_level(&self) -> bool {
        self.url.is_some()
            || !self.method.is_empty()
            || !self.path_prefix.is_empty()
            || !self.scheme.is_empty()
    }

    /// Exact hosts and wildcard suffixes of `host:`, and whether it also
    /// has regexes (for the index). `None`: no host condition.
    fn host_keys(&self) -> Option<HostKeys<'_>> {
        self.host
            .as_ref()
            .map(|h| (&h.exact_list[..], &h.suffixes[..], h.has_regex()))
    }

    /// Connection-level conditions only.
    pub fn conn(&self, i: &Inputs<'_>) -> Tri {
        let mut unknown = false;
        if let Some(h) = &self.host {
            match i.host {
                Some(host) if !h.matches_pre(host, i.host_pre) => return Tri::No,
                Some(_) => {}
                None => unknown = true,
            }
        }
        if let Some(s) = &self.sni
            && !i.sni.is_some_and(|sni| s.matches(sni))
        {
            return Tri::No;
        }
        if !self.port.is_empty() && !self.port.iter().any(|r| r.0 <= i.port && i.port <= r.1) {
            return Tri::No;
        }
        if !self.client.is_empty() && !self.client.iter().any(|c| c.contains(i.client)) {
            return Tri::No;
        }
        if let Some(src) = &self.source
            && !i.source.is_some_and(|p| src.matches(p))
        {
            return Tri::No;
        }
        if unknown || self.has_request_level() {
            Tri::Unknown
        } else {
            Tri::Yes
        }
    }

    /// All conditions, for a request (`i.host` is the request host).
    pub fn request(&self, i: &Inputs<'_>, r: &ReqInputs<'_>) -> bool {
        if self.conn(i) == Tri::No {
            return false;
        }
        if !self.scheme.is_empty() && !self.scheme.contains(&r.scheme) {
            return false;
        }
        if !self.method.is_empty() && !self.method.iter().any(|m| m.eq_ignore_ascii_case(r.method))
        {
            return false;
        }
        if !self.path_prefix.is_empty()
            && !self
                .path_prefix
                .iter()
                .any(|p| r.path.starts_with(p.as_str()))
        {
            return false;
        }
        self.url
            .as_ref()
            .is_none_or(|u| match r.url_pre.which(&self.url_ids) {
                Some(hit) => hit,
                None => r.url_pre.possible() && u.is_match(r.url),
            })
    }
}

/// Index over the rules' `host:` conditions: which rules can match a host.
#[derive(Debug, Default)]
pub struct HostIndex {
    /// Rules without host and url conditions.
    always: Vec<u32>,
    /// Rules without a host condition but with a url regex: candidates only
    /// when the policy-wide url prefilter matches.
    url_only: Vec<u32>,
    /// Rules with a host regex: candidates only when the policy-wide host
    /// regex prefilter matches (their exact/wildcard hosts are indexed too).
    host_regex: Vec<u32>,
    exact: HashMap<Box<str>, Vec<u32>>,
    suffix: HashMap<Box<str>, Vec<u32>>,
}

/// Most candidate lists one lookup merges (3 unkeyed + exact + suffixes).
const MAX_LISTS: usize = 36;

/// Whether a class of regex rules can match (lazy prefilter answer).
pub type Possible<'a> = &'a dyn Fn() -> bool;

impl HostIndex {
    /// Build from the compiled rules' matchers (in rule order).
    pub fn build<'a>(matchers: impl Iterator<Item = &'a Matcher>) -> Self {
        let mut ix = Self::default();
        for (i, m) in matchers.enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            match m.host_keys() {
                None if m.url.is_some() => ix.url_only.push(i),
                None => ix.always.push(i),
                Some((exact, suffixes, has_regex)) => {
                    for e in exact {
                        push_once(ix.exact.entry(e.clone()).or_default(), i);
                    }
                    for s in suffixes {
                        push_once(ix.suffix.entry(s.clone()).or_default(), i);
                    }
                    if has_regex {
                        ix.host_regex.push(i);
                    }
                }
            }
        }
        ix
    }

    /// Calls `f` with candidate rule indices in ascending order (each once)
    /// until it returns true; returns that index. Returns
    /// `None` when the host has too many labels for the index (walk all).
    /// `url_possible` / `host_re_possible` gate the url-only and host-regex
    /// rules (asked only when such rules exist).
    pub fn first(
        &self,
        host: &str,
        url_possible: Possible<'_>,
        host_re_possible: Possible<'_>,
        mut f: impl FnMut(usize) -> bool,
    ) -> Option<Option<usize>> {
        let mut lists: [&[u32]; MAX_LISTS] = [&[]; MAX_LISTS];
        let mut n = 0;
        lists[n] = &self.always;
        n += 1;
        if !self.url_only.is_empty() && url_possible() {
            lists[n] = &self.url_only;
            n += 1;
        }
        if !self.host_regex.is_empty() && host_re_possible() {
            lists[n] = &self.host_regex;
            n += 1;
        }
        if let Some(v) = self.exact.get(host) {
            lists[n] = v;
            n += 1;
        }
        if !self.suffix.is_empty() {
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(v) = self.suffix.get(rest) {
                    if n == MAX_LISTS {
                        return None;
                    }
                    lists[n] = v;
                    n += 1;
                }
            }
        }
        let mut pos = [0usize; MAX_LISTS];
        loop {
            let mut min = u32::MAX;
            for k in 0..n {
                if let Some(&v) = lists[k].get(pos[k]) {
                    min = min.min(v);
                }
            }
            if min == u32::MAX {
                return Some(None);
            }
            for k in 0..n {
                if lists[k].get(pos[k]) == Some(&min) {
                    pos[k] += 1;
                }
            }
            let idx = min as usize;
            if f(idx) {
                return Some(Some(idx));
            }
        }
    }
}

fn push_once(v: &mut Vec<u32>, i: u32) {
    if v.last() != Some(&i) {
        v.push(i);
    }
}

/// Lower-case `host` without a trailing dot into `buf` (no allocation for
/// hosts up to [`HOST_BUF`] bytes) and call `f` with it.
pub fn with_normalized<R>(host: &str, buf: &mut [u8; HOST_BUF], f: impl FnOnce(&str) -> R) -> R {
    let h = host.trim_end_matches('.');
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    if h.contains(':')
        && let Ok(v6) = h.parse::<std::net::Ipv6Addr>()
    {
        // Canonical IPv6 text (as patterns are stored), written on the stack.
        let mut cur = std::io::Cursor::new(&mut buf[..]);
        if std::io::Write::write_fmt(&mut cur, format_args!("{v6}")).is_ok() {
            let n = usize::try_from(cur.position()).unwrap_or(0);
            if let Ok(s) = std::str::from_utf8(&buf[..n]) {
                return f(s);
            }
        }
        return f(h);
    }
    if !h.bytes().any(|b| b.is_ascii_uppercase()) {
        return f(h);
    }
    if h.len() <= HOST_BUF {
        let out = &mut buf[..h.len()];
        out.copy_from_slice(h.as_bytes());
        out.make_ascii_lowercase();
        // Lower-casing ASCII letters keeps UTF-8 valid.
        match std::str::from_utf8(out) {
            Ok(s) => f(s),
            Err(_) => f(h),
        }
    } else {
        f(&h.to_ascii_lowercase())
    }
}
