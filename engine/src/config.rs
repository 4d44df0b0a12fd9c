//! Per-partition log configuration, and the names by which settings
//! choose a fsync policy and a compression codec.

use crate::batch::Compression;
use crate::error::{LogError, Result};
use std::time::Duration;

/// When appended batches are flushed: the shared setting, defined in
/// `levee-core` and re-exported here so engine users name it as before.
pub use levee_core::FsyncPolicy;

/// A codec by the name the command line and settings use: `none`, `gzip`,
/// `snappy`, `lz4` or `zstd`.
impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Compression, String> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "snappy" => Ok(Compression::Snappy),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(format!(
                "expected none, gzip, snappy, lz4 or zstd, not `{s}`"
            )),
        }
    }
}

/// Configuration of one partition log. Every memory figure here is a bound:
/// the log never holds more than these, whatever the size of the data.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll the active segment when it would exceed this size (default 1 GiB).
    pub segment_bytes: u64,
    /// Roll the active segment once it is this old (default 7 days).
    pub segment_age: Option<Duration>,
    /// Delete the oldest segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this.
    pub retention_age: Option<Duration>,
    pub fsync: FsyncPolicy,
    /// Size of each aligned DMA write (default 512 KiB). Memory per log:
    /// one chunk being filled plus `max_inflight_writes` being written.
    pub write_chunk_bytes: usize,
    /// Writes in flight at once per log (default 4).
    pub max_inflight_writes: usize,
    /// Recently appended batches kept in memory for tailing readers (default 4 MiB).
    pub tail_cache_bytes: usize,
    /// Indexes of sealed segments kept in memory (default 1 MiB).
    pub index_cache_bytes: usize,
    /// Bytes of log between two sparse index entries (default 4 KiB).
    pub index_interval_bytes: u64,
    /// Persist the active segment's index after this many flushed bytes (default 64 MiB).
    pub index_checkpoint_bytes: u64,
    /// Largest accepted batch (default 16 MiB).
    pub max_batch_bytes: usize,
    /// Disk read size for reads that miss the tail cache (default 1 MiB).
    pub read_ahead_bytes: usize,
    /// Windows of `read_ahead_bytes` read ahead of a sequential reader (default 4).
    pub read_ahead_windows: usize,
    /// Preallocate the active segment in steps of up to this size (default
    /// 64 MiB); steps start at 1 MiB and grow with the segment.
    pub preallocate_bytes: u64,
    /// Keep the newest segment that retention deletes and reuse its file
    /// for the next segment of the same log, so steady writes at the
    /// retention limit overwrite blocks the disk already holds instead of
    /// allocating new ones (default true). Costs at most one segment of disk
    /// per log beyond retention; the file is deleted at close.
    pub recycle_segments: bool,
    /// How often `run_background` applies retention (default 60 s).
    pub retention_check_interval: Duration,
    /// A log with no append or read for this long gives back its memory
    /// (write chunk, tail cache, read-ahead windows, index cache, file
    /// handles of sealed segments) after a flush, so memory follows the
    /// number of busy partitions, not of partitions (default 10 s; `None`:
    /// never).
    pub idle_release: Option<Duration>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_age: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: None,
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            fsync: FsyncPolicy::Always,
            write_chunk_bytes: 512 << 10,
            max_inflight_writes: 4,
            tail_cache_bytes: 4 << 20,
            index_cache_bytes: 1 << 20,
            index_interval_bytes: 4096,
            index_checkpoint_bytes: 64 << 20,
            max_batch_bytes: 16 << 20,
            read_ahead_bytes: 1 << 20,
            read_ahead_windows: 4,
            preallocate_bytes: 64 << 20,
            recycle_segments: true,
            retention_check_interval: Duration::from_secs(60),
            idle_release: Some(Duration::from_secs(10)),
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(LogError::Config(m.to_string()));
        if self.segment_bytes < 4096 || self.segment_bytes > u64::from(u32::MAX) {
            return bad("segment_bytes must be between 4 KiB and 4 GiB");
        }
        if self.write_chunk_bytes < 4096 || !self.write_chunk_bytes.is_multiple_of(4096) {
            return bad("write_chunk_bytes must be a multiple of 4 KiB");
        }
        if self.max_inflight_writes == 0 {
            return bad("max_inflight_writes must be at least 1");
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be positive");
        }
        if self.max_batch_bytes < crate::batch::HEADER_LEN {
            return bad("max_batch_bytes must hold at least a batch header");
        }
        if self.read_ahead_bytes < 4096 || !self.read_ahead_bytes.is_multiple_of(4096) {
            return bad("read_ahead_bytes must be a multiple of 4 KiB");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_by_name() {
        for (name, c) in [
            ("none", Compression::None),
            ("gzip", Compression::Gzip),
            ("snappy", Compression::Snappy),
            ("lz4", Compression::Lz4),
            ("zstd", Compression::Zstd),
        ] {
            assert_eq!(name.parse(), Ok(c));
        }
        for bad in ["", "LZ4", "zstd ", "brotli"] {
            let e = bad.parse::<Compression>().unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }
}
