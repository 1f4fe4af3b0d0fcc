//! Worker heartbeats: the evidence behind `/healthz`.
//!
//! Each worker runs a task on its own event loop that calls [`Heartbeats::beat`]
//! every [`BEAT_INTERVAL`]. A worker whose loop is blocked — a task that
//! never yields, a synchronous call that hangs — stops beating, and once the
//! last beat is older than `--worker-stall-timeout`, [`Heartbeats::check`]
//! names it, so `/healthz` fails and a liveness probe restarts the process.
//! Only atomics are shared: the admin thread reads, each worker writes its
//! own slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a worker beats.
pub const BEAT_INTERVAL: Duration = Duration::from_millis(100);

/// A worker's slot: milliseconds since `start` of its last beat, or
/// [`EXITED`] once its thread finished.
const EXITED: u64 = u64::MAX;

/// One heartbeat slot per worker.
#[derive(Debug)]
pub struct Heartbeats {
    start: Instant,
    slots: Vec<AtomicU64>,
}

/// A worker that did not beat in time.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    /// Worker index.
    pub worker: usize,
    /// How long since its last beat (None: the worker thread exited).
    pub silent_for: Option<Duration>,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.silent_for {
            Some(d) => write!(
                f,
                "worker {}: event loop has not run for {:.1}s",
                self.worker,
                d.as_secs_f64()
            ),
            None => write!(f, "worker {}: thread exited", self.worker),
        }
    }
}

impl Heartbeats {
    /// `workers` slots, all counting as having just beaten.
    pub fn new(workers: usize) -> Self {
        Self {
            start: Instant::now(),
            slots: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(EXITED - 1)
    }

    /// Worker `id` is alive now.
    pub fn beat(&self, id: usize) {
        if let Some(slot) = self.slots.get(id) {
            slot.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Worker `id`'s thread has finished (shutdown or failure).
    pub fn exited(&self, id: usize) {
        if let Some(slot) = self.slots.get(id) {
            slot.store(EXITED, Ordering::Relaxed);
        }
    }

    /// Time since each worker's last beat (None: exited), by worker index.
    pub fn ages(&self) -> Vec<Option<Duration>> {
        let now = self.now_ms();
        self.slots
            .iter()
            .map(|s| match s.load(Ordering::Relaxed) {
                EXITED => None,
                at => Some(Duration::from_millis(now.saturating_sub(at))),
            })
            .collect()
    }

    /// Workers silent for longer than `threshold`, or exited.
    pub fn check(&self, threshold: Duration) -> Vec<Stall> {
        self.ages()
            .into_iter()
            .enumerate()
            .filter(|(_, age)| age.is_none_or(|a| a > threshold))
            .map(|(worker, silent_for)| Stall { worker, silent_for })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_worker_is_named_and_a_beating_one_is_not() {
        let h = Heartbeats::new(3);
        std::thread::sleep(Duration::from_millis(60));
        h.beat(0);
        h.exited(2);
        let stalls = h.check(Duration::from_millis(30));
        let workers: Vec<usize> = stalls.iter().map(|s| s.worker).collect();
        assert_eq!(workers, [1, 2]);
        assert!(
            stalls[0]
                .silent_for
                .is_some_and(|d| d >= Duration::from_millis(60))
        );
        assert_eq!(stalls[1].silent_for, None);
        assert!(
            stalls[0]
                .to_string()
                .starts_with("worker 1: event loop has not run for")
        );
        assert_eq!(stalls[1].to_string(), "worker 2: thread exited");
        assert!(
            h.check(Duration::from_secs(60))
                .iter()
                .all(|s| s.worker == 2)
        );
    }
}
