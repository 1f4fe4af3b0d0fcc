//! The mutation: AdmissionRequest + Config → JSON Patch (or a reason not to).
//!
//! Patches are built as explicit `add` operations at the granularity that is
//! valid on the object as sent: a whole array or map where it does not exist
//! yet, single members where it does. Every patch is applied to a copy of the
//! object before it is returned, so a malformed patch never reaches the API
//! server.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::config::Config;
use crate::review::{AdmissionRequest, GroupVersionKind, Operation};

/// Opt-in annotation (and the label set on injected pod templates).
pub const OPT_IN: &str = "initializer.kubernetes.io/tproxy";
/// Marker annotation recording what was injected (`<version>-<config hash>`).
pub const MARKER: &str = "tproxy.io/injected";

/// Object kinds the webhook handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// core/v1 Pod (CREATE only).
    Pod,
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// apps/v1 ReplicaSet.
    ReplicaSet,
    /// batch/v1 Job (template immutable after CREATE).
    Job,
    /// batch/v1 CronJob.
    CronJob,
}

impl WorkloadKind {
    /// Recognises a group/version/kind.
    pub fn from_gvk(gvk: &GroupVersionKind) -> Option<WorkloadKind> {
        use WorkloadKind::*;
        Some(
            match (gvk.group.as_str(), gvk.version.as_str(), gvk.kind.as_str()) {
                ("", "v1", "Pod") => Pod,
                ("apps", "v1", "Deployment") => Deployment,
                ("apps", "v1", "StatefulSet") => StatefulSet,
                ("apps", "v1", "DaemonSet") => DaemonSet,
                ("apps", "v1", "ReplicaSet") => ReplicaSet,
                ("batch", "v1", "Job") => Job,
                ("batch", "v1", "CronJob") => CronJob,
                _ => return None,
            },
        )
    }

    /// Kind name (metric label).
    pub fn as_str(self) -> &'static str {
        use WorkloadKind::*;
        match self {
            Pod => "Pod",
            Deployment => "Deployment",
            StatefulSet => "StatefulSet",
            DaemonSet => "DaemonSet",
            ReplicaSet => "ReplicaSet",
            Job => "Job",
            CronJob => "CronJob",
        }
    }

    /// JSON pointer of the pod (template) inside the object.
    fn pod_pointer(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "",
            WorkloadKind::CronJob => "/spec/jobTemplate/spec/template",
            _ => "/spec/template",
        }
    }
}

/// Why an object is let through unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// No `initializer.kubernetes.io/tproxy: "true"` annotation.
    NotOptedIn,
    /// Marker annotation or our init container already present.
    AlreadyInjected,
    /// Namespace is in the excluded set.
    ExcludedNamespace(String),
    /// `hostNetwork: true`: the pod's traffic is the node's.
    HostNetwork,
    /// A Pod UPDATE: containers of an existing pod cannot change.
    PodUpdate,
    /// A Job UPDATE: a Job's pod template is immutable.
    JobUpdate,
    /// DELETE / CONNECT: nothing to mutate.
    Operation,
}

impl Skip {
    /// Short reason (metric label, log field, audit annotation).
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::NotOptedIn => "not_opted_in",
            Skip::AlreadyInjected => "already_injected",
            Skip::ExcludedNamespace(_) => "excluded_namespace",
            Skip::HostNetwork => "host_network",
            Skip::PodUpdate => "pod_update",
            Skip::JobUpdate => "job_template_immutable",
            Skip::Operation => "operation",
        }
    }

    /// Warning for the client when the object asked for injection but did
    /// not get it.
    pub fn warning(&self) -> Option<String> {
        let why = match self {
            Skip::ExcludedNamespace(ns) => {
                format!("namespace {ns} is excluded from tproxy injection")
            }
            Skip::HostNetwork => {
                "hostNetwork pods use the node's network and cannot be intercepted".to_owned()
            }
            Skip::PodUpdate => {
                "an existing pod cannot get init containers; recreate it or annotate its controller's pod template".to_owned()
            }
            Skip::JobUpdate => {
                "a Job's pod template is immutable; the annotation takes effect when a Job is created".to_owned()
            }
            _ => return None,
        };
        Some(format!("tproxy-initializer: not injected: {why}"))
    }
}

/// The webhook's answer for one object.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Apply this patch.
    Patch {
        /// The JSON Patch (already checked to apply to the object).
        patch: json_patch::Patch,
        /// The serialised patch document (before base64).
        json: Vec<u8>,
    },
    /// Leave the object alone.
    Skip(Skip),
}

/// Objects the webhook cannot mutate.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The kind is not one of the handled ones.
    #[error(
        "unknown object kind {0}: this webhook handles v1 Pod, apps/v1 Deployment, StatefulSet, DaemonSet, ReplicaSet and batch/v1 Job, CronJob"
    )]
    UnknownKind(GroupVersionKind),
    /// The object lacks a field the kind requires.
    #[error("{kind} object has no {field} object")]
    Shape {
        /// Kind.
        kind: &'static str,
        /// Missing JSON pointer.
        field: String,
    },
    /// The generated patch did not apply (a bug): nothing is patched.
    #[error("internal error: generated patch does not apply: {0}")]
    Patch(String),
}

/// Escapes one JSON Pointer reference token (RFC 6901: `~` → `~0`, `/` → `~1`).
pub fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn annotation<'a>(meta: Option<&'a Value>, key: &str) -> Option<&'a str> {
    meta?.get("annotations")?.get(key)?.as_str()
}

fn is_true(v: &str) -> bool {
    v.trim().eq_ignore_ascii_case("true")
}

/// Decides what to do with a request about a handled kind.
pub fn decide(cfg: &Config, marker: &str, req: &AdmissionRequest) -> Result<Decision, InjectError> {
    let kind = WorkloadKind::from_gvk(&req.kind)
        .ok_or_else(|| InjectError::UnknownKind(req.kind.clone()))?;
    let Some(obj) = req.object.as_ref() else {
        return Ok(Decision::Skip(Skip::Operation));
    };
    if matches!(req.operation, Operation::Delete | Operation::Connect) {
        return Ok(Decision::Skip(Skip::Operation));
    }
    let ptr = kind.pod_pointer();
    let pod = obj
        .pointer(ptr)
        .filter(|p| p.is_object())
        .ok_or_else(|| InjectError::Shape {
            kind: kind.as_str(),
            field: ptr.to_owned(),
        })?;
    let spec = pod
        .get("spec")
        .filter(|s| s.is_object())
        .ok_or_else(|| InjectError::Shape {
            kind: kind.as_str(),
            field: format!("{ptr}/spec"),
        })?;

    // The pod template's own annotation wins over the object's.
    let opt_in = annotation(pod.get("metadata"), OPT_IN)
        .or_else(|| annotation(obj.get("metadata"), OPT_IN))
        .is_some_and(is_true);
    if !opt_in {
        return Ok(Decision::Skip(Skip::NotOptedIn));
    }
    let namespace = if req.namespace.is_empty() {
        obj.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
    } else {
        req.namespace.as_str()
    };
    if cfg.excluded_namespaces.contains(namespace) {
        return Ok(Decision::Skip(Skip::ExcludedNamespace(
            namespace.to_owned(),
        )));
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Decision::Skip(Skip::HostNetwork));
    }
    let ours: BTreeSet<&str> = cfg.init_container_names().collect();
    let has_ours = names(spec.get("initContainers"), "name")
        .iter()
        .any(|n| ours.contains(n.as_str()));
    if annotation(pod.get("metadata"), MARKER).is_some() || has_ours {
        return Ok(Decision::Skip(Skip::AlreadyInjected));
    }
    match (kind, req.operation) {
        (WorkloadKind::Pod, Operation::Update) => return Ok(Decision::Skip(Skip::PodUpdate)),
        (WorkloadKind::Job, Operation::Update) => return Ok(Decision::Skip(Skip::JobUpdate)),
        _ => {}
    }

    let ops = build_ops(cfg, marker, pod, spec, ptr);
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops)).map_err(|e| InjectError::Patch(e.to_string()))?;
    let mut check = obj.clone();
    json_patch::patch(&mut check, &patch).map_err(|e| InjectError::Patch(e.to_string()))?;
    let json = serde_json::to_vec(&patch).map_err(|e| InjectError::Patch(e.to_string()))?;
    Ok(Decision::Patch { patch, json })
}

/// Values of `field` in an array of objects.
fn names(list: Option<&Value>, field: &str) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| i.get(field).and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn add(ops: &mut Vec<Value>, path: String, value: Value) {
    ops.push(json!({"op": "add", "path": path, "value": value}));
}

/// Appends `items` not yet present (by `key`) to the array at `path`, adding
/// the whole array when it does not exist.
fn append_missing(
    ops: &mut Vec<Value>,
    path: &str,
    existing: Option<&Value>,
    items: &[Value],
    key: &str,
) {
    let have: BTreeSet<String> = names(existing, key).into_iter().collect();
    let missing: Vec<Value> = items
        .iter()
        .filter(|i| {
            i.get(key)
                .and_then(Value::as_str)
                .is_none_or(|k| !have.contains(k))
        })
        .cloned()
        .collect();
    if missing.is_empty() {
        return;
    }
    if existing.is_some_and(Value::is_array) {
        for item in missing {
            add(ops, format!("{path}/-"), item);
        }
    } else {
        add(ops, path.to_owned(), Value::Array(missing));
    }
}

/// Sets string members of the map at `path`, adding the whole map when it
/// does not exist.
fn set_members(
    ops: &mut Vec<Value>,
    path: &str,
    existing: Option<&Value>,
    members: &[(&str, &str)],
) {
    if existing.is_some_and(Value::is_object) {
        for (k, v) in members {
            if existing.and_then(|m| m.get(*k)).and_then(Value::as_str) != Some(*v) {
                add(ops, format!("{path}/{}", escape_token(k)), json!(v));
            }
        }
    } else {
        let map: Map<String, Value> = members
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        add(ops, path.to_owned(), Value::Object(map));
    }
}

fn build_ops(cfg: &Config, marker: &str, pod: &Value, spec: &Value, base: &str) -> Vec<Value> {
    let mut ops = Vec::new();
    // Existing containers first: their indices shift once ours are inserted.
    for field in ["containers", "initContainers"] {
        let Some(list) = spec.get(field).and_then(Value::as_array) else {
            continue;
        };
        for (i, c) in list.iter().enumerate() {
            let cpath = format!("{base}/spec/{field}/{i}");
            append_missing(
                &mut ops,
                &format!("{cpath}/env"),
                c.get("env"),
                &cfg.env,
                "name",
            );
            append_missing(
                &mut ops,
                &format!("{cpath}/volumeMounts"),
                c.get("volumeMounts"),
                &cfg.volume_mounts,
                "mountPath",
            );
        }
    }
    append_missing(
        &mut ops,
        &format!("{base}/spec/volumes"),
        spec.get("volumes"),
        &cfg.volumes,
        "name",
    );
    let inits = spec.get("initContainers").filter(|v| v.is_array());
    if inits.is_some() {
        for (j, c) in cfg.init_containers.iter().enumerate() {
            add(
                &mut ops,
                format!("{base}/spec/initContainers/{j}"),
                c.clone(),
            );
        }
    } else {
        add(
            &mut ops,
            format!("{base}/spec/initContainers"),
            Value::Array(cfg.init_containers.clone()),
        );
    }
    let annotations = [(OPT_IN, "true"), (MARKER, marker)];
    let labels = [(OPT_IN, "true")];
    match pod.get("metadata").filter(|m| m.is_object()) {
        Some(meta) => {
            set_members(
                &mut ops,
                &format!("{base}/metadata/annotations"),
                meta.get("annotations"),
                &annotations,
            );
            set_members(
                &mut ops,
                &format!("{base}/metadata/labels"),
                meta.get("labels"),
                &labels,
            );
        }
        None => {
            let to_map = |m: &[(&str, &str)]| -> Map<String, Value> {
                m.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect()
            };
            add(
                &mut ops,
                format!("{base}/metadata"),
                json!({"annotations": to_map(&annotations), "labels": to_map(&labels)}),
            );
        }
    }
    ops
}

#[cfg(test)]
mod tests;
