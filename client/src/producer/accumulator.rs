//! The producer's batches, without I/O: per partition, a queue of batches
//! capped at `batch_size`, what the next produce request carries, and what
//! an answer does to them. [`super::sender`] does the sending; `send()`
//! appends here under the producer's lock.
//!
//! - A record joins the open batch of its partition unless that would take
//!   the batch past `batch_size` (an upper bound of its encoded size, header
//!   included); then the batch is closed and the record starts the next one,
//!   queued behind it. A record that alone passes `batch_size` goes alone.
//! - A partition's batches are sent in order, closed ones first, the open
//!   one once its linger passed (or at once for a flush or close). One
//!   request carries up to `max_request_bytes`, taking one batch per ready
//!   partition in turn, so a busy partition does not starve the others; a
//!   partition's batches in a request are consecutive and in order.
//! - Order across requests: a partition pipelines requests only to one
//!   leader connection at a time; a failed batch holds back the partition's
//!   later batches until it is sent again (batches in flight with it are
//!   retried with it, in order), and after a failure the partition has one
//!   request in flight until one succeeds.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use levee_engine::batch::HEADER_LEN;
use levee_engine::Record;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{DeliveryReport, ProducerConfig};
use crate::error::{ClientError, Result};

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn zigzag_len(v: i64) -> usize {
    varint_len(((v << 1) ^ (v >> 63)) as u64)
}

fn bytes_len(b: Option<&[u8]>) -> usize {
    b.map_or(1, |b| zigzag_len(b.len() as i64) + b.len())
}

/// One record's encoded size (Kafka's record encoding) without its
/// timestamp and offset deltas, which depend on the batch; its length
/// field is sized for the largest deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordSize {
    pub core: usize,
    pub timestamp: i64,
}

impl RecordSize {
    pub fn of(r: &Record) -> RecordSize {
        let headers: usize = r
            .headers
            .iter()
            .map(|(k, v)| bytes_len(Some(k)) + bytes_len(v.as_deref()))
            .sum();
        let body = 1
            + bytes_len(r.key.as_deref())
            + bytes_len(r.value.as_deref())
            + zigzag_len(r.headers.len() as i64)
            + headers;
        // The length field counts the deltas too: at most 10 + 5 bytes.
        let core = body + zigzag_len(body as i64 + 15);
        RecordSize {
            core,
            timestamp: r.timestamp,
        }
    }

    /// The size of a batch holding this record alone.
    pub fn alone(&self) -> usize {
        SizeBound::default().with(*self)
    }
}

/// An upper bound on the size of an uncompressed batch as
/// [`crate::codec::build_batch`] encodes it: timestamp deltas from the
/// smallest timestamp, offset deltas from 0.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SizeBound {
    core: usize,
    count: u32,
    ts_min: i64,
    ts_max: i64,
}

impl SizeBound {
    fn bound(core: usize, count: u32, ts_min: i64, ts_max: i64) -> usize {
        if count == 0 {
            return HEADER_LEN;
        }
        // Timestamps lie in [ts_min, ts_max]; a spread past i64 wraps, and
        // a wrapped delta takes at most 10 bytes.
        let ts = ts_max.checked_sub(ts_min).map_or(10, zigzag_len);
        HEADER_LEN + core + count as usize * (ts + zigzag_len(i64::from(count) - 1))
    }

    /// The bound so far.
    pub fn get(&self) -> usize {
        Self::bound(self.core, self.count, self.ts_min, self.ts_max)
    }

    /// The bound with `r` added.
    pub fn with(&self, r: RecordSize) -> usize {
        let (lo, hi) = match self.count {
            0 => (r.timestamp, r.timestamp),
            _ => (self.ts_min.min(r.timestamp), self.ts_max.max(r.timestamp)),
        };
        Self::bound(self.core + r.core, self.count + 1, lo, hi)
    }

    fn add(&mut self, r: RecordSize) {
        if self.count == 0 {
            (self.ts_min, self.ts_max) = (r.timestamp, r.timestamp);
        }
        self.core += r.core;
        self.count += 1;
        self.ts_min = self.ts_min.min(r.timestamp);
        self.ts_max = self.ts_max.max(r.timestamp);
    }
}

/// A batch's outcome, shared by the delivery futures of its records (one
/// allocation per batch, not per record).
pub(crate) struct BatchResult {
    topic: Arc<str>,
    partition: u32,
    /// The base offset (`None` with acks=0), or why the batch failed.
    outcome: OnceLock<Result<Option<u64>>>,
    wakers: Mutex<Vec<Waker>>,
}

impl BatchResult {
    fn new(topic: &str, partition: u32) -> BatchResult {
        BatchResult {
            topic: Arc::from(topic),
            partition,
            outcome: OnceLock::new(),
            wakers: Mutex::new(Vec::new()),
        }
    }

    fn wakers(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        self.wakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the outcome (the first one wins) and wakes the waiting futures.
    fn set(&self, outcome: Result<Option<u64>>) {
        if self.outcome.set(outcome).is_ok() {
            let wakers = std::mem::take(&mut *self.wakers());
            for w in wakers {
                w.wake();
            }
        }
    }

    fn report(&self, index: u32) -> Option<Result<DeliveryReport>> {
        let outcome = self.outcome.get()?;
        Some(match outcome {
            Ok(base) => Ok(DeliveryReport {
                topic: self.topic.clone(),
                partition: self.partition,
                offset: base.map(|b| b + u64::from(index)),
            }),
            Err(e) => Err(e.clone()),
        })
    }
}

/// Resolves when the message is acknowledged (or written, with acks=0), or
/// with the error that failed it.
pub struct DeliveryFuture {
    inner: Delivery,
}

enum Delivery {
    /// Record `index` of a batch; `slot`: where this future's waker is.
    Batch {
        result: Arc<BatchResult>,
        index: u32,
        slot: Option<usize>,
    },
    /// Failed before joining a batch.
    Failed(Option<ClientError>),
}

impl DeliveryFuture {
    pub(crate) fn failed(e: ClientError) -> DeliveryFuture {
        DeliveryFuture {
            inner: Delivery::Failed(Some(e)),
        }
    }
}

impl std::fmt::Debug for DeliveryFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Delivery::Batch { result, index, .. } => f
                .debug_struct("DeliveryFuture")
                .field("topic", &result.topic)
                .field("partition", &result.partition)
                .field("index", index)
                .field("done", &result.outcome.get().is_some())
                .finish(),
            Delivery::Failed(e) => f.debug_tuple("DeliveryFuture").field(e).finish(),
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<DeliveryReport>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            Delivery::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(ClientError::Closed))),
            Delivery::Batch {
                result,
                index,
                slot,
            } => {
                if let Some(r) = result.report(*index) {
                    return Poll::Ready(r);
                }
                let mut wakers = result.wakers();
                // Set between the check above and the lock: `set` has
                // already taken the wakers.
                if let Some(r) = result.report(*index) {
                    return Poll::Ready(r);
                }
                match slot {
                    Some(i) if *i < wakers.len() => {
                        if !wakers[*i].will_wake(cx.waker()) {
                            wakers[*i] = cx.waker().clone();
                        }
                    }
                    _ => {
                        *slot = Some(wakers.len());
                        wakers.push(cx.waker().clone());
                    }
                }
                Poll::Pending
            }
        }
    }
}

/// A batch: its records until it is first sent, then its encoded bytes.
pub(crate) struct Batch {
    /// Creation order across the producer (flushes wait for ids).
    pub id: u64,
    pub records: Vec<Record>,
    pub count: u32,
    size: SizeBound,
    /// When its first record joined (the delivery timeout runs from here).
    pub created: Instant,
    /// Sent, even unfilled, from here on.
    linger_until: Instant,
    /// Buffer bytes its records hold.
    pub buffered: usize,
    result: Arc<BatchResult>,
    /// Encoded on first send; a retry sends the same bytes.
    pub bytes: Option<Bytes>,
    /// The idempotent producer identity `bytes` are numbered under.
    pub stamp: Option<(i64, i16)>,
    /// Failed attempts so far.
    pub attempts: u32,
}

impl Batch {
    /// The size bound of its uncompressed encoding (what `batch_size` caps).
    pub fn size_bound(&self) -> usize {
        self.size.get()
    }

    /// Bytes it takes in a request.
    fn request_bytes(&self) -> usize {
        self.bytes.as_ref().map_or(self.size.get(), Bytes::len)
    }

    fn resolve(self, outcome: Result<Option<u64>>) {
        self.result.set(outcome);
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // Dropped unresolved (the producer's task stopped): fail it rather
        // than leave its futures waiting forever.
        self.result.set(Err(ClientError::Closed));
    }
}

/// One partition: its queued batches and its sending state.
#[derive(Default)]
struct Part {
    /// Oldest first; all but the last are closed.
    queue: VecDeque<Batch>,
    /// Whether the last batch of `queue` takes more records.
    open: bool,
    /// Failed batches waiting to be sent again, in id order.
    retry: Vec<Batch>,
    /// Requests in flight carrying this partition.
    inflight: usize,
    /// Batches in flight (sent, not answered).
    unacked: usize,
    /// The leader they were sent to (`None`: unknown).
    node: Option<u32>,
    /// Consecutive failed attempts (0 once a request succeeds).
    attempts: u32,
    /// When the retry may go.
    retry_at: Option<Instant>,
}

impl Part {
    /// Whether new batches must wait: batches wait for a retry, or batches
    /// in flight could be overtaken (sent to another node than the route
    /// now, or after a failure).
    fn held(&self, route: Option<u32>) -> bool {
        if !self.retry.is_empty() {
            return true;
        }
        self.inflight > 0 && (self.attempts > 0 || self.node.is_none() || route != self.node)
    }

    fn retry_due(&self, now: Instant) -> bool {
        !self.retry.is_empty() && self.inflight == 0 && self.retry_at.is_none_or(|t| t <= now)
    }

    /// When the oldest queued batch may go (a time already past when it
    /// is closed, or forced by a flush or close); `None`: no batch.
    fn due_at(&self, force_below: u64) -> Option<Instant> {
        let front = self.queue.front()?;
        let closed = self.queue.len() > 1 || !self.open || front.id < force_below;
        Some(match closed {
            true => front.created,
            false => front.linger_until,
        })
    }

    fn pop_due(&mut self, now: Instant, force_below: u64) -> Option<Batch> {
        if self.due_at(force_below)? > now {
            return None;
        }
        let b = self.queue.pop_front();
        if self.queue.is_empty() {
            self.open = false;
        }
        b
    }
}

#[derive(Default)]
struct Topic {
    name: String,
    /// Partition count and round-robin position, once looked up.
    partitions: Option<u32>,
    /// When the count was looked up, and records partitioned since (the
    /// age is checked every [`AGE_CHECK_EVERY`] records, not per record).
    looked_up: Option<Instant>,
    uses: u32,
    next: u32,
    parts: HashMap<u32, Part>,
}

/// An idempotent producer's most batches in flight per partition: the
/// broker remembers this many of a producer's last batches per partition
/// to recognize one sent again (`BATCHES_KEPT` on the broker).
pub const MAX_UNACKED_BATCHES: usize = 128;

/// How many records go between two checks of a partition count's age.
const AGE_CHECK_EVERY: u32 = 256;

/// One partition's part of a request: consecutive batches, in order.
pub(crate) struct Entry {
    pub topic: String,
    pub partition: u32,
    pub batches: Vec<Batch>,
}

/// What one partition's part of a request came to.
pub(crate) enum EntryOutcome {
    /// Appended from this base offset (`None`: acks=0, written).
    Delivered(Option<u64>),
    /// Failed in a way worth trying again.
    Retry(ClientError),
    /// Failed for good.
    Fail(ClientError),
}

/// What the sender does next.
pub(crate) enum Next {
    /// Send this request.
    Send(Vec<Entry>),
    /// Nothing to send before this time (`None`: until woken).
    Wait(Option<Instant>),
    /// Closed, and everything is resolved.
    Done,
}

/// What an append did.
pub(crate) struct Appended {
    pub delivery: DeliveryFuture,
    /// The sender should look again: a batch closed, or a batch opened
    /// whose linger ends before the sender means to wake.
    pub wake: bool,
}

/// Every partition's batches, and the producer's flush and close state.
#[derive(Default)]
pub(crate) struct Accumulator {
    /// Index into `topics` by name.
    names: HashMap<String, usize>,
    topics: Vec<Topic>,
    next_id: u64,
    /// Batches not resolved yet.
    incomplete: BTreeSet<u64>,
    /// Batches with smaller ids go now, unfilled (flush, close).
    force_below: u64,
    /// Flushes waiting for the batches below their id to resolve.
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    /// Produce requests in flight.
    pub inflight: usize,
    /// When the sender wakes by itself (`None`: only when told).
    pub wake_at: Option<Instant>,
    /// The producer was dropped: send everything, then stop.
    closing: bool,
    /// The sender stopped: nothing more is accepted.
    pub dead: bool,
}

impl Accumulator {
    /// The partition count of `topic`, if looked up, and whether it is
    /// older than `max_age` (then the caller looks it up again, so that
    /// partitions added to the topic come into use).
    pub fn partitions(&mut self, topic: &str, max_age: Duration) -> (Option<u32>, bool) {
        let Some(&i) = self.names.get(topic) else {
            return (None, false);
        };
        let t = &mut self.topics[i];
        t.uses = t.uses.wrapping_add(1);
        let stale = t.uses.is_multiple_of(AGE_CHECK_EVERY)
            && t.looked_up.is_some_and(|at| at.elapsed() >= max_age);
        (t.partitions, stale)
    }

    /// Notes the partition count of `topic`, looked up now.
    pub fn set_partitions(&mut self, topic: &str, n: u32) {
        let t = self.topic(topic);
        t.partitions = Some(n);
        t.looked_up = Some(Instant::now());
    }

    /// The next round-robin partition of `topic` (`None`: count unknown).
    pub fn round_robin(&mut self, topic: &str) -> Option<u32> {
        self.find(topic)?;
        let t = self.topic(topic);
        let n = t.partitions?;
        let p = t.next % n;
        t.next = t.next.wrapping_add(1);
        Some(p)
    }

    /// A topic's state (one hash lookup: this is on every record's path).
    fn topic(&mut self, topic: &str) -> &mut Topic {
        let i = match self.names.get(topic) {
            Some(&i) => i,
            None => {
                self.names.insert(topic.to_string(), self.topics.len());
                self.topics.push(Topic {
                    name: topic.to_string(),
                    ..Topic::default()
                });
                self.topics.len() - 1
            }
        };
        &mut self.topics[i]
    }

    fn find(&self, topic: &str) -> Option<&Topic> {
        self.names.get(topic).map(|&i| &self.topics[i])
    }

    /// Adds a record to its partition's open batch, or to a new one when
    /// it would take that batch past `batch_size`. `buffered`: the buffer
    /// bytes the record holds, given back when its batch resolves.
    pub fn append(
        &mut self,
        cfg: &ProducerConfig,
        topic: &str,
        partition: u32,
        record: Record,
        size: RecordSize,
        buffered: usize,
    ) -> Appended {
        let (next_id, force_below, wake_at) = (self.next_id, self.force_below, self.wake_at);
        let slots_free = self.inflight < cfg.max_in_flight;
        let part = self.topic(topic).parts.entry(partition).or_default();
        let mut wake = false;
        let fits = part.open
            && part
                .queue
                .back()
                .is_some_and(|b| b.size.with(size) <= cfg.batch_size);
        if !fits {
            // The batch it would have passed is full: it can go now.
            wake |= part.open && slots_free;
            let now = Instant::now();
            let linger_until = now + cfg.linger;
            part.queue.push_back(Batch {
                id: next_id,
                records: Vec::with_capacity((cfg.batch_size / size.core.max(1)).clamp(1, 64)),
                count: 0,
                size: SizeBound::default(),
                created: now,
                linger_until,
                buffered: 0,
                result: Arc::new(BatchResult::new(topic, partition)),
                bytes: None,
                stamp: None,
                attempts: 0,
            });
            part.open = true;
            wake |=
                slots_free && (next_id < force_below || wake_at.is_none_or(|w| w > linger_until));
        }
        let b = part.queue.back_mut().expect("a batch is open");
        let index = b.count;
        b.records.push(record);
        b.count += 1;
        b.size.add(size);
        b.buffered += buffered;
        let delivery = DeliveryFuture {
            inner: Delivery::Batch {
                result: b.result.clone(),
                index,
                slot: None,
            },
        };
        // Full already (a record that passes `batch_size` alone): close it.
        if b.size.get() >= cfg.batch_size {
            part.open = false;
            wake |= slots_free;
        }
        if !fits {
            self.incomplete.insert(next_id);
            self.next_id += 1;
        }
        if wake {
            // The sender recomputes its wake-up time when it runs.
            self.wake_at = Some(Instant::now());
        }
        Appended { delivery, wake }
    }

    /// The next produce request, or how long nothing is due. `route`: the
    /// node a partition's request would go to now (see [`Part::held`]).
    pub fn next_request(
        &mut self,
        cfg: &ProducerConfig,
        max_request_bytes: usize,
        route: impl Fn(&str, u32) -> Option<u32>,
    ) -> Next {
        if self.closing && self.incomplete.is_empty() {
            return Next::Done;
        }
        if self.inflight >= cfg.max_in_flight {
            // A completion wakes the sender.
            self.wake_at = None;
            return Next::Wait(None);
        }
        let now = Instant::now();
        let force_below = self.force_below;
        let mut wait: Option<Instant> = None;
        let mut ready: Vec<(&str, u32, &mut Part)> = Vec::new();
        let mut retries: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        for t in self.topics.iter_mut() {
            let topic = &t.name;
            for (&p, part) in t.parts.iter_mut() {
                if part.retry_due(now) {
                    if retries.is_empty() || bytes < max_request_bytes {
                        let batches = std::mem::take(&mut part.retry);
                        bytes += batches.iter().map(Batch::request_bytes).sum::<usize>();
                        part.inflight += 1;
                        part.unacked += batches.len();
                        retries.push(Entry {
                            topic: topic.clone(),
                            partition: p,
                            batches,
                        });
                    }
                    continue;
                }
                if !part.retry.is_empty() && part.inflight == 0 {
                    wait = earliest(wait, part.retry_at);
                }
                if part.queue.is_empty() || part.held(route(topic, p)) {
                    continue;
                }
                match part.due_at(force_below) {
                    Some(at) if at <= now => ready.push((topic.as_str(), p, part)),
                    at => wait = earliest(wait, at),
                }
            }
        }
        let mut entries = retries;
        // One batch per ready partition in turn, until the request is full.
        let mut taken: Vec<Vec<Batch>> = ready.iter().map(|_| Vec::new()).collect();
        let mut more = true;
        while more && bytes < max_request_bytes {
            more = false;
            for (i, (_, _, part)) in ready.iter_mut().enumerate() {
                let Some(size) = part.queue.front().map(Batch::request_bytes) else {
                    continue;
                };
                if cfg.enable_idempotence
                    && cfg.acks == super::Acks::All
                    && part.unacked + taken[i].len() >= MAX_UNACKED_BATCHES
                {
                    continue;
                }
                let empty = bytes == 0 && entries.is_empty();
                if !empty && bytes + size > max_request_bytes {
                    continue;
                }
                let Some(b) = part.pop_due(now, force_below) else {
                    continue;
                };
                bytes += size;
                taken[i].push(b);
                more = true;
            }
        }
        for ((topic, p, part), batches) in ready.into_iter().zip(taken) {
            if !batches.is_empty() {
                part.inflight += 1;
                part.unacked += batches.len();
                entries.push(Entry {
                    topic: topic.to_string(),
                    partition: p,
                    batches,
                });
            }
        }
        if entries.is_empty() {
            self.wake_at = wait;
            return Next::Wait(wait);
        }
        self.inflight += 1;
        Next::Send(entries)
    }

    /// Notes where a request's partitions went (`None`: not a known leader).
    pub fn sent(&mut self, partitions: &[(String, u32)], nodes: Vec<Option<u32>>) {
        for ((topic, p), node) in partitions.iter().zip(nodes) {
            if let Some(part) = self.part(topic, *p) {
                part.node = node;
            }
        }
    }

    fn part(&mut self, topic: &str, partition: u32) -> Option<&mut Part> {
        let i = *self.names.get(topic)?;
        self.topics[i].parts.get_mut(&partition)
    }

    /// Applies a request's outcome: resolves what was delivered or failed
    /// for good, queues the rest for a retry. Returns the buffer bytes
    /// given back, the batches queued for a retry, and whether any batch
    /// failed for good.
    pub fn completed(
        &mut self,
        cfg: &ProducerConfig,
        outcomes: Vec<(Entry, EntryOutcome)>,
    ) -> (usize, u64, bool) {
        let now = Instant::now();
        let mut released = 0;
        let mut retried = 0;
        let mut gave_up = false;
        self.inflight = self.inflight.saturating_sub(1);
        for (entry, outcome) in outcomes {
            let Entry {
                topic,
                partition,
                batches,
            } = entry;
            let sent_batches = batches.len();
            let mut resolved: Vec<(Batch, Result<Option<u64>>)> = Vec::new();
            let mut failed = false;
            let delivered = matches!(outcome, EntryOutcome::Delivered(_));
            match outcome {
                EntryOutcome::Delivered(base) => {
                    let mut offset = base;
                    for b in batches {
                        let n = u64::from(b.count);
                        resolved.push((b, Ok(offset)));
                        offset = offset.map(|o| o + n);
                    }
                }
                EntryOutcome::Fail(e) => {
                    resolved.extend(batches.into_iter().map(|b| (b, Err(e.clone()))));
                }
                EntryOutcome::Retry(e) => {
                    for mut b in batches {
                        b.attempts += 1;
                        let expired = now >= b.created + cfg.delivery_timeout;
                        if expired || b.attempts > cfg.retries {
                            tracing::debug!(%topic, partition, error = %e, "giving up");
                            resolved.push((b, Err(e.clone())));
                            continue;
                        }
                        tracing::debug!(%topic, partition, error = %e, attempt = b.attempts, "retrying");
                        failed = true;
                        retried += 1;
                        let Some(part) = self.part(&topic, partition) else {
                            continue;
                        };
                        let at = part.retry.partition_point(|x| x.id < b.id);
                        part.retry.insert(at, b);
                    }
                }
            }
            for (b, outcome) in resolved {
                gave_up |= outcome.is_err();
                released += b.buffered;
                self.incomplete.remove(&b.id);
                b.resolve(outcome);
            }
            let Some(part) = self.part(&topic, partition) else {
                continue;
            };
            part.inflight = part.inflight.saturating_sub(1);
            part.unacked = part.unacked.saturating_sub(sent_batches);
            if failed {
                part.attempts += 1;
                part.retry_at = Some(now + backoff(cfg, part.attempts));
            } else if delivered {
                part.attempts = 0;
            }
        }
        self.flushes_done();
        (released, retried, gave_up)
    }

    /// Tells the flushes whose batches are all resolved.
    fn flushes_done(&mut self) {
        let low = self.incomplete.first().copied().unwrap_or(u64::MAX);
        let mut i = 0;
        while i < self.flushes.len() {
            if self.flushes[i].0 <= low {
                let (_, done) = self.flushes.swap_remove(i);
                let _ = done.send(());
            } else {
                i += 1;
            }
        }
    }

    /// Sends every batch there is now, and tells `done` when all of them
    /// are resolved.
    pub fn flush(&mut self, done: oneshot::Sender<()>) {
        self.force_below = self.force_below.max(self.next_id);
        self.flushes.push((self.next_id, done));
        self.flushes_done();
    }

    /// The producer is gone: send everything, then stop.
    pub fn close(&mut self) {
        self.closing = true;
        self.force_below = u64::MAX;
    }

    /// The sender stopped: fails everything queued. Returns the buffer
    /// bytes given back.
    pub fn fail_all(&mut self) -> usize {
        self.dead = true;
        let mut released = 0;
        for t in self.topics.iter_mut() {
            for part in t.parts.values_mut() {
                for b in part.queue.drain(..).chain(part.retry.drain(..)) {
                    released += b.buffered;
                    self.incomplete.remove(&b.id);
                    b.resolve(Err(ClientError::Closed));
                }
                part.open = false;
            }
        }
        // Flushes waiting for batches in flight learn it from their
        // dropped sender.
        self.flushes.clear();
        released
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The delay before the `attempt`-th retry.
pub(crate) fn backoff(config: &ProducerConfig, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    config
        .retry_backoff
        .saturating_mul(factor)
        .min(config.max_retry_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::build_batch;
    use levee_engine::Compression;

    fn record(value_len: usize, timestamp: i64) -> Record {
        Record {
            timestamp,
            key: None,
            value: Some(vec![7; value_len]),
            headers: Vec::new(),
        }
    }

    fn config(batch_size: usize, linger: Duration) -> ProducerConfig {
        ProducerConfig {
            batch_size,
            linger,
            ..ProducerConfig::default()
        }
    }

    fn add(acc: &mut Accumulator, cfg: &ProducerConfig, p: u32, r: Record) -> Appended {
        let size = RecordSize::of(&r);
        acc.append(cfg, "t", p, r, size, size.core)
    }

    /// Every partition's queue: (batch count, open), and each batch's
    /// record count.
    fn queue(acc: &Accumulator, p: u32) -> Vec<u32> {
        acc.find("t").unwrap().parts[&p]
            .queue
            .iter()
            .map(|b| b.count)
            .collect()
    }

    /// The next request, sent to node 0.
    fn send(acc: &mut Accumulator, cfg: &ProducerConfig) -> Vec<Entry> {
        match acc.next_request(cfg, cfg.max_request_bytes, |_, _| Some(0)) {
            Next::Send(entries) => {
                let keys: Vec<(String, u32)> = entries
                    .iter()
                    .map(|e| (e.topic.clone(), e.partition))
                    .collect();
                acc.sent(&keys, vec![Some(0); keys.len()]);
                entries
            }
            _ => Vec::new(),
        }
    }

    fn ids(entries: &[Entry]) -> Vec<(u32, Vec<u64>)> {
        entries
            .iter()
            .map(|e| (e.partition, e.batches.iter().map(|b| b.id).collect()))
            .collect()
    }

    fn sent_ok(acc: &mut Accumulator, cfg: &ProducerConfig, entries: Vec<Entry>) {
        let outcomes = entries
            .into_iter()
            .map(|e| (e, EntryOutcome::Delivered(Some(0))))
            .collect();
        acc.completed(cfg, outcomes);
    }

    /// The bound holds for records of every shape and is within a few
    /// bytes per record of the real size.
    #[test]
    fn size_bound_holds_and_is_tight() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..300 {
            let count = 1 + next(200) as usize;
            let base = next(1 << 40) as i64 - (1 << 39);
            let spread: u64 = [0, 10, 1 << 20, 1 << 62][round % 4];
            let mut bound = SizeBound::default();
            let records: Vec<Record> = (0..count)
                .map(|_| {
                    let r = Record {
                        timestamp: base
                            .wrapping_add(next(spread.max(1)) as i64)
                            .wrapping_sub((spread / 2) as i64),
                        key: (next(2) == 0).then(|| vec![1; next(300) as usize]),
                        value: (next(8) != 0).then(|| vec![2; next(20_000) as usize]),
                        headers: (0..next(3))
                            .map(|_| {
                                let v = (next(2) == 0).then(|| vec![3; next(40) as usize]);
                                (vec![4; next(20) as usize], v)
                            })
                            .collect(),
                    };
                    let with = bound.with(RecordSize::of(&r));
                    bound.add(RecordSize::of(&r));
                    assert_eq!(with, bound.get());
                    r
                })
                .collect();
            let real = build_batch(&records, Compression::None).unwrap().len();
            assert!(
                real <= bound.get(),
                "round {round}: {real} > {}",
                bound.get()
            );
            assert!(
                bound.get() - real <= 12 * count,
                "round {round}: bound {} for {real} bytes of {count} records",
                bound.get()
            );
        }
    }

    #[test]
    fn a_batch_closes_before_the_record_that_would_pass_batch_size() {
        let cfg = config(64 << 10, Duration::from_secs(3600));
        let mut acc = Accumulator::default();
        for i in 0..200 {
            add(&mut acc, &cfg, 0, record(1024, 1_000 + i));
        }
        let q = &acc.find("t").unwrap().parts[&0].queue;
        // A 1,024-byte value takes 1,033 bytes with its deltas: 63 records
        // make 65,140 bytes, 64 would make 66,173.
        assert_eq!(queue(&acc, 0), vec![63, 63, 63, 11]);
        for b in q {
            assert!(b.size_bound() <= cfg.batch_size);
            let real = build_batch(&b.records, Compression::None).unwrap();
            assert!(real.len() <= cfg.batch_size);
        }
        // One more record would not have fit in the full ones.
        let one = RecordSize::of(&record(1024, 1_000));
        assert!(q[0].size.with(one) > cfg.batch_size);
    }

    #[test]
    fn a_record_larger_than_batch_size_goes_alone() {
        let cfg = config(4096, Duration::from_secs(3600));
        let mut acc = Accumulator::default();
        add(&mut acc, &cfg, 0, record(100, 1));
        let big = add(&mut acc, &cfg, 0, record(10_000, 1));
        assert!(big.wake, "the closed batch can go");
        add(&mut acc, &cfg, 0, record(100, 1));
        assert_eq!(queue(&acc, 0), vec![1, 1, 1]);
        let part = &acc.find("t").unwrap().parts[&0];
        assert!(part.open, "the last batch takes more records");
        assert!(part.queue[1].size_bound() > cfg.batch_size);
    }

    #[test]
    fn closed_batches_go_and_the_open_one_waits_for_its_linger() {
        let cfg = config(4096, Duration::from_secs(3600));
        let mut acc = Accumulator::default();
        for _ in 0..10 {
            add(&mut acc, &cfg, 0, record(1000, 1));
        }
        assert_eq!(queue(&acc, 0), vec![3, 3, 3, 1]);
        let entries = send(&mut acc, &cfg);
        assert_eq!(ids(&entries), vec![(0, vec![0, 1, 2])]);
        // The open batch is not due yet.
        assert!(matches!(
            acc.next_request(&cfg, cfg.max_request_bytes, |_, _| Some(0)),
            Next::Wait(Some(_))
        ));
        // A flush sends it.
        let (tx, mut rx) = oneshot::channel();
        acc.flush(tx);
        let rest = send(&mut acc, &cfg);
        assert_eq!(ids(&rest), vec![(0, vec![3])]);
        sent_ok(&mut acc, &cfg, entries);
        assert!(rx.try_recv().is_err(), "batch 3 is still in flight");
        sent_ok(&mut acc, &cfg, rest);
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn full_batches_queue_while_every_slot_is_busy() {
        let cfg = ProducerConfig {
            max_in_flight: 1,
            ..config(4096, Duration::ZERO)
        };
        let mut acc = Accumulator::default();
        add(&mut acc, &cfg, 0, record(1000, 1));
        let first = send(&mut acc, &cfg);
        assert_eq!(ids(&first), vec![(0, vec![0])]);
        for _ in 0..9 {
            add(&mut acc, &cfg, 0, record(1000, 1));
        }
        assert!(matches!(
            acc.next_request(&cfg, cfg.max_request_bytes, |_, _| Some(0)),
            Next::Wait(None)
        ));
        assert_eq!(queue(&acc, 0), vec![3, 3, 3]);
        sent_ok(&mut acc, &cfg, first);
        let next = send(&mut acc, &cfg);
        assert_eq!(ids(&next), vec![(0, vec![1, 2, 3])]);
    }

    #[test]
    fn a_request_takes_partitions_in_turn_up_to_max_request_bytes() {
        let cfg = ProducerConfig {
            max_request_bytes: 5 * 4096,
            ..config(4096, Duration::ZERO)
        };
        let mut acc = Accumulator::default();
        for i in 0..30 {
            add(&mut acc, &cfg, i % 2, record(1000, 1));
        }
        // Partition 0: batches 0, 2, 4, 6, 8; partition 1: 1, 3, 5, 7, 9,
        // of 3,088 bytes each (bound): 6 fit in 20,480.
        let entries = send(&mut acc, &cfg);
        let mut got = ids(&entries);
        got.sort();
        assert_eq!(got, vec![(0, vec![0, 2, 4]), (1, vec![1, 3, 5])]);
        let total: usize = entries
            .iter()
            .flat_map(|e| &e.batches)
            .map(Batch::size_bound)
            .sum();
        assert!(total <= cfg.max_request_bytes);
        // The next request goes on where this one stopped, in order.
        let mut more = ids(&send(&mut acc, &cfg));
        more.sort();
        assert_eq!(more, vec![(0, vec![6, 8]), (1, vec![7, 9])]);
    }

    #[test]
    fn a_failed_batch_holds_its_partition_and_goes_first_in_order() {
        let cfg = ProducerConfig {
            retry_backoff: Duration::ZERO,
            max_retry_backoff: Duration::ZERO,
            ..config(4096, Duration::ZERO)
        };
        let mut acc = Accumulator::default();
        for _ in 0..6 {
            add(&mut acc, &cfg, 0, record(1000, 1));
        }
        let a = send(&mut acc, &cfg);
        assert_eq!(ids(&a), vec![(0, vec![0, 1])]);
        // Pipelined on the same leader: the next batches go too.
        for _ in 0..6 {
            add(&mut acc, &cfg, 0, record(1000, 1));
        }
        let b = send(&mut acc, &cfg);
        assert_eq!(ids(&b), vec![(0, vec![2, 3])]);
        // Both fail; the second answer comes first.
        let again = |e: Entry| {
            vec![(
                e,
                EntryOutcome::Retry(ClientError::Server {
                    code: levee_schemas::proto::ErrorCode::NotLeader,
                    message: String::new(),
                }),
            )]
        };
        assert_eq!(
            acc.completed(&cfg, again(b.into_iter().next().unwrap())).1,
            2
        );
        // Held while the first is in flight, then every failed batch goes
        // again, in order, alone.
        assert!(matches!(
            acc.next_request(&cfg, cfg.max_request_bytes, |_, _| Some(0)),
            Next::Wait(None)
        ));
        add(&mut acc, &cfg, 0, record(1000, 1));
        acc.completed(&cfg, again(a.into_iter().next().unwrap()));
        let retry = send(&mut acc, &cfg);
        assert_eq!(ids(&retry), vec![(0, vec![0, 1, 2, 3])]);
        // After a failure, one request at a time until one succeeds.
        assert!(matches!(
            acc.next_request(&cfg, cfg.max_request_bytes, |_, _| Some(0)),
            Next::Wait(None)
        ));
        sent_ok(&mut acc, &cfg, retry);
        assert_eq!(ids(&send(&mut acc, &cfg)), vec![(0, vec![4])]);
    }

    #[test]
    fn a_partition_moved_to_another_leader_waits_for_its_requests() {
        let cfg = config(4096, Duration::ZERO);
        let mut acc = Accumulator::default();
        add(&mut acc, &cfg, 0, record(1000, 1));
        let a = send(&mut acc, &cfg);
        add(&mut acc, &cfg, 0, record(1000, 1));
        // Batch 0 went to node 0; the route now names node 2: batch 1 must
        // not overtake batch 0.
        assert!(matches!(
            acc.next_request(&cfg, cfg.max_request_bytes, |_, _| Some(2)),
            Next::Wait(None)
        ));
        sent_ok(&mut acc, &cfg, a);
        assert!(matches!(
            acc.next_request(&cfg, cfg.max_request_bytes, |_, _| Some(2)),
            Next::Send(_)
        ));
    }

    #[test]
    fn offsets_follow_the_batches_of_an_entry() {
        let cfg = config(4096, Duration::ZERO);
        let mut acc = Accumulator::default();
        let futures: Vec<DeliveryFuture> = (0..7)
            .map(|_| add(&mut acc, &cfg, 0, record(1000, 1)).delivery)
            .collect();
        let entries = send(&mut acc, &cfg);
        assert_eq!(ids(&entries), vec![(0, vec![0, 1, 2])]);
        let outcomes = entries
            .into_iter()
            .map(|e| (e, EntryOutcome::Delivered(Some(100))))
            .collect();
        let (released, retried, gave_up) = acc.completed(&cfg, outcomes);
        assert!(!gave_up);
        assert_eq!(retried, 0);
        assert_eq!(released, 7 * RecordSize::of(&record(1000, 1)).core);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        for (i, mut f) in futures.into_iter().enumerate() {
            match Pin::new(&mut f).poll(&mut cx) {
                Poll::Ready(Ok(r)) => assert_eq!(r.offset, Some(100 + i as u64)),
                other => panic!("record {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn batches_dropped_unresolved_fail_their_futures() {
        let cfg = config(4096, Duration::ZERO);
        let mut acc = Accumulator::default();
        let mut f = add(&mut acc, &cfg, 0, record(10, 1)).delivery;
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert_eq!(acc.fail_all(), RecordSize::of(&record(10, 1)).core);
        assert!(matches!(
            Pin::new(&mut f).poll(&mut cx),
            Poll::Ready(Err(ClientError::Closed))
        ));
        let mut g = {
            let mut acc = Accumulator::default();
            add(&mut acc, &cfg, 0, record(10, 1)).delivery
        };
        assert!(matches!(
            Pin::new(&mut g).poll(&mut cx),
            Poll::Ready(Err(ClientError::Closed))
        ));
    }
}
