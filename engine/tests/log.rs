//! Partition log behaviour: append/read, segment roll, index rebuild,
//! retention, timestamp lookup, clean restart, bounded memory.

mod common;
use common::*;
use levee_engine::{FsyncPolicy, Log, LogConfig, LogError};
use std::time::Duration;

#[test]
fn append_read_round_trip_and_offsets() {
    let dir = tempdir();
    run(async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let mut expect = 0;
        for i in 0..200u64 {
            let info = log
                .append_durable(make_batch(i, 1 + (i % 5) as usize, 100, 1000 + i as i64))
                .await
                .unwrap();
            assert_eq!(info.base_offset, expect);
            expect = info.last_offset + 1;
        }
        assert_eq!(log.log_end_offset(), expect);
        assert_eq!(log.durable_offset(), expect);
        // Read everything from every start offset class.
        for from in [0, 1, 7, expect / 2, expect - 1] {
            let out = log.read(from, 1 << 20, None).await.unwrap();
            let (first, next, _) = check_read(&out, from);
            assert!(first <= from);
            assert_eq!(next, expect);
        }
        // At the end: empty, not an error. Past it or below start: typed errors.
        assert!(log
            .read(expect, 1 << 20, None)
            .await
            .unwrap()
            .data
            .is_empty());
        assert!(matches!(
            log.read(expect + 1, 100, None).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        // A visibility bound (high watermark) hides later batches.
        let out = log.read(0, 1 << 20, Some(10)).await.unwrap();
        let (_, next, _) = check_read(&out, 0);
        assert!((10..=15).contains(&next), "bound 10 read up to {next}");
        // max_bytes bounds the read but always yields one whole batch.
        let out = log.read(0, 1, None).await.unwrap();
        assert_eq!(check_read(&out, 0).2, 1);
        // A bad batch is rejected and never written.
        let mut bad = make_batch(1, 1, 10, 0);
        *bad.last_mut().unwrap() ^= 0x40;
        assert!(matches!(log.append(bad).await, Err(LogError::Batch(_))));
        assert_eq!(log.log_end_offset(), expect);
        log.close().await.unwrap();
    });
}

#[test]
fn reads_cross_segment_boundaries_from_disk_and_cache() {
    let dir = tempdir();
    run(async {
        let cfg = LogConfig {
            segment_bytes: 64 << 10,
            fsync: FsyncPolicy::Never,
            ..small_config()
        };
        let log = Log::open(dir.path(), cfg).await.unwrap();
        for i in 0..400u64 {
            log.append(make_batch(i, 2, 500, i as i64)).await.unwrap();
        }
        log.flush().await.unwrap();
        let bases = log.segment_bases();
        assert!(bases.len() >= 6, "expected many segments, got {bases:?}");
        for w in bases.windows(2) {
            assert!(w[0] < w[1]);
        }
        // Segment files are named by their base offsets.
        for b in &bases {
            assert!(dir.path().join(format!("{b:020}.log")).exists());
        }
        // A read starting near the end of one segment continues into the next.
        let from = bases[3] - 1;
        let out = log.read(from, 256 << 10, None).await.unwrap();
        let (_, next, n) = check_read(&out, from);
        assert!(next > bases[4], "read stopped at {next}");
        assert!(n > 10);
        // Sequential scan of the whole log returns every offset exactly once.
        let mut at = 0;
        while at < log.log_end_offset() {
            let out = log.read(at, 10_000, None).await.unwrap();
            let (first, next, _) = check_read(&out, at);
            assert!(first <= at && next > at);
            at = next;
        }
        assert_eq!(at, 800);
        log.close().await.unwrap();
    });
}

#[test]
fn clean_restart_skips_scan_and_unclean_restart_recovers() {
    let dir = tempdir();
    run(async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        for i in 0..300u64 {
            log.append(make_batch(i, 3, 200, i as i64)).await.unwrap();
        }
        log.close().await.unwrap();
        drop(log);
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(
            log.stats().recovered_bytes_scanned,
            0,
            "clean restart scanned"
        );
        assert_eq!(log.log_end_offset(), 900);
        let out = log.read(450, 1 << 20, None).await.unwrap();
        check_read(&out, 450);
        // Unclean: flush, then drop without close.
        log.append_durable(make_batch(1, 1, 10, 5)).await.unwrap();
        drop(log);
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert!(
            log.stats().recovered_bytes_scanned > 0,
            "unclean restart must scan"
        );
        assert_eq!(log.log_end_offset(), 901);
        let info = log.append(make_batch(2, 1, 10, 6)).await.unwrap();
        assert_eq!(info.base_offset, 901);
        log.close().await.unwrap();
    });
}

#[test]
fn index_files_are_rebuilt_when_missing_or_damaged() {
    let dir = tempdir();
    let cfg = LogConfig {
        segment_bytes: 64 << 10,
        ..small_config()
    };
    run(async {
        let log = Log::open(dir.path(), cfg.clone()).await.unwrap();
        for i in 0..300u64 {
            log.append(make_batch(i, 2, 300, 10_000 + i as i64))
                .await
                .unwrap();
        }
        log.close().await.unwrap();
    });
    // Delete some index files, damage others.
    let mut n = 0;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".index") || name.ends_with(".timeindex") {
            n += 1;
            if n % 2 == 0 {
                std::fs::remove_file(&p).unwrap();
            } else {
                let mut b = std::fs::read(&p).unwrap();
                let l = b.len();
                b[l / 2] ^= 0xff;
                std::fs::write(&p, b).unwrap();
            }
        }
    }
    assert!(n > 6);
    run(async {
        let log = Log::open(dir.path(), cfg.clone()).await.unwrap();
        assert_eq!(log.log_end_offset(), 600);
        let mut at = 0;
        while at < 600 {
            let out = log.read(at, 7_000, None).await.unwrap();
            at = check_read(&out, at).1;
        }
        assert_eq!(
            log.offset_for_timestamp(10_150).await.unwrap().map(|f| f.0),
            Some(300)
        );
        log.close().await.unwrap();
    });
    // Rebuilt files are valid again: a clean reopen needs no scan.
    run(async {
        let log = Log::open(dir.path(), cfg).await.unwrap();
        assert_eq!(log.stats().recovered_bytes_scanned, 0);
    });
}

#[test]
fn timestamp_lookup() {
    let dir = tempdir();
    run(async {
        let cfg = LogConfig {
            segment_bytes: 32 << 10,
            ..small_config()
        };
        let log = Log::open(dir.path(), cfg).await.unwrap();
        // Batch i holds 4 records all with timestamp 1000 + 10 i.
        for i in 0..200u64 {
            log.append(make_batch(i, 4, 100, 1000 + 10 * i as i64))
                .await
                .unwrap();
        }
        assert!(log.segment_bases().len() > 3);
        // (offset, timestamp) of the first record at or after the time.
        for (ts, want) in [
            (0, (0, 1000)),
            (1000, (0, 1000)),
            (1001, (4, 1010)),
            (1500, (200, 1500)),
            (1995, (400, 2000)),
            (1991, (400, 2000)),
            (1990, (396, 1990)),
            (2990, (796, 2990)),
        ] {
            assert_eq!(
                log.offset_for_timestamp(ts).await.unwrap(),
                Some(want),
                "at {ts}"
            );
        }
        assert_eq!(log.offset_for_timestamp(5000).await.unwrap(), None);
        log.close().await.unwrap();
    });
}

#[test]
fn delete_before_removes_only_segments_wholly_below_the_offset() {
    let dir = tempdir();
    run(async {
        let cfg = LogConfig {
            segment_bytes: 32 << 10,
            retention_bytes: None,
            retention_age: None,
            ..small_config()
        };
        let log = Log::open(dir.path(), cfg).await.unwrap();
        for i in 0..300u64 {
            log.append(make_batch(i, 1, 1000, i as i64)).await.unwrap();
        }
        let bases = log.segment_bases();
        assert!(bases.len() > 4, "{bases:?}");
        // An offset inside the third segment: the first two go, the third
        // (which holds records below and above it) stays.
        let floor = bases[2] + 1;
        assert_eq!(log.delete_before(floor).await.unwrap(), 2);
        assert_eq!(log.log_start_offset(), bases[2]);
        assert_eq!(log.delete_before(floor).await.unwrap(), 0);
        let out = log.read(bases[2], 1 << 20, None).await.unwrap();
        check_read(&out, bases[2]);
        // Never the active segment, whatever the offset.
        log.delete_before(u64::MAX).await.unwrap();
        assert_eq!(log.segment_bases().len(), 1);
        assert_eq!(log.log_end_offset(), 300);
        log.close().await.unwrap();
    });
}

#[test]
fn advance_log_start_inside_a_segment_is_durable_and_deletes_segments_below() {
    let dir = tempdir();
    run(async {
        let cfg = LogConfig {
            segment_bytes: 32 << 10,
            retention_bytes: None,
            retention_age: None,
            ..small_config()
        };
        let log = Log::open(dir.path(), cfg.clone()).await.unwrap();
        for i in 0..300u64 {
            log.append(make_batch(i, 1, 1000, i as i64)).await.unwrap();
        }
        let bases = log.segment_bases();
        assert!(bases.len() > 4, "{bases:?}");
        let start = bases[2] + 3;
        assert_eq!(log.advance_log_start(start).await.unwrap(), start);
        assert_eq!(log.log_start_offset(), start);
        assert_eq!(log.segment_bases()[0], bases[2]);
        assert!(matches!(
            log.read(start - 1, 1 << 20, None).await,
            Err(LogError::OffsetOutOfRange { log_start, .. }) if log_start == start
        ));
        let out = log.read(start, 1 << 20, None).await.unwrap();
        check_read(&out, start);
        // Lower or equal: nothing changes; past the end: a typed error.
        assert_eq!(log.advance_log_start(5).await.unwrap(), start);
        assert!(matches!(
            log.advance_log_start(301).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        // Retention keeps the recorded start rather than the segment base.
        log.enforce_retention().await.unwrap();
        assert_eq!(log.log_start_offset(), start);
        log.close().await.unwrap();
        drop(log);
        // A clean restart keeps it.
        let log = Log::open(dir.path(), cfg.clone()).await.unwrap();
        assert_eq!(log.log_start_offset(), start);
        // Up to the log end: an empty log that continues at 300.
        assert_eq!(log.advance_log_start(300).await.unwrap(), 300);
        assert_eq!(log.segment_bases().len(), 1);
        drop(log);
        // Without a clean close as well.
        let log = Log::open(dir.path(), cfg.clone()).await.unwrap();
        assert_eq!(log.log_start_offset(), 300);
        assert_eq!(log.log_end_offset(), 300);
        let info = log.append(make_batch(0, 2, 100, 0)).await.unwrap();
        assert_eq!(info.base_offset, 300);
        log.close().await.unwrap();
    });
}

#[test]
fn a_truncation_below_the_recorded_log_start_moves_it_back_to_the_end() {
    let dir = tempdir();
    run(async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        for i in 0..50u64 {
            log.append(make_batch(i, 1, 100, i as i64)).await.unwrap();
        }
        log.advance_log_start(40).await.unwrap();
        log.truncate_to(30).await.unwrap();
        assert_eq!(log.log_end_offset(), 30);
        assert!(log.log_start_offset() <= 30);
        for i in 0..20u64 {
            log.append(make_batch(i, 1, 100, i as i64)).await.unwrap();
        }
        log.close().await.unwrap();
        drop(log);
        // The recorded start no longer hides what came after the cut.
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.log_start_offset(), 30);
        check_read(&log.read(30, 1 << 20, None).await.unwrap(), 30);
        log.close().await.unwrap();
    });
}

#[test]
fn retention_by_size_and_age() {
    let dir = tempdir();
    run(async {
        let cfg = LogConfig {
            segment_bytes: 32 << 10,
            retention_bytes: Some(100 << 10),
            retention_age: None,
            ..small_config()
        };
        let log = Log::open(dir.path(), cfg).await.unwrap();
        for i in 0..500u64 {
            log.append(make_batch(i, 1, 1000, i as i64)).await.unwrap();
        }
        let before = log.stats();
        assert!(before.size_bytes > 400 << 10);
        let deleted = log.enforce_retention().await.unwrap();
        assert!(deleted > 5);
        let after = log.stats();
        assert!(after.size_bytes <= (100 << 10) + (32 << 10), "{after:?}");
        assert!(after.size_bytes >= 100 << 10);
        assert!(after.log_start_offset > 0);
        assert_eq!(after.log_start_offset, log.segment_bases()[0]);
        // Files of deleted segments are gone; reads below the start are typed errors.
        assert!(!dir.path().join(format!("{:020}.log", 0)).exists());
        assert!(matches!(
            log.read(0, 100, None).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        let out = log
            .read(after.log_start_offset, 1 << 20, None)
            .await
            .unwrap();
        check_read(&out, after.log_start_offset);
        // Appends continue.
        let info = log.append(make_batch(9, 1, 10, 9)).await.unwrap();
        assert_eq!(info.base_offset, 500);
        log.close().await.unwrap();
    });
    run(async {
        // By age: timestamps 0..500 ms since the epoch are ancient; a
        // retention of one hour deletes every sealed segment.
        let cfg = LogConfig {
            segment_bytes: 32 << 10,
            retention_age: Some(Duration::from_secs(3600)),
            ..small_config()
        };
        let log = Log::open(dir.path(), cfg).await.unwrap();
        let start = log.log_start_offset();
        let now = 10_000_000i64;
        for i in 0..100u64 {
            log.append(make_batch(i, 1, 1000, now)).await.unwrap();
        }
        // Only segments with all records older than now - 1h go.
        let deleted = log.enforce_retention_at(now + 1000).await.unwrap();
        assert!(deleted >= 2);
        let s = log.stats();
        assert!(s.log_start_offset > start);
        assert!(
            s.log_start_offset <= 501,
            "deleted a segment holding fresh records: {s:?}"
        );
        let deleted = log.enforce_retention_at(now + 3_600_001 + 1).await.unwrap();
        assert!(deleted >= 1);
        assert_eq!(
            log.segment_bases().len(),
            1,
            "only the active segment stays"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn group_commit_covers_concurrent_appends() {
    let dir = tempdir();
    run(async {
        let log = std::rc::Rc::new(Log::open(dir.path(), small_config()).await.unwrap());
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..20u64 {
                    log.append_durable(make_batch(t * 100 + i, 2, 300, 0))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let s = log.stats();
        assert_eq!(s.log_end_offset, 640);
        assert_eq!(s.durable_offset, 640);
        eprintln!("flushes {}", s.flushes);
        assert!(
            s.flushes < 320,
            "no group commit: {} flushes for 320 appends",
            s.flushes
        );
        let mut at = 0;
        while at < 640 {
            at = check_read(&log.read(at, 1 << 20, None).await.unwrap(), at).1;
        }
        log.close().await.unwrap();
    });
}

#[test]
fn interval_policy_flushes_in_background() {
    let dir = tempdir();
    run(async {
        let cfg = LogConfig {
            fsync: FsyncPolicy::Interval(Duration::from_millis(20)),
            ..small_config()
        };
        let log = std::rc::Rc::new(Log::open(dir.path(), cfg).await.unwrap());
        let bg = {
            let log = log.clone();
            glommio::spawn_local(async move { log.run_background().await })
        };
        log.append(make_batch(1, 10, 100, 0)).await.unwrap();
        assert_eq!(log.durable_offset(), 0);
        let mut waited = 0;
        while log.durable_offset() < 10 && waited < 500 {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        assert_eq!(log.durable_offset(), 10);
        log.close().await.unwrap();
        bg.await.unwrap();
    });
}

/// Under `fsync = never` a batch can be half on disk (a full write chunk
/// ended inside it) and half in the chunk being filled; a reader must get it
/// whole from the tail cache, never a "corrupt" error.
#[test]
fn batches_straddling_the_written_end_are_read_whole() {
    let dir = tempdir();
    run(async {
        let cfg = LogConfig {
            fsync: FsyncPolicy::Never,
            write_chunk_bytes: 4096,
            max_inflight_writes: 1,
            tail_cache_bytes: 16 << 10,
            read_ahead_bytes: 4096,
            read_ahead_windows: 2,
            ..small_config()
        };
        let log = Log::open(dir.path(), cfg).await.unwrap();
        let mut end = 0;
        for i in 0..300u64 {
            // About 3 KiB batches: most straddle a 4 KiB chunk boundary.
            let info = log.append(make_batch(i, 3, 1000, 0)).await.unwrap();
            end = info.last_offset + 1;
            // A sequential reader trailing behind the writer.
            if i % 7 == 0 {
                let from = (i * 3).saturating_sub(40);
                let out = log.read(from, 64 << 10, None).await.unwrap();
                let (first, _, _) = check_read(&out, from);
                assert!(first <= from);
            }
        }
        // Without any flush: read everything from every position.
        for from in (0..end).step_by(13) {
            let out = log.read(from, 32 << 10, None).await.unwrap();
            check_read(&out, from);
        }
        let mut next = 0;
        while next < end {
            let out = log.read(next, 8 << 10, None).await.unwrap();
            let (_, n, _) = check_read(&out, next);
            assert!(n > next);
            next = n;
        }
        log.close().await.unwrap();
    });
}

#[test]
fn idle_logs_give_back_their_memory_and_continue_their_partial_block() {
    let dir = tempdir();
    run(async {
        let cfg = LogConfig {
            fsync: FsyncPolicy::Never,
            idle_release: Some(Duration::from_millis(150)),
            retention_check_interval: Duration::from_millis(20),
            ..small_config()
        };
        let log = std::rc::Rc::new(Log::open(dir.path(), cfg.clone()).await.unwrap());
        let bg = {
            let log = log.clone();
            glommio::spawn_local(async move { log.run_background().await })
        };
        // A partial last block, still in the write chunk and the tail cache.
        for i in 0..3 {
            log.append(make_batch(i, 3, 333, 0)).await.unwrap();
        }
        assert!(log.write_chunk_bytes_held() > 0);
        assert!(log.stats().tail_cache_bytes > 0);
        let mut waited = 0;
        while log.write_chunk_bytes_held() > 0 && waited < 100 {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        assert_eq!(log.write_chunk_bytes_held(), 0, "idle log kept its chunk");
        assert_eq!(log.stats().tail_cache_bytes, 0);
        assert_eq!(log.durable_offset(), 9, "released only after a flush");
        // Appends continue the partial block (reloaded from disk).
        for i in 3..6 {
            log.append(make_batch(i, 3, 333, 0)).await.unwrap();
        }
        let r = log.read(0, 1 << 20, None).await.unwrap();
        let (_, next, n) = check_read(&r, 0);
        assert_eq!((next, n), (18, 6));
        log.flush().await.unwrap();
        drop(bg);
        drop(log);
        // After a crash the same bytes are there.
        let log = Log::open(dir.path(), cfg).await.unwrap();
        let r2 = log.read(0, 1 << 20, None).await.unwrap();
        assert_eq!(r2.data, r.data);
        log.close().await.unwrap();
    });
}

/// A batch of exactly 4 KiB, so a log of them ends on block boundaries and
/// a recycled file's old batches sit right after the last written one.
fn block_batch(tag: u64) -> Vec<u8> {
    let mut value_len = 4096 - 200;
    loop {
        let b = make_batch(tag, 1, value_len, tag as i64);
        match b.len().cmp(&4096) {
            std::cmp::Ordering::Equal => return b,
            std::cmp::Ordering::Less => value_len += 4096 - b.len(),
            std::cmp::Ordering::Greater => value_len -= b.len() - 4096,
        }
    }
}

fn recycled_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "recycle"))
        .collect()
}

#[test]
fn retired_segment_files_are_reused_and_their_batches_never_resurface() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempdir();
    let cfg = LogConfig {
        segment_bytes: 32 << 10,
        retention_bytes: Some(64 << 10),
        retention_age: None,
        ..small_config()
    };
    let mut next = 0u64;
    run(async {
        let log = Log::open(dir.path(), cfg.clone()).await.unwrap();
        for _ in 0..40 {
            log.append(block_batch(next)).await.unwrap();
            next += 1;
        }
        assert!(log.enforce_retention().await.unwrap() >= 2);
        let kept = recycled_files(dir.path());
        assert_eq!(kept.len(), 1, "one retired file is kept: {kept:?}");
        let inode = std::fs::metadata(&kept[0]).unwrap().ino();
        // Append until the log rolls: the new segment is the kept file.
        let bases = log.segment_bases();
        while log.segment_bases() == bases {
            log.append(block_batch(next)).await.unwrap();
            next += 1;
        }
        assert!(recycled_files(dir.path()).is_empty());
        let active = *log.segment_bases().last().unwrap();
        let path = dir.path().join(format!("{active:020}.log"));
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            inode,
            "file not reused"
        );
        // A few more blocks (fewer than the old segment held, so its old
        // batches follow them), flushed, then a crash.
        for _ in 0..3 {
            log.append_durable(block_batch(next)).await.unwrap();
            next += 1;
        }
        drop(log);
    });
    run(async {
        let log = Log::open(dir.path(), cfg.clone()).await.unwrap();
        assert_eq!(log.log_end_offset(), next, "recovery took old batches");
        assert!(log.stats().truncated_bytes > 0, "the old batches were cut");
        // Everything readable is what was appended, in order.
        let mut at = log.log_start_offset();
        while at < next {
            let out = log.read(at, 1 << 20, None).await.unwrap();
            let (_, n, _) = check_read(&out, at);
            for b in levee_engine::batch::split_batches(&out.data) {
                let h = levee_engine::batch::BatchHeader::parse(b).unwrap();
                let rec = levee_engine::batch::records(b).unwrap();
                let v = rec[0].value.unwrap();
                assert_eq!(
                    u64::from_le_bytes(v[..8].try_into().unwrap()),
                    h.base_offset(),
                    "batch {} holds another batch's records",
                    h.base_offset()
                );
            }
            at = n;
        }
        // Appends continue at the right offset; a crash with a kept file
        // pending leaves nothing behind at the next open.
        let info = log.append(block_batch(next)).await.unwrap();
        assert_eq!(info.base_offset, next);
        next += 1;
        for _ in 0..20 {
            log.append(block_batch(next)).await.unwrap();
            next += 1;
        }
        log.flush().await.unwrap();
        log.enforce_retention().await.unwrap();
        assert_eq!(recycled_files(dir.path()).len(), 1);
        drop(log);
    });
    run(async {
        let log = Log::open(dir.path(), cfg.clone()).await.unwrap();
        assert_eq!(log.log_end_offset(), next);
        assert!(recycled_files(dir.path()).is_empty(), "left over at open");
        for _ in 0..20 {
            log.append(block_batch(next)).await.unwrap();
            next += 1;
        }
        log.enforce_retention().await.unwrap();
        assert_eq!(recycled_files(dir.path()).len(), 1);
        // A clean close deletes it.
        log.close().await.unwrap();
        assert!(recycled_files(dir.path()).is_empty(), "left over at close");
    });
    run(async {
        let cfg = LogConfig {
            recycle_segments: false,
            ..cfg.clone()
        };
        let log = Log::open(dir.path(), cfg).await.unwrap();
        for _ in 0..40 {
            log.append(block_batch(next)).await.unwrap();
            next += 1;
        }
        assert!(log.enforce_retention().await.unwrap() >= 1);
        assert!(recycled_files(dir.path()).is_empty(), "recycling is off");
        log.close().await.unwrap();
    });
}

/// A log written in storage format 1 (Levee's own batches) is refused,
/// not scanned as corrupt Kafka batches and cut.
#[test]
fn a_format_1_log_is_refused_and_left_untouched() {
    let dir = tempdir();
    // A format-1 batch header: magic 1 at byte 12, header CRC at byte 20.
    let mut old = vec![0u8; 4096];
    old[8..12].copy_from_slice(&200u32.to_le_bytes());
    old[12] = 1;
    let crc = crc32c::crc32c(&old[..20]);
    old[20..24].copy_from_slice(&crc.to_le_bytes());
    let seg = dir.path().join("00000000000000000000.log");
    std::fs::write(&seg, &old).unwrap();
    run(async {
        match Log::open(dir.path(), small_config()).await {
            Err(LogError::OldFormat { .. }) => {}
            Err(e) => panic!("expected OldFormat, got {e}"),
            Ok(_) => panic!("a format-1 log was opened"),
        }
    });
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        old,
        "the old log must not be cut"
    );
}

/// Batches appended as slices of a larger request buffer are charged for
/// that buffer in the tail cache, so slices cannot pin more request memory
/// than `tail_cache_bytes`; reads still see them (from disk).
#[test]
fn the_tail_cache_is_charged_for_the_request_buffers_batches_share() {
    use levee_engine::batch::CheckedBatch;
    let dir = tempdir();
    run(async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let cap = small_config().tail_cache_bytes;
        // Own buffers: the small batches stay cached after a flush.
        for i in 0..4u64 {
            log.append(make_batch(i, 1, 100, 1)).await.unwrap();
        }
        log.flush().await.unwrap();
        let own = log.stats().tail_cache_bytes;
        assert!(own > 0 && own <= cap, "{own}");
        // Slices of 1 MiB requests: each charged 1 MiB, over the cap alone,
        // so once on disk they leave the cache.
        for i in 0..4u64 {
            let b = CheckedBatch::produced(make_batch(i, 1, 100, 1).into(), 1 << 20)
                .unwrap()
                .sharing(1 << 20);
            log.append_checked(b, 0).await.unwrap();
        }
        log.flush().await.unwrap();
        assert!(
            log.stats().tail_cache_bytes <= cap,
            "{}",
            log.stats().tail_cache_bytes
        );
        let out = log.read(0, 1 << 20, None).await.unwrap();
        assert_eq!(check_read(&out, 0).1, 8);
    });
}

/// Reads the whole log from its start and checks it batch by batch;
/// returns the offset after the last batch.
async fn read_all(log: &Log) -> u64 {
    let mut next = log.log_start_offset();
    loop {
        let out = log.read(next, 1 << 20, None).await.unwrap();
        if out.data.is_empty() {
            return next;
        }
        next = check_read(&out, next).1;
    }
}

#[test]
fn a_log_stopped_by_a_full_disk_is_cut_to_what_reached_the_disk_and_writes_again() {
    let dir = tempdir();
    run(async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.recover_from_full_disk().await.unwrap(), None);
        for i in 0..50u64 {
            log.append_durable(make_batch(i, 2, 300, 1)).await.unwrap();
        }
        let durable = log.durable_offset();
        assert_eq!(durable, log.log_end_offset());
        // The next chunk write fails as on a full disk: it writes nothing.
        log.fail_next_write(std::io::ErrorKind::StorageFull);
        let mut last = 0;
        let mut refused = None;
        for i in 50..120u64 {
            match log.append(make_batch(i, 2, 300, 1)).await {
                Ok(info) => last = info.last_offset,
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let e = match refused {
            Some(e) => e,
            None => log.wait_durable(last).await.unwrap_err(),
        };
        assert!(e.is_no_space(), "{e}");
        assert!(matches!(e, LogError::NoSpace(_)), "{e}");
        assert!(log.is_stopped_by_full_disk());
        let e = log.append(make_batch(999, 1, 10, 1)).await.unwrap_err();
        assert!(e.is_no_space(), "appends are refused: {e}");
        // What was durable still reads back.
        assert!(read_all(&log).await >= durable);
        let (old_end, new_end) = log.recover_from_full_disk().await.unwrap().unwrap();
        assert!(new_end >= durable, "{new_end} < durable {durable}");
        assert!(new_end < old_end, "the failed chunk's batches are gone");
        assert_eq!(log.log_end_offset(), new_end);
        assert!(!log.is_stopped_by_full_disk());
        // Appends continue at the cut, without a gap, and everything reads back.
        let info = log.append_durable(make_batch(7, 3, 300, 1)).await.unwrap();
        assert_eq!(info.base_offset, new_end);
        assert_eq!(read_all(&log).await, info.last_offset + 1);
        log.close().await.unwrap();
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.log_end_offset(), info.last_offset + 1);
        assert_eq!(read_all(&log).await, info.last_offset + 1);
    });
}

/// A follower's truncation that finds the disk full stops the log as a
/// full disk does (it used to leave it closed for good): once there is
/// room it reopens, and the truncation can be made again.
#[test]
fn a_truncation_on_a_full_disk_stops_the_log_until_there_is_room() {
    let dir = tempdir();
    run(async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        for i in 0..20u64 {
            log.append_durable(make_batch(i, 2, 300, 1)).await.unwrap();
        }
        log.fail_next_write(std::io::ErrorKind::StorageFull);
        let e = log.truncate_to(10).await.unwrap_err();
        assert!(e.is_no_space(), "{e}");
        assert!(log.is_stopped_by_full_disk());
        assert!(log
            .append(make_batch(99, 1, 10, 1))
            .await
            .unwrap_err()
            .is_no_space());
        let (_, end) = log.recover_from_full_disk().await.unwrap().unwrap();
        assert!(end >= 10, "{end}");
        log.truncate_to(10).await.unwrap();
        assert_eq!(log.log_end_offset(), 10);
        let info = log.append_durable(make_batch(7, 3, 300, 1)).await.unwrap();
        assert_eq!(info.base_offset, 10);
        assert_eq!(read_all(&log).await, 13);
    });
}

/// A new epoch whose write fails (a full disk) is not adopted: no batch of
/// it is appended, a second try writes it, and the log reopens with the
/// batches and the epochs agreeing (it used to take the epoch as written,
/// append its batches, and fail to reopen: "stored batch has leader epoch
/// 6 where the epochs say 5").
#[test]
fn a_new_epoch_that_could_not_be_written_is_not_adopted() {
    let dir = tempdir();
    run(async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        log.append_with_epoch(make_batch(1, 2, 100, 1), 1)
            .await
            .unwrap();
        log.flush().await.unwrap();
        log.fail_next_epoch_write(std::io::ErrorKind::StorageFull);
        let e = log
            .append_with_epoch(make_batch(2, 2, 100, 1), 2)
            .await
            .unwrap_err();
        assert!(e.is_no_space(), "{e}");
        assert_eq!(log.log_end_offset(), 2);
        // Tried again, the epoch is written and the batch appended.
        log.append_with_epoch(make_batch(2, 2, 100, 1), 2)
            .await
            .unwrap();
        log.fail_next_epoch_write(std::io::ErrorKind::StorageFull);
        assert!(log.assign_epoch_start(3).await.unwrap_err().is_no_space());
        log.assign_epoch_start(3).await.unwrap();
        log.append_with_epoch(make_batch(3, 2, 100, 1), 3)
            .await
            .unwrap();
        log.close().await.unwrap();
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.log_end_offset(), 6);
        assert_eq!(read_all(&log).await, 6);
        assert_eq!(log.latest_epoch(), Some(3));
        assert_eq!(log.end_offset_for_epoch(2), (2, 4));
    });
}

#[test]
fn a_log_stopped_by_another_write_failure_stays_stopped() {
    let dir = tempdir();
    run(async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        log.append_durable(make_batch(1, 1, 100, 1)).await.unwrap();
        log.fail_next_write(std::io::ErrorKind::Other);
        let info = log.append(make_batch(2, 1, 100, 1)).await.unwrap();
        let e = log.wait_durable(info.last_offset).await.unwrap_err();
        assert!(
            matches!(e, LogError::Poisoned(_)) && !e.is_no_space(),
            "{e}"
        );
        assert!(!log.is_stopped_by_full_disk());
        assert_eq!(log.recover_from_full_disk().await.unwrap(), None);
        assert!(log.append(make_batch(3, 1, 100, 1)).await.is_err());
    });
}

#[test]
fn set_config_retunes_retention_and_segment_size_of_an_open_log() {
    let dir = tempdir();
    run(async {
        let cfg = LogConfig {
            segment_bytes: 64 << 10,
            ..small_config()
        };
        let log = Log::open(dir.path(), cfg.clone()).await.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        for i in 0..100u64 {
            log.append_durable(make_batch(i, 4, 1000, now))
                .await
                .unwrap();
        }
        let before = log.stats();
        assert!(before.segments > 4, "{}", before.segments);
        assert_eq!(log.enforce_retention().await.unwrap(), 0);
        let lower = LogConfig {
            retention_bytes: Some(100 << 10),
            segment_bytes: 32 << 10,
            ..cfg.clone()
        };
        log.set_config(&lower).unwrap();
        assert!(log.enforce_retention().await.unwrap() > 0);
        let after = log.stats();
        assert!(
            after.size_bytes <= (100 << 10) + (64 << 10),
            "{}",
            after.size_bytes
        );
        assert!(after.log_start_offset > 0);
        assert_eq!(after.log_end_offset, before.log_end_offset);
        // New segments roll at the new size.
        let segs = after.segments;
        for i in 0..20u64 {
            log.append_durable(make_batch(i, 4, 1000, now))
                .await
                .unwrap();
        }
        assert!(log.stats().segments > segs);
        assert!(log
            .set_config(&LogConfig {
                segment_bytes: 10,
                ..cfg
            })
            .is_err());
        assert_eq!(read_all(&log).await, log.log_end_offset());
    });
}
