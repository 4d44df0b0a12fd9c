//! `--direct-batches`: a producer that builds whole record batches itself
//! and pipelines them on its connection.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_client::ClientError;
use tokio::time::Instant;

use crate::payload::{self, FillerPool, Header};
use crate::producer::{connect_producer, pace_producer, record_sent, ProducerDone};
use crate::rate::Pacer;
use crate::shared::{lock, Shared};
use crate::stats::TaskHists;
use crate::verify;
use crate::workload::Config;

/// One batch in flight in `--direct-batches` mode.
pub(crate) struct BatchInFlight {
    pub(crate) t0: Instant,
    pub(crate) partition: u32,
    pub(crate) first_seq: u64,
    pub(crate) count: u64,
    /// The batch, kept to send again after a retriable failure.
    pub(crate) batch: bytes::Bytes,
}

/// How long `--direct-batches` keeps retrying a batch that failed with a
/// retriable error (a leader change, a lost connection): the producer
/// library's default delivery timeout.
pub(crate) const DIRECT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends a batch again after a retriable failure, with backoff, until it is
/// acknowledged, fails for good, or `DIRECT_DELIVERY_TIMEOUT` has passed
/// since it was first sent. The producer waits meanwhile (a failover shows
/// as a pause and as the retried batches' latency). A retried batch can
/// land after later batches of its partition (counted as reordered).
async fn retry_batch(
    client: &levee_client::Client,
    topic: &str,
    acks: i8,
    b: &BatchInFlight,
    mut res: Settled,
) -> (Settled, u32) {
    let mut backoff = Duration::from_millis(20);
    let mut retries = 0;
    loop {
        let err = match &res.0 {
            Ok(parts) => parts.first().and_then(|p| p.result().err()),
            Err(e) => Some(e.clone()),
        };
        match err {
            Some(e) if e.is_retriable() && b.t0.elapsed() < DIRECT_DELIVERY_TIMEOUT => {}
            _ => return (res, retries),
        }
        retries += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(100));
        let r = client
            .produce(
                acks,
                Duration::from_secs(30),
                vec![(topic.to_string(), b.partition, b.batch.clone())],
            )
            .await;
        res = (r, Instant::now());
    }
}

/// Writes `v` as a varint at the start of `out`; returns its length.
fn put_varint_slice(out: &mut [u8], mut v: u64) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        out[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    n + 1
}

/// A batch's outcome and when it arrived.
type Settled = (
    Result<Vec<levee_client::ProducedPartition>, ClientError>,
    Instant,
);

async fn settled(waiter: tokio::task::JoinHandle<Settled>) -> Settled {
    match waiter.await {
        Ok(s) => s,
        Err(e) => (
            Err(ClientError::Protocol(format!(
                "the acknowledgement task failed: {e}"
            ))),
            Instant::now(),
        ),
    }
}

/// The error of a native produce outcome, if any.
fn native_error(res: Result<Vec<levee_client::ProducedPartition>, ClientError>) -> Option<String> {
    match res {
        Ok(parts) => parts
            .first()
            .and_then(|p| p.result().err())
            .map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    }
}

/// Records a batch's outcome for each of its messages.
fn settle_batch(
    b: BatchInFlight,
    err: Option<String>,
    done_at: Instant,
    shared: &Shared,
    hists: &Mutex<TaskHists>,
    size: u64,
    failed: &mut HashMap<u32, verify::RangeSet>,
) {
    match err {
        None => {
            let us = done_at.saturating_duration_since(b.t0).as_micros() as u64;
            shared.acked_msgs.fetch_add(b.count, Relaxed);
            shared.acked_bytes.fetch_add(size * b.count, Relaxed);
            let mut h = lock(hists);
            for _ in 0..b.count {
                h.record(us, b.t0 >= shared.warmup_end);
            }
        }
        Some(e) => {
            shared.failed_msgs.fetch_add(b.count, Relaxed);
            shared.note(format!("delivery failed: {e}"));
            failed
                .entry(b.partition)
                .or_default()
                .insert_range(b.first_seq, b.first_seq + b.count);
        }
    }
}

/// A batch of `n` bench messages of `size` bytes, sequence numbers from
/// `h.seq`, built in place after the header space: each payload is written
/// once, straight into the batch. Records in Kafka's encoding (every varint
/// zigzag): attributes, timestamp delta 0, offset delta, null key (-1),
/// value, no headers.
pub(crate) fn direct_batch(h: &Header, n: u64, size: usize, pool: &FillerPool, ts: i64) -> Vec<u8> {
    let mut records = levee_client::batch::batch_buffer(n as usize * (size + 12));
    for i in 0..n {
        let mut head = [0u8; 32];
        let mut at = 2; // attributes 0, timestamp delta 0
        at += put_varint_slice(&mut head[at..], i << 1);
        head[at] = 1; // null key
        at += 1;
        at += put_varint_slice(&mut head[at..], (size as u64) << 1);
        let body_len = at + size + 1;
        let mut len_buf = [0u8; 10];
        let l = put_varint_slice(&mut len_buf, (body_len as u64) << 1);
        records.extend_from_slice(&len_buf[..l]);
        records.extend_from_slice(&head[..at]);
        let before = records.len();
        payload::encode_into(
            &Header {
                seq: h.seq + i,
                ..*h
            },
            size,
            pool,
            &mut records,
        );
        debug_assert_eq!(records.len() - before, size);
        records.push(0u8); // no headers
    }
    levee_client::batch::finish_batch(
        records,
        n as u32,
        ts,
        ts,
        levee_client::batch::BatchMeta::default(),
    )
}

/// Where a batch producer's batches go and how their acknowledgements come
/// back: Levee's native protocol ([`NativeSink`]) or Kafka's
/// (`kafka_tasks::KafkaSink`).
pub(crate) trait BatchSink {
    /// What waits for one batch's acknowledgement.
    type Waiter;
    /// Sends a batch to `partition` without waiting for its acknowledgement.
    async fn start(&self, partition: u32, batch: bytes::Bytes) -> Result<Self::Waiter, String>;
    /// Waits for a batch's acknowledgement, sending the batch again after
    /// retriable failures until [`DIRECT_DELIVERY_TIMEOUT`]; returns its
    /// error, if any, when the outcome arrived and how many times the batch
    /// was sent again.
    async fn settle(
        &self,
        waiter: Self::Waiter,
        b: &BatchInFlight,
    ) -> (Option<String>, Instant, u32);
}

/// The native protocol, on the client library's pipelined produce.
struct NativeSink {
    client: levee_client::Client,
    topic: String,
    acks: i8,
}

impl BatchSink for NativeSink {
    type Waiter = tokio::task::JoinHandle<Settled>;

    async fn start(&self, partition: u32, batch: bytes::Bytes) -> Result<Self::Waiter, String> {
        let inflight = self
            .client
            .start_produce(
                self.acks,
                Duration::from_secs(30),
                vec![(self.topic.clone(), partition, batch)],
            )
            .await
            .map_err(|e| e.to_string())?;
        // The acknowledgement is timed when it arrives, not when the
        // producer gets round to looking at it.
        Ok(tokio::spawn(async move {
            let res = inflight.wait().await;
            (res, Instant::now())
        }))
    }

    async fn settle(
        &self,
        waiter: Self::Waiter,
        b: &BatchInFlight,
    ) -> (Option<String>, Instant, u32) {
        let first = settled(waiter).await;
        let ((res, done_at), retries) =
            retry_batch(&self.client, &self.topic, self.acks, b, first).await;
        (native_error(res), done_at, retries)
    }
}

/// A producer that builds record batches itself and keeps
/// `--max-in-flight` of them in flight on its connection.
pub(crate) async fn batch_producer_task(
    id: u32,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    hists: Arc<Mutex<TaskHists>>,
    partitions: u32,
    quota: Option<u64>,
) -> ProducerDone {
    let client = match connect_producer(&cfg, &shared, id).await {
        Ok(c) => c,
        Err(e) => {
            return ProducerDone {
                sent: HashMap::new(),
                fatal: Some(e),
            }
        }
    };
    let sink = NativeSink {
        client,
        topic: cfg.args.topic.clone(),
        acks: cfg.args.acks.to_wire(),
    };
    let task = BatchProducer::new(id, &cfg, &shared, &hists, partitions);
    task.run(&sink, quota).await
}

/// One batch producer: what it sends and what has come back.
pub(crate) struct BatchProducer<'a> {
    id: u32,
    cfg: &'a Config,
    shared: &'a Shared,
    hists: &'a Mutex<TaskHists>,
    partitions: u32,
    /// Bytes per message, header included.
    size: usize,
    pool: FillerPool,
    /// The next sequence number of each partition.
    seqs: Vec<u64>,
    /// The sequence numbers whose batch failed, by partition.
    failed: HashMap<u32, verify::RangeSet>,
}

impl<'a> BatchProducer<'a> {
    pub(crate) fn new(
        id: u32,
        cfg: &'a Config,
        shared: &'a Shared,
        hists: &'a Mutex<TaskHists>,
        partitions: u32,
    ) -> BatchProducer<'a> {
        let a = &cfg.args;
        BatchProducer {
            id,
            cfg,
            shared,
            hists,
            partitions,
            size: a.message_size.max(payload::HEADER_LEN),
            pool: FillerPool::new(shared.run_id ^ u64::from(id), a.message_size),
            seqs: vec![0u64; partitions as usize],
            failed: HashMap::new(),
        }
    }

    /// Sends batches round robin over the partitions until producers stop
    /// or `quota` messages are sent, at most `--max-in-flight` of them
    /// unacknowledged; then waits for every acknowledgement.
    pub(crate) async fn run<S: BatchSink>(mut self, sink: &S, quota: Option<u64>) -> ProducerDone {
        let (cfg, id, shared, size) = (self.cfg, self.id, self.shared, self.size);
        let a = &cfg.args;
        let mut done = ProducerDone {
            sent: HashMap::new(),
            fatal: None,
        };
        let per_batch = (a.batch_size / (size + 12)).max(1) as u64;
        let share = 1.0 / a.producers.max(1) as f64;
        let mut pacer = Pacer::new(
            cfg.produce_shape.scaled(share),
            0.05,
            (size as u64 * per_batch) as f64,
        );
        let mut next_partition = id % self.partitions;
        let mut sent = 0u64;
        let mut queue: VecDeque<(S::Waiter, BatchInFlight)> = VecDeque::new();
        while !shared.stop_producing.load(Relaxed) {
            let n = match quota {
                Some(q) if sent >= q => break,
                Some(q) => per_batch.min(q - sent),
                None => per_batch,
            };
            if !pace_producer(&mut pacer, shared, (size as u64 * n) as f64).await {
                break;
            }
            let partition = next_partition;
            next_partition = (next_partition + 1) % self.partitions;
            let first_seq = self.seqs[partition as usize];
            let batch = self.batch(partition, first_seq, n);
            if queue.len() >= a.max_in_flight.max(1) {
                if let Some((waiter, b)) = queue.pop_front() {
                    self.settle(sink, waiter, b).await;
                }
            }
            let t0 = Instant::now();
            let batch = bytes::Bytes::from(batch);
            match sink.start(partition, batch.clone()).await {
                Ok(waiter) => {
                    self.seqs[partition as usize] += n;
                    sent += n;
                    let b = BatchInFlight {
                        t0,
                        partition,
                        first_seq,
                        count: n,
                        batch,
                    };
                    queue.push_back((waiter, b));
                }
                Err(e) => {
                    done.fatal = Some(format!("producer {id}: send failed: {e}"));
                    break;
                }
            }
        }
        while let Some((waiter, b)) = queue.pop_front() {
            self.settle(sink, waiter, b).await;
        }
        record_sent(&mut done, id, self.seqs, self.failed);
        done
    }

    /// `n` messages for `partition` from sequence number `first_seq`, sent now.
    fn batch(&self, partition: u32, first_seq: u64, n: u64) -> Vec<u8> {
        let sent_ns = self.shared.now_ns();
        let header = Header {
            run_id: self.shared.run_id,
            producer: self.id,
            partition,
            seq: first_seq,
            sent_ns,
        };
        let ts = (sent_ns / 1_000_000) as i64;
        direct_batch(&header, n, self.size, &self.pool, ts)
    }

    /// Waits for a batch's outcome and records it for each of its messages.
    async fn settle<S: BatchSink>(&mut self, sink: &S, waiter: S::Waiter, b: BatchInFlight) {
        let (err, done_at, retries) = sink.settle(waiter, &b).await;
        self.shared
            .retried_batches
            .fetch_add(u64::from(retries), Relaxed);
        let size = self.size as u64;
        settle_batch(
            b,
            err,
            done_at,
            self.shared,
            self.hists,
            size,
            &mut self.failed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_batches_decode_as_kafka_records_carrying_bench_payloads() {
        let pool = FillerPool::new(7, 100);
        let h = Header {
            run_id: 9,
            producer: 2,
            partition: 1,
            seq: 40,
            sent_ns: 123,
        };
        let b = direct_batch(&h, 5, 100, &pool, 1_000);
        levee_client::batch::validate_produced(&b, 1 << 20).unwrap();
        let recs = levee_client::batch::records(&b).unwrap();
        assert_eq!(recs.len(), 5);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!((r.offset, r.key, r.timestamp), (i as u64, None, 1_000));
            let got = payload::verify(r.value.unwrap()).unwrap();
            assert_eq!(got.seq, 40 + i as u64);
        }
    }
}
