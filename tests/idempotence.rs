//! Idempotent producers (KIP-98) against a real broker: a retried batch is
//! written once and answered with its first offsets, a sequence gap and an
//! old epoch are refused, and the producer state survives a kill -9.

mod common;

use common::raw::Raw;
use common::Broker;
use levee_engine::batch::{self, BatchMeta, Compression, Record};
use levee_schemas::proto::ErrorCode;

/// A batch of `n` records of producer `pid` at `epoch`, from sequence `seq`.
fn idem_batch(pid: i64, epoch: i16, seq: i32, n: usize) -> Vec<u8> {
    let recs: Vec<Record> = (0..n)
        .map(|i| Record {
            timestamp: 1_700_000_000_000,
            value: Some(format!("p{pid}-e{epoch}-s{}", seq as usize + i).into_bytes()),
            ..Default::default()
        })
        .collect();
    let mut buf = batch::batch_buffer(0);
    batch::encode_records_into(&mut buf, &recs, 1_700_000_000_000);
    batch::finish_batch(
        buf,
        n as u32,
        1_700_000_000_000,
        1_700_000_000_000,
        BatchMeta {
            compression: Compression::None,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            transactional: false,
        },
    )
}

#[test]
fn retries_are_written_once_gaps_and_old_epochs_are_refused_across_a_crash() {
    let mut b = Broker::start("idempotence");
    let mut r = Raw::hello(&b);
    r.create("idem", 1);
    let first = r.produce("idem", 0, &idem_batch(42, 0, 0, 5));
    assert_eq!((first.error, first.base_offset), (ErrorCode::None, 0));
    // A retry of the same batch: the same offsets, nothing written.
    let again = r.produce("idem", 0, &idem_batch(42, 0, 0, 5));
    assert_eq!(
        (again.error, again.base_offset, again.last_offset),
        (ErrorCode::None, 0, 4)
    );
    // Another producer interleaves; then ours continues.
    assert_eq!(r.produce("idem", 0, &idem_batch(7, 0, 0, 1)).base_offset, 5);
    assert_eq!(
        r.produce("idem", 0, &idem_batch(42, 0, 5, 3)).base_offset,
        6
    );
    // A gap.
    let gap = r.produce("idem", 0, &idem_batch(42, 0, 10, 1));
    assert_eq!(
        gap.error,
        ErrorCode::OutOfOrderSequence,
        "{:?}",
        gap.message
    );
    // A new epoch starts at 0; the old one is fenced from then on.
    assert_eq!(
        r.produce("idem", 0, &idem_batch(42, 1, 0, 2)).base_offset,
        9
    );
    let old = r.produce("idem", 0, &idem_batch(42, 0, 8, 1));
    assert_eq!(
        old.error,
        ErrorCode::InvalidProducerEpoch,
        "{:?}",
        old.message
    );

    // A crash: the state is rebuilt from the log (no snapshot was taken).
    b.kill();
    b.spawn();
    let mut r = Raw::hello(&b);
    let retry = r.produce("idem", 0, &idem_batch(42, 1, 0, 2));
    assert_eq!(
        (retry.error, retry.base_offset),
        (ErrorCode::None, 9),
        "{:?}",
        retry.message
    );
    assert_eq!(
        r.produce("idem", 0, &idem_batch(42, 1, 2, 1)).base_offset,
        11
    );
    let old = r.produce("idem", 0, &idem_batch(42, 0, 8, 1));
    assert_eq!(old.error, ErrorCode::InvalidProducerEpoch);

    // A clean stop writes a snapshot; the state survives that too.
    b.stop();
    b.spawn();
    let mut r = Raw::hello(&b);
    let retry = r.produce("idem", 0, &idem_batch(42, 1, 2, 1));
    assert_eq!((retry.error, retry.base_offset), (ErrorCode::None, 11));
    assert_eq!(
        r.produce("idem", 0, &idem_batch(42, 1, 3, 1)).base_offset,
        12
    );

    // Everything stored exactly once: 5 + 1 + 3 + 2 + 1 + 1 records.
    let (_, data) = r.fetch("idem", 0, 0);
    let n: usize = batch::split_batches(&data)
        .map(|b| batch::records(b).unwrap().len())
        .sum();
    assert_eq!(n, 13);
}

/// Sends `n` numbered records with the native Producer to a broker that
/// cuts the connection after every 7th produce it wrote (its answer lost,
/// so the client sends the batch again), then reads every partition back:
/// the count of each record.
fn produce_through_cuts(idempotent: bool, n: usize) -> std::collections::BTreeMap<String, usize> {
    let b = Broker::start_with_env(
        if idempotent {
            "idem-cuts"
        } else {
            "idem-cuts-off"
        },
        &["--cores", "1"],
        &[("LEVEE_FAULT_CUT_AFTER_PRODUCE", "7")],
    );
    let mut r = Raw::hello(&b);
    r.create("cuts", 4);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bs = b.bootstrap();
    rt.block_on(async move {
        let client = levee_client::Client::connect(levee_client::ClientConfig::new([bs]))
            .await
            .unwrap();
        let producer = levee_client::Producer::new(
            client.clone(),
            levee_client::ProducerConfig {
                enable_idempotence: idempotent,
                linger: std::time::Duration::from_millis(1),
                batch_size: 4096,
                max_request_bytes: 8192,
                ..Default::default()
            },
        )
        .unwrap();
        let mut futures = Vec::new();
        for i in 0..n {
            let v = format!("rec-{i}");
            futures.push(
                producer
                    .send("cuts", Some(v.clone().into_bytes()), v.into_bytes())
                    .await
                    .unwrap(),
            );
        }
        for f in futures {
            f.await.expect("every record is acknowledged");
        }
        assert!(
            producer.retried_batches() > 0,
            "the cuts made the producer send again"
        );
        let mut counts = std::collections::BTreeMap::new();
        for p in 0..4 {
            let mut offset = 0u64;
            loop {
                let want = levee_client::FetchRequestPartition {
                    topic: "cuts".into(),
                    partition: p,
                    offset,
                    max_bytes: 1 << 20,
                };
                let parts = client
                    .fetch(std::time::Duration::ZERO, 0, 1 << 20, &[want])
                    .await
                    .unwrap();
                let got = &parts[0];
                if offset >= got.high_watermark {
                    break;
                }
                for b in batch::split_batches(&got.batches) {
                    for rec in batch::records(b).unwrap() {
                        if rec.offset < offset {
                            continue;
                        }
                        let v = String::from_utf8(rec.value.unwrap().to_vec()).unwrap();
                        *counts.entry(v).or_insert(0) += 1;
                        offset = rec.offset + 1;
                    }
                }
            }
        }
        counts
    })
}

#[test]
fn the_native_producer_writes_each_record_once_through_lost_answers() {
    let n = 20_000;
    let counts = produce_through_cuts(true, n);
    let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(dups.is_empty(), "written more than once: {dups:?}");
    assert_eq!(counts.len(), n, "every record was written");
    // Without idempotence the same cuts write batches twice: the fault
    // does what the test needs.
    let off = produce_through_cuts(false, n);
    let twice = off.values().filter(|c| **c > 1).count();
    eprintln!("idempotence on: 0 duplicates of {n}; off: {twice} records written twice");
    assert!(
        twice > 0,
        "the cuts caused no duplicate without idempotence"
    );
}
