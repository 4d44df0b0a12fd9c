//! The state every task of a run shares: its clock, stop flags and counters.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// The end offset of each partition that consumers must reach: `None`
/// until known (consume-only: at the start; else once producers stop).
pub(crate) type Targets = Option<Arc<HashMap<u32, u64>>>;

/// State shared by every task.
pub(crate) struct Shared {
    pub(crate) start: Instant,
    pub(crate) warmup_end: Instant,
    /// Unix time of `start`, ns; payload timestamps are this plus elapsed
    /// monotonic time, so they never go backwards within the run.
    pub(crate) base_ns: u64,
    pub(crate) warmup_end_ns: u64,
    pub(crate) run_id: u64,
    pub(crate) stop_producing: AtomicBool,
    pub(crate) stop_consuming: AtomicBool,
    pub(crate) draining: AtomicBool,
    pub(crate) acked_msgs: AtomicU64,
    pub(crate) acked_bytes: AtomicU64,
    pub(crate) failed_msgs: AtomicU64,
    /// Produce requests sent again after a retriable failure (the
    /// per-message producer's retried batches and the batch producers').
    pub(crate) retried_batches: AtomicU64,
    pub(crate) consumed_msgs: AtomicU64,
    pub(crate) consumed_bytes: AtomicU64,
    pub(crate) own_msgs: AtomicU64,
    pub(crate) own_bytes: AtomicU64,
    pub(crate) errors: Mutex<Vec<String>>,
    /// Group mode: every partition's committed offset reached its target.
    pub(crate) group_done: AtomicBool,
    /// Group generations the consumers have fetched in.
    pub(crate) generations: Mutex<BTreeSet<i32>>,
    /// Group mode: commits of polled records that succeeded.
    pub(crate) commits: AtomicU64,
    /// Group mode: commits refused (rebalance in progress or fenced).
    pub(crate) commits_refused: AtomicU64,
    /// Group mode: how long each successful commit took (µs).
    pub(crate) commit_latency: Mutex<hdrhistogram::Histogram<u64>>,
    /// `--churn-interval`: the turn number; consumer `turn % consumers` leaves and rejoins.
    pub(crate) churn_turn: AtomicU64,
    /// Forced leaves done.
    pub(crate) churns: AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// A run starting now (`start`, `base_ns` ns since the Unix epoch), its
    /// first `warmup` left out of the figures; every flag down, every counter 0.
    pub(crate) fn new(start: Instant, base_ns: u64, warmup: Duration, run_id: u64) -> Shared {
        Shared {
            start,
            warmup_end: start + warmup,
            base_ns,
            warmup_end_ns: base_ns + warmup.as_nanos() as u64,
            run_id,
            stop_producing: AtomicBool::new(false),
            stop_consuming: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            acked_msgs: AtomicU64::new(0),
            acked_bytes: AtomicU64::new(0),
            failed_msgs: AtomicU64::new(0),
            retried_batches: AtomicU64::new(0),
            consumed_msgs: AtomicU64::new(0),
            consumed_bytes: AtomicU64::new(0),
            own_msgs: AtomicU64::new(0),
            own_bytes: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            group_done: AtomicBool::new(false),
            generations: Mutex::new(BTreeSet::new()),
            commits: AtomicU64::new(0),
            commits_refused: AtomicU64::new(0),
            commit_latency: Mutex::new(crate::stats::new_histogram()),
            churn_turn: AtomicU64::new(0),
            churns: AtomicU64::new(0),
        }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.base_ns + self.start.elapsed().as_nanos() as u64
    }
    pub(crate) fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
    /// Keeps the first occurrence of each kind of error (up to 20).
    pub(crate) fn note(&self, e: String) {
        let mut v = lock(&self.errors);
        let kind: String = e.chars().take(60).collect();
        if v.len() < 20 && !v.iter().any(|x| x.starts_with(&kind)) {
            v.push(e);
        }
    }
    pub(crate) fn saw_generation(&self, generation: i32) {
        lock(&self.generations).insert(generation);
    }
    pub(crate) fn newest_generation(&self) -> Option<i32> {
        lock(&self.generations).last().copied()
    }
    pub(crate) fn snapshot(&self) -> Snap {
        Snap {
            at: self.secs(),
            acked_msgs: self.acked_msgs.load(Relaxed),
            acked_bytes: self.acked_bytes.load(Relaxed),
            consumed_msgs: self.consumed_msgs.load(Relaxed),
            consumed_bytes: self.consumed_bytes.load(Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Snap {
    pub(crate) at: f64,
    pub(crate) acked_msgs: u64,
    pub(crate) acked_bytes: u64,
    pub(crate) consumed_msgs: u64,
    pub(crate) consumed_bytes: u64,
}
