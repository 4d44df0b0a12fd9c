//! [`Producer`]: batches messages per partition, compresses, sends with a
//! bounded number of requests in flight, retries retriable failures and
//! reports each message's fate.
//!
//! Memory is bounded by [`ProducerConfig::buffer_bytes`]: `send` waits while
//! that many bytes of messages are neither acknowledged nor failed.
//!
//! Each partition's batches go to its leader (see [`Client`]); retriable
//! failures (no leader, `NotLeader`, lost connections, timeouts) are retried
//! with backoff until [`ProducerConfig::delivery_timeout`], so a leader
//! failover is a pause, not an error. Order within a partition is kept
//! across retries: a partition's batches are pipelined only to one leader
//! connection at a time, a failed batch holds back the partition's later
//! batches until it is acknowledged (batches already in flight with it
//! are retried with it, in order), and after a failure the partition has
//! one request in flight until one succeeds. A retry may write a batch
//! twice (no idempotence yet).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use levee_engine::{Compression, Record};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::client::{Client, InFlightProduce, ProduceOutcome};
use crate::codec::{build_batch, partition_for_key};
use crate::error::{ClientError, Result};

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
    /// A partition's batch is sent once it holds this many bytes (default 64 KiB).
    pub batch_size: usize,
    /// ... or once its first message has waited this long (default 5 ms).
    pub linger: Duration,
    /// Produce requests in flight at once (default 5).
    pub max_in_flight: usize,
    /// Bytes of unacknowledged messages buffered before `send` waits (default 32 MiB).
    pub buffer_bytes: usize,
    /// Largest produce request (default 8 MiB; a single larger batch is still sent alone).
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
        }
    }
}

/// Where an acknowledged message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The message's offset; `None` with acks=0 (the broker does not answer).
    pub offset: Option<u64>,
}

/// Resolves when the message is acknowledged (or written, with acks=0), or
/// with the error that failed it.
#[derive(Debug)]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<DeliveryReport>>,
}

impl Future for DeliveryFuture {
    type Output = Result<DeliveryReport>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            Poll::Ready(Err(_)) => Poll::Ready(Err(ClientError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

type Reply = oneshot::Sender<Result<DeliveryReport>>;

struct Msg {
    topic: String,
    partition: Option<u32>,
    record: Record,
    size: usize,
    permit: OwnedSemaphorePermit,
    reply: Reply,
}

enum Cmd {
    Send(Msg),
    Flush(oneshot::Sender<()>),
}

/// A batching, retrying producer. Dropping it sends what is buffered in the
/// background; call [`Producer::flush`] to wait for everything.
#[derive(Debug)]
pub struct Producer {
    tx: mpsc::UnboundedSender<Cmd>,
    buffer: Arc<Semaphore>,
    buffer_bytes: usize,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn record_size(r: &Record) -> usize {
    24 + r.key.as_ref().map_or(0, Vec::len)
        + r.value.as_ref().map_or(0, Vec::len)
        + r.headers
            .iter()
            .map(|(k, v)| 8 + k.len() + v.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
}

impl Producer {
    /// Starts a producer on `client` (spawns its batching task on the
    /// current tokio runtime).
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let config = ProducerConfig {
            max_in_flight: config.max_in_flight.max(1),
            buffer_bytes: config.buffer_bytes.clamp(1, Semaphore::MAX_PERMITS),
            batch_size: config.batch_size.max(1),
            ..config
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let buffer = Arc::new(Semaphore::new(config.buffer_bytes));
        let buffer_bytes = config.buffer_bytes;
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let worker = Worker {
            inflight: Arc::new(Semaphore::new(config.max_in_flight)),
            client,
            config: Arc::new(config),
            topics: HashMap::new(),
            failed: HashMap::new(),
            batches: HashMap::new(),
            parts: HashMap::new(),
            next_seq: 0,
            done_tx,
        };
        tokio::spawn(worker.run(rx, done_rx));
        Producer {
            tx,
            buffer,
            buffer_bytes,
        }
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
    /// `partition` (`None`: partitioned as [`Producer::send`] does).
    pub async fn send_record(
        &self,
        topic: &str,
        partition: Option<u32>,
        record: Record,
    ) -> Result<DeliveryFuture> {
        let size = record_size(&record);
        let want = size.min(self.buffer_bytes) as u32;
        let permit = self
            .buffer
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| ClientError::Closed)?;
        let (reply, rx) = oneshot::channel();
        let msg = Msg {
            topic: topic.to_string(),
            partition,
            record,
            size,
            permit,
            reply,
        };
        self.tx
            .send(Cmd::Send(msg))
            .map_err(|_| ClientError::Closed)?;
        Ok(DeliveryFuture { rx })
    }

    /// Sends everything buffered now and waits until every message queued
    /// before this call is acknowledged or failed.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Flush(tx))
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }
}

struct Pending {
    records: Vec<Record>,
    replies: Vec<(Reply, OwnedSemaphorePermit)>,
    bytes: usize,
    deadline: Instant,
    /// When the first message joined (its delivery timeout runs from here).
    created: Instant,
}

struct TopicMeta {
    partitions: u32,
    next: u32,
}

type Key = (String, u32);

/// A partition with batches in flight or waiting for a retry.
#[derive(Default)]
struct PartState {
    /// Batches in flight.
    inflight: usize,
    /// The node they were sent to (`None`: not a known leader).
    node: Option<u32>,
    /// Failed batches waiting to be sent again, in sequence order.
    retry: Vec<Ready>,
    /// Consecutive failed attempts (0 once a batch succeeds).
    attempts: u32,
    /// When the retry may go.
    retry_at: Option<Instant>,
}

struct Worker {
    client: Client,
    config: Arc<ProducerConfig>,
    inflight: Arc<Semaphore>,
    topics: HashMap<String, TopicMeta>,
    /// Recent metadata failures, so that a burst of messages to a missing
    /// topic costs one lookup, not one per message.
    failed: HashMap<String, (ClientError, Instant)>,
    batches: HashMap<Key, Pending>,
    parts: HashMap<Key, PartState>,
    next_seq: u64,
    done_tx: mpsc::UnboundedSender<Done>,
}

/// How long a failed topic lookup is remembered.
const FAILED_LOOKUP_TTL: Duration = Duration::from_secs(1);

/// A built batch on its way to the broker.
struct Ready {
    topic: String,
    partition: u32,
    /// Order of the batch within its partition.
    seq: u64,
    bytes: Bytes,
    replies: Vec<(Reply, OwnedSemaphorePermit)>,
    /// Past this, a retriable failure fails the messages.
    deadline: Instant,
    /// Failed attempts so far.
    attempts: u32,
}

/// The outcome of one request, reported back to the worker.
struct Done {
    /// Every partition the request carried.
    keys: Vec<Key>,
    /// The partitions acknowledged.
    ok: Vec<Key>,
    /// The batches to send again, and why.
    retry: Vec<(Ready, ClientError)>,
}

impl Ready {
    fn key(&self) -> Key {
        (self.topic.clone(), self.partition)
    }
    fn fail(self, e: &ClientError) {
        for (r, _permit) in self.replies {
            let _ = r.send(Err(e.clone()));
        }
    }
    fn deliver(self, base: Option<u64>) {
        for (i, (r, _permit)) in self.replies.into_iter().enumerate() {
            let _ = r.send(Ok(DeliveryReport {
                topic: self.topic.clone(),
                partition: self.partition,
                offset: base.map(|b| b + i as u64),
            }));
        }
    }
    /// One batch out of several of one partition, in sequence order: the
    /// stored batches end to end (the broker appends them in order).
    fn merge(mut v: Vec<Ready>) -> Option<Ready> {
        v.sort_by_key(|r| r.seq);
        let mut it = v.into_iter();
        let mut first = it.next()?;
        let rest: Vec<Ready> = it.collect();
        if rest.is_empty() {
            return Some(first);
        }
        let mut bytes = bytes::BytesMut::from(&first.bytes[..]);
        for r in rest {
            bytes.extend_from_slice(&r.bytes);
            first.replies.extend(r.replies);
            first.deadline = first.deadline.min(r.deadline);
            first.attempts = first.attempts.max(r.attempts);
        }
        first.bytes = bytes.freeze();
        Some(first)
    }
}

impl Worker {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Cmd>,
        mut done_rx: mpsc::UnboundedReceiver<Done>,
    ) {
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut closing = false;
        loop {
            if (closing || !flushes.is_empty()) && self.idle() {
                for f in flushes.drain(..) {
                    let _ = f.send(());
                }
                if closing {
                    return;
                }
            }
            let force = closing || !flushes.is_empty();
            // While every in-flight slot is taken, messages keep joining
            // their batches instead of each waiting to go alone (with a
            // short linger, that is what fills batches under load).
            let slot_free = self.inflight.available_permits() > 0;
            let wake = if slot_free {
                self.next_wake(force)
            } else {
                None
            };
            let waiting = !slot_free && self.has_work();
            tokio::select! {
                cmd = rx.recv(), if !force => match cmd {
                    Some(Cmd::Send(m)) => {
                        self.add(m).await;
                        // Take everything already queued before sending.
                        while let Ok(cmd) = rx.try_recv() {
                            match cmd {
                                Cmd::Send(m) => self.add(m).await,
                                Cmd::Flush(done) => {
                                    flushes.push(done);
                                    break;
                                }
                            }
                        }
                    }
                    Some(Cmd::Flush(done)) => flushes.push(done),
                    None => closing = true,
                },
                Some(done) = done_rx.recv() => {
                    self.on_done(done);
                    while let Ok(done) = done_rx.try_recv() {
                        self.on_done(done);
                    }
                }
                _ = sleep_until_opt(wake) => {}
                permit = self.inflight.clone().acquire_owned(), if waiting => drop(permit),
            }
            let force = closing || !flushes.is_empty();
            self.send_ready(force).await;
        }
    }

    /// Nothing buffered, in flight or waiting for a retry.
    fn idle(&self) -> bool {
        self.batches.is_empty()
            && self
                .parts
                .values()
                .all(|s| s.inflight == 0 && s.retry.is_empty())
    }

    fn has_work(&self) -> bool {
        !self.batches.is_empty() || self.parts.values().any(|s| !s.retry.is_empty())
    }

    /// Whether new batches of `key` must wait: it has batches waiting for
    /// a retry, or batches in flight that a new one could overtake (sent to
    /// another node than it would go to now, or after a failure).
    fn held(&self, key: &Key) -> bool {
        let Some(s) = self.parts.get(key) else {
            return false;
        };
        if !s.retry.is_empty() {
            return true;
        }
        if s.inflight == 0 {
            return false;
        }
        s.attempts > 0 || s.node.is_none() || self.client.cached_route(&key.0, key.1) != s.node
    }

    fn retry_due(&self, s: &PartState, now: Instant) -> bool {
        !s.retry.is_empty() && s.inflight == 0 && s.retry_at.is_none_or(|t| t <= now)
    }

    /// When something may become ready to send.
    fn next_wake(&self, force: bool) -> Option<Instant> {
        let now = Instant::now();
        let batches = self
            .batches
            .iter()
            .filter(|(k, _)| !self.held(k))
            .map(|(_, b)| if force { now } else { b.deadline });
        let retries = self
            .parts
            .values()
            .filter(|s| !s.retry.is_empty() && s.inflight == 0)
            .map(|s| s.retry_at.unwrap_or(now));
        batches.chain(retries).min()
    }

    fn on_done(&mut self, done: Done) {
        let now = Instant::now();
        for k in &done.keys {
            if let Some(s) = self.parts.get_mut(k) {
                s.inflight = s.inflight.saturating_sub(1);
            }
        }
        for k in &done.ok {
            if let Some(s) = self.parts.get_mut(k) {
                s.attempts = 0;
            }
        }
        let mut failed_keys: Vec<Key> = Vec::new();
        for (mut r, e) in done.retry {
            r.attempts += 1;
            if now >= r.deadline || r.attempts > self.config.retries {
                tracing::debug!(topic = %r.topic, partition = r.partition, error = %e, "giving up");
                r.fail(&e);
                continue;
            }
            tracing::debug!(topic = %r.topic, partition = r.partition, error = %e, attempt = r.attempts, "retrying");
            let k = r.key();
            let s = self.parts.entry(k.clone()).or_default();
            let at = s.retry.partition_point(|x| x.seq < r.seq);
            s.retry.insert(at, r);
            if !failed_keys.contains(&k) {
                failed_keys.push(k);
            }
        }
        for k in failed_keys {
            if let Some(s) = self.parts.get_mut(&k) {
                s.attempts += 1;
                s.retry_at = Some(now + backoff(&self.config, s.attempts));
            }
        }
        self.parts
            .retain(|_, s| s.inflight > 0 || !s.retry.is_empty() || s.attempts > 0);
    }

    async fn partition_count(&mut self, topic: &str) -> Result<&mut TopicMeta> {
        if !self.topics.contains_key(topic) {
            if let Some((e, at)) = self.failed.get(topic) {
                if at.elapsed() < FAILED_LOOKUP_TTL {
                    return Err(e.clone());
                }
            }
            let mut attempt = 0;
            let deadline = Instant::now() + self.config.delivery_timeout;
            let info = loop {
                match self.client.describe_topic(topic).await {
                    Ok(i) => break i,
                    Err(e)
                        if e.is_retriable()
                            && attempt < self.config.retries
                            && Instant::now() < deadline =>
                    {
                        attempt += 1;
                        tokio::time::sleep(backoff(&self.config, attempt)).await;
                    }
                    Err(e) => {
                        self.failed
                            .insert(topic.to_string(), (e.clone(), Instant::now()));
                        return Err(e);
                    }
                }
            };
            self.failed.remove(topic);
            let partitions = info.partition_count();
            if partitions == 0 {
                return Err(ClientError::Protocol(format!(
                    "the broker describes topic `{topic}` with no partitions"
                )));
            }
            self.topics.insert(
                topic.to_string(),
                TopicMeta {
                    partitions,
                    next: 0,
                },
            );
        }
        self.topics
            .get_mut(topic)
            .ok_or_else(|| ClientError::Protocol("topic metadata vanished".into()))
    }

    async fn add(&mut self, m: Msg) {
        let fixed = m.partition.or(self.config.partition);
        let partition = match fixed {
            Some(p) => p,
            None => match self.partition_count(&m.topic).await {
                Ok(meta) => match &m.record.key {
                    Some(k) => partition_for_key(k, meta.partitions),
                    None => {
                        let p = meta.next % meta.partitions;
                        meta.next = meta.next.wrapping_add(1);
                        p
                    }
                },
                Err(e) => {
                    let _ = m.reply.send(Err(e));
                    return;
                }
            },
        };
        let linger = self.config.linger;
        let b = self.batches.entry((m.topic, partition)).or_insert_with(|| {
            let now = Instant::now();
            Pending {
                records: Vec::new(),
                replies: Vec::new(),
                bytes: 0,
                deadline: now + linger,
                created: now,
            }
        });
        b.records.push(m.record);
        b.replies.push((m.reply, m.permit));
        b.bytes += m.size;
    }

    /// Sends due retries and the batches that are full or whose linger
    /// expired (all with `force`), grouped into requests of at most
    /// `max_request_bytes`, while in-flight slots are free.
    async fn send_ready(&mut self, force: bool) {
        loop {
            let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
                return;
            };
            // From here to `start_produce` nothing awaits, so the routes
            // checked by `held` are the routes the request takes.
            let parts = self.collect(force);
            if parts.is_empty() {
                return;
            }
            self.dispatch(parts, permit).await;
        }
    }

    /// The batches for one request.
    fn collect(&mut self, force: bool) -> Vec<Ready> {
        let now = Instant::now();
        let max = self.config.max_request_bytes;
        let mut request: Vec<Ready> = Vec::new();
        let mut bytes = 0;
        let due: Vec<Key> = self
            .parts
            .iter()
            .filter(|(_, s)| self.retry_due(s, now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            if !request.is_empty() && bytes >= max {
                break;
            }
            let Some(s) = self.parts.get_mut(&k) else {
                continue;
            };
            let Some(r) = Ready::merge(std::mem::take(&mut s.retry)) else {
                continue;
            };
            bytes += r.bytes.len();
            request.push(r);
        }
        let size = self.config.batch_size;
        let keys: Vec<Key> = self
            .batches
            .iter()
            .filter(|(k, b)| (force || b.bytes >= size || b.deadline <= now) && !self.held(k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if !request.is_empty() && bytes >= max {
                break;
            }
            let Some(p) = self.batches.get(&key) else {
                continue;
            };
            // Would this batch overflow the request? Leave it for the next.
            if !request.is_empty() && bytes + p.bytes > max {
                continue;
            }
            let Some(p) = self.batches.remove(&key) else {
                continue;
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            match build_batch(&p.records, self.config.compression) {
                Ok(b) => {
                    bytes += b.len();
                    request.push(Ready {
                        topic: key.0,
                        partition: key.1,
                        seq,
                        bytes: Bytes::from(b),
                        replies: p.replies,
                        deadline: p.created + self.config.delivery_timeout,
                        attempts: 0,
                    });
                }
                Err(e) => {
                    for (r, _permit) in p.replies {
                        let _ = r.send(Err(ClientError::InvalidArgument(e.clone())));
                    }
                }
            }
        }
        request
    }

    /// Queues `parts` on their leaders' connections now (in dispatch
    /// order, which keeps each partition's order on a connection) and
    /// waits for the outcome in the background.
    async fn dispatch(&mut self, parts: Vec<Ready>, permit: OwnedSemaphorePermit) {
        for p in &parts {
            self.parts.entry(p.key()).or_default().inflight += 1;
        }
        let first = self
            .client
            .start_produce(
                self.config.acks.to_wire(),
                self.config.produce_timeout,
                request_of(&parts),
            )
            .await;
        let nodes = match &first {
            Ok(f) => f.leaders(),
            Err(_) => vec![None; parts.len()],
        };
        for (p, node) in parts.iter().zip(nodes) {
            if let Some(s) = self.parts.get_mut(&p.key()) {
                s.node = node;
            }
        }
        let done_tx = self.done_tx.clone();
        tokio::spawn(async move {
            let done = run_request(parts, first).await;
            let _ = done_tx.send(done);
            drop(permit);
        });
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn backoff(config: &ProducerConfig, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    config
        .retry_backoff
        .saturating_mul(factor)
        .min(config.max_retry_backoff)
}

fn request_of(parts: &[Ready]) -> Vec<(String, u32, Bytes)> {
    parts
        .iter()
        .map(|p| (p.topic.clone(), p.partition, p.bytes.clone()))
        .collect()
}

/// Waits for one request's outcome, resolves the futures of the messages
/// acknowledged or failed for good, and returns the rest for a retry.
async fn run_request(parts: Vec<Ready>, first: Result<InFlightProduce>) -> Done {
    let outcomes = match first {
        Ok(f) => f.wait_each().await,
        Err(e) => vec![ProduceOutcome::Failed(e); parts.len()],
    };
    let mut done = Done {
        keys: Vec::with_capacity(parts.len()),
        ok: Vec::new(),
        retry: Vec::new(),
    };
    for (p, o) in parts.into_iter().zip(outcomes) {
        let key = p.key();
        done.keys.push(key.clone());
        match o {
            ProduceOutcome::Written => {
                p.deliver(None);
                done.ok.push(key);
            }
            ProduceOutcome::Answered(r) => match r.result() {
                Ok((base, _)) => {
                    p.deliver(Some(base));
                    done.ok.push(key);
                }
                Err(e) if e.is_retriable() => done.retry.push((p, e)),
                Err(e) => p.fail(&e),
            },
            ProduceOutcome::Failed(e) if e.is_retriable() => done.retry.push((p, e)),
            ProduceOutcome::Failed(e) => p.fail(&e),
        }
    }
    done
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
        let c = ProducerConfig::default();
        assert_eq!(backoff(&c, 1), Duration::from_millis(20));
        assert_eq!(backoff(&c, 2), Duration::from_millis(40));
        assert_eq!(backoff(&c, 10), Duration::from_millis(100));
        assert_eq!(backoff(&c, 1000), Duration::from_millis(100));
    }
}
