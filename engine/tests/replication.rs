//! What replication needs from a log: appending a leader's stored batches
//! as they are, the leader-epoch cache, and truncating a suffix.

mod common;

use common::{check_read, make_batch, run, small_config};
use levee_engine::batch::{self, BatchHeader};
use levee_engine::{FsyncPolicy, Log, LogConfig, LogError};

fn cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 16 << 10,
        fsync: FsyncPolicy::Always,
        ..small_config()
    }
}

/// Every batch of `log` from offset 0, as stored.
async fn all_batches(log: &Log) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = log.log_start_offset();
    while off < log.log_end_offset() {
        let r = log.read(off, 1 << 20, None).await.unwrap();
        check_read(&r, off);
        for b in batch::split_batches(&r.data) {
            out.push(b.to_vec());
        }
        off = r.next_offset;
    }
    out
}

#[test]
fn replica_appends_keep_offsets_epochs_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let leader = Log::open(dir.path().join("leader"), cfg()).await.unwrap();
        let follower = Log::open(dir.path().join("follower"), cfg()).await.unwrap();
        for i in 0..30u64 {
            let epoch = if i < 10 { 1 } else { 3 };
            leader
                .append_with_epoch(make_batch(i, 5, 300, 1_000), epoch)
                .await
                .unwrap();
        }
        assert_eq!(leader.end_offset_for_epoch(1), (1, 50));
        assert_eq!(leader.end_offset_for_epoch(2), (1, 50));
        assert_eq!(leader.end_offset_for_epoch(3), (3, 150));
        let batches = all_batches(&leader).await;
        assert_eq!(batches.len(), 30);
        // Out of order: refused, nothing written.
        match follower.append_replica(batches[1].clone()).await {
            Err(LogError::NotContiguous {
                expected: 0,
                got: 5,
            }) => {}
            other => panic!("expected NotContiguous, got {other:?}"),
        }
        // A corrupted copy is refused.
        let mut bad = batches[0].clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(follower.append_replica(bad).await.is_err());
        for b in &batches {
            follower.append_replica(b.clone()).await.unwrap();
        }
        assert_eq!(follower.log_end_offset(), 150);
        assert_eq!(all_batches(&follower).await, batches);
        assert_eq!(follower.end_offset_for_epoch(1), (1, 50));
        assert_eq!(follower.latest_epoch(), Some(3));
        follower.close().await.unwrap();
        leader.close().await.unwrap();
        // The epoch cache survives a restart.
        let f = Log::open(dir.path().join("follower"), cfg()).await.unwrap();
        assert_eq!(f.end_offset_for_epoch(2), (1, 50));
        assert_eq!(f.latest_epoch(), Some(3));
        f.close().await.unwrap();
    });
}

#[test]
fn truncation_drops_the_suffix_across_segments_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = Log::open(dir.path(), cfg()).await.unwrap();
        for i in 0..60u64 {
            let epoch = if i < 40 { 1 } else { 2 };
            log.append_with_epoch(make_batch(i, 4, 500, 1_000), epoch)
                .await
                .unwrap();
        }
        log.flush().await.unwrap();
        assert!(log.segment_bases().len() > 3, "{:?}", log.segment_bases());
        let before = all_batches(&log).await;
        // Cut inside an early segment: later segments go.
        log.truncate_to(100).await.unwrap();
        assert_eq!(log.log_end_offset(), 100);
        assert_eq!(log.latest_epoch(), Some(1));
        assert_eq!(all_batches(&log).await, before[..25].to_vec());
        assert!(matches!(
            log.read(100, 1 << 20, None).await,
            Ok(r) if r.data.is_empty()
        ));
        // A new epoch appends after the cut.
        log.assign_epoch_start(5).await.unwrap();
        let info = log
            .append_with_epoch(make_batch(999, 3, 100, 2_000), 5)
            .await
            .unwrap();
        assert_eq!(info.base_offset, 100);
        log.wait_durable(info.last_offset).await.unwrap();
        assert_eq!(log.end_offset_for_epoch(1), (1, 100));
        assert_eq!(log.end_offset_for_epoch(4), (1, 100));
        // Truncating past the end does nothing.
        log.truncate_to(1_000).await.unwrap();
        assert_eq!(log.log_end_offset(), 103);
        drop(log);
        // A crash (no close) keeps exactly that.
        let log = Log::open(dir.path(), cfg()).await.unwrap();
        assert_eq!(log.log_end_offset(), 103);
        let after = all_batches(&log).await;
        assert_eq!(after[..25], before[..25]);
        let h = BatchHeader::parse(&after[25]).unwrap();
        assert_eq!((h.base_offset(), h.leader_epoch()), (100, 5));
        // Everything gone: the log restarts empty at the cut.
        log.truncate_to(0).await.unwrap();
        assert_eq!(log.log_end_offset(), 0);
        assert_eq!(log.latest_epoch(), None);
        let info = log
            .append_with_epoch(make_batch(1, 1, 10, 1), 7)
            .await
            .unwrap();
        assert_eq!(info.base_offset, 0);
        // A follower behind its leader's log start restarts there.
        log.reset_to(500).await.unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 500));
        assert_eq!(log.latest_epoch(), None);
        log.close().await.unwrap();
        let log = Log::open(dir.path(), cfg()).await.unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 500));
        log.close().await.unwrap();
    });
}
