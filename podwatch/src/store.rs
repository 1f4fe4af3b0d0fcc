//! The current pod set, folded from watcher events and keyed by pod uid.
//!
//! One store serves several watch streams (one per namespace, or a single
//! all-namespaces stream). Each stream's re-list (`Init` … `InitDone`) replaces
//! that stream's pods atomically, so pods deleted while the watch was down
//! disappear at the next re-list.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;

#[derive(Debug, Default)]
struct Stream {
    pods: HashMap<String, Pod>,
    /// Buffer between `Init` and `InitDone`.
    relisting: Option<HashMap<String, Pod>>,
    /// Has completed at least one list.
    synced: bool,
}

/// What an event did to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing visible changed (buffering during a list).
    None,
    /// The pod set changed (or a list completed).
    Pods,
    /// A re-list started on a stream that had been synced: the watch restarted.
    Restart,
}

/// Pods of all streams, by uid.
#[derive(Debug)]
pub struct PodStore {
    streams: Vec<Stream>,
}

fn uid(pod: &Pod) -> Option<String> {
    pod.metadata.uid.clone()
}

impl PodStore {
    /// A store fed by `streams` watch streams (at least one).
    pub fn new(streams: usize) -> PodStore {
        PodStore {
            streams: (0..streams.max(1)).map(|_| Stream::default()).collect(),
        }
    }

    /// Folds one event of stream `index` into the store.
    pub fn apply(&mut self, index: usize, event: Event<Pod>) -> Change {
        let Some(s) = self.streams.get_mut(index) else {
            return Change::None;
        };
        match event {
            Event::Init => {
                s.relisting = Some(HashMap::new());
                if s.synced {
                    Change::Restart
                } else {
                    Change::None
                }
            }
            Event::InitApply(pod) => {
                if let (Some(buf), Some(id)) = (s.relisting.as_mut(), uid(&pod)) {
                    buf.insert(id, pod);
                }
                Change::None
            }
            Event::InitDone => {
                s.pods = s.relisting.take().unwrap_or_default();
                s.synced = true;
                Change::Pods
            }
            Event::Apply(pod) => match uid(&pod) {
                Some(id) => {
                    s.pods.insert(id, pod);
                    Change::Pods
                }
                None => Change::None,
            },
            Event::Delete(pod) => match uid(&pod) {
                Some(id) => {
                    s.pods.remove(&id);
                    Change::Pods
                }
                None => Change::None,
            },
        }
    }

    /// Every stream has listed at least once: the pod set is complete, and a
    /// reconcile will not wrongly drop rules of pods not seen yet.
    pub fn ready(&self) -> bool {
        self.streams.iter().all(|s| s.synced)
    }

    /// All pods currently known.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.streams.iter().flat_map(|s| s.pods.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": uid, "namespace": "n", "uid": uid}
        }))
        .unwrap()
    }

    fn uids(s: &PodStore) -> Vec<String> {
        let mut v: Vec<String> = s.pods().map(|p| p.metadata.uid.clone().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn relist_replaces_stream_and_counts_as_restart() {
        let mut s = PodStore::new(2);
        assert_eq!(s.apply(0, Event::Init), Change::None);
        s.apply(0, Event::InitApply(pod("a")));
        s.apply(0, Event::InitApply(pod("b")));
        assert_eq!(s.apply(0, Event::InitDone), Change::Pods);
        assert!(!s.ready(), "stream 1 has not listed yet");
        s.apply(1, Event::Init);
        s.apply(1, Event::InitApply(pod("c")));
        s.apply(1, Event::InitDone);
        assert!(s.ready());
        assert_eq!(uids(&s), ["a", "b", "c"]);

        assert_eq!(s.apply(0, Event::Delete(pod("a"))), Change::Pods);
        assert_eq!(s.apply(0, Event::Apply(pod("d"))), Change::Pods);
        assert_eq!(uids(&s), ["b", "c", "d"]);

        // A re-list of stream 0 that no longer has b: b disappears, c stays.
        assert_eq!(s.apply(0, Event::Init), Change::Restart);
        s.apply(0, Event::InitApply(pod("d")));
        assert_eq!(uids(&s), ["b", "c", "d"], "old set kept until InitDone");
        s.apply(0, Event::InitDone);
        assert_eq!(uids(&s), ["c", "d"]);
    }
}
