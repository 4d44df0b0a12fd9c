//! One partition replica on the shard that owns it: its log, its
//! replication state and its counters, and everything done to it: append
//! (produce), read (consumer and follower fetches), waiting for data,
//! offset lookups. Nothing here knows a wire protocol or another shard.

pub mod producers;
pub mod txns;

use crate::error::{OpError, OpResult};
use crate::metrics::{label, Sample};
use crate::replication::state::{batch_epoch, Name, ReplicaState, Role};
use crate::shutdown::Shutdown;
use levee_core::LocalEvent;
use levee_engine::batch::{BatchHeader, CheckedBatch, HEADER_LEN};
use levee_engine::{Log, LogConfig};
use levee_schemas::proto::ErrorCode;
use producers::{last_seq, ProducerTable, SeqRange, Verdict};
use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::warn;
use txns::{Aborted, Marker, PartitionTxns};

/// A partition's offsets and size, as fetches and descriptions report them.
#[derive(Debug, Clone, Copy, Default)]
pub struct PartitionState {
    pub log_start: u64,
    pub log_end: u64,
    pub high_watermark: u64,
    /// Below it no transaction is open (read_committed consumers stop here).
    pub last_stable: u64,
    pub size_bytes: u64,
}

/// What a produce appended.
#[derive(Debug, Clone, Copy)]
pub struct Produced {
    pub base: u64,
    pub last: u64,
    pub log_start: u64,
}

/// Whole stored batches read for a fetch, and the partition's state.
#[derive(Debug, Default)]
pub struct ReadOut {
    pub data: Vec<u8>,
    pub state: PartitionState,
    /// read_committed: the aborted transactions overlapping what was read.
    pub aborted: Vec<Aborted>,
}

/// What a consumer fetch sent of one partition, for its accounting on the
/// partition's shard: bytes, records, and each batch's (base offset, next
/// offset, length).
#[derive(Debug, Clone, Default)]
pub struct FetchSent {
    pub bytes: u64,
    pub msgs: u64,
    pub batches: Vec<(u64, u64, u64)>,
}

impl FetchSent {
    pub fn of(data: &[u8]) -> FetchSent {
        let mut sent = FetchSent {
            bytes: data.len() as u64,
            ..FetchSent::default()
        };
        for b in levee_engine::batch::split_batches(data) {
            if let Ok(h) = BatchHeader::parse(b) {
                sent.msgs += u64::from(h.record_count());
                sent.batches
                    .push((h.base_offset(), h.next_offset(), b.len() as u64));
            }
        }
        sent
    }
}

/// Who reads: a consumer (below the high watermark) or a follower replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    Consumer,
    /// A read_committed consumer: below the last stable offset, with the
    /// aborted transactions it must skip.
    Committed,
    /// A follower: its node id, the leader epoch it knows (-1: unknown)
    /// and its log start (-1: not said).
    Replica {
        node: u64,
        epoch: i64,
        log_start: i64,
    },
}

#[derive(Default)]
struct Counters {
    bytes_in: Cell<u64>,
    msgs_in: Cell<u64>,
    bytes_out: Cell<u64>,
    msgs_out: Cell<u64>,
    /// Bytes appended since start-up, and of those the bytes the furthest
    /// consumer has fetched: the backlog that `max_backlog_bytes` bounds.
    produced: Cell<u64>,
    consumed: Cell<u64>,
    fetch_next: Cell<u64>,
}

/// One partition's log, replication state and counters.
pub struct Partition {
    pub topic: String,
    pub partition: u32,
    pub log: Log,
    /// Notified on every append.
    pub appended: LocalEvent,
    /// Replication state (role, epoch, ISR, high watermark).
    pub repl: RefCell<ReplicaState>,
    /// Notified when the high watermark moves or the role changes.
    pub hw_changed: LocalEvent,
    max_backlog: Cell<Option<u64>>,
    /// The topic's `max.message.bytes` (`None`: the log's bound). Only
    /// produce checks it: what is stored stays readable and replicable
    /// whatever the topic's limit becomes.
    max_message: Cell<Option<usize>>,
    counters: Counters,
    /// Idempotent producers' sequences (KIP-98).
    producers: RefCell<ProducerTable>,
    /// Open and aborted transactions (LSO, aborted index).
    txns: RefCell<PartitionTxns>,
    /// Orders appends by request (see `produce`).
    append_order: levee_engine::fifo::FifoLock,
    /// A replicated log a full disk stopped, waiting to be reopened: the
    /// node's incarnation whose registration takes it out of the ISRs
    /// first, and since when it waits (see `Shard::recover_full_disk`).
    pub full_disk_rejoin: Cell<Option<(u64, std::time::Instant)>>,
    /// The producer table changed, and bytes appended, since its snapshot.
    producers_dirty: Cell<bool>,
    bytes_since_snapshot: Cell<u64>,
}

/// The state file holding the producer table's snapshot.
const PRODUCER_SNAPSHOT: &str = "producer-state";
/// A producer table alone (before transactions), and one followed by the
/// partition's transactions.
const SNAPSHOT_MAGIC: &[u8; 4] = b"LVPS";
const SNAPSHOT_MAGIC_TXNS: &[u8; 4] = b"LVPT";
/// A snapshot is taken once this much was appended after the last one
/// (bounding the scan after a crash), or when the table changed and
/// [`SNAPSHOT_INTERVAL`] passed.
const SNAPSHOT_EVERY_BYTES: u64 = 64 << 20;
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(30);

/// The batch fields the producer table needs.
#[derive(Debug, Clone, Copy)]
struct ProducerFields {
    pid: i64,
    epoch: i16,
    first_seq: i32,
    count: u32,
    max_ts: i64,
}

impl ProducerFields {
    fn of_header(h: &BatchHeader) -> Option<ProducerFields> {
        (h.producer_id() >= 0 && h.base_sequence() >= 0).then(|| ProducerFields {
            pid: h.producer_id(),
            epoch: h.producer_epoch(),
            first_seq: h.base_sequence(),
            count: h.record_count(),
            max_ts: h.max_timestamp(),
        })
    }

    fn of(b: &CheckedBatch) -> Option<ProducerFields> {
        (b.producer_id >= 0 && b.base_sequence >= 0).then_some(ProducerFields {
            pid: b.producer_id,
            epoch: b.producer_epoch,
            first_seq: b.base_sequence,
            count: b.record_count,
            max_ts: b.max_timestamp,
        })
    }

    fn range(&self, first_offset: u64, last_offset: u64) -> SeqRange {
        SeqRange {
            first_seq: self.first_seq,
            last_seq: last_seq(self.first_seq, self.count),
            first_offset,
            last_offset,
        }
    }
}

fn add(c: &Cell<u64>, v: u64) {
    c.set(c.get() + v);
}

/// A topic's bounds on what producers write to each of its partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProduceLimits {
    /// `max_backlog_bytes` (see [`Partition::backlog`]).
    pub max_backlog: Option<u64>,
    /// `max.message.bytes`: the largest record batch.
    pub max_message: Option<usize>,
}

impl Partition {
    /// Opens (recovering if needed) the log in `dir` and starts its
    /// background work (flushes, retention). `me` is this node; a cluster
    /// replica starts offline until the metadata names its role.
    pub async fn open(
        topic: &str,
        partition: u32,
        dir: &Path,
        cfg: LogConfig,
        limits: ProduceLimits,
        me: Option<u64>,
    ) -> OpResult<Rc<Partition>> {
        let log = Log::open(dir, cfg).await.map_err(OpError::from_log)?;
        let end = log.log_end_offset();
        let repl = match me {
            Some(me) => ReplicaState::clustered(me),
            None => ReplicaState::single(0),
        };
        let part = Rc::new(Partition {
            topic: topic.to_string(),
            partition,
            log,
            appended: LocalEvent::default(),
            repl: RefCell::new(repl),
            hw_changed: LocalEvent::default(),
            max_backlog: Cell::new(limits.max_backlog),
            max_message: Cell::new(limits.max_message),
            counters: Counters::default(),
            producers: RefCell::new(ProducerTable::default()),
            txns: RefCell::new(PartitionTxns::default()),
            append_order: levee_engine::fifo::FifoLock::default(),
            full_disk_rejoin: Cell::new(None),
            producers_dirty: Cell::new(false),
            bytes_since_snapshot: Cell::new(0),
        });
        part.counters.fetch_next.set(end);
        part.load_producers().await?;
        let bg = part.clone();
        glommio::spawn_local(async move {
            if let Err(e) = bg.log.run_background().await {
                warn!(topic = %bg.topic, partition = bg.partition, error = %e, "partition background work stopped");
            }
        })
        .detach();
        Ok(part)
    }

    /// Retunes the partition to a topic's new settings: its log's
    /// (segment size, retention, fsync), the backlog bound and the
    /// largest batch a producer may write.
    pub fn set_config(&self, cfg: &LogConfig, limits: ProduceLimits) -> OpResult<()> {
        self.log.set_config(cfg).map_err(OpError::from_log)?;
        self.max_backlog.set(limits.max_backlog);
        self.max_message.set(limits.max_message);
        Ok(())
    }

    /// The largest batch a producer may write: the topic's
    /// `max.message.bytes`, else the log's (the broker's) bound.
    pub fn max_message_bytes(&self) -> usize {
        let log_max = self.log.max_batch_bytes();
        self.max_message.get().map_or(log_max, |m| m.min(log_max))
    }

    pub fn name(&self) -> Name<'_> {
        Name {
            topic: &self.topic,
            partition: self.partition,
        }
    }

    pub fn role(&self) -> Role {
        self.repl.borrow().role
    }

    pub fn is_clustered(&self) -> bool {
        self.repl.borrow().is_clustered()
    }

    /// Offsets below this are committed and visible to consumers.
    pub fn high_watermark(&self) -> u64 {
        self.repl.borrow().high_watermark(self.log.log_end_offset())
    }

    /// Offsets below this hold no open transaction (read_committed).
    pub fn last_stable_offset(&self) -> u64 {
        self.txns.borrow().last_stable_offset(self.high_watermark())
    }

    /// How many transactions are open on this partition.
    pub fn open_transactions(&self) -> usize {
        self.txns.borrow().open_count()
    }

    pub fn check_leader(&self) -> Result<(), OpError> {
        self.repl.borrow().check_leader(self.name())
    }

    /// Leader: recomputes the HW; wakes `acks=all` waiters and consumers if it moved.
    pub fn recompute_hw(&self) {
        let end = self.log.log_end_offset();
        if self.repl.borrow_mut().recompute_hw(end) {
            self.hw_changed.notify();
        }
    }

    pub fn backlog(&self) -> u64 {
        let c = &self.counters;
        c.produced.get().saturating_sub(c.consumed.get())
    }

    pub fn state(&self) -> PartitionState {
        let st = self.log.stats();
        let hw = self.high_watermark();
        PartitionState {
            log_start: st.log_start_offset,
            log_end: st.log_end_offset,
            high_watermark: hw,
            last_stable: self.txns.borrow().last_stable_offset(hw),
            size_bytes: st.size_bytes,
        }
    }

    /// Leader: advances the log start to `offset` (-1: the high
    /// watermark), Kafka's DeleteRecords. Records below it are no longer
    /// read; whole segments below it are deleted; the new start is durable
    /// before this returns, and followers take it from their fetches.
    /// Returns the log start afterwards (Kafka's low watermark).
    /// Answers once every in-sync replica has moved its log start there
    /// too (with the lowest, Kafka's low watermark), or after `timeout`
    /// with REQUEST_TIMED_OUT.
    pub async fn delete_records(&self, offset: i64, timeout: Duration) -> OpResult<u64> {
        self.check_leader()?;
        let hw = self.high_watermark();
        let target = match offset {
            -1 => hw,
            o if o >= 0 && o as u64 <= hw => o as u64,
            o => {
                return Err(OpError::new(
                    ErrorCode::OffsetOutOfRange,
                    format!(
                        "cannot delete the records of partition {} of `{}` before offset {o}: \
                         it is not -1 (the high watermark) or an offset up to the high watermark {hw}",
                        self.partition, self.topic
                    ),
                ))
            }
        };
        let start = self.advance_log_start(target).await?;
        // Wake the followers' long polls: the answer tells them the new
        // log start, and their next fetch tells us they moved theirs.
        self.appended.notify();
        let deadline = Instant::now() + timeout;
        loop {
            let low = self
                .repl
                .borrow()
                .low_watermark(self.log.log_start_offset());
            if low >= start {
                return Ok(low);
            }
            self.check_leader()?;
            if Instant::now() >= deadline {
                return Err(OpError::new(
                    ErrorCode::RequestTimedOut,
                    format!(
                        "the leader of partition {} of `{}` deleted the records before {start}, \
                         but an in-sync replica still starts at {low} after {} ms; it drops them \
                         with its next fetch, or leaves the ISR",
                        self.partition,
                        self.topic,
                        timeout.as_millis()
                    ),
                ));
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Advances the log start to `offset` (see [`Log::advance_log_start`])
    /// and drops the aborted-transaction index below it. A leader's
    /// DeleteRecords, or a follower following its leader's log start.
    pub async fn advance_log_start(&self, offset: u64) -> OpResult<u64> {
        let start = self
            .log
            .advance_log_start(offset)
            .await
            .map_err(OpError::from_log)?;
        self.txns.borrow_mut().trim(start);
        Ok(start)
    }

    /// Appends the batches of one produce request (`data`: whole batches
    /// end to end) and, for `acks=all`, waits until the last is durable
    /// (and replicated, on a cluster).
    /// `backing`: the size of the request buffer `data` is a slice of (the
    /// tail cache is charged for it).
    pub async fn produce(
        &self,
        acks: i8,
        timeout: Duration,
        data: bytes::Bytes,
        backing: usize,
    ) -> OpResult<Produced> {
        self.check_leader()?;
        let epoch = {
            let r = self.repl.borrow();
            if acks == -1 {
                r.check_acks_all(self.name())?;
            }
            r.epoch
        };
        let clustered = self.role() == Role::Leader;
        let (batches, msgs) = split_request(&data, self.max_message_bytes(), backing)?;
        if let Some(max) = self.max_backlog.get() {
            if self.backlog() + data.len() as u64 > max {
                return Err(OpError::new(
                    ErrorCode::BacklogFull,
                    format!(
                        "partition {} of `{}` has a backlog of {} bytes, its max_backlog_bytes is {max}: consumers must catch up before more is accepted",
                        self.partition, self.topic, self.backlog()
                    ),
                ));
            }
        }
        let total = data.len() as u64;
        drop(data);
        let mut first = None;
        let mut last = 0;
        // A request's batches are appended together and in request order
        // (another request's cannot come between them), and a check of the
        // producer table goes with the append it allows.
        let _order = self.append_order.lock().await;
        for b in batches {
            // Leadership may have moved while an earlier batch was appended.
            if clustered && (self.role() != Role::Leader || self.repl.borrow().epoch != epoch) {
                self.check_leader()?;
            }
            let producer = ProducerFields::of(&b);
            let transactional = check_client_batch(&b, producer.is_some())?;
            if let Some(pf) = producer {
                if let Verdict::Duplicate {
                    first_offset,
                    last_offset,
                } = self.check_producer(&pf)?
                {
                    // A retry of a batch already written: its offsets, no
                    // second write. (Gaps and old epochs are errors above.)
                    first.get_or_insert(first_offset);
                    last = last_offset;
                    continue;
                }
            }
            let info = self
                .log
                .append_checked(b, batch_epoch(epoch))
                .await
                .map_err(OpError::from_log)?;
            if let Some(pf) = producer {
                self.record_producer(&pf, info.base_offset, info.last_offset);
                if transactional {
                    self.txns.borrow_mut().on_batch(
                        pf.pid,
                        info.base_offset,
                        info.last_offset,
                        None,
                    );
                }
            }
            first.get_or_insert(info.base_offset);
            last = info.last_offset;
            self.appended.notify();
        }
        add(&self.bytes_since_snapshot, total);
        if clustered {
            self.recompute_hw();
        }
        let c = &self.counters;
        add(&c.bytes_in, total);
        add(&c.msgs_in, msgs);
        add(&c.produced, total);
        drop(_order);
        if acks == -1 {
            self.wait_durable(last, timeout).await?;
            if clustered {
                self.wait_committed(epoch, last, timeout).await?;
            }
        }
        Ok(Produced {
            base: first.unwrap_or(0),
            last,
            log_start: self.log.log_start_offset(),
        })
    }

    /// Writes a transaction marker (a control batch) for producer `pid`
    /// at `epoch` through the append path, and waits until it is durable
    /// and, on a cluster, in every in-sync replica (acks=all). A marker of
    /// an older epoch than the producer's here is fenced; a newer one
    /// fences the older epoch's batches. Returns the marker's offset.
    pub async fn write_marker(
        &self,
        pid: i64,
        epoch: i16,
        marker: Marker,
        timeout: Duration,
    ) -> OpResult<u64> {
        self.check_leader()?;
        let repl_epoch = {
            let r = self.repl.borrow();
            r.check_acks_all(self.name())?;
            r.epoch
        };
        let clustered = self.role() == Role::Leader;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let batch = levee_engine::batch::build_control_batch(
            pid,
            epoch,
            &marker.key(),
            &marker.value(),
            now_ms,
        );
        let len = batch.len() as u64;
        let checked = CheckedBatch::produced(bytes::Bytes::from(batch), self.log.max_batch_bytes())
            .map_err(|e| OpError::from_log(e.into()))?;
        let order = self.append_order.lock().await;
        if clustered && (self.role() != Role::Leader || self.repl.borrow().epoch != repl_epoch) {
            self.check_leader()?;
        }
        if let Some(current) = self.producers.borrow().epoch(pid) {
            if current > epoch {
                return Err(OpError::new(
                    ErrorCode::ProducerFenced,
                    format!("producer {pid} has epoch {current} on partition {} of `{}`; a marker of its epoch {epoch} is fenced", self.partition, self.topic),
                ));
            }
        }
        let info = self
            .log
            .append_checked(checked, batch_epoch(repl_epoch))
            .await
            .map_err(OpError::from_log)?;
        self.producers.borrow_mut().bump_epoch(pid, epoch, now_ms);
        self.producers_dirty.set(true);
        self.txns
            .borrow_mut()
            .on_batch(pid, info.base_offset, info.last_offset, Some(marker));
        self.appended.notify();
        add(&self.bytes_since_snapshot, len);
        if clustered {
            self.recompute_hw();
        }
        drop(order);
        self.wait_durable(info.last_offset, timeout).await?;
        if clustered {
            self.wait_committed(repl_epoch, info.last_offset, timeout)
                .await?;
        }
        Ok(info.base_offset)
    }

    async fn wait_durable(&self, last: u64, timeout: Duration) -> OpResult<()> {
        let durable =
            futures_lite::future::or(async { Some(self.log.wait_durable(last).await) }, async {
                glommio::timer::sleep(timeout).await;
                None
            })
            .await;
        match durable {
            Some(r) => r.map_err(OpError::from_log),
            None => Err(OpError::new(
                ErrorCode::RequestTimedOut,
                format!(
                    "the batch was appended but not flushed within {} ms",
                    timeout.as_millis()
                ),
            )),
        }
    }

    /// Waits (bounded by `timeout`) until the HW passes `last`, for acks=all.
    async fn wait_committed(&self, epoch: u64, last: u64, timeout: Duration) -> OpResult<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let listen = self.hw_changed.listen();
            let end = self.log.log_end_offset();
            if self
                .repl
                .borrow()
                .committed(self.name(), epoch, last, end)?
            {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.repl.borrow().replication_timeout(timeout, last));
            }
            futures_lite::future::or(listen, glommio::timer::sleep(left)).await;
        }
    }

    /// Reads whole batches from `offset`: for a consumer, only committed
    /// ones (below the HW); for a follower, up to the log end, and the
    /// fetch tells the leader what the follower holds.
    pub async fn read(&self, offset: u64, max_bytes: usize, reader: Reader) -> OpResult<ReadOut> {
        let (offset, visible) = match reader {
            Reader::Replica {
                node,
                epoch,
                log_start,
            } => {
                self.repl.borrow().check_replica_fetch(self.name(), epoch)?;
                let end = self.log.log_end_offset();
                if offset > end {
                    return Err(OpError::new(
                        ErrorCode::OffsetOutOfRange,
                        format!(
                            "follower {node} fetches at {offset}, past the leader's log end {end}"
                        ),
                    ));
                }
                if self.repl.borrow_mut().record_follower_fetch(
                    node,
                    offset,
                    u64::try_from(log_start).ok(),
                    end,
                    Instant::now(),
                ) {
                    self.hw_changed.notify();
                }
                // A follower behind our log start gets our first batch and
                // restarts its log there.
                (offset.max(self.log.log_start_offset()), None)
            }
            Reader::Consumer => {
                self.check_leader()?;
                (offset, self.is_clustered().then(|| self.high_watermark()))
            }
            Reader::Committed => {
                self.check_leader()?;
                (offset, Some(self.last_stable_offset()))
            }
        };
        let out = self
            .log
            .read(offset, max_bytes, visible)
            .await
            .map_err(OpError::from_log)?;
        let aborted = if reader == Reader::Committed && !out.data.is_empty() {
            self.txns.borrow().aborted_in(offset, out.next_offset)
        } else {
            Vec::new()
        };
        Ok(ReadOut {
            data: out.data,
            state: self.state(),
            aborted,
        })
    }

    /// Accounts what a consumer fetch from `offset` sent back (once the
    /// response is settled: a long poll may read several times, and a
    /// partition past the response's size limit sends nothing): batches
    /// past the furthest position any consumer reached count as consumed.
    pub fn note_fetch(&self, offset: u64, sent: &FetchSent) {
        let c = &self.counters;
        let log_end = self.log.log_end_offset();
        let start = c.fetch_next.get();
        let mut next = start;
        let mut fresh = 0u64;
        for &(base, after, len) in &sent.batches {
            if base >= start {
                fresh += len;
            }
            next = next.max(after);
        }
        add(&c.bytes_out, sent.bytes);
        add(&c.msgs_out, sent.msgs);
        if next >= log_end || offset >= log_end {
            // This consumer is at the end: nothing is left behind it.
            c.consumed.set(c.produced.get());
            c.fetch_next.set(log_end);
        } else if next > start {
            add(&c.consumed, fresh);
            c.fetch_next.set(next);
        }
    }

    /// Completes when the partition has data at `offset` (committed data,
    /// unless for a replica), its role changes, the broker stops, or `wait`
    /// passes.
    pub async fn wait_data(&self, offset: u64, wait: Duration, reader: Reader, stop: &Shutdown) {
        let replica = matches!(reader, Reader::Replica { .. });
        let deadline = Instant::now() + wait;
        let role = (self.role(), self.repl.borrow().epoch);
        // A follower learns a new log start (DeleteRecords) from an answer.
        let log_start = self.log.log_start_offset();
        loop {
            let listen = if replica || !self.is_clustered() {
                self.appended.listen()
            } else {
                self.hw_changed.listen()
            };
            let end = match reader {
                Reader::Replica { .. } => self.log.log_end_offset(),
                Reader::Consumer => self.high_watermark(),
                Reader::Committed => self.last_stable_offset(),
            };
            let changed = (self.role(), self.repl.borrow().epoch) != role
                || (replica && self.log.log_start_offset() != log_start);
            if end > offset || changed || stop.is_set() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            futures_lite::future::or(
                futures_lite::future::or(listen, stop.listen()),
                glommio::timer::sleep(left),
            )
            .await;
        }
    }

    /// (offset, timestamp) for `spec`: -2 the log start, -1 the end of
    /// what consumers may read (the high watermark), both with timestamp
    /// -1; otherwise the first record below the high watermark with a
    /// timestamp at or after `spec`, and its timestamp ((-1, -1): none).
    pub async fn list_offset(&self, spec: i64) -> OpResult<(i64, i64)> {
        match spec {
            -2 => Ok((self.log.log_start_offset() as i64, -1)),
            -1 => Ok((self.high_watermark() as i64, -1)),
            ts if ts >= 0 => Ok(
                match self
                    .log
                    .offset_for_timestamp(ts)
                    .await
                    .map_err(OpError::from_log)?
                {
                    Some((o, t)) if o < self.high_watermark() => (o as i64, t),
                    _ => (-1, -1),
                },
            ),
            other => Err(OpError::new(
                ErrorCode::InvalidRequest,
                format!("offset spec {other} is not -2 (earliest), -1 (latest) or a timestamp"),
            )),
        }
    }

    /// Leader: (the largest epoch not above `epoch`, where it ends), for a
    /// follower reconciling its log (KIP-101).
    pub fn epoch_end(&self, epoch: i64) -> OpResult<(i64, i64)> {
        if self.role() != Role::Leader {
            return Err(OpError::new(
                ErrorCode::NotLeader,
                format!(
                    "this node does not lead partition {} of `{}`",
                    self.partition, self.topic
                ),
            ));
        }
        let (e, end) = self
            .log
            .end_offset_for_epoch(batch_epoch(epoch.max(0) as u64));
        Ok((i64::from(e), end as i64))
    }

    /// Reopens a log a full disk stopped (see
    /// `Log::recover_from_full_disk`), once space is back: appends wait
    /// meanwhile, and the producer table forgets batches that did not
    /// reach the disk. Whether it was stopped.
    pub async fn recover_from_full_disk(&self) -> OpResult<bool> {
        let _order = self.append_order.lock().await;
        let Some((old_end, new_end)) = self
            .log
            .recover_from_full_disk()
            .await
            .map_err(OpError::from_log)?
        else {
            return Ok(false);
        };
        if new_end < old_end {
            warn!(
                topic = %self.topic,
                partition = self.partition,
                from = new_end,
                to = old_end,
                "batches appended when the disk filled did not reach it and were dropped (none was acknowledged as durable)"
            );
            self.producers_truncated(new_end);
            let c = &self.counters;
            c.fetch_next.set(c.fetch_next.get().min(new_end));
        }
        self.appended.notify();
        self.hw_changed.notify();
        Ok(true)
    }

    /// Judges an idempotent producer's batch: append, duplicate (its
    /// original offsets), or an error for a gap or an old epoch.
    fn check_producer(&self, pf: &ProducerFields) -> OpResult<Verdict> {
        let last = last_seq(pf.first_seq, pf.count);
        match self.producers.borrow().check(pf.pid, pf.epoch, pf.first_seq, last) {
            Verdict::OutOfOrder { expected, got } => Err(OpError::new(
                ErrorCode::OutOfOrderSequence,
                format!(
                    "producer {} sent sequence {got} to partition {} of `{}`, {expected} was expected",
                    pf.pid, self.partition, self.topic
                ),
            )),
            Verdict::Fenced { current, got } => Err(OpError::new(
                ErrorCode::InvalidProducerEpoch,
                format!(
                    "producer {} has epoch {current}; a batch of its epoch {got} is fenced",
                    pf.pid
                ),
            )),
            v => Ok(v),
        }
    }

    fn record_producer(&self, pf: &ProducerFields, first_offset: u64, last_offset: u64) {
        self.producers.borrow_mut().record(
            pf.pid,
            pf.epoch,
            pf.range(first_offset, last_offset),
            pf.max_ts,
        );
        self.producers_dirty.set(true);
    }

    /// The lock that orders appends to this partition's log: a produce
    /// request's check of the producer table and its appends, a follower's
    /// appends of a fetched response with their producer-table records,
    /// and a change of role (where a new leader's epoch starts) each hold
    /// it, so that none of them interleaves with another.
    pub fn append_order(&self) -> levee_engine::fifo::Acquire<'_> {
        self.append_order.lock()
    }

    /// Follower: a batch copied from the leader was appended.
    pub fn note_replicated(&self, batch: &[u8]) {
        add(&self.bytes_since_snapshot, batch.len() as u64);
        if let Ok(h) = BatchHeader::parse(batch) {
            if let Some(pf) = ProducerFields::of_header(h) {
                self.record_producer(&pf, h.base_offset(), h.last_offset());
            }
            if let Some((pid, epoch, marker)) = txn_fields(h, batch) {
                if marker.is_some() {
                    self.producers
                        .borrow_mut()
                        .bump_epoch(pid, epoch, h.max_timestamp());
                }
                self.txns
                    .borrow_mut()
                    .on_batch(pid, h.base_offset(), h.last_offset(), marker);
            }
        }
    }

    /// The log was cut at `offset`: forget the producers' batches from there.
    pub fn producers_truncated(&self, offset: u64) {
        self.producers.borrow_mut().truncate(offset);
        if offset == 0 {
            *self.txns.borrow_mut() = PartitionTxns::default();
        } else {
            self.txns.borrow_mut().truncate(offset);
        }
        self.producers_dirty.set(true);
    }

    /// Rebuilds the producer table: the snapshot, then every batch after it.
    async fn load_producers(&self) -> OpResult<()> {
        let (mut table, mut txns, mut from) =
            match self.log.read_state_file(PRODUCER_SNAPSHOT).await {
                Some(b) => decode_snapshot(&b).unwrap_or_else(|| {
                    warn!(topic = %self.topic, partition = self.partition, "damaged producer-state snapshot: rebuilding from the log");
                    (ProducerTable::default(), PartitionTxns::default(), 0)
                }),
                None => (ProducerTable::default(), PartitionTxns::default(), 0),
            };
        let end = self.log.log_end_offset();
        if from > end {
            // The log lost its tail after the snapshot was taken.
            table.truncate(end);
            txns.truncate(end);
            from = end;
        }
        let mut next = from.max(self.log.log_start_offset());
        while next < end {
            let out = self
                .log
                .read(next, 4 << 20, None)
                .await
                .map_err(OpError::from_log)?;
            if out.data.is_empty() {
                break;
            }
            for b in levee_engine::batch::split_batches(&out.data) {
                if let Ok(h) = BatchHeader::parse(b) {
                    if let Some(pf) = ProducerFields::of_header(h) {
                        table.record(
                            pf.pid,
                            pf.epoch,
                            pf.range(h.base_offset(), h.last_offset()),
                            pf.max_ts,
                        );
                    }
                    if let Some((pid, epoch, marker)) = txn_fields(h, b) {
                        if marker.is_some() {
                            table.bump_epoch(pid, epoch, h.max_timestamp());
                        }
                        txns.on_batch(pid, h.base_offset(), h.last_offset(), marker);
                    }
                }
            }
            next = out.next_offset;
        }
        *self.producers.borrow_mut() = table;
        txns.trim(self.log.log_start_offset());
        *self.txns.borrow_mut() = txns;
        Ok(())
    }

    /// Writes the producer table's snapshot, covering the log up to its end.
    pub async fn snapshot_producers(&self) -> OpResult<()> {
        let end = self.log.log_end_offset();
        let bytes = encode_snapshot(&self.producers.borrow(), &self.txns.borrow(), end);
        self.producers_dirty.set(false);
        self.bytes_since_snapshot.set(0);
        self.log
            .write_state_file(PRODUCER_SNAPSHOT, &bytes)
            .await
            .map_err(OpError::from_log)
    }

    /// Every ten seconds: expires idle producers and takes a snapshot when
    /// enough was appended or the table changed a while ago. Ends within a
    /// second of the log's close (it holds the partition, and so its open
    /// files, which keep a deleted topic's space from being freed).
    pub async fn run_producer_upkeep(&self, expiration: Duration) {
        let mut last = Instant::now();
        let mut last_expiry = Instant::now();
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            if self.log.is_closed() {
                return;
            }
            if last_expiry.elapsed() < Duration::from_secs(10) {
                continue;
            }
            last_expiry = Instant::now();
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            if self
                .producers
                .borrow_mut()
                .expire(now_ms, expiration.as_millis() as i64)
                > 0
            {
                self.producers_dirty.set(true);
            }
            self.txns.borrow_mut().trim(self.log.log_start_offset());
            let due = self.bytes_since_snapshot.get() >= SNAPSHOT_EVERY_BYTES
                || (self.producers_dirty.get() && last.elapsed() >= SNAPSHOT_INTERVAL);
            if due {
                if let Err(e) = self.snapshot_producers().await {
                    warn!(topic = %self.topic, partition = self.partition, error = %e.message, "writing the producer-state snapshot failed");
                }
                last = Instant::now();
            }
        }
    }

    /// This partition's metric samples.
    pub fn samples(&self, out: &mut Vec<Sample>) {
        let l = format!(
            "topic=\"{}\",partition=\"{}\"",
            label(&self.topic),
            self.partition
        );
        let st = self.state();
        let c = &self.counters;
        for (family, value) in [
            ("levee_partition_bytes_in_total", c.bytes_in.get()),
            ("levee_partition_messages_in_total", c.msgs_in.get()),
            ("levee_partition_bytes_out_total", c.bytes_out.get()),
            ("levee_partition_messages_out_total", c.msgs_out.get()),
            ("levee_partition_log_end_offset", st.log_end),
            ("levee_partition_log_start_offset", st.log_start),
            ("levee_partition_size_bytes", st.size_bytes),
            ("levee_partition_backlog_bytes", self.backlog()),
        ] {
            out.push(Sample::Value {
                family,
                labels: l.clone(),
                value: value as f64,
            });
        }
    }
}

/// Splits a produce request's data into whole batches and validates each
/// (the one read of its header): shared slices of the request, no copy.
/// Returns them and the number of records in all.
fn split_request(
    data: &bytes::Bytes,
    max: usize,
    backing: usize,
) -> OpResult<(Vec<CheckedBatch>, u64)> {
    let mut batches = Vec::new();
    let mut pos = 0usize;
    let mut msgs = 0u64;
    while pos < data.len() {
        let corrupt = |m: String| OpError::new(ErrorCode::CorruptBatch, m);
        let len = data
            .get(pos + 8..pos + 12)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| corrupt(format!("record batch at byte {pos} is cut short")))?;
        let len = usize::try_from(len)
            .ok()
            .map(|l| l + levee_engine::batch::LOG_OVERHEAD)
            .filter(|&l| l >= HEADER_LEN && l <= data.len() - pos)
            .ok_or_else(|| {
                corrupt(format!(
                    "record batch at byte {pos} declares {len} bytes, {} remain",
                    data.len() - pos
                ))
            })?;
        let b = CheckedBatch::produced(data.slice(pos..pos + len), max)
            .map_err(|e| OpError::from_log(e.into()))?
            .sharing(backing);
        msgs += u64::from(b.record_count);
        batches.push(b);
        pos += len;
    }
    if batches.is_empty() {
        return Err(OpError::new(
            ErrorCode::InvalidRequest,
            "produce carries no record batch",
        ));
    }
    Ok((batches, msgs))
}

/// `LVPT`, the log offset it covers up to, a CRC32C of the rest, the
/// producer table's length, the table, the transactions.
fn encode_snapshot(t: &ProducerTable, txns: &PartitionTxns, end: u64) -> Vec<u8> {
    let producers = t.encode();
    let mut table = Vec::with_capacity(4 + producers.len() + 64);
    table.extend_from_slice(&(producers.len() as u32).to_be_bytes());
    table.extend_from_slice(&producers);
    txns.encode(&mut table);
    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(SNAPSHOT_MAGIC_TXNS);
    out.extend_from_slice(&end.to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&table).to_be_bytes());
    out.extend_from_slice(&table);
    out
}

fn decode_snapshot(b: &[u8]) -> Option<(ProducerTable, PartitionTxns, u64)> {
    let magic = b.get(..4)?;
    let end = u64::from_be_bytes(b.get(4..12)?.try_into().ok()?);
    let crc = u32::from_be_bytes(b.get(12..16)?.try_into().ok()?);
    let table = b.get(16..)?;
    if crc32c::crc32c(table) != crc {
        return None;
    }
    if magic == SNAPSHOT_MAGIC {
        // Written before transactions: none was open.
        return Some((ProducerTable::decode(table)?, PartitionTxns::default(), end));
    }
    if magic != SNAPSHOT_MAGIC_TXNS {
        return None;
    }
    let n = u32::from_be_bytes(table.get(..4)?.try_into().ok()?) as usize;
    let producers = table.get(4..4usize.checked_add(n)?)?;
    let txns = table.get(4 + n..)?;
    Some((
        ProducerTable::decode(producers)?,
        PartitionTxns::decode(txns)?,
        end,
    ))
}

/// A stored batch's transaction fields: (producer id, epoch, its marker
/// if it is a control batch), or `None` if it is not transactional.
fn txn_fields(h: &BatchHeader, batch: &[u8]) -> Option<(i64, i16, Option<Marker>)> {
    if !h.is_transactional() || h.producer_id() < 0 {
        return None;
    }
    let marker = if h.is_control() {
        let recs = levee_engine::batch::records(batch).ok()?;
        let r = recs.first()?;
        Some(Marker::parse(r.key?, r.value)?)
    } else {
        None
    };
    Some((h.producer_id(), h.producer_epoch(), marker))
}

/// Checks a batch a client produced: no control batch (markers come from
/// the transaction coordinator), and a transactional batch only from an
/// idempotent producer. Returns whether it is transactional.
fn check_client_batch(b: &CheckedBatch, idempotent: bool) -> OpResult<bool> {
    let h = BatchHeader::parse(&b.bytes).map_err(|e| OpError::from_log(e.into()))?;
    if h.is_control() {
        return Err(OpError::new(
            ErrorCode::InvalidRequest,
            "a client may not produce control batches (transaction markers)",
        ));
    }
    if h.is_transactional() && !idempotent {
        return Err(OpError::new(
            ErrorCode::InvalidRequest,
            "a transactional batch needs a producer id and sequence (InitProducerId with a transactional id)",
        ));
    }
    Ok(h.is_transactional())
}
