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
