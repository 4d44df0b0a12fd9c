//! The bench's producer and consumer tasks over the Kafka protocol
//! (`--protocol kafka`): the same batches, pacing, verification and
//! accounting as the native `--direct-batches` producer and consumer, sent
//! and read with [`crate::kafka::KafkaClient`].

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_client::{ConsumedRecord, StartPosition};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::connect::kafka_connect;
use crate::consumer::{consume, ConsumerCtx, ConsumerDone, PollError, RecordSource};
use crate::direct::{BatchInFlight, BatchProducer, BatchSink, DIRECT_DELIVERY_TIMEOUT};
use crate::kafka::{retriable, KafkaClient, PendingProduce};
use crate::producer::ProducerDone;
use crate::shared::Shared;
use crate::stats::TaskHists;
use crate::workload::Config;

/// A batch's acknowledgement: its Kafka error code, or why it was lost.
type Acked = (Result<i16, String>, Instant);

/// Sends a batch again after a retriable Kafka error, as the native
/// producer does.
async fn retry(
    client: &KafkaClient,
    topic: &str,
    acks: i16,
    b: &BatchInFlight,
    mut res: Acked,
) -> (Acked, u32) {
    let mut backoff = Duration::from_millis(20);
    let mut retries = 0;
    loop {
        let again = match &res.0 {
            Ok(code) => retriable(*code),
            Err(_) => true,
        };
        if !again || b.t0.elapsed() >= DIRECT_DELIVERY_TIMEOUT {
            return (res, retries);
        }
        retries += 1;
        client.invalidate().await;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(100));
        let r = match client
            .start_produce(topic, b.partition, acks, b.batch.clone())
            .await
        {
            Ok(p) => p.wait().await,
            Err(e) => Err(e),
        };
        res = (r, Instant::now());
    }
}

fn error_of(res: &Result<i16, String>) -> Option<String> {
    match res {
        Ok(0) => None,
        Ok(code) => Some(format!("Kafka error code {code}")),
        Err(e) => Some(e.clone()),
    }
}

/// The Kafka protocol, on the bench's own Kafka client.
struct KafkaSink {
    client: Arc<KafkaClient>,
    topic: String,
    acks: i16,
}

impl BatchSink for KafkaSink {
    type Waiter = tokio::task::JoinHandle<Acked>;

    async fn start(&self, partition: u32, batch: bytes::Bytes) -> Result<Self::Waiter, String> {
        let pending = self
            .client
            .start_produce(&self.topic, partition, self.acks, batch)
            .await?;
        Ok(tokio::spawn(acked(pending)))
    }

    async fn settle(
        &self,
        waiter: Self::Waiter,
        b: &BatchInFlight,
    ) -> (Option<String>, Instant, u32) {
        let first = waited(waiter).await;
        let ((res, at), retries) = retry(&self.client, &self.topic, self.acks, b, first).await;
        (error_of(&res), at, retries)
    }
}

/// `--protocol kafka` producer: builds batches like `--direct-batches` and
/// keeps `--max-in-flight` of them in flight.
pub(crate) async fn producer_task(
    id: u32,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    hists: Arc<Mutex<TaskHists>>,
    partitions: u32,
    quota: Option<u64>,
) -> ProducerDone {
    let client = match kafka_connect(&cfg).await {
        Ok(c) => c,
        Err(e) => {
            shared.stop_producing.store(true, Relaxed);
            return ProducerDone {
                sent: HashMap::new(),
                fatal: Some(format!("producer {id}: {e}")),
            };
        }
    };
    let sink = KafkaSink {
        client,
        topic: cfg.args.topic.clone(),
        acks: i16::from(cfg.args.acks.to_wire()),
    };
    let task = BatchProducer::new(id, &cfg, &shared, &hists, partitions);
    task.run(&sink, quota).await
}

/// Times the acknowledgement when it arrives.
async fn acked(p: PendingProduce) -> Acked {
    let r = p.wait().await;
    (r, Instant::now())
}

async fn waited(h: tokio::task::JoinHandle<Acked>) -> Acked {
    match h.await {
        Ok(a) => a,
        Err(e) => (
            Err(format!("the acknowledgement task failed: {e}")),
            Instant::now(),
        ),
    }
}

/// `--protocol kafka` consumer: fetches its partitions from their leaders,
/// decodes and verifies every record.
pub(crate) async fn consumer_task(
    ctx: ConsumerCtx,
    ready: oneshot::Sender<Result<(), String>>,
) -> ConsumerDone {
    let id = ctx.id;
    let a = &ctx.cfg.args;
    let client = match kafka_connect(&ctx.cfg).await {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("consumer {id}: {e}")));
            return ConsumerDone::default();
        }
    };
    let n = ctx.partitions.iter().max().map_or(0, |m| m + 1);
    let spec = match ctx.cfg.from {
        StartPosition::Earliest => -2,
        _ => -1,
    };
    let positions: HashMap<u32, u64> = match client.list_offsets(&a.topic, n, spec).await {
        Ok(all) => ctx
            .partitions
            .iter()
            .map(|p| (*p, all.get(p).copied().unwrap_or(0)))
            .collect(),
        Err(e) => {
            let _ = ready.send(Err(format!("consumer {id}: {e}")));
            return ConsumerDone::default();
        }
    };
    let _ = ready.send(Ok(()));
    let source = KafkaSource {
        client,
        topic: a.topic.clone(),
        partitions: ctx.partitions.clone(),
        positions,
        partition_bytes: a.fetch_partition_bytes,
    };
    consume(ctx, source).await
}

/// The Kafka protocol, on the bench's own Kafka client: a fetch of every
/// partition from its position, the batches decoded here.
struct KafkaSource {
    client: Arc<KafkaClient>,
    topic: String,
    partitions: Vec<u32>,
    positions: HashMap<u32, u64>,
    partition_bytes: u32,
}

impl RecordSource for KafkaSource {
    fn reached(&self, targets: &HashMap<u32, u64>) -> bool {
        self.partitions.iter().all(|p| {
            self.positions.get(p).copied().unwrap_or(0) >= targets.get(p).copied().unwrap_or(0)
        })
    }

    async fn poll(&mut self) -> Result<Vec<ConsumedRecord>, PollError> {
        fetch_records(
            &self.client,
            &self.topic,
            &self.partitions,
            &mut self.positions,
            Duration::from_millis(500),
            self.partition_bytes,
        )
        .await
    }
}

/// One fetch of `partitions` of `topic` from their positions (a missing
/// one: 0), each from its leader: the records decoded, the positions moved
/// past them. A partition whose leader moved is skipped this time (the
/// leaders are looked up again).
pub(crate) async fn fetch_records(
    client: &KafkaClient,
    topic: &str,
    partitions: &[u32],
    positions: &mut HashMap<u32, u64>,
    max_wait: Duration,
    partition_bytes: u32,
) -> Result<Vec<ConsumedRecord>, PollError> {
    let want: Vec<(u32, u64)> = partitions
        .iter()
        .map(|p| (*p, positions.get(p).copied().unwrap_or(0)))
        .collect();
    let fetched = match client
        .fetch(
            topic,
            &want,
            max_wait,
            (partition_bytes as usize * partitions.len()).min(64 << 20) as i32,
            partition_bytes as i32,
        )
        .await
    {
        Ok(f) => f,
        Err(e) => {
            client.invalidate().await;
            return Err(PollError::Retriable(e));
        }
    };
    let mut records = Vec::new();
    for (p, res) in fetched {
        let data = match res {
            Ok((data, _hw)) => data,
            Err(code) if retriable(code) => {
                client.invalidate().await;
                continue;
            }
            Err(code) => {
                return Err(PollError::Fatal(format!(
                    "partition {p}: Kafka error {code}"
                )))
            }
        };
        let pos = positions.entry(p).or_default();
        decode_into(topic, p, &data, pos, &mut records).map_err(PollError::Corrupt)?;
    }
    Ok(records)
}

/// Decodes the stored batches fetched from partition `p` into `records`
/// (those at or after `pos`), moving `pos` past them.
fn decode_into(
    topic: &str,
    p: u32,
    data: &[u8],
    pos: &mut u64,
    records: &mut Vec<ConsumedRecord>,
) -> Result<(), String> {
    for b in levee_client::batch::split_batches(data) {
        let mut out = Vec::new();
        match levee_client::codec::decode_stored_batch(b, usize::MAX, *pos, &mut out) {
            Ok(next) => *pos = (*pos).max(next),
            Err(e) => return Err(format!("partition {p}: {e:?}")),
        }
        records.extend(out.into_iter().map(|r| ConsumedRecord {
            topic: topic.to_string(),
            partition: p,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key,
            value: r.value,
            headers: r.headers,
        }));
    }
    Ok(())
}
