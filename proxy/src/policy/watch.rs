//! Hot-reloaded snapshots of a file-backed value, shared by the policy and
//! the pod directory.
//!
//! [`Live<T>`] holds the current `Arc<T>` and a generation counter. Workers
//! keep a [`Snapshot<T>`]: one atomic load per use, and a short lock only when
//! the generation moved. [`spawn`] starts a thread that polls a path every
//! [`POLL_INTERVAL`] and swaps in a new value when the file's content changed
//! and the loader accepts it. The fingerprint covers the canonicalised target
//! (so a Kubernetes ConfigMap's `..data` symlink swap is seen), inode, mtime,
//! size and a content hash; a reload happens only when the content differs.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// How often the watcher looks at the file.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

struct Shared<T> {
    current: Mutex<Arc<T>>,
    generation: AtomicU64,
    reload_ok: AtomicU64,
    reload_error: AtomicU64,
}

/// The current value of a hot-reloaded file plus its generation. Cheap to
/// clone (one `Arc`).
pub struct Live<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Live<T> {
    /// Start at generation 1 with `initial`.
    pub fn new(initial: T) -> Self {
        Self {
            shared: Arc::new(Shared {
                current: Mutex::new(Arc::new(initial)),
                generation: AtomicU64::new(1),
                reload_ok: AtomicU64::new(0),
                reload_error: AtomicU64::new(0),
            }),
        }
    }

    /// The current value (takes the lock; use a [`Snapshot`] on hot paths).
    pub fn load(&self) -> Arc<T> {
        Arc::clone(
            &self
                .shared
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Replace the value and bump the generation.
    pub fn store(&self, value: T) {
        let mut cur = self
            .shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *cur = Arc::new(value);
        // Bumped under the lock: a reader that sees the new generation and
        // then locks gets the new value.
        self.shared.generation.fetch_add(1, Ordering::Release);
    }

    /// Generation of the current value (1 = initial, +1 per swap).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Successful reloads by the watcher (counter for metrics).
    pub fn reload_ok(&self) -> &AtomicU64 {
        &self.shared.reload_ok
    }

    /// Rejected reloads (file unreadable or invalid) (counter for metrics).
    pub fn reload_error(&self) -> &AtomicU64 {
        &self.shared.reload_error
    }

    /// A per-worker cached handle.
    pub fn snapshot(&self) -> Snapshot<T> {
        let cur = self
            .shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Snapshot {
            generation: self.shared.generation.load(Ordering::Acquire),
            cached: Arc::clone(&cur),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> std::fmt::Debug for Snapshot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A worker's cached view of a [`Live`] value.
pub struct Snapshot<T> {
    shared: Arc<Shared<T>>,
    cached: Arc<T>,
    generation: u64,
}

impl<T> Snapshot<T> {
    /// The current value: one atomic load; refreshes the cache (one lock)
    /// only when a reload happened since the last call.
    pub fn get(&mut self) -> &Arc<T> {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.generation {
            let cur = self
                .shared
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.cached = Arc::clone(&cur);
            // `g` was read before the clone: what we cached is at least that
            // new. (Re-reading here could skip a reload that landed between
            // the clone and the read, leaving this worker stale.)
            self.generation = g;
        }
        &self.cached
    }

    /// Generation of the cached value.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// What identifies one version of the watched file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    target: PathBuf,
    inode: u64,
    mtime: Option<SystemTime>,
    size: u64,
    hash: u64,
}

/// Read the file behind `path` (following symlinks). `Ok(None)` when it does
/// not exist.
pub fn read_versioned(path: &Path) -> io::Result<Option<(Fingerprint, Vec<u8>)>> {
    let target = match std::fs::canonicalize(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bytes = match std::fs::read(&target) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = std::fs::metadata(&target)?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    let fp = Fingerprint {
        target,
        inode: meta.ino(),
        mtime: meta.modified().ok(),
        size: bytes.len() as u64,
        hash: h.finish(),
    };
    Ok(Some((fp, bytes)))
}

/// The loader's function type.
pub type LoadFn<T, E> = dyn Fn(Option<&[u8]>) -> Result<T, E> + Send;

/// Turns the file's bytes (`None`: the file is missing) into a value.
pub type Loader<T, E> = Box<LoadFn<T, E>>;

/// Stops and joins the watcher thread when dropped.
pub struct WatchHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Poll `path` every [`POLL_INTERVAL`] and store each new valid version into
/// `live`. `initial` is the fingerprint of the version already in `live`
/// (`None` if it came from a missing file). Invalid versions are logged once
/// each (`what` names the file's role in logs) and counted.
pub fn spawn<T, E>(
    what: &'static str,
    path: PathBuf,
    initial: Option<Fingerprint>,
    live: Live<T>,
    loader: Loader<T, E>,
) -> io::Result<WatchHandle>
where
    T: Send + Sync + 'static,
    E: std::fmt::Display + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name(format!("watch-{what}"))
        .spawn(move || watch_loop(what, &path, initial, &live, &*loader, &stop2))?;
    Ok(WatchHandle {
        stop,
        thread: Some(thread),
    })
}

/// Last version seen: present with this fingerprint, or missing.
#[derive(PartialEq)]
enum Seen {
    Missing,
    File(Fingerprint),
}

fn watch_loop<T, E: std::fmt::Display>(
    what: &'static str,
    path: &Path,
    initial: Option<Fingerprint>,
    live: &Live<T>,
    loader: &LoadFn<T, E>,
    stop: &AtomicBool,
) {
    let mut seen = initial.map_or(Seen::Missing, Seen::File);
    let mut last_read_error: Option<String> = None;
    while !stop.load(Ordering::Acquire) {
        sleep_unless_stopped(stop);
        if stop.load(Ordering::Acquire) {
            break;
        }
        let now = match read_versioned(path) {
            Ok(v) => {
                last_read_error = None;
                v
            }
            Err(e) => {
                let msg = e.to_string();
                if last_read_error.as_deref() != Some(&msg) {
                    tracing::error!(file = what, path = %path.display(), error = %msg, "cannot read watched file; keeping the current version");
                    live.reload_error().fetch_add(1, Ordering::Relaxed);
                    last_read_error = Some(msg);
                }
                continue;
            }
        };
        let (new_seen, bytes) = match now {
            None => (Seen::Missing, None),
            Some((fp, b)) => (Seen::File(fp), Some(b)),
        };
        let content_changed = match (&seen, &new_seen) {
            (Seen::File(a), Seen::File(b)) => a.hash != b.hash || a.size != b.size,
            (a, b) => a != b,
        };
        if !content_changed {
            // Metadata-only change (touch, symlink swap to identical content).
            seen = new_seen;
            continue;
        }
        seen = new_seen;
        match loader(bytes.as_deref()) {
            Ok(v) => {
                live.store(v);
                live.reload_ok().fetch_add(1, Ordering::Relaxed);
                tracing::info!(file = what, path = %path.display(), generation = live.generation(), "reloaded");
            }
            Err(e) => {
                live.reload_error().fetch_add(1, Ordering::Relaxed);
                tracing::error!(file = what, path = %path.display(), error = %e, "rejected new version; keeping the current one");
            }
        }
    }
}

fn sleep_unless_stopped(stop: &AtomicBool) {
    let step = Duration::from_millis(50);
    let mut slept = Duration::ZERO;
    while slept < POLL_INTERVAL && !stop.load(Ordering::Acquire) {
        std::thread::sleep(step);
        slept += step;
    }
}
