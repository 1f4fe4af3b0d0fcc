//! The pod directory file (schema version 1) and its atomic writer.
//!
//! See `docs/pod-directory.md` for the schema and who reads it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pod::{PodInfo, Workload};

/// Schema version written to `version`.
pub const SCHEMA_VERSION: u32 = 1;

/// Default labels copied into directory entries.
pub const DEFAULT_LABELS: &str = "app,app.kubernetes.io/name,app.kubernetes.io/instance,app.kubernetes.io/component,app.kubernetes.io/version,k8s-app,version";

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodDirectory {
    /// Always [`SCHEMA_VERSION`].
    pub version: u32,
    /// RFC 3339 UTC time the content was generated.
    pub generated_at: String,
    /// The node these pods run on (`NODE_NAME`).
    pub node: String,
    /// Pod IP (canonical text, v4 and v6) → pod.
    pub pods: BTreeMap<String, DirectoryEntry>,
}

/// One pod in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryEntry {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod uid.
    pub uid: String,
    /// Top-level owner.
    pub workload: Workload,
    /// The selected labels the pod has (absent ones are left out).
    pub labels: BTreeMap<String, String>,
}

impl DirectoryEntry {
    /// Entry for `pod`, keeping only `selected` labels.
    pub fn new(pod: &PodInfo, selected: &[String]) -> DirectoryEntry {
        DirectoryEntry {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            workload: pod.workload.clone(),
            labels: pod
                .labels
                .iter()
                .filter(|(k, _)| selected.iter().any(|s| s == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// Failure writing the directory file.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// A file system step failed; the message names the step and the path.
    #[error(
        "pod directory: {step} {path}: {source} (check that the directory exists and is writable)"
    )]
    Io {
        /// What was being done.
        step: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Serialising failed (not expected for this schema).
    #[error("pod directory: encoding JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Current time as RFC 3339 UTC (seconds precision).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0);
    match now {
        Ok(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z")),
        Err(_) => String::from("1970-01-01T00:00:00Z"),
    }
}

/// Writes `dir` to `path` atomically: a temporary file beside it, fsync, rename
/// over `path`, fsync of the parent directory. Readers see the old or the new
/// file, never a partial one. Creates the parent directory when missing.
pub fn write_atomic(path: &Path, dir: &PodDirectory) -> Result<(), DirectoryError> {
    let io = |step: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| DirectoryError::Io {
            step,
            path: p,
            source,
        }
    };
    let mut bytes = serde_json::to_vec_pretty(dir)?;
    bytes.push(b'\n');
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io("creating directory", &parent))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pods.json".to_owned());
    let tmp = parent.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
        File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", &parent))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_round_trip_and_exact_shape() {
        let mut pods = BTreeMap::new();
        pods.insert(
            "198.18.1.2".to_string(),
            DirectoryEntry {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: "u1".into(),
                workload: Workload {
                    kind: "Deployment".into(),
                    name: "web".into(),
                },
                labels: BTreeMap::from([("app".into(), "web".into())]),
            },
        );
        let d = PodDirectory {
            version: SCHEMA_VERSION,
            generated_at: "2026-11-21T10:00:00Z".into(),
            node: "node-a".into(),
            pods,
        };
        let compact = serde_json::to_string(&d).unwrap();
        assert_eq!(
            compact,
            r#"{"version":1,"generated_at":"2026-11-21T10:00:00Z","node":"node-a","pods":{"198.18.1.2":{"namespace":"shop","name":"web-1","uid":"u1","workload":{"kind":"Deployment","name":"web"},"labels":{"app":"web"}}}}"#
        );
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub/pods.json");
        write_atomic(&path, &d).unwrap();
        let back: PodDirectory = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, d);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["pods.json"]);
    }

    #[test]
    fn rfc3339_now() {
        let s = now_rfc3339();
        assert!(s.ends_with('Z') && s.len() == 20, "{s}");
    }

    #[test]
    fn unwritable_path_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let d = PodDirectory {
            version: 1,
            generated_at: now_rfc3339(),
            node: "n".into(),
            pods: BTreeMap::new(),
        };
        let err = write_atomic(&blocker.join("pods.json"), &d).unwrap_err();
        assert!(err.to_string().contains("file"), "{err}");
    }
}
