//! [`Consumer`]: reads assigned partitions with long-poll fetches, checks
//! every batch's CRCs, decompresses, and tracks a position per partition.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use levee_schemas::proto::ErrorCode;

use crate::client::{Client, FetchRequestPartition, OffsetSpec};
use crate::codec::{decode_stored_batch, DecodeError, DecodedRecord};
use crate::error::{ClientError, Result};

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The first stored offset.
    Earliest,
    /// The end of the log: only records produced from now on.
    Latest,
    /// This offset.
    Offset(u64),
    /// The first offset at or after this timestamp (ms); the end of the
    /// log if none is.
    Timestamp(i64),
}

impl std::str::FromStr for StartPosition {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<StartPosition, String> {
        match s {
            "earliest" | "beginning" => Ok(StartPosition::Earliest),
            "latest" | "end" => Ok(StartPosition::Latest),
            _ => s
                .parse::<u64>()
                .map(StartPosition::Offset)
                .map_err(|_| format!("expected earliest, latest or an offset, not `{s}`")),
        }
    }
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// How long the broker holds a fetch waiting for `min_bytes` (default 500 ms).
    pub max_wait: Duration,
    /// Bytes the broker waits for before answering (default 1).
    pub min_bytes: u32,
    /// Upper bound on one fetch response (default 16 MiB).
    pub max_bytes: u32,
    /// Upper bound per partition in one fetch (default 1 MiB; at least one batch is returned).
    pub partition_max_bytes: u32,
    /// Largest batch accepted when validating (default 64 MiB).
    pub max_batch_bytes: usize,
    /// How long fetches may keep failing with retriable errors (no leader,
    /// `NotLeader`, lost connections, e.g. during a leader failover) before
    /// `poll` returns the error; until then the failing partitions are
    /// retried, from the same position, after reading the metadata again
    /// (default 30 s).
    pub retry_timeout: Duration,
    /// After a poll that returned data, send the next fetch right away, so
    /// the broker reads it (from disk, for a consumer catching up) while the
    /// application processes this one, as Kafka's consumer does. The next
    /// poll uses it if the positions are still the ones it was sent for.
    /// Costs up to one more fetch response of memory (default true).
    pub fetch_ahead: bool,
    /// Read only committed transactions (Kafka's isolation level
    /// read_committed): stop at each partition's last stable offset and
    /// skip the records of aborted transactions (default false: every
    /// record below the high watermark).
    pub read_committed: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 16 << 20,
            partition_max_bytes: 1 << 20,
            max_batch_bytes: 64 << 20,
            retry_timeout: Duration::from_secs(30),
            fetch_ahead: true,
            read_committed: false,
        }
    }
}

type FetchResults = Vec<Result<crate::client::FetchedPartition>>;

/// Whether a stored batch belongs to one of `aborted` (a read_committed
/// fetch's aborted transactions).
fn aborted_batch(aborted: &[crate::client::AbortedTxn], batch: &[u8]) -> bool {
    if aborted.is_empty() {
        return false;
    }
    let Ok(h) = levee_engine::batch::BatchHeader::parse(batch) else {
        return false;
    };
    aborted
        .iter()
        .any(|a| a.covers(h.producer_id(), h.base_offset(), h.is_transactional()))
}

/// A fetch sent ahead of the next poll (see [`ConsumerConfig::fetch_ahead`]).
#[derive(Debug)]
struct Ahead {
    request: Vec<FetchRequestPartition>,
    task: tokio::task::JoinHandle<FetchResults>,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A record read by the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset in the partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Key (`None`: null).
    pub key: Option<Vec<u8>>,
    /// Value (`None`: null).
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Reads assigned partitions. Not shared between tasks: `poll` takes `&mut self`.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    /// (topic, partition) → next offset to read.
    positions: BTreeMap<(String, u32), u64>,
    /// Since when every fetch failed with a retriable error.
    failing_since: Mutex<Option<Instant>>,
    /// The fetch sent ahead, if any.
    ahead: Mutex<Option<Ahead>>,
}

impl Consumer {
    /// A consumer with nothing assigned.
    pub fn new(client: Client, config: ConsumerConfig) -> Consumer {
        Consumer {
            client,
            config,
            positions: BTreeMap::new(),
            failing_since: Mutex::new(None),
            ahead: Mutex::new(None),
        }
    }

    /// Assigns `partitions` of `topic` (`None`: every partition), each
    /// starting at `start`. Returns the partitions assigned.
    pub async fn assign(
        &mut self,
        topic: &str,
        partitions: Option<Vec<u32>>,
        start: StartPosition,
    ) -> Result<Vec<u32>> {
        let info = self.client.describe_topic(topic).await?;
        let count = info.partition_count();
        let partitions = match partitions {
            Some(ps) => {
                if let Some(&bad) = ps.iter().find(|&&p| p >= count) {
                    return Err(ClientError::InvalidArgument(format!(
                        "topic `{topic}` has {count} partition(s) (0..{count}); there is no partition {bad}"
                    )));
                }
                ps
            }
            None => (0..count).collect(),
        };
        let offsets: Vec<(u32, u64)> = match start {
            StartPosition::Offset(o) => partitions.iter().map(|&p| (p, o)).collect(),
            StartPosition::Earliest => {
                self.lookup(topic, &partitions, OffsetSpec::Earliest)
                    .await?
            }
            StartPosition::Latest => self.lookup(topic, &partitions, OffsetSpec::Latest).await?,
            StartPosition::Timestamp(t) => {
                let found = self
                    .client
                    .list_offsets(topic, &partitions, OffsetSpec::Timestamp(t))
                    .await?;
                let latest = self.lookup(topic, &partitions, OffsetSpec::Latest).await?;
                latest
                    .into_iter()
                    .map(|(p, end)| {
                        let at = found
                            .iter()
                            .find(|(fp, _)| *fp == p)
                            .and_then(|(_, o)| *o)
                            .unwrap_or(end);
                        (p, at)
                    })
                    .collect()
            }
        };
        for (p, o) in offsets {
            self.positions.insert((topic.to_string(), p), o);
        }
        Ok(partitions)
    }

    async fn lookup(
        &self,
        topic: &str,
        partitions: &[u32],
        spec: OffsetSpec,
    ) -> Result<Vec<(u32, u64)>> {
        let found = self.client.list_offsets(topic, partitions, spec).await?;
        partitions
            .iter()
            .map(|&p| {
                found
                    .iter()
                    .find(|(fp, _)| *fp == p)
                    .and_then(|(_, o)| o.map(|o| (p, o)))
                    .ok_or_else(|| {
                        ClientError::Protocol(format!(
                            "list offsets returned no offset for {topic}/{p}"
                        ))
                    })
            })
            .collect()
    }

    /// Stops reading `topic` (every partition).
    pub fn unassign(&mut self, topic: &str) {
        self.positions.retain(|(t, _), _| t != topic);
    }

    /// The next offset to be read from a partition, if assigned.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.positions.get(&(topic.to_string(), partition)).copied()
    }

    /// Every assigned partition and its position.
    pub fn positions(&self) -> impl Iterator<Item = (&str, u32, u64)> {
        self.positions
            .iter()
            .map(|((t, p), o)| (t.as_str(), *p, *o))
    }

    /// Moves an assigned (or new) partition's position.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) {
        self.positions
            .insert((topic.to_string(), partition), offset);
    }

    /// Fetches once from every assigned partition (the broker waits up to
    /// `max_wait` for data) and returns the records read, in offset order
    /// per partition. Empty when nothing arrived in time. Positions advance
    /// past the returned records; on error no position moves. Each
    /// partition is read from its leader; partitions failing with a
    /// retriable error (leader change, lost connection) return nothing and
    /// are fetched again from the same position by the next poll (see
    /// [`ConsumerConfig::retry_timeout`]).
    ///
    /// A position below the partition's log start (data deleted by
    /// retention) moves to the log start; a position past the end is an
    /// [`ClientError::OffsetOutOfRange`].
    pub async fn poll(&mut self) -> Result<Vec<ConsumedRecord>> {
        let fetched = self.fetch_once().await?;
        if let Some(e) = fetched
            .out_of_range
            .iter()
            .find(|e| e.offset >= e.log_start)
        {
            return Err(e.error());
        }
        for e in &fetched.out_of_range {
            tracing::warn!(topic = %e.topic, partition = e.partition, pos = e.offset,
                log_start = e.log_start, "position was deleted by retention; moving to the log start");
            self.seek(&e.topic, e.partition, e.log_start);
        }
        Ok(self.apply(fetched))
    }

    /// Moves the positions past the fetched records and returns them.
    pub(crate) fn apply(&mut self, fetched: Fetched) -> Vec<ConsumedRecord> {
        let moved = !fetched.moves.is_empty();
        for (k, o) in fetched.moves {
            self.positions.insert(k, o);
        }
        if moved && self.config.fetch_ahead {
            self.send_ahead();
        }
        fetched.records
    }

    /// The fetch for the current positions.
    fn request(&self) -> Vec<FetchRequestPartition> {
        self.positions
            .iter()
            .map(|((t, p), o)| FetchRequestPartition {
                topic: t.clone(),
                partition: *p,
                offset: *o,
                max_bytes: self.config.partition_max_bytes,
            })
            .collect()
    }

    /// Sends the fetch for the current positions in the background (on the
    /// current tokio runtime; nothing outside one).
    fn send_ahead(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let request = self.request();
        let client = self.client.clone();
        let (wait, min, max, committed) = (
            self.config.max_wait,
            self.config.min_bytes,
            self.config.max_bytes,
            self.config.read_committed,
        );
        let req = request.clone();
        let task = rt.spawn(async move {
            client
                .fetch_each_isolated(wait, min, max, &req, committed)
                .await
        });
        *self.ahead.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ahead { request, task });
    }

    /// Takes the fetch sent ahead if it was sent for `request`; drops
    /// (aborts) it otherwise.
    fn take_ahead(&self, request: &[FetchRequestPartition]) -> Option<Ahead> {
        let a = self
            .ahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        (a.request == request).then_some(a)
    }

    /// Whether nothing is assigned.
    pub(crate) fn is_unassigned(&self) -> bool {
        self.positions.is_empty()
    }

    /// Drops every assignment.
    pub(crate) fn clear(&mut self) {
        self.positions.clear();
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// The client.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// One fetch from every assigned partition, decoded, without moving any
    /// position (see [`Consumer::apply`]). Partitions whose position is out
    /// of range are reported, not handled.
    pub(crate) async fn fetch_once(&self) -> Result<Fetched> {
        if self.positions.is_empty() {
            return Err(ClientError::InvalidArgument(
                "poll with nothing assigned (call assign first)".into(),
            ));
        }
        let request = self.request();
        let ahead = match self.take_ahead(&request) {
            Some(mut a) => (&mut a.task).await.ok(),
            None => None,
        };
        let fetched = match ahead {
            Some(f) => f,
            None => {
                self.client
                    .fetch_each_isolated(
                        self.config.max_wait,
                        self.config.min_bytes,
                        self.config.max_bytes,
                        &request,
                        self.config.read_committed,
                    )
                    .await
            }
        };
        let mut out = Fetched::default();
        let mut decoded: Vec<DecodedRecord> = Vec::new();
        // A retriable failure of some partition, and whether any answered.
        let mut retriable: Option<ClientError> = None;
        let mut answered = false;
        for (i, f) in fetched.into_iter().enumerate() {
            let f = match f {
                Ok(f) => f,
                Err(e) if e.is_retriable() => {
                    tracing::debug!(error = %e, "fetch failed; retrying after a metadata refresh");
                    retriable = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Entries should name their partition; fall back to request order.
            let key = if f.topic.is_empty() {
                match request.get(i) {
                    Some(r) => (r.topic.clone(), r.partition),
                    None => continue,
                }
            } else {
                (f.topic.clone(), f.partition)
            };
            let Some(&pos) = self.positions.get(&key) else {
                continue;
            };
            let (topic, partition) = key;
            match f.error {
                ErrorCode::None => answered = true,
                ErrorCode::OffsetOutOfRange => {
                    answered = true;
                    out.out_of_range.push(OutOfRange {
                        topic,
                        partition,
                        offset: pos,
                        log_start: f.log_start_offset,
                        high_watermark: f.high_watermark,
                    });
                    continue;
                }
                code if levee_schemas::is_retriable(code) => {
                    tracing::debug!(%topic, partition, code = levee_schemas::error_name(code), "retriable fetch error");
                    retriable = Some(ClientError::from_code(
                        code,
                        f.message,
                        &topic,
                        Some(partition),
                    ));
                    continue;
                }
                code => {
                    return Err(ClientError::from_code(
                        code,
                        f.message,
                        &topic,
                        Some(partition),
                    ));
                }
            }
            let mut next = pos;
            let mut saw_batch = false;
            for batch in levee_engine::batch::split_batches(&f.batches) {
                saw_batch = true;
                decoded.clear();
                let batch_next = match decode_stored_batch(
                    batch,
                    self.config.max_batch_bytes,
                    pos,
                    &mut decoded,
                ) {
                    Ok(n) => n,
                    Err(DecodeError::Checksum(e)) => {
                        return Err(ClientError::Checksum {
                            topic,
                            partition,
                            offset: next,
                            source: e,
                        })
                    }
                    Err(DecodeError::Malformed(reason)) => {
                        return Err(ClientError::MalformedBatch {
                            topic,
                            partition,
                            offset: next,
                            reason,
                        })
                    }
                };
                next = next.max(batch_next);
                if aborted_batch(&f.aborted, batch) {
                    // A read_committed consumer skips an aborted
                    // transaction's records (its position moves past them).
                    decoded.clear();
                }
                for r in decoded.drain(..) {
                    out.records.push(ConsumedRecord {
                        topic: topic.clone(),
                        partition,
                        offset: r.offset,
                        timestamp: r.timestamp,
                        key: r.key,
                        value: r.value,
                        headers: r.headers,
                    });
                }
            }
            if !saw_batch && !f.batches.is_empty() {
                tracing::warn!(%topic, partition, bytes = f.batches.len(),
                    "fetch returned no complete batch; raise partition_max_bytes");
            }
            if next != pos {
                out.moves.push(((topic, partition), next));
            }
        }
        match retriable {
            Some(e) if !answered => {
                // Nothing answered: wait a little (the leader may be moving),
                // and give up once this has lasted `retry_timeout`.
                let since = *self
                    .failing_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(Instant::now);
                if since.elapsed() >= self.config.retry_timeout {
                    return Err(e);
                }
                tokio::time::sleep(self.config.max_wait.min(RETRY_BACKOFF)).await;
            }
            _ => {
                *self.failing_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
        Ok(out)
    }
}

/// The pause before fetching again when nothing answered.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// A partition whose position was outside its log in a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutOfRange {
    pub topic: String,
    pub partition: u32,
    /// The position fetched at.
    pub offset: u64,
    pub log_start: u64,
    pub high_watermark: u64,
}

impl OutOfRange {
    pub(crate) fn error(&self) -> ClientError {
        ClientError::OffsetOutOfRange {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            log_start: self.log_start,
            high_watermark: self.high_watermark,
        }
    }
}

/// The decoded result of one fetch, before positions move.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    pub records: Vec<ConsumedRecord>,
    /// (topic, partition) → the position after the records read.
    pub moves: Vec<((String, u32), u64)>,
    pub out_of_range: Vec<OutOfRange>,
}
