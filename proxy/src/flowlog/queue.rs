//! The bounded queue between the workers and the flow-log writer thread, and
//! what happens when it is full ([`OnFull`]).
//!
//! A worker's push never waits in the default [`OnFull::Drop`] policy: when
//! the records not yet written reach the capacity, the record is dropped and
//! counted, and the run of drops is remembered as a [`Gap`]. The next record
//! that fits is preceded in the queue by that gap, so the writer prints the
//! "records lost" line exactly where the records are missing (or, when no
//! record follows, as soon as the queue runs empty). [`OnFull::Block`] makes
//! the worker wait for room instead — until [`Queue::abandon`] (shutdown
//! deadline) releases it.
//!
//! Capacity counts every record accepted but not yet handed to the output:
//! the ones queued and the batch the writer is working on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::writer::Msg;

/// What a worker does when the flow log cannot keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Drop the record and count it (traffic never waits for the log).
    #[default]
    Drop,
    /// Wait for room: no record is lost while the output is alive, but a
    /// stuck reader stops traffic.
    Block,
}

/// Why records were lost (the `reason` label of
/// `tproxy_flowlog_records_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was full (`--flow-log-full drop`).
    QueueFull,
    /// The output failed for good (EPIPE, EIO): nothing can be written.
    OutputError,
    /// Still queued when the shutdown deadline passed.
    Shutdown,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 3] = [Self::QueueFull, Self::OutputError, Self::Shutdown];

    /// The metric label / JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::OutputError => "output_error",
            Self::Shutdown => "shutdown",
        }
    }
}

/// A run of records dropped because the queue was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Records lost.
    pub lost: u64,
    /// When the first of them was dropped.
    pub first: SystemTime,
    /// When the last of them was dropped.
    pub last: SystemTime,
}

/// Counters read by the admin server (mirrored into Prometheus at scrape).
#[derive(Debug, Default)]
pub struct Stats {
    dropped: [AtomicU64; 3],
    /// Records written to the output (handed to `write(2)` successfully).
    pub written: AtomicU64,
    /// Set once the output failed; every later record is dropped.
    pub broken: AtomicBool,
}

impl Stats {
    /// Records dropped for `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// Records dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.dropped(*r)).sum()
    }

    pub(crate) fn add_dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Msg>,
    /// Records the writer took and has not finished yet.
    in_hand: usize,
    /// Drops since the last record that fit.
    gap: Option<Gap>,
    /// The writer sleeps on `not_empty` (a push must wake it).
    writer_waiting: bool,
    /// Workers waiting on `not_full` (block policy).
    blocked: usize,
    /// No more records are accepted (shutdown deadline passed).
    abandoned: bool,
    /// The last handle is gone: the writer stops when the queue is empty.
    closed: bool,
}

/// The queue itself; shared by the [`super::FlowLog`] handles and the writer.
#[derive(Debug)]
pub struct Queue {
    state: Mutex<State>,
    not_empty: Condvar,
    not_full: Condvar,
    capacity: usize,
    on_full: OnFull,
    /// Counters.
    pub stats: Stats,
    /// Rate limit of the stderr warning about drops.
    warned: Mutex<Option<Instant>>,
}

/// How often, at most, stderr says records are being dropped.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What [`Queue::take`] handed the writer.
pub(crate) enum Taken {
    /// Records to write (the batch replaced the writer's empty deque).
    Batch,
    /// Closed and drained: the writer should stop.
    Closed,
}

impl Queue {
    /// A queue of `capacity` records (at least 1).
    pub fn new(capacity: usize, on_full: OnFull) -> Self {
        Self {
            state: Mutex::new(State::default()),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            capacity: capacity.max(1),
            on_full,
            stats: Stats::default(),
            warned: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn full(&self, st: &State) -> bool {
        st.items.len() + st.in_hand >= self.capacity
    }

    /// Queue one record, applying the [`OnFull`] policy. Never waits in
    /// `Drop` mode; in `Block` mode waits until there is room or the queue
    /// was abandoned.
    pub(crate) fn push(&self, msg: Msg) {
        if self.stats.broken.load(Ordering::Relaxed) {
            self.stats.add_dropped(DropReason::OutputError, 1);
            return;
        }
        let mut st = self.lock();
        if st.abandoned {
            drop(st);
            self.stats.add_dropped(DropReason::Shutdown, 1);
            return;
        }
        if self.full(&st) {
            match self.on_full {
                OnFull::Drop => {
                    let now = SystemTime::now();
                    let gap = st.gap.get_or_insert(Gap {
                        lost: 0,
                        first: now,
                        last: now,
                    });
                    gap.lost += 1;
                    gap.last = now;
                    drop(st);
                    self.stats.add_dropped(DropReason::QueueFull, 1);
                    self.warn_dropping();
                    return;
                }
                OnFull::Block => {
                    st.blocked += 1;
                    while self.full(&st) && !st.abandoned {
                        st = self
                            .not_full
                            .wait(st)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                    st.blocked -= 1;
                    if st.abandoned {
                        drop(st);
                        self.stats.add_dropped(DropReason::Shutdown, 1);
                        return;
                    }
                }
            }
        }
        if let Some(gap) = st.gap.take() {
            // One slot over capacity at most: the marker of the gap itself.
            st.items.push_back(Msg::Gap(gap));
        }
        st.items.push_back(msg);
        self.wake_writer(st);
    }

    /// Queue a control message (flush request) regardless of capacity.
    pub(crate) fn push_control(&self, msg: Msg) {
        let mut st = self.lock();
        st.items.push_back(msg);
        self.wake_writer(st);
    }

    fn wake_writer(&self, mut st: MutexGuard<'_, State>) {
        if st.writer_waiting {
            st.writer_waiting = false;
            drop(st);
            self.not_empty.notify_one();
        }
    }

    fn warn_dropping(&self) {
        let mut last = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        tracing::warn!(
            dropped_total = self.stats.dropped(DropReason::QueueFull),
            capacity = self.capacity,
            "flow log output is not keeping up (stdout not read?); records are dropped and counted in tproxy_flowlog_records_dropped_total, the log will say how many when it drains (--flow-log-full block waits instead)"
        );
    }

    /// Hand the writer everything queued: swaps `batch` (which must be
    /// empty) with the queue, sleeping until something arrives or the queue
    /// is closed. When nothing is queued but a gap is pending (drops and no
    /// record since), the gap alone is the batch: the output drained.
    pub(crate) fn take(&self, batch: &mut VecDeque<Msg>) -> Taken {
        let mut st = self.lock();
        loop {
            if !st.items.is_empty() {
                std::mem::swap(&mut st.items, batch);
                st.in_hand += batch.iter().filter(|m| m.is_record()).count();
                return Taken::Batch;
            }
            if let Some(gap) = st.gap.take() {
                batch.push_back(Msg::Gap(gap));
                return Taken::Batch;
            }
            if st.closed {
                return Taken::Closed;
            }
            st.writer_waiting = true;
            st = self
                .not_empty
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// `n` records of the writer's batch reached the output (or were
    /// discarded and counted): they no longer take room.
    pub(crate) fn done(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut st = self.lock();
        let was_full = self.full(&st);
        st.in_hand = st.in_hand.saturating_sub(n);
        let wake = was_full && st.blocked > 0;
        drop(st);
        if wake {
            self.not_full.notify_all();
        }
    }

    /// Records accepted and not yet written (queued + the writer's batch).
    pub fn pending(&self) -> usize {
        let st = self.lock();
        st.items.iter().filter(|m| m.is_record()).count() + st.in_hand
    }

    /// Stop accepting records and release blocked workers (shutdown
    /// deadline). Returns how many records were still pending; they are
    /// counted as dropped for [`DropReason::Shutdown`].
    pub(crate) fn abandon(&self) -> u64 {
        let mut st = self.lock();
        st.abandoned = true;
        let pending = st.items.iter().filter(|m| m.is_record()).count() + st.in_hand;
        st.items.retain(|m| !m.is_record());
        st.in_hand = 0;
        drop(st);
        self.not_full.notify_all();
        let pending = pending as u64;
        self.stats.add_dropped(DropReason::Shutdown, pending);
        pending
    }

    /// Whether [`Queue::abandon`] was called.
    pub(crate) fn abandoned(&self) -> bool {
        self.lock().abandoned
    }

    /// The last handle went away: the writer stops once the queue is empty.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        drop(st);
        self.not_empty.notify_all();
    }
}
