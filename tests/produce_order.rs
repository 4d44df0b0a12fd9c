//! One producer's records keep their order within a partition, and the
//! client's batches stay within its `batch_size`.
//!
//! - Broker side: produce requests pipelined on one connection are appended
//!   in request order, each request's batches for a partition end to end,
//!   on a two-shard broker where some of the partitions live on the other
//!   shard than the connection's (their requests are forwarded over the
//!   mesh).
//! - Client side: records sent as fast as `send` takes them through the
//!   per-message `Producer` with default settings are all delivered, in
//!   `send` order per partition, in stored batches no larger than
//!   `batch_size`.

mod common;

use common::raw::Raw;
use common::Broker;
use levee_client::{
    Client, ClientConfig, FetchRequestPartition, Producer, ProducerConfig, TopicSettings,
};
use levee_engine::batch::{build_batch, records, split_batches, BatchHeader, Record};
use levee_schemas::proto::{ErrorCode, Produce, ProducePartition, Request, Response};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Partitions of the test topic: with two shards, each shard owns two.
const PARTITIONS: u32 = 4;

/// The value of record `k` of batch `j` of partition `p` in request `i`.
fn value(i: usize, p: u32, j: usize, k: usize) -> String {
    format!("{i}:{p}:{j}:{k}:{}", "x".repeat(2000))
}

/// Batches request `i` carries for partition `p`: one to three, so that a
/// request's batches for one partition can be split by another request's.
fn batches_in(i: usize, p: u32) -> usize {
    1 + (i + p as usize) % 3
}

const RECORDS_PER_BATCH: usize = 8;

/// Request `i`: every partition, each with its batches end to end.
fn request(topic: &str, i: usize) -> (Request, Vec<u8>) {
    let mut payload = Vec::new();
    let mut parts = Vec::new();
    for p in 0..PARTITIONS {
        let start = payload.len();
        for j in 0..batches_in(i, p) {
            let recs: Vec<Record> = (0..RECORDS_PER_BATCH)
                .map(|k| Record {
                    timestamp: 1,
                    key: None,
                    value: Some(value(i, p, j, k).into_bytes()),
                    headers: Vec::new(),
                })
                .collect();
            payload.extend_from_slice(&build_batch(&recs));
        }
        parts.push(ProducePartition {
            topic: topic.into(),
            partition: p,
            payload_offset: start as u32,
            payload_len: (payload.len() - start) as u32,
        });
    }
    let req = Request::Produce(Box::new(Produce {
        acks: 1,
        timeout_ms: 30_000,
        partitions: Some(parts),
    }));
    (req, payload)
}

/// Every record of partition `p`, from offset 0.
fn read_all(raw: &mut Raw, topic: &str, p: u32, count: u64) -> Vec<String> {
    let mut out = Vec::new();
    while (out.len() as u64) < count {
        let (r, data) = raw.fetch(topic, p, out.len() as u64);
        assert_eq!(r.error, ErrorCode::None, "{:?}", r.message);
        assert!(!data.is_empty(), "partition {p} ends at {}", out.len());
        for batch in split_batches(&data) {
            for rec in records(batch).unwrap() {
                if rec.offset >= out.len() as u64 {
                    out.push(String::from_utf8(rec.value.unwrap().to_vec()).unwrap());
                }
            }
        }
    }
    out
}

#[test]
fn pipelined_produce_requests_are_appended_in_request_order_on_every_shard() {
    let topic = "ordered";
    let owners: Vec<u32> = (0..PARTITIONS)
        .map(|p| (crc32c::crc32c(topic.as_bytes()).wrapping_add(p)) % 2)
        .collect();
    assert!(
        owners.contains(&0) && owners.contains(&1),
        "both shards own partitions, so whichever accepted the connection forwards some"
    );
    let b = Broker::start_with("produce-order", &["--cores", "2"]);
    let mut raw = Raw::hello(&b);
    raw.create(topic, PARTITIONS);

    // About 130 KiB per request: enough data that appends wait for chunk
    // writes and preallocation while later requests arrive.
    let requests = 500;
    let mut reader = raw.reader();
    let responses = std::thread::spawn(move || {
        (0..requests)
            .map(|_| reader.recv().expect("a response"))
            .collect::<Vec<_>>()
    });
    let mut ids = Vec::new();
    for i in 0..requests {
        let (req, payload) = request(topic, i);
        ids.push(raw.send(req, &payload));
    }
    let responses = responses.join().unwrap();

    // Offsets follow request order, each request's records contiguous.
    let mut next: HashMap<u32, u64> = HashMap::new();
    for (i, (h, _)) in responses.into_iter().enumerate() {
        assert_eq!(h.correlation_id, ids[i], "responses come in request order");
        assert_eq!(h.error, ErrorCode::None, "{:?}", h.message);
        let Some(Response::ProduceResponse(r)) = h.response else {
            panic!("request {i}: not a produce response");
        };
        for pr in r.partitions.unwrap() {
            let p = pr.partition;
            assert_eq!(pr.error, ErrorCode::None, "{:?}", pr.message);
            let want = next.entry(p).or_insert(0);
            let records = (batches_in(i, p) * RECORDS_PER_BATCH) as u64;
            assert_eq!(
                (pr.base_offset, pr.last_offset),
                (*want, *want + records - 1),
                "request {i}, partition {p} (shard {})",
                owners[p as usize]
            );
            *want += records;
        }
    }

    // The stored records are in request order, batch by batch.
    for p in 0..PARTITIONS {
        let expected: Vec<String> = (0..requests)
            .flat_map(|i| {
                (0..batches_in(i, p))
                    .flat_map(move |j| (0..RECORDS_PER_BATCH).map(move |k| value(i, p, j, k)))
            })
            .collect();
        let got = read_all(&mut raw, topic, p, expected.len() as u64);
        let first_wrong = got.iter().zip(&expected).position(|(g, e)| g != e);
        assert_eq!(
            first_wrong, None,
            "partition {p} (shard {}): first record out of order",
            owners[p as usize]
        );
    }
}

/// A 1 KiB value carrying its send position.
fn numbered(i: u64) -> Vec<u8> {
    let mut v = vec![b'.'; 1024];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

/// Every stored batch of `topic`/`partition` from offset 0 to `end`.
async fn stored_batches(client: &Client, topic: &str, partition: u32, end: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut next = 0;
    while next < end {
        let want = FetchRequestPartition {
            topic: topic.to_string(),
            partition,
            offset: next,
            max_bytes: 8 << 20,
        };
        let got = client
            .fetch(Duration::from_secs(1), 1, 8 << 20, &[want])
            .await
            .unwrap();
        assert_eq!(got[0].error, ErrorCode::None, "{:?}", got[0].message);
        for b in split_batches(&got[0].batches) {
            let h = BatchHeader::parse(b).unwrap();
            if h.next_offset() > next {
                next = h.next_offset();
                out.push(b.to_vec());
            }
        }
    }
    out
}

/// Sends `count` records of 1 KiB round robin to a topic of `partitions`
/// partitions through the per-message API, default settings but
/// `max_in_flight`, as fast as `send` returns; then checks that none failed
/// or was retried, that each partition holds its records in send order
/// with the offsets their reports gave, and that no stored batch is larger
/// than `batch_size`.
async fn produce_in_order(
    b: &Broker,
    topic: &str,
    partitions: u32,
    max_in_flight: usize,
    count: u64,
) {
    let client = Client::connect(ClientConfig::new([b.bootstrap()]))
        .await
        .unwrap();
    let settings = TopicSettings {
        partitions,
        ..Default::default()
    };
    client.create_topic(topic, &settings).await.unwrap();
    let config = ProducerConfig {
        max_in_flight,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config.clone()).unwrap();
    let mut futures = VecDeque::new();
    for i in 0..count {
        futures.push_back(producer.send(topic, None, numbered(i)).await.unwrap());
    }
    producer.flush().await.unwrap();
    // Per partition, the records in send order, and their offsets.
    let mut sent: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
    let mut failed = Vec::new();
    for (i, f) in futures.into_iter().enumerate() {
        match f.await {
            Ok(r) => sent
                .entry(r.partition)
                .or_default()
                .push((i as u64, r.offset.unwrap())),
            Err(e) => failed.push((i, e)),
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(
        producer.retried_batches(),
        0,
        "no retry on a healthy broker"
    );
    assert_eq!(
        sent.len(),
        partitions as usize,
        "round robin reaches every partition"
    );
    for (p, records_sent) in &sent {
        let end = records_sent.len() as u64;
        let offsets: Vec<u64> = records_sent.iter().map(|&(_, o)| o).collect();
        assert_eq!(
            offsets,
            (0..end).collect::<Vec<_>>(),
            "partition {p}: offsets in send order"
        );
        let mut stored = Vec::new();
        for batch in stored_batches(&client, topic, *p, end).await {
            assert!(
                batch.len() <= config.batch_size,
                "partition {p}: a stored batch of {} bytes, batch_size {}",
                batch.len(),
                config.batch_size
            );
            for r in records(&batch).unwrap() {
                let v = r.value.unwrap();
                stored.push(u64::from_le_bytes(v[..8].try_into().unwrap()));
            }
        }
        let want: Vec<u64> = records_sent.iter().map(|&(i, _)| i).collect();
        assert_eq!(
            stored.len(),
            want.len(),
            "partition {p}: every record stored once"
        );
        let first_wrong = stored.iter().zip(&want).position(|(s, w)| s != w);
        assert_eq!(first_wrong, None, "partition {p}: stored in send order");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// 40,000 records (about 41 MB, more than the producer's 32 MiB buffer, so
/// `send` waits for it and full batches queue behind busy in-flight slots)
/// for each of one and four partitions, with one and five requests in
/// flight.
#[test]
fn the_producer_keeps_send_order_and_batch_size_under_load() {
    let b = Broker::start_with("producer-order", &["--cores", "2"]);
    runtime().block_on(async {
        for (partitions, max_in_flight) in [(1, 1), (1, 5), (4, 1), (4, 5)] {
            let topic = format!("load-{partitions}-{max_in_flight}");
            produce_in_order(&b, &topic, partitions, max_in_flight, 40_000).await;
        }
    });
}

/// The full size: 2,000,000 records of 1 KiB (2 GB per run, four
/// runs). Too slow for a debug build; run it with
/// `cargo test --release -p levee-cli --test produce_order -- --ignored`.
#[test]
#[ignore]
fn the_producer_keeps_send_order_and_batch_size_for_two_million_records() {
    let b = Broker::start_with("producer-order-2m", &["--cores", "2"]);
    runtime().block_on(async {
        for (partitions, max_in_flight) in [(1, 1), (1, 5), (4, 1), (4, 5)] {
            let topic = format!("load-{partitions}-{max_in_flight}");
            produce_in_order(&b, &topic, partitions, max_in_flight, 2_000_000).await;
        }
    });
}
