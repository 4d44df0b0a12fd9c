//! Transaction coordinators. A transactional id's state lives in one
//! partition of the internal topic `__transaction_state` (the same stable
//! hash as groups, [`levee_core::group_partition`]); the leader of that
//! partition coordinates it, on the shard that owns the partition
//! ([`TxnHome`]). Every change is written there (acks=all, synced) before
//! it is applied or answered, and read back when this node becomes the
//! partition's leader (until then requests get
//! COORDINATOR_LOAD_IN_PROGRESS). The state machine is `state.rs` (no
//! I/O); the record format `store.rs`; writing the markers and driving
//! timeouts is the request layer's (`handlers/txn.rs`), which can reach
//! other shards and nodes.

pub mod state;
pub mod store;

use crate::error::{OpError, OpResult};
use crate::partition::Partition;
use levee_core::{LocalEvent, TXN_TOPIC};
use levee_engine::batch::{build_batch, records, split_batches, Record};
use levee_schemas::proto::ErrorCode;
use state::{TxnError, TxnMeta, TxnState};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// How long a state write may wait for its replication.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A snapshot (every state written again, older segments dropped) is
/// written once this many bytes, or twice the last snapshot's, were
/// written since the last one.
const SNAPSHOT_MIN_BYTES: u64 = 1 << 20;
/// How long a request waits for its coordinator to take over.
const READY_WAIT: Duration = Duration::from_secs(5);

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The state machine's refusal as the broker's error.
pub fn txn_error(e: TxnError, id: &str) -> OpError {
    let (code, msg) = match e {
        TxnError::ProducerFenced { current, got } => (
            ErrorCode::ProducerFenced,
            format!("transactional id `{id}` has epoch {current}; this producer (epoch {got}) was fenced by a newer one"),
        ),
        TxnError::InvalidProducerEpoch { current, got } => (
            ErrorCode::InvalidProducerEpoch,
            format!("transactional id `{id}` has epoch {current}, not {got}"),
        ),
        TxnError::InvalidProducerIdMapping { current, got } => (
            ErrorCode::InvalidProducerIdMapping,
            format!("producer id {got} is not that of transactional id `{id}` ({current})"),
        ),
        TxnError::InvalidTxnState(s) => (
            ErrorCode::InvalidTxnState,
            format!("transactional id `{id}` is in state {}; the request does not apply to it", s.name()),
        ),
        TxnError::ConcurrentTransactions => (
            ErrorCode::ConcurrentTransactions,
            format!("the previous transaction of `{id}` is still completing; retry"),
        ),
        TxnError::TooManyPartitions { max } => (
            ErrorCode::InvalidRequest,
            format!("a transaction may write to at most {max} partitions (max_partitions_per_transaction)"),
        ),
    };
    OpError::new(code, msg)
}

fn not_coordinator(index: u32) -> OpError {
    OpError::new(
        ErrorCode::NotLeader,
        format!("this node no longer leads partition {index} of {TXN_TOPIC}, so it does not coordinate its transactions; find the coordinator again"),
    )
}

/// One partition of `__transaction_state` as its leader's shard serves it.
pub struct TxnHome {
    pub index: u32,
    pub part: Rc<Partition>,
    /// The leader epoch this node leads it in (0 on a single node); the
    /// markers' coordinator epoch.
    pub epoch: u64,
    loaded: Cell<bool>,
    pub loaded_event: LocalEvent,
    pub gone: Cell<bool>,
    /// One state change at a time (read, decide, write, apply).
    write: glommio::sync::Semaphore,
    states: RefCell<HashMap<String, TxnMeta>>,
    /// Ids whose markers are being written now, and the event that tells
    /// waiters a state changed.
    completing: RefCell<HashSet<String>>,
    pub changed: LocalEvent,
    since_snapshot: Cell<u64>,
    last_snapshot: Cell<u64>,
}

impl TxnHome {
    fn new(index: u32, part: Rc<Partition>, epoch: u64) -> TxnHome {
        TxnHome {
            index,
            part,
            epoch,
            loaded: Cell::new(false),
            loaded_event: LocalEvent::default(),
            gone: Cell::new(false),
            write: glommio::sync::Semaphore::new(1),
            states: RefCell::new(HashMap::new()),
            completing: RefCell::new(HashSet::new()),
            changed: LocalEvent::default(),
            since_snapshot: Cell::new(0),
            last_snapshot: Cell::new(0),
        }
    }

    /// Whether this node still leads the partition in the epoch it loaded
    /// it in, and has loaded it.
    pub fn check(&self) -> OpResult<()> {
        let epoch = self.part.repl.borrow().epoch;
        if self.gone.get()
            || self.part.check_leader().is_err()
            || (self.part.is_clustered() && epoch != self.epoch)
        {
            return Err(not_coordinator(self.index));
        }
        if !self.loaded.get() {
            return Err(OpError::new(
                ErrorCode::CoordinatorLoadInProgress,
                format!("the coordinator is loading the transactions of partition {} of {TXN_TOPIC}; retry shortly", self.index),
            ));
        }
        Ok(())
    }

    /// The coordinator epoch the markers carry.
    pub fn coordinator_epoch(&self) -> i32 {
        i32::try_from(self.epoch).unwrap_or(i32::MAX)
    }

    pub fn get(&self, id: &str) -> Option<TxnMeta> {
        self.states.borrow().get(id).cloned()
    }

    pub fn states(&self) -> Vec<(String, TxnMeta)> {
        self.states
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Open or completing transactions.
    pub fn open_count(&self) -> usize {
        self.states
            .borrow()
            .values()
            .filter(|m| m.state == TxnState::Ongoing || m.state.is_prepare())
            .count()
    }

    async fn write(&self, recs: &[Record]) -> OpResult<u64> {
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

    /// Changes `id`'s state: `decide` sees the current state (under the
    /// write turn) and returns the next one (`None`: nothing to write), or
    /// refuses. The next state is written (replicated, synced) before it
    /// is applied and returned.
    pub async fn update(
        &self,
        id: &str,
        decide: impl FnOnce(Option<&TxnMeta>) -> OpResult<Option<TxnMeta>>,
    ) -> OpResult<Option<TxnMeta>> {
        let _turn = self
            .write
            .acquire_permit(1)
            .await
            .map_err(|_| OpError::shutting_down())?;
        self.check()?;
        let current = self.get(id);
        let Some(next) = decide(current.as_ref())? else {
            return Ok(None);
        };
        let now = now_ms();
        let dead = next.state == TxnState::Dead;
        self.write(&[store::record(id, (!dead).then_some(&next), now)])
            .await?;
        if dead {
            self.states.borrow_mut().remove(id);
        } else {
            self.states
                .borrow_mut()
                .insert(id.to_string(), next.clone());
        }
        self.changed.notify();
        Ok(Some(next))
    }

    /// Marks `id` as having its markers written; `false` if it already is.
    pub fn start_completing(&self, id: &str) -> bool {
        self.completing.borrow_mut().insert(id.to_string())
    }

    pub fn done_completing(&self, id: &str) {
        self.completing.borrow_mut().remove(id);
        self.changed.notify();
    }

    /// Reads every state from the partition's log.
    async fn load(&self) -> OpResult<()> {
        fn storage(e: impl std::fmt::Display) -> OpError {
            OpError::new(
                ErrorCode::StorageError,
                format!("loading transactions: {e}"),
            )
        }
        let log = &self.part.log;
        let mut states = HashMap::new();
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
                store::apply(&mut states, &recs);
            }
            next = out.next_offset;
        }
        self.since_snapshot.set(bytes);
        *self.states.borrow_mut() = states;
        Ok(())
    }

    /// Writes every state again and drops the log before them, when
    /// enough was written since the last time.
    pub async fn snapshot_if_due(&self) -> OpResult<()> {
        if self.since_snapshot.get() < SNAPSHOT_MIN_BYTES.max(2 * self.last_snapshot.get()) {
            return Ok(());
        }
        let _turn = self
            .write
            .acquire_permit(1)
            .await
            .map_err(|_| OpError::shutting_down())?;
        self.check()?;
        let now = now_ms();
        let recs: Vec<Record> = self
            .states
            .borrow()
            .iter()
            .map(|(id, m)| store::record(id, Some(m), now))
            .collect();
        let before = self.since_snapshot.get();
        let mut start = None;
        for chunk in recs.chunks(1000) {
            let base = self.write(chunk).await?;
            start.get_or_insert(base);
        }
        let written = self.since_snapshot.get() - before;
        self.since_snapshot.set(0);
        self.last_snapshot.set(written);
        let start = start.unwrap_or_else(|| self.part.log.log_end_offset());
        if let Err(e) = self.part.log.delete_before(start).await {
            warn!(partition = self.index, error = %e, "dropping transaction state older than a snapshot failed");
        }
        Ok(())
    }
}

/// The transaction coordinators of one shard: the `__transaction_state`
/// partitions it leads.
#[derive(Default)]
pub struct Txns {
    homes: RefCell<HashMap<u32, Rc<TxnHome>>>,
    /// Notified when a home loads (the driver completes what it finds).
    pub work: LocalEvent,
}

impl Txns {
    /// This node now leads partition `index` (in leader epoch `epoch`):
    /// loads its states from the log, then serves them.
    pub fn become_leader(self: &Rc<Self>, index: u32, part: Rc<Partition>, epoch: u64) {
        if let Some(h) = self.homes.borrow().get(&index) {
            if h.epoch == epoch && Rc::ptr_eq(&h.part, &part) && !h.gone.get() {
                return;
            }
        }
        self.resign(index);
        let home = Rc::new(TxnHome::new(index, part, epoch));
        self.homes.borrow_mut().insert(index, home.clone());
        let txns = self.clone();
        glommio::spawn_local(async move {
            let started = Instant::now();
            if let Err(e) = home.load().await {
                warn!(partition = index, error = %e.message, "loading transactions failed; this node will not coordinate them");
                return;
            }
            if home.gone.get() {
                return;
            }
            home.loaded.set(true);
            home.loaded_event.notify();
            txns.work.notify();
            info!(partition = index, epoch, ids = home.states.borrow().len(), ms = started.elapsed().as_millis() as u64, "loaded transactions; coordinating them");
        })
        .detach();
    }

    /// This node stops leading partition `index`.
    pub fn resign(&self, index: u32) {
        if let Some(h) = self.homes.borrow_mut().remove(&index) {
            h.gone.set(true);
            h.loaded_event.notify();
            h.changed.notify();
        }
    }

    pub fn close_all(&self) {
        let all: Vec<u32> = self.homes.borrow().keys().copied().collect();
        for i in all {
            self.resign(i);
        }
    }

    pub fn homes(&self) -> Vec<Rc<TxnHome>> {
        self.homes.borrow().values().cloned().collect()
    }

    pub fn home(&self, index: u32) -> OpResult<Rc<TxnHome>> {
        let home = self
            .homes
            .borrow()
            .get(&index)
            .cloned()
            .ok_or_else(|| not_coordinator(index))?;
        home.check()?;
        Ok(home)
    }

    /// Waits (up to [`READY_WAIT`]) until this shard serves partition
    /// `index`.
    pub async fn ready(&self, index: u32) -> OpResult<Rc<TxnHome>> {
        let until = Instant::now() + READY_WAIT;
        loop {
            let err = match self.home(index) {
                Ok(h) => return Ok(h),
                Err(e) => e,
            };
            if Instant::now() >= until {
                return Err(err);
            }
            let home = self.homes.borrow().get(&index).cloned();
            let pause = glommio::timer::sleep(Duration::from_millis(10));
            match home {
                Some(h) if err.code == ErrorCode::CoordinatorLoadInProgress => {
                    futures_lite::future::or(h.loaded_event.listen(), pause).await;
                }
                Some(_) => return Err(err),
                None => pause.await,
            }
        }
    }

    /// Transactions open or completing on this shard.
    pub fn open_count(&self) -> usize {
        self.homes.borrow().values().map(|h| h.open_count()).sum()
    }

    /// The age of the oldest transaction open or completing on this
    /// shard, ms (0: none).
    pub fn oldest_open_age_ms(&self, now_ms: i64) -> i64 {
        self.homes
            .borrow()
            .values()
            .flat_map(|h| {
                h.states
                    .borrow()
                    .values()
                    .filter(|m| m.state == TxnState::Ongoing || m.state.is_prepare())
                    .map(|m| now_ms.saturating_sub(m.started_ms))
                    .max()
            })
            .max()
            .unwrap_or(0)
    }
}
