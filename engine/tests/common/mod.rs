#![allow(dead_code)]
use levee_engine::batch::{self, Record};
use levee_engine::{LogConfig, ReadOutcome};
use std::future::Future;

/// Runs a future on a fresh glommio executor (a shard) on this thread.
pub fn run<F, T>(f: F) -> T
where
    F: Future<Output = T>,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("glommio executor")
        .run(f)
}

/// A batch whose records encode (`tag`, index) so a reader can verify them.
pub fn make_batch(tag: u64, records: usize, value_len: usize, ts: i64) -> Vec<u8> {
    let recs: Vec<Record> = (0..records)
        .map(|i| {
            let mut value = vec![(tag as u8).wrapping_add(i as u8); value_len];
            value[..8.min(value_len)].copy_from_slice(&tag.to_le_bytes()[..8.min(value_len)]);
            Record {
                timestamp: ts,
                key: Some(format!("k{tag}-{i}").into_bytes()),
                value: Some(value),
                headers: vec![],
            }
        })
        .collect();
    batch::build_batch(&recs)
}

/// Checks that `out` holds valid, contiguous batches starting at or before
/// `from`; returns (first base offset, next offset, batch count).
pub fn check_read(out: &ReadOutcome, from: u64) -> (u64, u64, usize) {
    let mut first = None;
    let mut next = None;
    let mut n = 0;
    let mut total = 0;
    for b in batch::split_batches(&out.data) {
        let h = batch::validate_stored(b, usize::MAX).expect("a reader got a corrupt batch");
        if let Some(nx) = next {
            assert_eq!(h.base_offset(), nx, "gap or overlap between batches");
        }
        first.get_or_insert(h.base_offset());
        next = Some(h.next_offset());
        batch::records(b).expect("records decode");
        n += 1;
        total += b.len();
    }
    assert_eq!(total, out.data.len(), "trailing bytes after the last batch");
    if let Some(f) = first {
        assert!(
            f <= from,
            "first batch {f} starts after the wanted offset {from}"
        );
        assert_eq!(next.unwrap(), out.next_offset);
    }
    (first.unwrap_or(from), next.unwrap_or(from), n)
}

pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        write_chunk_bytes: 16 << 10,
        tail_cache_bytes: 64 << 10,
        index_interval_bytes: 1024,
        read_ahead_bytes: 32 << 10,
        preallocate_bytes: 256 << 10,
        ..LogConfig::default()
    }
}

pub fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A temporary directory on the build disk (`/tmp` may be tmpfs, which has
/// no O_DIRECT).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("levee-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temporary directory")
}
