//! The current policy, reloaded from its file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::watch::{self, Live, WatchHandle};
use super::{FailOpen, Policy, PolicyError};

/// The current [`Policy`] plus generation, reload counters and the
/// fail-open tracker; with a file, a watcher thread swaps in valid new
/// versions (dropping the `LivePolicy` stops it).
pub struct LivePolicy {
    live: Live<Policy>,
    fail_open: Arc<FailOpen>,
    path: Option<PathBuf>,
    _watch: Option<WatchHandle>,
}

impl std::fmt::Debug for LivePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivePolicy")
            .field("path", &self.path)
            .field("generation", &self.live.generation())
            .finish_non_exhaustive()
    }
}

impl LivePolicy {
    /// Load `path` (it must exist and be valid) and watch it.
    pub fn watch(path: &Path) -> Result<Self, PolicyError> {
        let read_err = |source| PolicyError::Read {
            path: path.to_owned(),
            source,
        };
        let (fp, bytes) = watch::read_versioned(path)
            .map_err(read_err)?
            .ok_or_else(|| PolicyError::Missing(path.to_owned()))?;
        let policy = Policy::from_bytes(&bytes)?;
        let fail_open = Arc::new(FailOpen::new(policy.fail_open()));
        let live = Live::new(policy);
        let fo = Arc::clone(&fail_open);
        let shown = path.to_owned();
        let loader: watch::Loader<Policy, PolicyError> = Box::new(move |bytes| {
            let p = match bytes {
                Some(b) => Policy::from_bytes(b)?,
                None => return Err(PolicyError::Missing(shown.clone())),
            };
            fo.configure(p.fail_open());
            Ok(p)
        });
        let handle = watch::spawn("rules", path.to_owned(), Some(fp), live.clone(), loader)
            .map_err(read_err)?;
        Ok(Self {
            live,
            fail_open,
            path: Some(path.to_owned()),
            _watch: Some(handle),
        })
    }

    /// A fixed policy (no file, never reloaded).
    pub fn fixed(policy: Policy) -> Self {
        let fail_open = Arc::new(FailOpen::new(policy.fail_open()));
        Self {
            live: Live::new(policy),
            fail_open,
            path: None,
            _watch: None,
        }
    }

    /// The fail-open tracker (configured from the current policy).
    pub fn fail_open(&self) -> &Arc<FailOpen> {
        &self.fail_open
    }
}

/// `snapshot()`, `load()`, `generation()`, `reload_ok()`, `reload_error()`
/// come from the shared [`Live`] value.
impl std::ops::Deref for LivePolicy {
    type Target = Live<Policy>;

    fn deref(&self) -> &Self::Target {
        &self.live
    }
}
