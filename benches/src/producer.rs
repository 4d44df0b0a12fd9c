//! The producer task on the client library's per-message `Producer`, and
//! what every producer shares: connecting, pacing, what was sent.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use levee_client::{
    partition_for_key, Client, ClientError, DeliveryFuture, DeliveryReport, Producer,
    ProducerConfig, Record,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::args::Keys;
use crate::connect::client_config;
use crate::payload::{self, FillerPool, Header, SplitMix};
use crate::rate::Pacer;
use crate::shared::{lock, Shared};
use crate::stats::TaskHists;
use crate::verify::{self, Sent};
use crate::workload::Config;

/// One message handed to the producer, waiting for its delivery report.
struct InFlight {
    pub(crate) fut: DeliveryFuture,
    pub(crate) t0: Instant,
    pub(crate) partition: u32,
    pub(crate) seq: u64,
}

async fn track(m: InFlight) -> (Result<DeliveryReport, ClientError>, Instant, u32, u64) {
    (m.fut.await, m.t0, m.partition, m.seq)
}

/// Awaits delivery futures concurrently and records their latency. The
/// records of one batch are acknowledged together: every outcome ready at
/// that moment is taken at once and recorded under one lock of the
/// histograms and one update of the shared counters.
async fn collect(
    mut rx: mpsc::Receiver<InFlight>,
    shared: Arc<Shared>,
    hists: Arc<Mutex<TaskHists>>,
    size: u64,
) -> HashMap<u32, verify::RangeSet> {
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    let mut failed: HashMap<u32, verify::RangeSet> = HashMap::new();
    let mut incoming = Vec::with_capacity(256);
    let mut ready = Vec::with_capacity(256);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut incoming, 256), if open => {
                if n == 0 {
                    open = false;
                }
                inflight.extend(incoming.drain(..).map(track));
            }
            Some(first) = inflight.next(), if !inflight.is_empty() => {
                let now = Instant::now();
                ready.push(first);
                while let Some(Some(more)) = inflight.next().now_or_never() {
                    ready.push(more);
                }
                record_outcomes(&mut ready, now, &shared, &hists, size, &mut failed);
            }
            else => break,
        }
    }
    failed
}

/// Records delivery outcomes that arrived at `now` (emptying `ready`).
fn record_outcomes(
    ready: &mut Vec<(Result<DeliveryReport, ClientError>, Instant, u32, u64)>,
    now: Instant,
    shared: &Shared,
    hists: &Mutex<TaskHists>,
    size: u64,
    failed: &mut HashMap<u32, verify::RangeSet>,
) {
    let mut acked = 0u64;
    {
        let mut h = lock(hists);
        for (res, t0, partition, seq) in ready.drain(..) {
            match res {
                Ok(_) => {
                    let us = now.saturating_duration_since(t0).as_micros() as u64;
                    h.record(us, t0 >= shared.warmup_end);
                    acked += 1;
                }
                Err(e) => {
                    shared.failed_msgs.fetch_add(1, Relaxed);
                    shared.note(format!("delivery failed: {e}"));
                    failed.entry(partition).or_default().insert(seq);
                }
            }
        }
    }
    shared.acked_msgs.fetch_add(acked, Relaxed);
    shared.acked_bytes.fetch_add(size * acked, Relaxed);
}

pub(crate) struct ProducerDone {
    pub(crate) sent: HashMap<(u32, u32), Sent>,
    pub(crate) fatal: Option<String>,
}

pub(crate) async fn connect_producer(
    cfg: &Config,
    shared: &Shared,
    id: u32,
) -> Result<Client, String> {
    Client::connect(client_config(cfg, format!("levee-bench-p{id}")))
        .await
        .map_err(|e| {
            shared.stop_producing.store(true, Relaxed);
            format!("producer {id}: {e}")
        })
}

/// Waits for the rate limiter to allow `bytes`; false once producers stop.
pub(crate) async fn pace_producer(pacer: &mut Pacer, shared: &Shared, bytes: f64) -> bool {
    if pacer.is_unlimited() {
        return true;
    }
    let wait = pacer.acquire(shared.secs(), bytes);
    if wait > 0.001 {
        let until = Instant::now() + Duration::from_secs_f64(wait.min(3600.0));
        while Instant::now() < until {
            if shared.stop_producing.load(Relaxed) {
                return false;
            }
            let step = until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            tokio::time::sleep(step).await;
        }
    }
    true
}

/// What a producer sent to each partition, with the sequence numbers that failed.
pub(crate) fn record_sent(
    done: &mut ProducerDone,
    id: u32,
    seqs: Vec<u64>,
    mut failed: HashMap<u32, verify::RangeSet>,
) {
    for (p, count) in seqs.into_iter().enumerate() {
        if count == 0 {
            continue;
        }
        let p = p as u32;
        done.sent.insert(
            (id, p),
            Sent {
                count,
                failed: failed.remove(&p).unwrap_or_default(),
            },
        );
    }
}

pub(crate) async fn producer_task(
    id: u32,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    hists: Arc<Mutex<TaskHists>>,
    partitions: u32,
    quota: Option<u64>,
) -> ProducerDone {
    let a = &cfg.args;
    let mut done = ProducerDone {
        sent: HashMap::new(),
        fatal: None,
    };
    let client = match connect_producer(&cfg, &shared, id).await {
        Ok(c) => c,
        Err(e) => {
            done.fatal = Some(e);
            return done;
        }
    };
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: a.acks,
            compression: a.compression,
            batch_size: a.batch_size,
            linger: Duration::from_millis(a.linger_ms),
            max_in_flight: a.max_in_flight,
            buffer_bytes: a.buffer_bytes,
            enable_idempotence: !a.no_idempotence,
            ..ProducerConfig::default()
        },
    );
    let producer = match producer {
        Ok(p) => p,
        Err(e) => {
            shared.stop_producing.store(true, Relaxed);
            done.fatal = Some(format!("producer {id}: {e}"));
            return done;
        }
    };
    let (tx, rx) = mpsc::channel::<InFlight>(16 * 1024);
    let collector = tokio::spawn(collect(rx, shared.clone(), hists, a.message_size as u64));
    let pool = FillerPool::new(shared.run_id ^ u64::from(id), a.message_size);
    let mut rng = SplitMix(
        shared
            .run_id
            .wrapping_add(u64::from(id).wrapping_mul(0x9E37)),
    );
    let mut seqs = vec![0u64; partitions as usize];
    let share = 1.0 / a.producers.max(1) as f64;
    let mut pacer = Pacer::new(
        cfg.produce_shape.scaled(share),
        0.05,
        (a.message_size.max(a.batch_size)) as f64,
    );
    let mut next_partition = id % partitions;
    let mut sent = 0u64;
    'send: while !shared.stop_producing.load(Relaxed) {
        if quota.is_some_and(|q| sent >= q) {
            break;
        }
        if !pace_producer(&mut pacer, &shared, a.message_size as f64).await {
            break 'send;
        }
        let (key, partition) = match a.keys {
            Keys::None => {
                let p = next_partition;
                next_partition = (next_partition + 1) % partitions;
                (None, p)
            }
            Keys::Random => {
                let k = format!("{:016x}", rng.next_u64()).into_bytes();
                let p = partition_for_key(&k, partitions);
                (Some(k), p)
            }
            Keys::Distinct(n) => {
                let k = format!("key-{}", rng.next_u64() % n).into_bytes();
                let p = partition_for_key(&k, partitions);
                (Some(k), p)
            }
        };
        let Some(slot) = seqs.get_mut(partition as usize) else {
            done.fatal = Some(format!(
                "producer {id}: partitioner chose partition {partition} of {partitions}"
            ));
            break;
        };
        let seq = *slot;
        *slot += 1;
        let sent_ns = shared.now_ns();
        let t0 = Instant::now();
        let value = payload::encode(
            &Header {
                run_id: shared.run_id,
                producer: id,
                partition,
                seq,
                sent_ns,
            },
            a.message_size,
            &pool,
        );
        let record = Record {
            timestamp: (sent_ns / 1_000_000) as i64,
            key,
            value: Some(value),
            headers: Vec::new(),
        };
        match producer
            .send_record(&a.topic, Some(partition), record)
            .await
        {
            Ok(fut) => {
                let m = InFlight {
                    fut,
                    t0,
                    partition,
                    seq,
                };
                if tx.send(m).await.is_err() {
                    done.fatal = Some(format!("producer {id}: delivery collector stopped"));
                    break;
                }
            }
            Err(e) => {
                // Never queued: neither sent nor acknowledged.
                *slot -= 1;
                done.fatal = Some(format!("producer {id}: send failed: {e}"));
                break;
            }
        }
        sent += 1;
    }
    drop(tx);
    // Send what is lingering now; the collector sees every outcome.
    if let Err(e) = producer.flush().await {
        shared.note(format!("producer {id}: flush failed: {e}"));
    }
    shared
        .retried_batches
        .fetch_add(producer.retried_batches(), Relaxed);
    let failed = match collector.await {
        Ok(f) => f,
        Err(e) => {
            done.fatal = Some(format!("producer {id}: collector task failed: {e}"));
            HashMap::new()
        }
    };
    record_sent(&mut done, id, seqs, failed);
    done
}
