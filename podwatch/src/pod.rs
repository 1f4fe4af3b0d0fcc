//! What podwatch needs to know about one pod, extracted from the API object.
//!
//! Everything here is pure: a [`Pod`] from the API server goes in, a [`PodInfo`]
//! (or nothing, when the pod has no place on the node's data path) comes out.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

/// Annotation (and label) key that opts a pod into interception.
pub const OPT_IN_KEY: &str = "initializer.kubernetes.io/tproxy";
/// The only value of [`OPT_IN_KEY`] that opts a pod in (exact match).
pub const OPT_IN_VALUE: &str = "true";
/// Label the Deployment controller puts on every pod of a ReplicaSet it owns.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The workload a pod belongs to, derived from its owner references.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct Workload {
    /// Kind of the top-level owner (`Deployment`, `StatefulSet`, `CronJob`, `Pod`, …).
    pub kind: String,
    /// Name of that owner.
    pub name: String,
}

/// One pod as podwatch sees it: identity, addresses, opt-in and directory data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`: the identity used for all state.
    pub uid: String,
    /// Every address in `status.podIPs` (falls back to `status.podIP`), v4 and v6.
    pub ips: Vec<IpAddr>,
    /// Annotation or label `initializer.kubernetes.io/tproxy: "true"` present.
    pub opted_in: bool,
    /// `metadata.deletionTimestamp` is set (the pod still runs until it is gone).
    pub terminating: bool,
    /// `metadata.creationTimestamp` as seconds since the epoch (0 when absent).
    pub created: i64,
    /// Top-level owner.
    pub workload: Workload,
    /// All labels of the pod (the directory picks the configured subset).
    pub labels: BTreeMap<String, String>,
}

/// Why a pod from the API has no place on the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// `spec.hostNetwork: true`: its address is the node's, never redirect it.
    HostNetwork,
    /// Phase `Succeeded` or `Failed`: its containers are gone, its IP may be reused.
    Finished,
    /// No pod IP assigned yet (or none that parses).
    NoIp,
    /// Object without namespace, name or uid (not something the API server sends).
    Incomplete,
}

impl PodInfo {
    /// Extracts the pod, or says why it is skipped. Unparsable IP strings are dropped.
    pub fn from_pod(pod: &Pod) -> Result<PodInfo, Skip> {
        let meta = &pod.metadata;
        let (Some(namespace), Some(name), Some(uid)) = (&meta.namespace, &meta.name, &meta.uid)
        else {
            return Err(Skip::Incomplete);
        };
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
        {
            return Err(Skip::HostNetwork);
        }
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return Err(Skip::Finished);
        }
        let ips = pod_ips(pod);
        if ips.is_empty() {
            return Err(Skip::NoIp);
        }
        let labels: BTreeMap<String, String> = meta.labels.clone().unwrap_or_default();
        let annotated = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(OPT_IN_KEY))
            .is_some_and(|v| v == OPT_IN_VALUE);
        let labelled = labels.get(OPT_IN_KEY).is_some_and(|v| v == OPT_IN_VALUE);
        Ok(PodInfo {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.clone(),
            ips,
            opted_in: annotated || labelled,
            terminating: meta.deletion_timestamp.is_some(),
            created: meta
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(0),
            workload: workload_of(pod, name, &labels),
            labels,
        })
    }

    /// The rule comment and log identity: `tproxy:<namespace>/<name>/<uid>`.
    pub fn tag(&self) -> String {
        format!("tproxy:{}/{}/{}", self.namespace, self.name, self.uid)
    }
}

/// All pod IPs, de-duplicated, in API order (`status.podIPs`, else `status.podIP`).
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut raw: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    if raw.is_empty()
        && let Some(ip) = status.pod_ip.as_deref()
    {
        raw.push(ip);
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for s in raw {
        match s.trim().parse::<IpAddr>() {
            Ok(ip) if !out.contains(&ip) => out.push(ip),
            Ok(_) => {}
            Err(_) => tracing::warn!(ip = s, "ignoring unparsable pod IP"),
        }
    }
    out
}

/// Best-effort top-level owner, from the controller owner reference:
///
/// * ReplicaSet `<d>-<h>` where `h` is the pod's `pod-template-hash` label → Deployment `d`;
/// * Job `<c>-<digits>` → CronJob `c` (the CronJob controller's naming scheme);
/// * any other owner → that owner's kind and name;
/// * no owner → kind `Pod`, the pod's own name.
pub fn workload_of(pod: &Pod, pod_name: &str, labels: &BTreeMap<String, String>) -> Workload {
    let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first());
    let Some(owner) = owner else {
        return Workload {
            kind: "Pod".to_owned(),
            name: pod_name.to_owned(),
        };
    };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            if let Some(hash) = labels.get(POD_TEMPLATE_HASH)
                && let Some(deploy) = owner.name.strip_suffix(hash.as_str())
                && let Some(deploy) = deploy.strip_suffix('-')
                && !deploy.is_empty()
            {
                return Workload {
                    kind: "Deployment".to_owned(),
                    name: deploy.to_owned(),
                };
            }
        }
        "Job" => {
            if let Some((cron, suffix)) = owner.name.rsplit_once('-')
                && !cron.is_empty()
                && !suffix.is_empty()
                && suffix.bytes().all(|b| b.is_ascii_digit())
            {
                return Workload {
                    kind: "CronJob".to_owned(),
                    name: cron.to_owned(),
                };
            }
        }
        _ => {}
    }
    Workload {
        kind: owner.kind.clone(),
        name: owner.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": "shop", "name": "web-7d9f8c6b5-x2x9q", "uid": "u-1",
                "labels": {"app": "web", "pod-template-hash": "7d9f8c6b5"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-7d9f8c6b5", "uid": "rs-1", "controller": true}]},
            "spec": {"containers": [], "nodeName": "node-a"},
            "status": {"phase": "Running", "podIP": "198.18.1.2",
                "podIPs": [{"ip": "198.18.1.2"}, {"ip": "fd00:198:18:1::2"}]}
        })
    }

    #[test]
    fn deployment_pod_with_both_families() {
        let info = PodInfo::from_pod(&pod(base())).unwrap();
        assert_eq!(
            info.workload,
            Workload {
                kind: "Deployment".into(),
                name: "web".into()
            }
        );
        assert_eq!(info.ips.len(), 2);
        assert!(info.ips[1].is_ipv6());
        assert!(!info.opted_in);
        assert_eq!(info.tag(), "tproxy:shop/web-7d9f8c6b5-x2x9q/u-1");
    }

    #[test]
    fn opt_in_by_annotation_or_label_exact_value() {
        let mut v = base();
        v["metadata"]["annotations"] = json!({OPT_IN_KEY: "true"});
        assert!(PodInfo::from_pod(&pod(v.clone())).unwrap().opted_in);
        v["metadata"]["annotations"] = json!({OPT_IN_KEY: "false"});
        assert!(!PodInfo::from_pod(&pod(v.clone())).unwrap().opted_in);
        v["metadata"]["labels"][OPT_IN_KEY] = json!("true");
        assert!(PodInfo::from_pod(&pod(v)).unwrap().opted_in);
    }

    #[test]
    fn skips_host_network_finished_and_ipless() {
        let mut v = base();
        v["spec"]["hostNetwork"] = json!(true);
        assert_eq!(PodInfo::from_pod(&pod(v)), Err(Skip::HostNetwork));
        for phase in ["Succeeded", "Failed"] {
            let mut v = base();
            v["status"]["phase"] = json!(phase);
            assert_eq!(PodInfo::from_pod(&pod(v)), Err(Skip::Finished));
        }
        let mut v = base();
        v["status"] = json!({"phase": "Pending"});
        assert_eq!(PodInfo::from_pod(&pod(v)), Err(Skip::NoIp));
        let mut v = base();
        v["status"]["podIPs"] = json!([{"ip": "not-an-ip"}]);
        assert_eq!(PodInfo::from_pod(&pod(v)), Err(Skip::NoIp));
    }

    #[test]
    fn pending_and_terminating_pods_with_ip_are_kept() {
        let mut v = base();
        v["status"]["phase"] = json!("Pending");
        v["metadata"]["deletionTimestamp"] = json!("2026-11-21T10:00:00Z");
        let info = PodInfo::from_pod(&pod(v)).unwrap();
        assert!(info.terminating);
    }

    #[test]
    fn workload_rules() {
        let cases = [
            // (owner kind, owner name, pod-template-hash, expected kind, expected name)
            (
                "ReplicaSet",
                "web-abc12",
                Some("abc12"),
                "Deployment",
                "web",
            ),
            (
                "ReplicaSet",
                "web-abc12",
                Some("zzz"),
                "ReplicaSet",
                "web-abc12",
            ),
            ("ReplicaSet", "web-abc12", None, "ReplicaSet", "web-abc12"),
            ("Job", "backup-29123456", None, "CronJob", "backup"),
            ("Job", "migrate-db", None, "Job", "migrate-db"),
            ("StatefulSet", "db", None, "StatefulSet", "db"),
            ("DaemonSet", "agent", None, "DaemonSet", "agent"),
        ];
        for (kind, name, hash, wk, wn) in cases {
            let mut v = base();
            v["metadata"]["ownerReferences"] = json!([{"apiVersion": "x/v1", "kind": kind, "name": name, "uid": "o", "controller": true}]);
            match hash {
                Some(h) => v["metadata"]["labels"]["pod-template-hash"] = json!(h),
                None => {
                    v["metadata"]["labels"]
                        .as_object_mut()
                        .unwrap()
                        .remove("pod-template-hash");
                }
            }
            let w = PodInfo::from_pod(&pod(v)).unwrap().workload;
            assert_eq!(
                (w.kind.as_str(), w.name.as_str()),
                (wk, wn),
                "{kind} {name}"
            );
        }
        let mut v = base();
        v["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("ownerReferences");
        let w = PodInfo::from_pod(&pod(v)).unwrap().workload;
        assert_eq!(
            (w.kind.as_str(), w.name.as_str()),
            ("Pod", "web-7d9f8c6b5-x2x9q")
        );
    }
}
