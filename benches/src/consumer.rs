//! The consumer task (partitions split between consumers) and what every
//! consumer shares: verifying and accounting a polled batch, pacing.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_client::{Client, ClientError, ConsumedRecord, Consumer, ConsumerConfig};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::args::BenchArgs;
use crate::connect::client_config;
use crate::payload;
use crate::rate::Pacer;
use crate::shared::{lock, Shared, Targets};
use crate::stats::TaskHists;
use crate::verify::{Checked, Owner, Verifier};
use crate::workload::Config;

#[derive(Default)]
pub(crate) struct ConsumerDone {
    /// Reached the end offsets it was asked to.
    pub(crate) complete: bool,
    pub(crate) fatal: Option<String>,
}

pub(crate) struct ConsumerCtx {
    pub(crate) id: usize,
    pub(crate) cfg: Arc<Config>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) hists: Arc<Mutex<TaskHists>>,
    /// This task's own verifier, or with `--group` the one every member shares.
    pub(crate) verifier: Arc<Mutex<Verifier>>,
    /// The partitions to read (unused with `--group`: the broker assigns them).
    pub(crate) partitions: Vec<u32>,
    /// End offsets to reach; `None` until producers are done.
    pub(crate) targets: watch::Receiver<Targets>,
    /// Stop after this many records in total (consume-only --messages).
    pub(crate) limit: Option<u64>,
}

pub(crate) fn reached(
    consumer: &Consumer,
    topic: &str,
    parts: &[u32],
    targets: &HashMap<u32, u64>,
) -> bool {
    parts.iter().all(|p| {
        let target = targets.get(p).copied().unwrap_or(0);
        consumer.position(topic, *p).unwrap_or(0) >= target
    })
}

pub(crate) fn consumer_fetch_config(a: &BenchArgs) -> ConsumerConfig {
    ConsumerConfig {
        max_wait: Duration::from_millis(100),
        partition_max_bytes: a.fetch_partition_bytes,
        max_bytes: a.fetch_partition_bytes.saturating_mul(16).max(16 << 20),
        ..ConsumerConfig::default()
    }
}

/// Verifies a polled batch (checksums outside the verifier's lock, stream
/// state under it), records end-to-end latencies and the shared counters.
/// `owner`: who read it, with `--group`. Returns the batch's payload bytes.
pub(crate) fn account(
    records: &[ConsumedRecord],
    owner: Option<Owner>,
    verifier: &Mutex<Verifier>,
    hists: &Mutex<TaskHists>,
    shared: &Shared,
) -> u64 {
    let now_ns = shared.now_ns();
    let parsed: Vec<_> = records
        .iter()
        .map(|r| payload::verify(r.value.as_deref().unwrap_or(&[])))
        .collect();
    let mut checked = Vec::with_capacity(records.len());
    {
        let mut v = lock(verifier);
        let mut last_partition = None;
        for (r, p) in records.iter().zip(parsed) {
            if let Some(o) = owner {
                if last_partition != Some(r.partition) {
                    v.owner(r.partition, o);
                    last_partition = Some(r.partition);
                }
            }
            checked.push(v.check_parsed(r.partition, p));
        }
    }
    let mut bytes = 0u64;
    let mut own_msgs = 0u64;
    let mut own_bytes = 0u64;
    {
        let mut h = lock(hists);
        for (r, c) in records.iter().zip(checked) {
            let len = r.value.as_deref().map_or(0, <[u8]>::len) as u64;
            bytes += len;
            if let Checked::Own { sent_ns, first } = c {
                if first {
                    own_msgs += 1;
                    own_bytes += len;
                }
                let us = now_ns.saturating_sub(sent_ns) / 1000;
                h.record(us, sent_ns >= shared.warmup_end_ns);
            }
        }
    }
    shared
        .consumed_msgs
        .fetch_add(records.len() as u64, Relaxed);
    shared.consumed_bytes.fetch_add(bytes, Relaxed);
    shared.own_msgs.fetch_add(own_msgs, Relaxed);
    shared.own_bytes.fetch_add(own_bytes, Relaxed);
    bytes
}

/// Waits as long as the consume pacer asks (a slow downstream).
pub(crate) async fn pace(pacer: &mut Pacer, shared: &Shared, bytes: u64) {
    if pacer.is_unlimited() {
        return;
    }
    let wait = pacer.acquire(shared.secs(), bytes as f64);
    if wait > 0.0 {
        let until = Instant::now() + Duration::from_secs_f64(wait.min(3600.0));
        while Instant::now() < until && !shared.stop_consuming.load(Relaxed) {
            let step = until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            tokio::time::sleep(step).await;
        }
    }
}

/// Why a poll returned no records.
pub(crate) enum PollError {
    /// A batch failed its checksum or did not decode: the position cannot
    /// move past it.
    Corrupt(String),
    /// Worth trying again (a leader change, a lost connection).
    Retriable(String),
    /// Anything else: the consumer stops.
    Fatal(String),
}

/// Where a partition-split consumer's records come from: Levee's native
/// protocol ([`NativeSource`]) or Kafka's (`kafka_tasks::KafkaSource`).
pub(crate) trait RecordSource {
    /// Whether every partition's position has reached its target offset.
    fn reached(&self, targets: &HashMap<u32, u64>) -> bool;
    /// The next records (possibly none, after a long poll timed out).
    async fn poll(&mut self) -> Result<Vec<ConsumedRecord>, PollError>;
}

/// The native protocol, on the client library's `Consumer`.
struct NativeSource {
    consumer: Consumer,
    topic: String,
    partitions: Vec<u32>,
}

impl RecordSource for NativeSource {
    fn reached(&self, targets: &HashMap<u32, u64>) -> bool {
        reached(&self.consumer, &self.topic, &self.partitions, targets)
    }

    async fn poll(&mut self) -> Result<Vec<ConsumedRecord>, PollError> {
        self.consumer.poll().await.map_err(|e| match e {
            ClientError::Checksum { .. } | ClientError::MalformedBatch { .. } => {
                PollError::Corrupt(e.to_string())
            }
            e if e.is_retriable() => PollError::Retriable(e.to_string()),
            e => PollError::Fatal(e.to_string()),
        })
    }
}

pub(crate) async fn consumer_task(
    ctx: ConsumerCtx,
    ready: oneshot::Sender<Result<(), String>>,
) -> ConsumerDone {
    let id = ctx.id;
    let a = &ctx.cfg.args;
    let client = match Client::connect(client_config(&ctx.cfg, format!("levee-bench-c{id}"))).await
    {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("consumer {id}: {e}")));
            return ConsumerDone::default();
        }
    };
    let mut consumer = Consumer::new(client, consumer_fetch_config(a));
    if let Err(e) = consumer
        .assign(&a.topic, Some(ctx.partitions.clone()), ctx.cfg.from)
        .await
    {
        let _ = ready.send(Err(format!("consumer {id}: assign: {e}")));
        return ConsumerDone::default();
    }
    let _ = ready.send(Ok(()));
    let source = NativeSource {
        consumer,
        topic: a.topic.clone(),
        partitions: ctx.partitions.clone(),
    };
    consume(ctx, source).await
}

/// Reads `source` until the targets are reached (or the record limit, or a
/// stop), verifying and accounting every record and pacing as
/// `--consume-rate` asks.
pub(crate) async fn consume<S: RecordSource>(ctx: ConsumerCtx, mut source: S) -> ConsumerDone {
    let ConsumerCtx {
        id,
        cfg,
        shared,
        hists,
        verifier,
        partitions: _,
        mut targets,
        limit,
    } = ctx;
    let a = &cfg.args;
    let mut done = ConsumerDone::default();
    let share = 1.0 / a.consumers.max(1) as f64;
    let mut pacer = Pacer::new(
        cfg.consume_shape.scaled(share),
        0.05,
        f64::from(a.fetch_partition_bytes),
    );
    let mut retries = 0u32;
    loop {
        if shared.stop_consuming.load(Relaxed) {
            break;
        }
        let target = targets.borrow_and_update().clone();
        if target.is_some_and(|t| source.reached(&t)) {
            done.complete = true;
            break;
        }
        if limit.is_some_and(|l| shared.consumed_msgs.load(Relaxed) >= l) {
            done.complete = true;
            break;
        }
        let records = match source.poll().await {
            Ok(r) => {
                retries = 0;
                r
            }
            Err(PollError::Corrupt(e)) => {
                lock(&verifier).counts.corrupt_batches += 1;
                shared.note(format!("consumer {id}: {e}"));
                // The position cannot move past a batch it cannot read.
                break;
            }
            Err(PollError::Retriable(e)) if retries < 50 => {
                retries += 1;
                shared.note(format!("consumer {id}: retrying: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(PollError::Retriable(e) | PollError::Fatal(e)) => {
                done.fatal = Some(format!("consumer {id}: {e}"));
                break;
            }
        };
        if records.is_empty() {
            continue;
        }
        let bytes = account(&records, None, &verifier, &hists, &shared);
        pace(&mut pacer, &shared, bytes).await;
    }
    done
}
