//! [`Producer`]: batches messages per partition, compresses, sends with a
//! bounded number of requests in flight, retries retriable failures and
//! reports each message's fate.
//!
//! Memory is bounded by [`ProducerConfig::buffer_bytes`]: `send` waits while
//! that many bytes of messages are neither acknowledged nor failed.
//! Ordering within a partition is kept unless a request is retried while
//! later ones are in flight (as in Kafka without idempotence).

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

use crate::client::Client;
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
    /// Retries of a retriable failure (default 5).
    pub retries: u32,
    /// First retry delay, doubled per attempt up to `max_retry_backoff` (default 100 ms).
    pub retry_backoff: Duration,
    /// Largest retry delay (default 2 s).
    pub max_retry_backoff: Duration,
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
            retries: 5,
            retry_backoff: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(2),
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
        let worker = Worker {
            inflight: Arc::new(Semaphore::new(config.max_in_flight)),
            client,
            config: Arc::new(config),
            topics: HashMap::new(),
            failed: HashMap::new(),
            batches: HashMap::new(),
        };
        tokio::spawn(worker.run(rx));
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
}

struct TopicMeta {
    partitions: u32,
    next: u32,
}

struct Worker {
    client: Client,
    config: Arc<ProducerConfig>,
    inflight: Arc<Semaphore>,
    topics: HashMap<String, TopicMeta>,
    /// Recent metadata failures, so that a burst of messages to a missing
    /// topic costs one lookup, not one per message.
    failed: HashMap<String, (ClientError, Instant)>,
    batches: HashMap<(String, u32), Pending>,
}

/// How long a failed topic lookup is remembered.
const FAILED_LOOKUP_TTL: Duration = Duration::from_secs(1);

/// A built batch on its way to the broker.
struct Ready {
    topic: String,
    partition: u32,
    bytes: Bytes,
    replies: Vec<(Reply, OwnedSemaphorePermit)>,
}

impl Ready {
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
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            // While every in-flight slot is taken, messages keep joining
            // their batches instead of each waiting to go alone (with a
            // short linger, that is what fills batches under load).
            let slot_free = self.inflight.available_permits() > 0;
            let deadline = if slot_free {
                self.batches.values().map(|b| b.deadline).min()
            } else {
                None
            };
            let waiting = !slot_free && !self.batches.is_empty();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Send(m)) => {
                        self.add(m).await;
                        // Take everything already queued before sending.
                        while let Ok(cmd) = rx.try_recv() {
                            match cmd {
                                Cmd::Send(m) => self.add(m).await,
                                Cmd::Flush(done) => {
                                    self.send_ready(true).await;
                                    self.wait_inflight().await;
                                    let _ = done.send(());
                                }
                            }
                        }
                    }
                    Some(Cmd::Flush(done)) => {
                        self.send_ready(true).await;
                        self.wait_inflight().await;
                        let _ = done.send(());
                    }
                    None => {
                        self.send_ready(true).await;
                        self.wait_inflight().await;
                        return;
                    }
                },
                _ = sleep_until_opt(deadline) => {}
                permit = self.inflight.clone().acquire_owned(), if waiting => drop(permit),
            }
            if self.inflight.available_permits() > 0 {
                self.send_ready(false).await;
            }
        }
    }

    async fn wait_inflight(&self) {
        let n = self.config.max_in_flight as u32;
        // Holding every permit means no request is in flight.
        let _all = self.inflight.acquire_many(n).await;
    }

    async fn partition_count(&mut self, topic: &str) -> Result<&mut TopicMeta> {
        if !self.topics.contains_key(topic) {
            if let Some((e, at)) = self.failed.get(topic) {
                if at.elapsed() < FAILED_LOOKUP_TTL {
                    return Err(e.clone());
                }
            }
            let mut attempt = 0;
            let info = loop {
                match self.client.describe_topic(topic).await {
                    Ok(i) => break i,
                    Err(e) if e.is_retriable() && attempt < self.config.retries => {
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
        let b = self
            .batches
            .entry((m.topic, partition))
            .or_insert_with(|| Pending {
                records: Vec::new(),
                replies: Vec::new(),
                bytes: 0,
                deadline: Instant::now() + linger,
            });
        b.records.push(m.record);
        b.replies.push((m.reply, m.permit));
        b.bytes += m.size;
    }

    /// Sends the batches that are full or whose linger expired (all with
    /// `force`), grouped into requests of at most `max_request_bytes`.
    async fn send_ready(&mut self, force: bool) {
        let now = Instant::now();
        let size = self.config.batch_size;
        let keys: Vec<(String, u32)> = self
            .batches
            .iter()
            .filter(|(_, b)| force || b.bytes >= size || b.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        let mut request: Vec<Ready> = Vec::new();
        let mut request_bytes = 0;
        for key in keys {
            let Some(p) = self.batches.remove(&key) else {
                continue;
            };
            let ready = match build_batch(&p.records, self.config.compression) {
                Ok(bytes) => Ready {
                    topic: key.0,
                    partition: key.1,
                    bytes: Bytes::from(bytes),
                    replies: p.replies,
                },
                Err(e) => {
                    for (r, _permit) in p.replies {
                        let _ = r.send(Err(ClientError::InvalidArgument(e.clone())));
                    }
                    continue;
                }
            };
            if !request.is_empty()
                && request_bytes + ready.bytes.len() > self.config.max_request_bytes
            {
                self.dispatch(std::mem::take(&mut request)).await;
                request_bytes = 0;
            }
            request_bytes += ready.bytes.len();
            request.push(ready);
        }
        if !request.is_empty() {
            self.dispatch(request).await;
        }
    }

    /// Waits for an in-flight slot, then sends `parts` in the background.
    async fn dispatch(&self, parts: Vec<Ready>) {
        let permit = match self.inflight.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => {
                for p in parts {
                    p.fail(&ClientError::Closed);
                }
                return;
            }
        };
        let client = self.client.clone();
        let config = self.config.clone();
        // Queue the request on the connection here, in dispatch order, so
        // requests in flight keep each partition's order; only the wait for
        // the response (and any retry) runs in the spawned task.
        let first = client
            .start_produce(
                config.acks.to_wire(),
                config.produce_timeout,
                request_of(&parts),
            )
            .await;
        tokio::spawn(async move {
            run_request(client, config, parts, first).await;
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

/// Sends one produce request, retrying the partitions that fail with a
/// retriable error, and resolves every message's future.
fn request_of(parts: &[Ready]) -> Vec<(String, u32, Bytes)> {
    parts
        .iter()
        .map(|p| (p.topic.clone(), p.partition, p.bytes.clone()))
        .collect()
}

async fn run_request(
    client: Client,
    config: Arc<ProducerConfig>,
    mut parts: Vec<Ready>,
    first: Result<crate::client::InFlightProduce>,
) {
    let acks = config.acks.to_wire();
    let mut attempt = 0u32;
    let mut first = Some(first);
    loop {
        let can_retry = attempt < config.retries;
        let outcome = match first.take() {
            Some(Ok(inflight)) => inflight.wait().await,
            Some(Err(e)) => Err(e),
            None => {
                client
                    .produce(acks, config.produce_timeout, request_of(&parts))
                    .await
            }
        };
        match outcome {
            Ok(_) if acks == 0 => {
                for p in parts {
                    p.deliver(None);
                }
                return;
            }
            Ok(results) => {
                let mut retry = Vec::new();
                let positional = results.len() == parts.len();
                for (i, p) in parts.into_iter().enumerate() {
                    let found = results
                        .iter()
                        .find(|r| r.topic == p.topic && r.partition == p.partition)
                        .or_else(|| if positional { results.get(i) } else { None });
                    let Some(r) = found else {
                        let e = ClientError::Protocol(format!(
                            "the produce response has no entry for {}/{}",
                            p.topic, p.partition
                        ));
                        p.fail(&e);
                        continue;
                    };
                    match r.result() {
                        Ok((base, _)) => p.deliver(Some(base)),
                        Err(e) if e.is_retriable() && can_retry => {
                            tracing::debug!(topic = %p.topic, partition = p.partition, error = %e, "retrying");
                            retry.push(p);
                        }
                        Err(e) => p.fail(&e),
                    }
                }
                parts = retry;
            }
            Err(e) if e.is_retriable() && can_retry => {
                tracing::debug!(error = %e, attempt, "produce failed; retrying");
            }
            Err(e) => {
                for p in parts {
                    p.fail(&e);
                }
                return;
            }
        }
        if parts.is_empty() {
            return;
        }
        attempt += 1;
        tokio::time::sleep(backoff(&config, attempt)).await;
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
        let c = ProducerConfig::default();
        assert_eq!(backoff(&c, 1), Duration::from_millis(100));
        assert_eq!(backoff(&c, 2), Duration::from_millis(200));
        assert_eq!(backoff(&c, 10), Duration::from_secs(2));
        assert_eq!(backoff(&c, 1000), Duration::from_secs(2));
    }
}
