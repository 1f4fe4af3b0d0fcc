//! Per-request metrics labelled by source pod, accumulated per worker and
//! merged only when `/metrics` is scraped.
//!
//! Each worker owns one [`WorkerStats`] behind a mutex that only the scrape
//! ever contends: recording a request is an uncontended lock, a few small
//! map look-ups keyed by interned ids, and plain integer additions. Label
//! strings are built at scrape time only.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::exposition;
use super::labels::{self, HostTable};
use crate::poddir::PodInfo;

/// Histogram bucket upper bounds in nanoseconds (0.5 ms … 10 s).
const BUCKETS_NS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// The same bounds as printed in `le`.
pub(super) const BUCKETS_LE: [&str; 14] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
    "2.5", "5", "10",
];

/// Rule names a worker interns at most (then `other`).
const MAX_RULES: usize = 1000;

/// A multiply-rotate hasher for keys made of small integer ids (never
/// attacker-chosen strings: those use the default SipHash).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A latency histogram with the buckets above (counts not cumulative).
#[derive(Debug, Clone, Default)]
pub struct Hist {
    pub(super) counts: [u64; BUCKETS_NS.len() + 1],
    pub(super) sum_ns: u64,
}

impl Hist {
    /// Add one observation.
    #[inline]
    pub fn observe(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS_NS.partition_point(|&b| b < ns);
        self.counts[i] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.saturating_add(o.sum_ns);
    }

    pub(super) fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Everything recorded for one source pod (or `unknown`).
#[derive(Debug, Clone, Default)]
pub(super) struct SourceStats {
    pod: Option<Arc<PodInfo>>,
    /// An address the pod was seen at (to check it is still in the directory).
    ip: Option<IpAddr>,
    pub(super) duration: Hist,
    pub(super) ttfb: Hist,
    pub(super) body_from_client: u64,
    pub(super) body_to_client: u64,
    pub(super) tcp_flows: u64,
    pub(super) tcp_from_client: u64,
    pub(super) tcp_to_client: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ReqKey {
    source: u32,
    host: u32,
    rule: u32,
    method: u8,
    class: u8,
    decision: u8,
}

/// One finished HTTP exchange, as the recorder needs it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The client's pod (None: `unknown`).
    pub source: Option<&'a Arc<PodInfo>>,
    /// The client's address (to check later that the pod still exists).
    pub client_ip: IpAddr,
    /// `host:port` the request went to.
    pub destination: &'a str,
    /// Request method as received.
    pub method: &'a str,
    /// Response status (None: no response).
    pub status: Option<u16>,
    /// Policy decision as the flow log prints it.
    pub decision: &'a str,
    /// Deciding rule (None without a rules file).
    pub rule: Option<&'a str>,
    /// The whole exchange.
    pub total: Duration,
    /// Request sent until the first response byte.
    pub ttfb: Option<Duration>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
}

/// One worker's accumulated state.
#[derive(Debug, Default)]
struct WorkerStats {
    host_epoch: u64,
    hosts: HashMap<Box<str>, u32>,
    /// Pod `Arc` address → (the `Arc`, kept so the address is not reused; id).
    by_ptr: IdMap<usize, (Arc<PodInfo>, u32)>,
    /// namespace → pod name → id (pods keep their id across directory reloads).
    by_name: HashMap<String, HashMap<String, u32>>,
    /// Source id → stats; id 0 is `unknown`.
    sources: Vec<Option<SourceStats>>,
    free: Vec<u32>,
    rules: HashMap<Box<str>, u32>,
    rule_names: Vec<Arc<str>>,
    requests: IdMap<ReqKey, u64>,
    /// The previous request's label ids (keep-alive connections repeat them).
    last: LastIds,
}

/// Ids of the last (source, host, rule) seen, valid while `epoch` holds and
/// no prune happened.
#[derive(Debug, Default)]
struct LastIds {
    valid: bool,
    epoch: u64,
    ptr: usize,
    host: String,
    rule: Option<String>,
    ids: [u32; 3],
}

impl WorkerStats {
    fn source_id(&mut self, pod: Option<&Arc<PodInfo>>, ip: IpAddr) -> u32 {
        if self.sources.is_empty() {
            self.sources.push(Some(SourceStats::default()));
        }
        let Some(pod) = pod else { return 0 };
        let ptr = Arc::as_ptr(pod) as usize;
        if let Some((_, id)) = self.by_ptr.get(&ptr) {
            return *id;
        }
        let known = self
            .by_name
            .get(&pod.namespace)
            .and_then(|m| m.get(&pod.name))
            .copied();
        let id = match known {
            Some(id) => id,
            None => {
                let stats = SourceStats {
                    pod: Some(pod.clone()),
                    ip: Some(ip),
                    ..SourceStats::default()
                };
                let id = match self.free.pop() {
                    Some(id) => {
                        self.sources[id as usize] = Some(stats);
                        id
                    }
                    None => {
                        self.sources.push(Some(stats));
                        (self.sources.len() - 1) as u32
                    }
                };
                self.by_name
                    .entry(pod.namespace.clone())
                    .or_default()
                    .insert(pod.name.clone(), id);
                id
            }
        };
        self.by_ptr.insert(ptr, (pod.clone(), id));
        id
    }

    fn host_id(&mut self, table: &HostTable, host: &str) -> u32 {
        let epoch = table.epoch();
        if epoch != self.host_epoch {
            self.hosts.clear();
            self.host_epoch = epoch;
        }
        if let Some(&id) = self.hosts.get(host) {
            return id;
        }
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let id = table.id(host);
        // Bounded: hosts past the cap (all `other`) would grow it forever.
        if self.hosts.len() >= 4096 {
            self.hosts.clear();
        }
        self.hosts.insert(host.into(), id);
        id
    }

    fn rule_id(&mut self, rule: Option<&str>) -> u32 {
        if self.rule_names.is_empty() {
            self.rule_names.push(Arc::from("none"));
            self.rule_names.push(Arc::from("other"));
        }
        let Some(rule) = rule else { return 0 };
        if let Some(&id) = self.rules.get(rule) {
            return id;
        }
        if self.rules.len() >= MAX_RULES {
            return 1;
        }
        let id = self.rule_names.len() as u32;
        self.rule_names.push(Arc::from(rule));
        self.rules.insert(rule.into(), id);
        id
    }

    fn source(&mut self, id: u32) -> &mut SourceStats {
        let slot = &mut self.sources[id as usize];
        slot.get_or_insert_with(SourceStats::default)
    }

    /// Forget sources `alive` says are gone (and every series of theirs);
    /// drop address mappings nobody but us still holds.
    fn prune(&mut self, alive: &dyn Fn(&PodInfo, IpAddr) -> bool) {
        self.last.valid = false;
        let mut gone = Vec::new();
        for (id, slot) in self.sources.iter_mut().enumerate().skip(1) {
            let dead = match slot {
                Some(SourceStats {
                    pod: Some(p),
                    ip: Some(ip),
                    ..
                }) => !alive(p, *ip),
                _ => false,
            };
            if dead && let Some(s) = slot.take() {
                gone.push(id as u32);
                if let Some(p) = &s.pod
                    && let Some(m) = self.by_name.get_mut(&p.namespace)
                {
                    m.remove(&p.name);
                    if m.is_empty() {
                        self.by_name.remove(&p.namespace);
                    }
                }
            }
        }
        if !gone.is_empty() {
            self.requests.retain(|k, _| !gone.contains(&k.source));
            self.by_ptr.retain(|_, (_, id)| !gone.contains(id));
            self.free.extend(gone);
        }
        // A replaced directory's `Arc`s held only here can go (the address
        // may then be reused, so the mapping must go with it).
        self.by_ptr.retain(|_, (p, _)| Arc::strong_count(p) > 1);
    }
}

/// Source label values: namespace, workload, pod.
pub(super) type Src = (String, String, String);
/// A `tproxy_requests_total` series: source, [host, rule], [method, class, decision].
pub(super) type ReqSeries = (Src, [Arc<str>; 2], [u8; 3]);

/// Per-request metrics of all workers.
#[derive(Debug)]
pub struct FlowStats {
    workers: Vec<Mutex<WorkerStats>>,
    /// Destination host labels (shared, consulted on cache misses).
    pub hosts: HostTable,
}

fn lock(m: &Mutex<WorkerStats>) -> MutexGuard<'_, WorkerStats> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FlowStats {
    /// State for `workers` workers.
    pub fn new(workers: usize, hosts: HostTable) -> Self {
        Self {
            workers: (0..workers.max(1))
                .map(|_| Mutex::new(WorkerStats::default()))
                .collect(),
            hosts,
        }
    }

    fn worker(&self, worker: usize) -> MutexGuard<'_, WorkerStats> {
        lock(&self.workers[worker % self.workers.len()])
    }

    /// Record one finished HTTP exchange on `worker`.
    pub fn record_http(&self, worker: usize, r: &Request<'_>) {
        let mut w = self.worker(worker);
        let host_name = labels::host_of(r.destination);
        let ptr = r.source.map_or(0, |p| Arc::as_ptr(p) as usize);
        let epoch = self.hosts.epoch();
        let l = &w.last;
        let [source, host, rule] = if l.valid
            && l.ptr == ptr
            && l.epoch == epoch
            && l.host == host_name
            && l.rule.as_deref() == r.rule
        {
            l.ids
        } else {
            let ids = [
                w.source_id(r.source, r.client_ip),
                w.host_id(&self.hosts, host_name),
                w.rule_id(r.rule),
            ];
            let l = &mut w.last;
            l.host.clear();
            l.host.push_str(host_name);
            if l.rule.as_deref() != r.rule {
                l.rule = r.rule.map(str::to_owned);
            }
            (l.valid, l.epoch, l.ptr, l.ids) = (true, epoch, ptr, ids);
            ids
        };
        let key = ReqKey {
            source,
            host,
            rule,
            method: labels::method_id(r.method),
            class: labels::status_class(r.status),
            decision: labels::decision_id(r.decision),
        };
        *w.requests.entry(key).or_insert(0) += 1;
        let s = w.source(source);
        s.duration.observe(r.total);
        if let Some(t) = r.ttfb {
            s.ttfb.observe(t);
        }
        s.body_from_client += r.request_bytes;
        s.body_to_client += r.response_bytes;
    }

    /// Record one finished passthrough connection on `worker`.
    pub fn record_tcp(
        &self,
        worker: usize,
        source: Option<&Arc<PodInfo>>,
        client_ip: IpAddr,
        from_client: u64,
        to_client: u64,
    ) {
        let mut w = self.worker(worker);
        let id = w.source_id(source, client_ip);
        let s = w.source(id);
        s.tcp_flows += 1;
        s.tcp_from_client += from_client;
        s.tcp_to_client += to_client;
    }

    /// Drop sources no longer in the pod directory, then append the text
    /// exposition of every per-request family to `out`.
    pub fn render(&self, alive: &dyn Fn(&PodInfo, IpAddr) -> bool, out: &mut String) {
        let host_names = self.hosts.names();
        let mut requests: BTreeMap<ReqSeries, u64> = BTreeMap::new();
        let mut sources: BTreeMap<Src, SourceStats> = BTreeMap::new();
        for m in &self.workers {
            // Copy the worker's tables out and let it go on at once; label
            // strings are built without holding its lock.
            let (w_sources, w_requests, w_rules) = {
                let mut w = lock(m);
                w.prune(alive);
                (w.sources.clone(), w.requests.clone(), w.rule_names.clone())
            };
            let labels_of = |s: &SourceStats| -> Src {
                match &s.pod {
                    None => ("unknown".into(), "unknown".into(), "unknown".into()),
                    Some(p) => (
                        p.namespace.clone(),
                        p.workload_name.clone().unwrap_or_else(|| p.name.clone()),
                        p.name.clone(),
                    ),
                }
            };
            let src_labels: Vec<Option<Src>> = w_sources
                .iter()
                .map(|s| s.as_ref().map(labels_of))
                .collect();
            for (k, v) in &w_requests {
                let Some(Some(src)) = src_labels.get(k.source as usize) else {
                    continue;
                };
                let host = host_names
                    .get(k.host as usize)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(labels::OTHER));
                let rule = w_rules
                    .get(k.rule as usize)
                    .cloned()
                    .unwrap_or_else(|| Arc::from("other"));
                *requests
                    .entry((src.clone(), [host, rule], [k.method, k.class, k.decision]))
                    .or_insert(0) += v;
            }
            for (s, l) in w_sources.iter().zip(src_labels) {
                let (Some(s), Some(l)) = (s, l) else { continue };
                let agg = sources.entry(l).or_default();
                agg.duration.merge(&s.duration);
                agg.ttfb.merge(&s.ttfb);
                agg.body_from_client += s.body_from_client;
                agg.body_to_client += s.body_to_client;
                agg.tcp_flows += s.tcp_flows;
                agg.tcp_from_client += s.tcp_from_client;
                agg.tcp_to_client += s.tcp_to_client;
            }
        }
        exposition::write_requests(&requests, out);
        exposition::write_sources(&sources, out);
    }
}

#[cfg(test)]
#[path = "flows_tests.rs"]
mod tests;
