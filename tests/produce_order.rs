//! One producer's records keep their order within a partition.
//!
//! Broker side: produce requests pipelined on one connection are appended in
//! request order, each request's batches for a partition end to end, on a
//! two-shard broker where some of the partitions live on the other shard
//! than the connection's (their requests are forwarded over the mesh).

mod common;

use common::raw::Raw;
use common::Broker;
use levee_engine::batch::{build_batch, records, split_batches, Record};
use levee_schemas::proto::{ErrorCode, Produce, ProducePartition, Request, Response};
use std::collections::HashMap;

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
