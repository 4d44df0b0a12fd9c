//! [`Producer`]: batches messages per partition, compresses, sends with a
//! bounded number of requests in flight, retries retriable failures and
//! reports each message's fate.
//!
//! - **Batches** are capped: a record joins its partition's open batch
//!   unless that would take the batch past [`ProducerConfig::batch_size`];
//!   then the batch is closed and queued, and the record starts the next
//!   one (a record larger than `batch_size` goes alone). A batch goes when
//!   it is full or its linger passed; while every in-flight slot is busy,
//!   full batches queue per partition, and a request takes the queued
//!   batches of every ready partition up to
//!   [`ProducerConfig::max_request_bytes`]. So nothing this producer builds
//!   is larger than `batch_size`, which must not pass the broker's
//!   `max_batch_bytes` (checked by [`Producer::new`]).
//! - **Memory** is bounded by [`ProducerConfig::buffer_bytes`]: `send` waits
//!   while that many bytes of records are neither acknowledged nor failed.
//! - **Order**: the records of one partition are appended in the order
//!   `send` was called, with up to [`ProducerConfig::max_in_flight`]
//!   requests in flight, as long as no request is retried: a partition's
//!   batches are sent in order, its requests pipelined on one leader
//!   connection, and the broker appends pipelined requests in order.
//! - **Retries**: retriable failures (no leader, `NotLeader`, lost
//!   connections, timeouts) are retried with backoff until
//!   [`ProducerConfig::delivery_timeout`], so a leader failover is a pause,
//!   not an error. A failed batch holds back its partition's later batches
//!   until it is sent again (batches in flight with it that fail too are
//!   retried with it, in order), and after a failure the partition has one
//!   request in flight until one succeeds. Without idempotence (not yet in
//!   this client), a retry weakens two guarantees: a batch whose request
//!   failed after the broker appended it (a lost connection, a timeout) is
//!   appended twice, and a retried batch lands after the partition's later
//!   batches that were already in flight and succeeded. With
//!   `max_in_flight = 1` there is nothing in flight to overtake it, so
//!   order holds across retries and only duplicates remain possible.
//!   [`Producer::retried_batches`] counts the retries.
//!
//! - **Transactions** (KIP-98, with [`ProducerConfig::transactional_id`]):
//!   [`Producer::init_transactions`] once, then per transaction
//!   [`Producer::begin_transaction`], sends, optionally
//!   [`Producer::send_offsets_to_transaction`], and
//!   [`Producer::commit_transaction`] or [`Producer::abort_transaction`].
//!   A partition is added to the transaction at its coordinator before its
//!   first batch is sent; a commit first waits for every record sent; a
//!   failure makes the transaction abortable ([`ClientError::AbortableTransaction`]:
//!   abort it, then go on); a newer producer with the same transactional
//!   id fences this one ([`ClientError::ProducerFenced`]: fatal). See
//!   `txn.rs` for the states.
//!
//! Each partition's batches go to its leader (see [`Client`]). `send`
//! appends to the batch under a lock shared with the producer's task: no
//! channel hop, allocation or task wake-up per record; the records of a
//! batch share one delivery state.

mod accumulator;
mod sender;
mod txn;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use levee_engine::{Compression, Record};
use tokio::sync::{oneshot, Notify, Semaphore, TryAcquireError};

use crate::client::Client;
use crate::codec::partition_for_key;
use crate::error::{ClientError, Result};
use crate::group::ConsumerGroupMetadata;
use crate::group::OffsetCommit;
use crate::txn::TxnCoordinator;
pub use accumulator::DeliveryFuture;
use accumulator::{Accumulator, RecordSize};

/// How much acknowledgement a produce request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// No response at all: a message counts as delivered once written to the socket.
    None,
    /// Appended by the partition's leader.
    Leader,
    /// Durable per the topic's fsync policy (and replicated, on a cluster).
    All,
}

impl Acks {
    /// The protocol value: 0, 1 or -1.
    pub fn to_wire(self) -> i8 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

impl std::str::FromStr for Acks {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Acks, String> {
        match s {
            "0" | "none" => Ok(Acks::None),
            "1" | "leader" => Ok(Acks::Leader),
            "all" | "-1" => Ok(Acks::All),
            _ => Err(format!("acks must be 0, 1 or all, not `{s}`")),
        }
    }
}

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Acknowledgement level (default: all).
    pub acks: Acks,
    /// Codec for each batch's records (default: none).
    pub compression: Compression,
    /// The largest batch, in encoded bytes before compression, header
    /// included (default 64 KiB): a record that would take its partition's
    /// batch past it starts the next batch. A record larger than this goes
    /// alone. At most the broker's `max_batch_bytes` (16 MiB by default).
    pub batch_size: usize,
    /// A batch that is not full is sent once its first message has waited
    /// this long (default 5 ms).
    pub linger: Duration,
    /// Produce requests in flight at once (default 5).
    pub max_in_flight: usize,
    /// Bytes of unacknowledged messages buffered before `send` waits (default 32 MiB).
    pub buffer_bytes: usize,
    /// Largest produce request (default 8 MiB; a single larger batch is
    /// still sent alone). Kept within the broker's frame limit.
    pub max_request_bytes: usize,
    /// Retries of a batch after retriable failures (default: unlimited,
    /// bounded by `delivery_timeout`).
    pub retries: u32,
    /// First retry delay, doubled per attempt up to `max_retry_backoff` (default 20 ms).
    pub retry_backoff: Duration,
    /// Largest retry delay (default 100 ms).
    pub max_retry_backoff: Duration,
    /// How long a message may take from `send` to its acknowledgement,
    /// retries included, before it fails with the last retriable error
    /// (default 30 s).
    pub delivery_timeout: Duration,
    /// The broker-side produce timeout (default 30 s).
    pub produce_timeout: Duration,
    /// Send every message to this partition instead of partitioning.
    pub partition: Option<u32>,
    /// How long a topic's partition count is used before it is looked up
    /// again, so that partitions added to the topic receive messages
    /// (default 5 minutes, as Kafka's `metadata.max.age.ms`).
    pub metadata_max_age: Duration,
    /// Idempotence (default on; applies with `acks = all`): the producer
    /// gets a producer id from the broker and numbers its batches per
    /// partition, so a batch sent again after a lost answer is written
    /// once, in order. Needs `max_in_flight` <= 5, as Kafka's.
    pub enable_idempotence: bool,
    /// Makes the producer transactional (default none): its records are
    /// written in transactions, which read_committed consumers see only
    /// once committed. The id names the producer across restarts: a new
    /// producer with the same id fences the old one and aborts its open
    /// transaction. Needs idempotence (`acks = all`).
    pub transactional_id: Option<String>,
    /// How long a transaction may stay open before the coordinator aborts
    /// it (default 60 s; at most the broker's `transaction_max_timeout_ms`).
    pub transaction_timeout: Duration,
    /// How long a transaction call (`init_transactions`, adding partitions,
    /// offsets, commit, abort) keeps retrying a coordinator that moved,
    /// is loading or is still completing the previous transaction
    /// (default 60 s, as Kafka's `max.block.ms`).
    pub transaction_call_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            compression: Compression::None,
            batch_size: 64 << 10,
            linger: Duration::from_millis(5),
            max_in_flight: 5,
            buffer_bytes: 32 << 20,
            max_request_bytes: 8 << 20,
            retries: u32::MAX,
            retry_backoff: Duration::from_millis(20),
            max_retry_backoff: Duration::from_millis(100),
            delivery_timeout: Duration::from_secs(30),
            produce_timeout: Duration::from_secs(30),
            partition: None,
            metadata_max_age: Duration::from_secs(300),
            enable_idempotence: true,
            transactional_id: None,
            transaction_timeout: Duration::from_secs(60),
            transaction_call_timeout: Duration::from_secs(60),
        }
    }
}

/// Where an acknowledged message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// The topic (shared by the reports of one batch: no copy per message).
    pub topic: std::sync::Arc<str>,
    /// The partition.
    pub partition: u32,
    /// The message's offset; `None` with acks=0 (the broker does not answer).
    pub offset: Option<u64>,
}

/// What the producer's handle and its task share.
struct Shared {
    config: ProducerConfig,
    /// Requests are built up to this (`max_request_bytes`, within the
    /// broker's frame limit).
    max_request_bytes: usize,
    /// The broker's `max_batch_bytes`: a record whose batch alone would
    /// pass it fails at once.
    max_batch_bytes: usize,
    /// Bytes of records not resolved yet: taken by `send`, given back per
    /// batch when it resolves.
    buffer: Semaphore,
    state: Mutex<Accumulator>,
    /// Wakes the producer's task.
    wake: Notify,
    /// Batches queued again after a retriable failure.
    retried: AtomicU64,
    /// Idempotence: the producer id and the partitions' next sequences
    /// (`None`: not idempotent).
    idempotence: Option<Mutex<sender::Idempotence>>,
    /// Metadata lookups that failed recently, by topic, so that a burst of
    /// records to a missing topic costs one lookup, not one per record.
    failed_lookups: Mutex<std::collections::HashMap<String, (ClientError, tokio::time::Instant)>>,
    /// A transactional producer's coordinator and state.
    txn: Option<TxnShared>,
}

/// A transactional producer's coordinator and state.
struct TxnShared {
    coordinator: TxnCoordinator,
    state: Mutex<txn::TxnState>,
}

impl TxnShared {
    fn lock(&self) -> MutexGuard<'_, txn::TxnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn lock_idem(m: &Mutex<sender::Idempotence>) -> MutexGuard<'_, sender::Idempotence> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Accumulator> {
        // A poisoned lock only means another thread panicked while holding
        // it; the queues themselves are consistent between statements.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A batching, retrying producer. Dropping it sends what is buffered in the
/// background; call [`Producer::flush`] to wait for everything.
pub struct Producer {
    shared: Arc<Shared>,
    client: Client,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.shared.config)
            .field("max_batch_bytes", &self.shared.max_batch_bytes)
            .finish()
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.shared.lock().close();
        self.shared.wake.notify_one();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How long a failed topic lookup is remembered.
const FAILED_LOOKUP_TTL: Duration = Duration::from_secs(1);

/// Room left in a request frame for its header (topic names and offsets).
const REQUEST_HEADER_ROOM: usize = 64 << 10;

impl Producer {
    /// Starts a producer on `client` (spawns its task on the current tokio
    /// runtime). Fails if `batch_size` is larger than the broker's
    /// `max_batch_bytes` (as its handshake said, else the broker default):
    /// every full batch would be refused.
    pub fn new(client: Client, config: ProducerConfig) -> Result<Producer> {
        let max_batch_bytes = client.max_batch_bytes();
        if config.batch_size > max_batch_bytes {
            return Err(ClientError::InvalidArgument(format!(
                "batch_size {} is larger than the broker's max_batch_bytes {max_batch_bytes} (the largest record batch it accepts): lower batch_size",
                config.batch_size
            )));
        }
        let idempotent = config.enable_idempotence && config.acks == Acks::All;
        if idempotent && config.max_in_flight > 5 {
            return Err(ClientError::InvalidArgument(format!(
                "an idempotent producer sends at most 5 requests at once, not max_in_flight {}: lower it, or turn enable_idempotence off",
                config.max_in_flight
            )));
        }
        if let Some(id) = config.transactional_id.as_deref() {
            if !idempotent {
                return Err(ClientError::InvalidArgument(format!(
                    "transactional producer `{id}` needs idempotence: set acks = all and enable_idempotence"
                )));
            }
            if id.is_empty() {
                return Err(ClientError::InvalidArgument(
                    "the transactional id is empty".into(),
                ));
            }
        }
        let txn = config.transactional_id.clone().map(|id| TxnShared {
            coordinator: TxnCoordinator::new(id.clone()),
            state: Mutex::new(txn::TxnState::new(id)),
        });
        let config = ProducerConfig {
            max_in_flight: config.max_in_flight.max(1),
            buffer_bytes: config.buffer_bytes.clamp(1, Semaphore::MAX_PERMITS),
            batch_size: config.batch_size.max(1),
            max_request_bytes: config.max_request_bytes.max(1),
            ..config
        };
        let frame_room = client
            .max_frame_bytes()
            .saturating_sub(REQUEST_HEADER_ROOM)
            .max(max_batch_bytes);
        let shared = Arc::new(Shared {
            max_request_bytes: config.max_request_bytes.min(frame_room),
            max_batch_bytes,
            buffer: Semaphore::new(config.buffer_bytes),
            state: Mutex::new(Accumulator::default()),
            wake: Notify::new(),
            retried: AtomicU64::new(0),
            failed_lookups: Mutex::new(std::collections::HashMap::new()),
            idempotence: idempotent.then(|| Mutex::new(sender::Idempotence::default())),
            txn,
            config,
        });
        tokio::spawn(sender::run(shared.clone(), client.clone()));
        Ok(Producer { shared, client })
    }

    /// The settings in use (after defaults and bounds were applied).
    pub fn config(&self) -> &ProducerConfig {
        &self.shared.config
    }

    /// Batches queued again after a retriable failure, since the start.
    /// While it is 0, every partition's records were appended in `send`
    /// order, each once.
    pub fn retried_batches(&self) -> u64 {
        self.shared.retried.load(Ordering::Relaxed)
    }

    /// Queues a message (timestamped now). Waits while the buffer is full
    /// (backpressure), then returns a future for the message's delivery.
    /// A keyed message goes to `murmur2(key)`'s partition, a keyless one
    /// round-robin (unless the config fixes a partition).
    pub async fn send(
        &self,
        topic: &str,
        key: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<DeliveryFuture> {
        let record = Record {
            timestamp: now_ms(),
            key,
            value: Some(value),
            headers: Vec::new(),
        };
        self.send_record(topic, None, record).await
    }

    /// Queues a full record (timestamp, headers, null value allowed) for
    /// `partition` (`None`: partitioned as [`Producer::send`] does). A
    /// record too large for the broker's `max_batch_bytes` even alone, or
    /// for a topic that cannot be looked up, gets a future that fails.
    pub async fn send_record(
        &self,
        topic: &str,
        partition: Option<u32>,
        record: Record,
    ) -> Result<DeliveryFuture> {
        let shared = &self.shared;
        if let Some(t) = shared.txn.as_ref() {
            t.lock().can_send()?;
        }
        let size = RecordSize::of(&record);
        if size.alone() > shared.max_batch_bytes {
            return Ok(DeliveryFuture::failed(ClientError::InvalidArgument(format!(
                "a record of about {} bytes makes a batch of {} bytes, larger than the broker's max_batch_bytes {}",
                size.core,
                size.alone(),
                shared.max_batch_bytes
            ))));
        }
        let partition = match partition.or(shared.config.partition) {
            Some(p) => p,
            None => match self.partition_for(topic, record.key.as_deref()).await {
                Ok(p) => p,
                Err(e) => return Ok(DeliveryFuture::failed(e)),
            },
        };
        let want = size.core.min(shared.config.buffer_bytes);
        let permits = u32::try_from(want).unwrap_or(u32::MAX);
        match shared.buffer.try_acquire_many(permits) {
            Ok(p) => p.forget(),
            Err(TryAcquireError::NoPermits) => shared
                .buffer
                .acquire_many(permits)
                .await
                .map_err(|_| ClientError::Closed)?
                .forget(),
            Err(TryAcquireError::Closed) => return Err(ClientError::Closed),
        }
        let appended = {
            let mut st = shared.lock();
            if st.dead {
                None
            } else {
                Some(st.append(
                    &shared.config,
                    topic,
                    partition,
                    record,
                    size,
                    permits as usize,
                ))
            }
        };
        let Some(appended) = appended else {
            shared.buffer.add_permits(permits as usize);
            return Err(ClientError::Closed);
        };
        if appended.wake {
            shared.wake.notify_one();
        }
        Ok(appended.delivery)
    }

    /// The partition of a record sent without one: its key's, or the next
    /// in round robin. Looks the topic's partition count up once.
    async fn partition_for(&self, topic: &str, key: Option<&[u8]>) -> Result<u32> {
        let max_age = self.shared.config.metadata_max_age;
        let (known, stale) = self.shared.lock().partitions(topic, max_age);
        let n = match (known, stale) {
            (Some(n), false) => n,
            // Looked up again; while the broker cannot say, the count
            // known so far stays in use.
            (Some(old), true) => {
                let n = self.partition_count(topic).await.unwrap_or(old);
                self.shared.lock().set_partitions(topic, n);
                n
            }
            (None, _) => {
                let n = self.partition_count(topic).await?;
                self.shared.lock().set_partitions(topic, n);
                n
            }
        };
        Ok(match key {
            Some(k) => partition_for_key(k, n),
            None => self.shared.lock().round_robin(topic).unwrap_or(0),
        })
    }

    /// Asks the broker for `topic`'s partition count, retrying retriable
    /// failures within the delivery timeout.
    async fn partition_count(&self, topic: &str) -> Result<u32> {
        let shared = &self.shared;
        let recent = {
            let failed = shared
                .failed_lookups
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            failed
                .get(topic)
                .filter(|(_, at)| at.elapsed() < FAILED_LOOKUP_TTL)
                .map(|(e, _)| e.clone())
        };
        if let Some(e) = recent {
            return Err(e);
        }
        let config = &shared.config;
        let mut attempt = 0;
        let deadline = tokio::time::Instant::now() + config.delivery_timeout;
        let result = loop {
            match self.client.describe_topic(topic).await {
                Ok(info) => break Ok(info.partition_count()),
                Err(e)
                    if e.is_retriable()
                        && attempt < config.retries
                        && tokio::time::Instant::now() < deadline =>
                {
                    attempt += 1;
                    tokio::time::sleep(accumulator::backoff(config, attempt)).await;
                }
                Err(e) => break Err(e),
            }
        };
        let mut failed = shared
            .failed_lookups
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(0) => Err(ClientError::Protocol(format!(
                "the broker describes topic `{topic}` with no partitions"
            ))),
            Ok(n) => {
                failed.remove(topic);
                Ok(n)
            }
            Err(e) => {
                failed.insert(topic.to_string(), (e.clone(), tokio::time::Instant::now()));
                Err(e)
            }
        }
    }

    /// Sends everything buffered now and waits until every message queued
    /// before this call is acknowledged or failed.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if st.dead {
                return Err(ClientError::Closed);
            }
            st.flush(tx);
        }
        self.shared.wake.notify_one();
        rx.await.map_err(|_| ClientError::Closed)
    }
}

impl Producer {
    fn txn(&self) -> Result<&TxnShared> {
        self.shared.txn.as_ref().ok_or_else(|| {
            ClientError::InvalidTxnState(
                "this producer is not transactional (set ProducerConfig::transactional_id)".into(),
            )
        })
    }

    /// The producer id and epoch (a transactional producer has them once
    /// `init_transactions` returned).
    fn identity(&self) -> Result<(i64, i16)> {
        self.shared
            .idempotence
            .as_ref()
            .and_then(|i| lock_idem(i).id)
            .ok_or_else(|| ClientError::InvalidTxnState("call init_transactions first".into()))
    }

    fn txn_deadline(&self) -> std::time::Instant {
        std::time::Instant::now() + self.shared.config.transaction_call_timeout
    }

    /// Sets a new producer id and epoch (numbering from 0 again).
    fn set_identity(&self, id: (i64, i16)) {
        if let Some(i) = self.shared.idempotence.as_ref() {
            let mut i = lock_idem(i);
            i.id = Some(id);
            i.restart();
        }
    }

    /// Registers the transactional id with its coordinator and takes its
    /// producer id and a new epoch: a producer with the same id that is
    /// still running is fenced from now on, and a transaction it left open
    /// is aborted (so nothing of it becomes visible). Call once, before
    /// the first transaction; a failed call may be retried.
    pub async fn init_transactions(&self) -> Result<()> {
        let t = self.txn()?;
        t.lock().can_init()?;
        let id = self
            .client
            .init_transactional_producer(
                &t.coordinator,
                self.shared.config.transaction_timeout,
                None,
                self.txn_deadline(),
            )
            .await?;
        tracing::debug!(
            transactional_id = t.coordinator.transactional_id,
            producer_id = id.0,
            epoch = id.1,
            "transactional producer initialized"
        );
        self.set_identity(id);
        t.lock().initialized();
        Ok(())
    }

    /// Opens a transaction (locally: the coordinator hears of it with the
    /// first partition or offsets added).
    pub fn begin_transaction(&self) -> Result<()> {
        self.txn()?.lock().begin()
    }

    /// Adds a consumer group's offsets (each the next offset to consume) to
    /// the open transaction: the group commits them only if the
    /// transaction commits. `group` names the member (see
    /// [`crate::GroupConsumer::group_metadata`]); the group's coordinator
    /// refuses offsets of a member that is no longer in its generation,
    /// which makes the transaction abortable.
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: &[OffsetCommit],
        group: &ConsumerGroupMetadata,
    ) -> Result<()> {
        let t = self.txn()?;
        t.lock().can_add_offsets()?;
        let id = self.identity()?;
        let res = async {
            self.client
                .add_offsets_to_txn(&t.coordinator, id, &group.group, self.txn_deadline())
                .await?;
            t.lock().open_at_coordinator = true;
            self.client
                .txn_offset_commit(&t.coordinator.transactional_id, id, group, offsets)
                .await
        }
        .await;
        res.map_err(|e| t.lock().fail(e))
    }

    /// Commits the open transaction: waits until every record sent in it
    /// is acknowledged, then asks the coordinator to commit (answered once
    /// the commit markers are written). If a record failed, the
    /// transaction cannot commit: [`ClientError::AbortableTransaction`]
    /// (call [`Producer::abort_transaction`]). A retriable failure of the
    /// commit itself (the coordinator unreachable past
    /// `transaction_call_timeout`) may be retried by calling this again.
    pub async fn commit_transaction(&self) -> Result<()> {
        let t = self.txn()?;
        t.lock().begin_commit()?;
        let flushed = self.flush().await;
        {
            let mut st = t.lock();
            st.begin_commit()?;
            if let Err(e) = flushed {
                return Err(st.fail(e));
            }
        }
        let open = t.lock().open_at_coordinator;
        if open {
            let id = self.identity()?;
            if let Err(e) = self
                .client
                .end_txn(&t.coordinator, id, true, self.txn_deadline())
                .await
            {
                if e.is_retriable() {
                    // Still Committing: commit_transaction may be called again.
                    return Err(e);
                }
                return Err(t.lock().fail(e));
            }
        }
        t.lock().ended();
        Ok(())
    }

    /// Aborts the open transaction: records not sent yet are dropped (their
    /// deliveries fail), those in flight are waited for, then the
    /// coordinator writes abort markers, so read_committed consumers never
    /// see any of them. Allowed after a failure made the transaction
    /// abortable; not after the producer was fenced.
    pub async fn abort_transaction(&self) -> Result<()> {
        let t = self.txn()?;
        t.lock().begin_abort()?;
        // Dropped and failed records are expected here.
        let _ = self.flush().await;
        let (open, bump) = {
            let st = t.lock();
            if let txn::Phase::Fatal(e) = &st.phase {
                return Err(e.clone());
            }
            (st.open_at_coordinator, st.bump_epoch)
        };
        let id = self.identity()?;
        if open {
            self.client
                .end_txn(&t.coordinator, id, false, self.txn_deadline())
                .await
                .map_err(|e| {
                    if txn::is_fencing(&e) {
                        t.lock().fail(e)
                    } else {
                        e
                    }
                })?;
        }
        if bump {
            // A batch failed for good: its partition's sequence has a gap,
            // so the producer goes on at its next epoch (KIP-360).
            let next = self
                .client
                .init_transactional_producer(
                    &t.coordinator,
                    self.shared.config.transaction_timeout,
                    Some(id),
                    self.txn_deadline(),
                )
                .await
                .map_err(|e| {
                    if txn::is_fencing(&e) {
                        t.lock().fail(e)
                    } else {
                        e
                    }
                })?;
            self.set_identity(next);
        }
        t.lock().ended();
        Ok(())
    }

    /// The transactional id, if this producer is transactional.
    pub fn transactional_id(&self) -> Option<&str> {
        self.shared.config.transactional_id.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_parse() {
        assert_eq!("0".parse::<Acks>().unwrap().to_wire(), 0);
        assert_eq!("1".parse::<Acks>().unwrap().to_wire(), 1);
        assert_eq!("all".parse::<Acks>().unwrap().to_wire(), -1);
        assert!("2".parse::<Acks>().is_err());
    }

    #[test]
    fn backoff_grows_and_caps() {
        use accumulator::backoff;
        let c = ProducerConfig::default();
        assert_eq!(backoff(&c, 1), Duration::from_millis(20));
        assert_eq!(backoff(&c, 2), Duration::from_millis(40));
        assert_eq!(backoff(&c, 10), Duration::from_millis(100));
        assert_eq!(backoff(&c, 1000), Duration::from_millis(100));
    }
}
