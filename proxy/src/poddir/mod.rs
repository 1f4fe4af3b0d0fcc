//! The pod directory written by `tproxy-podwatch`: pod IP → namespace, name,
//! workload, labels (schema v1, JSON, replaced by atomic rename). See
//! `docs/pod-directory-consumer.md`.
//!
//! [`PodDirectory::from_json`] parses it; [`LiveDirectory`] keeps the current
//! one and reloads it with the same watcher as the policy
//! ([`crate::policy::watch`]). A missing file is an empty directory.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::policy::watch::{self, Live, WatchHandle};

/// The schema version this reader understands.
pub const SCHEMA_VERSION: u64 = 1;

/// Errors reading a pod directory.
#[derive(Debug, thiserror::Error)]
pub enum PodDirError {
    /// The file could not be read.
    #[error("cannot read pod directory {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid JSON of the expected shape.
    #[error("invalid pod directory: {0}")]
    Json(String),
    /// A version this proxy does not understand.
    #[error(
        "pod directory has schema version {0}; this tproxy reads version 1 (upgrade tproxy or run a matching tproxy-podwatch)"
    )]
    Version(u64),
    /// A key of `pods` is not an IP address.
    #[error("pod directory: key `{0}` of `pods` is not an IP address")]
    BadIp(String),
}

/// One pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Owning workload kind (`Deployment`, `StatefulSet`, …).
    pub workload_kind: Option<String>,
    /// Owning workload name.
    pub workload_name: Option<String>,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawVersion {
    version: u64,
}

#[derive(Deserialize)]
struct RawDir {
    #[allow(dead_code)] // Read for validation; shown nowhere yet.
    generated_at: Option<String>,
    node: Option<String>,
    #[serde(default)]
    pods: HashMap<String, RawPod>,
}

#[derive(Deserialize)]
struct RawPod {
    namespace: String,
    name: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    workload: Option<RawWorkload>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawWorkload {
    kind: String,
    name: String,
}

/// IP → pod.
#[derive(Debug, Default, Clone)]
pub struct PodDirectory {
    pods: HashMap<IpAddr, Arc<PodInfo>>,
    node: Option<String>,
}

impl PodDirectory {
    /// Empty directory (file missing).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parse schema v1 JSON. Unknown fields are ignored (additive changes
    /// keep version 1); another `version` is an error.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PodDirError> {
        let v: RawVersion =
            serde_json::from_slice(bytes).map_err(|e| PodDirError::Json(e.to_string()))?;
        if v.version != SCHEMA_VERSION {
            return Err(PodDirError::Version(v.version));
        }
        let raw: RawDir =
            serde_json::from_slice(bytes).map_err(|e| PodDirError::Json(e.to_string()))?;
        let mut pods = HashMap::with_capacity(raw.pods.len());
        for (ip, p) in raw.pods {
            let addr: IpAddr = ip.parse().map_err(|_| PodDirError::BadIp(ip.clone()))?;
            let (workload_kind, workload_name) = p
                .workload
                .map_or((None, None), |w| (Some(w.kind), Some(w.name)));
            pods.insert(
                addr.to_canonical(),
                Arc::new(PodInfo {
                    namespace: p.namespace,
                    name: p.name,
                    uid: p.uid,
                    workload_kind,
                    workload_name,
                    labels: p.labels,
                }),
            );
        }
        Ok(Self {
            pods,
            node: raw.node,
        })
    }

    /// Read a file; a missing file is an empty directory.
    pub fn load(path: &Path) -> Result<Self, PodDirError> {
        match std::fs::read(path) {
            Ok(b) => Self::from_json(&b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::empty()),
            Err(source) => Err(PodDirError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The pod with this IP (IPv4-mapped IPv6 is looked up as IPv4).
    pub fn lookup(&self, ip: IpAddr) -> Option<Arc<PodInfo>> {
        self.pods.get(&ip.to_canonical()).cloned()
    }

    /// Number of pods.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// No pods.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// The node that wrote it.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }
}

/// The current [`PodDirectory`], reloaded from its file by a watcher thread
/// (stopped when this is dropped).
pub struct LiveDirectory {
    live: Live<PodDirectory>,
    _watch: WatchHandle,
}

impl std::fmt::Debug for LiveDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveDirectory")
            .field("generation", &self.live.generation())
            .finish_non_exhaustive()
    }
}

impl LiveDirectory {
    /// Load `path` and watch it. Missing file: empty directory (logged once
    /// at info); an invalid file at start is an error.
    pub fn watch(path: &Path) -> Result<Self, PodDirError> {
        let read_err = |source| PodDirError::Read {
            path: path.to_owned(),
            source,
        };
        let (fp, dir) = match watch::read_versioned(path).map_err(read_err)? {
            Some((fp, b)) => (Some(fp), PodDirectory::from_json(&b)?),
            None => {
                tracing::info!(path = %path.display(), "pod directory missing; starting empty until tproxy-podwatch writes it");
                (None, PodDirectory::empty())
            }
        };
        let live = Live::new(dir);
        let loader: watch::Loader<PodDirectory, PodDirError> = Box::new(|bytes| match bytes {
            Some(b) => PodDirectory::from_json(b),
            None => Ok(PodDirectory::empty()),
        });
        let handle = watch::spawn("pod-directory", path.to_owned(), fp, live.clone(), loader)
            .map_err(read_err)?;
        Ok(Self {
            live,
            _watch: handle,
        })
    }
}

/// `snapshot()`, `load()`, `generation()`, `reload_ok()`, `reload_error()`
/// come from the shared [`Live`] value.
impl std::ops::Deref for LiveDirectory {
    type Target = Live<PodDirectory>;

    fn deref(&self) -> &Self::Target {
        &self.live
    }
}
