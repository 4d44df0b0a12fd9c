//! One partition of the internal offsets topic, as its leader's shard sees
//! it: the home of every group that hashes to it. Group state is written
//! to it as records through the partition's own produce path (acks=all: on
//! a cluster, replicated to the ISR before a commit is answered), one write
//! at a time, and read back from its log when this node becomes its
//! leader (until then requests get COORDINATOR_LOAD_IN_PROGRESS).

use super::store::{self, StoredGroups};
use crate::error::{OpError, OpResult};
use crate::partition::Partition;
use levee_core::LocalEvent;
use levee_engine::batch::{build_batch, records, split_batches, Record};
use levee_schemas::proto::ErrorCode;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// How long a group-state write may wait for its replication.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A snapshot is written once this many bytes (or twice the last
/// snapshot's size, if more) were written since the last one.
pub const SNAPSHOT_MIN_BYTES: u64 = 1 << 20;
/// Records per snapshot batch, by size.
const SNAPSHOT_BATCH_BYTES: usize = 256 << 10;

pub struct Home {
    /// The offsets-topic partition, and how many the topic has.
    pub index: u32,
    pub partitions: u32,
    pub part: Rc<Partition>,
    /// The leader epoch this node leads it in (0 on a single node).
    pub epoch: u64,
    loaded: Cell<bool>,
    pub loaded_event: LocalEvent,
    /// One write at a time: a snapshot then sees every earlier write applied.
    write: glommio::sync::Semaphore,
    since_snapshot: Cell<u64>,
    last_snapshot: Cell<u64>,
    pub gone: Cell<bool>,
    /// Commits waiting for the write turn: whoever takes it writes all of
    /// them as one batch (one replication round trip for many commits).
    queue: RefCell<Vec<Queued>>,
}

/// A commit waiting to be written: its records, what to do once they are
/// stored (applied by the writer, before the turn is released, so a
/// snapshot taken under the turn sees it), and whom to tell.
struct Queued {
    recs: Vec<Record>,
    apply: Box<dyn FnOnce()>,
    done: futures_channel::oneshot::Sender<OpResult<()>>,
}

/// Most bytes of keys and values written as one batch of queued commits.
const COALESCE_BYTES: usize = 1 << 20;

fn not_coordinator(index: u32) -> OpError {
    OpError::new(
        ErrorCode::NotLeader,
        format!(
            "this node no longer leads partition {index} of {}, so it does not coordinate its groups; find the coordinator again",
            levee_core::OFFSETS_TOPIC
        ),
    )
}

impl Home {
    pub fn new(index: u32, partitions: u32, part: Rc<Partition>, epoch: u64) -> Home {
        Home {
            index,
            partitions,
            part,
            epoch,
            loaded: Cell::new(false),
            loaded_event: LocalEvent::default(),
            write: glommio::sync::Semaphore::new(1),
            since_snapshot: Cell::new(0),
            last_snapshot: Cell::new(0),
            gone: Cell::new(false),
            queue: RefCell::new(Vec::new()),
        }
    }

    /// Whether this node still leads the partition in the epoch it loaded
    /// it in, and has loaded it.
    pub fn check(&self) -> OpResult<()> {
        let current = {
            let r = self.part.repl.borrow();
            (r.epoch, r.role)
        };
        if self.gone.get()
            || self.part.check_leader().is_err()
            || (self.part.is_clustered() && current.0 != self.epoch)
        {
            return Err(not_coordinator(self.index));
        }
        if !self.loaded.get() {
            return Err(OpError::new(
                ErrorCode::CoordinatorLoadInProgress,
                format!(
                    "the coordinator is loading the groups of partition {} of {}; retry shortly",
                    self.index,
                    levee_core::OFFSETS_TOPIC
                ),
            ));
        }
        Ok(())
    }

    pub fn set_loaded(&self) {
        self.loaded.set(true);
        self.loaded_event.notify();
    }

    /// Reads every group's state from the partition's log.
    pub async fn load(&self) -> OpResult<StoredGroups> {
        fn storage(e: impl std::fmt::Display) -> OpError {
            OpError::new(
                ErrorCode::StorageError,
                format!("loading consumer groups: {e}"),
            )
        }
        let log = &self.part.log;
        let mut groups = StoredGroups::new();
        let mut next = log.log_start_offset();
        let end = log.log_end_offset();
        let mut bytes = 0u64;
        while next < end {
            let out = log.read(next, 1 << 20, None).await.map_err(storage)?;
            if out.data.is_empty() {
                break;
            }
            bytes += out.data.len() as u64;
            for b in split_batches(&out.data) {
                let recs = records(b).map_err(storage)?;
                store::apply_group_records(&mut groups, &recs);
            }
            next = out.next_offset;
        }
        // What was read counts towards the next snapshot.
        self.since_snapshot.set(bytes);
        Ok(groups)
    }

    /// Takes the write turn (held across a write and its application).
    pub async fn write_turn(&self) -> OpResult<glommio::sync::Permit<'_>> {
        self.write
            .acquire_permit(1)
            .await
            .map_err(|_| OpError::shutting_down())
    }

    /// Writes records as one batch, acknowledged by every in-sync replica
    /// (and durable: the topic syncs every write). Call with the write
    /// turn held. Returns the batch's first offset.
    pub async fn append(&self, recs: &[Record]) -> OpResult<u64> {
        self.check()?;
        self.write(recs).await
    }

    /// [`Home::append`] while loading (leadership checked, not the load).
    pub async fn write(&self, recs: &[Record]) -> OpResult<u64> {
        if self.gone.get() {
            return Err(not_coordinator(self.index));
        }
        let batch = build_batch(recs);
        let len = batch.len();
        let produced = self
            .part
            .produce(-1, WRITE_TIMEOUT, bytes::Bytes::from(batch), len)
            .await
            .map_err(|e| match e.code {
                ErrorCode::NotLeader | ErrorCode::FencedLeaderEpoch => not_coordinator(self.index),
                _ => e,
            })?;
        self.since_snapshot
            .set(self.since_snapshot.get() + len as u64);
        Ok(produced.base)
    }

    /// Writes `recs` (a commit), together with any other commits waiting,
    /// as one batch; `apply` runs once they are stored, before the write
    /// turn is released. Concurrent commits of any group of this partition
    /// thus share one replicated write instead of queueing one by one.
    pub async fn write_commit(
        &self,
        recs: Vec<Record>,
        apply: impl FnOnce() + 'static,
    ) -> OpResult<()> {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.borrow_mut().push(Queued {
            recs,
            apply: Box::new(apply),
            done: tx,
        });
        {
            let _turn = self.write_turn().await?;
            loop {
                let batch: Vec<Queued> = {
                    let mut q = self.queue.borrow_mut();
                    let mut size = 0usize;
                    let take = q
                        .iter()
                        .take_while(|e| {
                            let first = size == 0;
                            size += e
                                .recs
                                .iter()
                                .map(|r| {
                                    r.key.as_ref().map_or(0, Vec::len)
                                        + r.value.as_ref().map_or(0, Vec::len)
                                        + 16
                                })
                                .sum::<usize>();
                            first || size <= COALESCE_BYTES
                        })
                        .count();
                    q.drain(..take).collect()
                };
                if batch.is_empty() {
                    break;
                }
                let recs: Vec<Record> = batch.iter().flat_map(|e| e.recs.iter().cloned()).collect();
                let res = self.append(&recs).await.map(|_| ());
                for e in batch {
                    if res.is_ok() {
                        (e.apply)();
                    }
                    let _ = e.done.send(res.clone());
                }
            }
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(OpError::shutting_down()),
        }
    }

    /// Whether enough was written since the last snapshot to write one.
    pub fn snapshot_due(&self) -> bool {
        self.since_snapshot.get() >= SNAPSHOT_MIN_BYTES.max(2 * self.last_snapshot.get())
    }

    /// Writes `groups` again as a snapshot (write turn held), then drops
    /// the log's segments wholly before it. Returns the bytes written.
    pub async fn snapshot(&self, groups: &StoredGroups, now_ms: i64) -> OpResult<u64> {
        let batches = store::snapshot_batches(
            groups.iter().map(|(n, g)| (n.as_str(), g)),
            now_ms,
            SNAPSHOT_BATCH_BYTES,
        );
        let before = self.since_snapshot.get();
        let mut start = None;
        for b in &batches {
            let base = self.append(b).await?;
            start.get_or_insert(base);
        }
        let written = self.since_snapshot.get() - before;
        self.since_snapshot.set(0);
        self.last_snapshot.set(written);
        // Everything before the snapshot is in it (or was deleted): every
        // replica may drop it (followers follow the leader's log start).
        let start = start.unwrap_or_else(|| self.part.log.log_end_offset());
        if let Err(e) = self.part.log.delete_before(start).await {
            tracing::warn!(partition = self.index, error = %e, "dropping group state older than a snapshot failed");
        }
        Ok(written)
    }
}
