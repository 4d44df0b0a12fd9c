//! A partition whose log a write failure on a full disk stopped: produce
//! fails with a disk-full storage error (flagged, so the broker reports the
//! disk full), and once reopened the partition takes writes again at the
//! cut, its idempotent producers' table forgetting the batch that never
//! reached the disk (a retry of it is written, not taken for a duplicate).

use levee_engine::batch::{build_batch_raw, encode_records, BatchMeta, Record};
use levee_engine::LogConfig;
use levee_schemas::proto::ErrorCode;
use levee_server::partition::{Partition, Reader};
use std::time::Duration;

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("glommio executor")
        .run(f)
}

/// An idempotent producer's batch of one record: producer 7, epoch 0.
fn batch(seq: i32) -> bytes::Bytes {
    let rec = Record {
        timestamp: 1,
        key: None,
        value: Some(format!("record {seq}").repeat(200).into_bytes()),
        headers: vec![],
    };
    let meta = BatchMeta {
        producer_id: 7,
        producer_epoch: 0,
        base_sequence: seq,
        ..BatchMeta::default()
    };
    build_batch_raw(&encode_records(&[rec], 1), 1, 1, 1, meta).into()
}

#[test]
fn a_partition_stopped_by_a_full_disk_reopens_and_takes_the_retry() {
    let dir = tempfile::Builder::new()
        .prefix("levee-full-disk-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    run(async {
        let cfg = LogConfig {
            write_chunk_bytes: 16 << 10,
            segment_bytes: 1 << 20,
            preallocate_bytes: 1 << 20,
            ..LogConfig::default()
        };
        let p = Partition::open("t", 0, dir.path(), cfg, Default::default(), None)
            .await
            .unwrap();
        let t = Duration::from_secs(10);
        for seq in 0..10 {
            let b = batch(seq);
            let n = b.len();
            let r = p.produce(-1, t, b, n).await.unwrap();
            assert_eq!(r.base, seq as u64);
        }
        // The next write fails as on a full disk: batch 10 was appended in
        // memory, but never reaches the disk.
        p.log.fail_next_write(std::io::ErrorKind::StorageFull);
        let b = batch(10);
        let n = b.len();
        let e = p.produce(-1, t, b, n).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::StorageError, "{}", e.message);
        assert!(e.no_space, "{}", e.message);
        assert!(e.message.contains("disk is full"), "{}", e.message);
        assert!(p.log.is_stopped_by_full_disk());
        let b = batch(11);
        let n = b.len();
        assert!(p.produce(-1, t, b, n).await.unwrap_err().no_space);
        // What was acknowledged still reads.
        let out = p.read(0, 1 << 20, Reader::Consumer).await.unwrap();
        assert!(!out.data.is_empty());

        assert!(p.recover_from_full_disk().await.unwrap());
        assert_eq!(p.log.log_end_offset(), 10, "cut to what reached the disk");
        assert!(!p.recover_from_full_disk().await.unwrap(), "once");
        // The producer's retry of batch 10 is written at the cut, not
        // answered as a duplicate of a batch that is gone.
        let b = batch(10);
        let n = b.len();
        let r = p.produce(-1, t, b, n).await.unwrap();
        assert_eq!((r.base, r.last), (10, 10));
        assert_eq!(p.log.log_end_offset(), 11, "the retry was written");
        let b = batch(11);
        let n = b.len();
        assert_eq!(p.produce(-1, t, b, n).await.unwrap().base, 11);
        // And a true duplicate is still recognised.
        let b = batch(11);
        let n = b.len();
        assert_eq!(p.produce(-1, t, b, n).await.unwrap().base, 11);
        assert_eq!(p.log.log_end_offset(), 12);
        let mut next = 0;
        while next < 12 {
            let out = p.read(next, 1 << 20, Reader::Consumer).await.unwrap();
            for b in levee_engine::batch::split_batches(&out.data) {
                let h = levee_engine::batch::BatchHeader::parse(b).unwrap();
                assert_eq!(h.base_offset(), next);
                assert_eq!(h.base_sequence(), next as i32);
                next = h.next_offset();
            }
        }
        p.log.close().await.unwrap();
    });
}
