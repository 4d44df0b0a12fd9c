//! A partition log: a directory of segments written with direct I/O.
//!
//! Must be used from inside one glommio executor (the shard that owns the
//! partition). All methods take `&self`; concurrent tasks of that executor
//! may append, read and wait for durability at the same time.
//!
//! This file holds the log's state and its small accessors; the work is
//! split by concern: `recovery.rs` (open, scans), `append.rs`, `flush.rs`
//! (chunk writes, group commit), `segment.rs` (rolls, recycled files),
//! `read.rs`, `retention.rs` (background work, close), `truncate.rs`,
//! `files.rs` (file helpers).

use crate::batch::{self, BatchHeader, CheckedBatch, HEADER_LEN};
use crate::config::{FsyncPolicy, LogConfig};
use crate::epochs::{EpochCache, EPOCH_FILE};
use crate::error::BatchError;
use crate::error::{glommio_err, io_err, LogError, Result};
use crate::fifo::{FifoGuard, FifoLock};
use crate::index::{self, SegmentIndex, Summary};
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use glommio::sync::Semaphore;
use levee_core::LocalEvent;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

mod append;
mod files;
mod flush;
mod read;
mod recovery;
mod retention;
mod segment;
mod truncate;

use files::*;
use recovery::*;

const ALIGN: u64 = 4096;
const CLEAN_MARKER: &str = "clean-shutdown";
/// The log start offset set by [`Log::advance_log_start`] (Kafka's
/// DeleteRecords), as decimal text: it may lie inside a segment, so it
/// cannot be derived from the segment files alone.
pub const LOG_START_FILE: &str = "log-start-offset";
/// Largest buffer a disk read reserves up front.
const MAX_READ_RESERVE: usize = 32 << 20;

fn align_down(v: u64) -> u64 {
    v & !(ALIGN - 1)
}
fn align_up(v: u64) -> u64 {
    (v + ALIGN - 1) & !(ALIGN - 1)
}

pub(crate) fn segment_name(base: u64, ext: &str) -> String {
    format!("{base:020}.{ext}")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What an append assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: u64,
    pub last_offset: u64,
    pub max_timestamp: i64,
}

/// Whole batches read from the log, laid end to end as stored.
#[derive(Debug, Clone, Default)]
pub struct ReadOutcome {
    pub data: Vec<u8>,
    /// Offset to ask for next (after the last returned batch).
    pub next_offset: u64,
    pub log_start_offset: u64,
    pub log_end_offset: u64,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogStats {
    pub log_start_offset: u64,
    pub log_end_offset: u64,
    pub durable_offset: u64,
    pub size_bytes: u64,
    pub segments: usize,
    pub tail_cache_bytes: usize,
    pub index_cache_bytes: usize,
    pub flushes: u64,
    pub recovered_bytes_scanned: u64,
    pub truncated_bytes: u64,
}

struct Sealed {
    summary: Summary,
    file: Option<Rc<DmaFile>>,
}

/// A segment file retention removed, kept to become the next segment
/// (`LogConfig::recycle_segments`). Only this log's own retention feeds it,
/// so every batch left in it has an offset below the log start: recovery
/// stops at the first of them (offsets must continue), and readers never go
/// past the written end.
struct Recycled {
    path: PathBuf,
    len: u64,
    /// The segment's open handle when retention took it: while a reader
    /// still holds a clone, the file is not reused.
    holder: Option<Rc<DmaFile>>,
}

const RECYCLE_EXT: &str = "recycle";

struct Active {
    base: u64,
    file: Rc<DmaFile>,
    index: SegmentIndex,
    /// End of the last complete batch.
    end: u64,
    max_ts: i64,
    /// Chunk being filled; it covers `[chunk_pos, chunk_pos + chunk.len())`.
    chunk: Option<DmaBuffer>,
    chunk_pos: u64,
    fill: usize,
    preallocated: u64,
    /// Start positions of full-chunk writes in flight.
    inflight: BTreeSet<u64>,
    /// A flush is rewriting the partial chunk at this position.
    partial_inflight: bool,
    /// Bytes of the current chunk known to be on disk (from a flush or from recovery).
    written_end: u64,
    created: Instant,
    checkpointed: u64,
}

/// A recently appended batch kept for readers: its bytes as received
/// (shared with the request; the stamps are applied when it is read).
struct Cached {
    seg_base: u64,
    pos: u64,
    base_offset: u64,
    leader_epoch: i32,
    next_offset: u64,
    bytes: bytes::Bytes,
    /// What it counts against `tail_cache_bytes` (see `CheckedBatch::backing`).
    charge: usize,
}

#[derive(Default)]
struct IndexCache {
    map: HashMap<u64, Rc<SegmentIndex>>,
    order: VecDeque<u64>,
    bytes: usize,
}

/// (segment base, position, length) of a read-ahead window.
type WindowKey = (u64, u64, usize);
type PendingRead = glommio::Task<io::Result<glommio::io::ReadResult>>;

struct State {
    dir: PathBuf,
    cfg: LogConfig,
    sealed: BTreeMap<u64, Sealed>,
    active: Active,
    next_offset: u64,
    log_start: u64,
    /// The log start recorded in [`LOG_START_FILE`] (0: none); the log
    /// start is the greater of it and the first segment's base.
    start_floor: u64,
    durable_next: u64,
    size_bytes: u64,
    cache: VecDeque<Cached>,
    cache_bytes: usize,
    index_cache: IndexCache,
    /// Read-ahead windows being read or read: ((segment, position, length), read).
    prefetch: VecDeque<(WindowKey, PendingRead)>,
    /// The two windows most recently read. Two, because a fetch that ends
    /// on a batch spanning windows k and k+1 (read whole, but too big for
    /// what was left of the fetch) is continued by the next fetch from k.
    last_window: VecDeque<((u64, u64, usize), glommio::io::ReadResult)>,
    poisoned: Option<Poison>,
    closed: bool,
    /// A group-commit leader is flushing.
    flushing: bool,
    stats: LogStats,
    /// Leader epochs and their start offsets.
    epochs: EpochCache,
    /// Closed only while `truncate_to` rewrites the files and reopens.
    reopening: bool,
    /// A retired segment file waiting to be reused by the next roll.
    recycled: Option<Recycled>,
    /// Last append or read.
    last_active: Instant,
    /// Idle memory was given back (see `LogConfig::idle_release`).
    released: bool,
    /// The next segment write fails with this instead of running (tests
    /// of write failures: [`Log::fail_next_write`]).
    fail_next_write: Option<io::ErrorKind>,
    /// Test hook: the next write of the leader epochs by an append or an
    /// epoch start fails with this ([`Log::fail_next_epoch_write`]).
    fail_next_epoch_write: Option<io::ErrorKind>,
}

impl State {
    fn check_writable(&self) -> Result<()> {
        if self.closed {
            return Err(LogError::Closed);
        }
        if let Some(p) = &self.poisoned {
            return Err(p.error());
        }
        Ok(())
    }

    /// Bytes of the active segment that are on disk and may be read from it.
    fn active_readable_end(&self) -> u64 {
        let a = &self.active;
        let written = a.chunk_pos.max(a.written_end);
        a.inflight
            .first()
            .copied()
            .unwrap_or(written)
            .min(written)
            .min(a.end)
    }

    fn evict_cache(&mut self) {
        let readable = self.active_readable_end();
        while self.cache_bytes > self.cfg.tail_cache_bytes {
            let Some(front) = self.cache.front() else {
                break;
            };
            let on_disk = front.seg_base != self.active.base
                || front.pos + front.bytes.len() as u64 <= readable;
            if !on_disk {
                break;
            }
            self.cache_bytes -= front.charge;
            self.cache.pop_front();
        }
    }

    /// Drops what reads keep: the tail cache, read-ahead windows, sealed
    /// segments' indexes and file handles (all reloaded on demand).
    fn drop_read_state(&mut self) {
        self.cache.clear();
        self.cache_bytes = 0;
        self.prefetch.clear();
        self.last_window.clear();
        self.index_cache = IndexCache::default();
        for sealed in self.sealed.values_mut() {
            sealed.file = None;
        }
    }

    /// The log start: the first segment's base, or the recorded floor if
    /// that is higher (never past the log end).
    fn derived_log_start(&self) -> u64 {
        let first = self
            .sealed
            .keys()
            .next()
            .copied()
            .unwrap_or(self.active.base);
        first.max(self.start_floor).min(self.next_offset)
    }

    fn path(&self, base: u64, ext: &str) -> PathBuf {
        self.dir.join(segment_name(base, ext))
    }
}

/// Why a log refuses writes after a failed write: the data it appended
/// may not all be on disk, so nothing more may follow it.
#[derive(Debug, Clone)]
pub(crate) struct Poison {
    reason: String,
    /// The disk was full: [`Log::recover_from_full_disk`] may clear it.
    no_space: bool,
}

impl Poison {
    /// A failure other than a full disk (kept until the log is reopened).
    fn other(reason: String) -> Poison {
        Poison {
            reason,
            no_space: false,
        }
    }

    /// A full disk, `reason` saying what it stopped.
    fn no_space(reason: String) -> Poison {
        Poison {
            reason,
            no_space: true,
        }
    }

    /// A failed I/O call, `what` naming it.
    fn io(what: String, e: io::Error) -> Poison {
        Poison {
            no_space: levee_core::is_out_of_space(&e),
            reason: format!("{what}: {e}"),
        }
    }

    fn error(&self) -> LogError {
        if self.no_space {
            LogError::NoSpace(self.reason.clone())
        } else {
            LogError::Poisoned(self.reason.clone())
        }
    }
}

/// Marks the group-commit leader; wakes the waiters when it is done (or dropped).
struct FlushLeader<'a> {
    st: &'a RefCell<State>,
    flushed: &'a LocalEvent,
}

impl<'a> FlushLeader<'a> {
    fn new(st: &'a RefCell<State>, flushed: &'a LocalEvent) -> Self {
        st.borrow_mut().flushing = true;
        FlushLeader { st, flushed }
    }
}

impl Drop for FlushLeader<'_> {
    fn drop(&mut self) {
        self.st.borrow_mut().flushing = false;
        self.flushed.notify();
    }
}

/// One partition's log.
pub struct Log {
    st: Rc<RefCell<State>>,
    io: Rc<LocalEvent>,
    flushed: LocalEvent,
    /// Serializes appends in call order (see `fifo.rs`).
    append_lock: FifoLock,
    flush_lock: Semaphore,
    /// Serializes [`Log::advance_log_start`]'s writes of [`LOG_START_FILE`].
    start_lock: Semaphore,
}

impl Log {
    pub fn config(&self) -> LogConfig {
        self.st.borrow().cfg.clone()
    }

    /// Retunes an open log: its segment size and age, retention and fsync
    /// policy come from `cfg` from now on (the next roll, the next
    /// retention pass, the next flush); its buffer sizes stay as opened.
    /// Call [`Log::enforce_retention`] to apply a lower retention at once.
    pub fn set_config(&self, cfg: &LogConfig) -> Result<()> {
        cfg.validate()?;
        let mut s = self.st.borrow_mut();
        let c = &mut s.cfg;
        c.segment_bytes = cfg.segment_bytes;
        c.segment_age = cfg.segment_age;
        c.retention_bytes = cfg.retention_bytes;
        c.retention_age = cfg.retention_age;
        c.fsync = cfg.fsync;
        c.retention_check_interval = cfg.retention_check_interval;
        Ok(())
    }

    /// Makes the next segment write (a full chunk's or a flush's), or the
    /// next truncation's write of the leader epochs, fail with `kind`
    /// without writing anything, as a full or failing disk would: for
    /// tests of what follows a failed write.
    #[doc(hidden)]
    pub fn fail_next_write(&self, kind: io::ErrorKind) {
        self.st.borrow_mut().fail_next_write = Some(kind);
    }

    /// Makes the next write of the leader epochs by an append or an epoch
    /// start fail with `kind`, writing nothing: for tests.
    #[doc(hidden)]
    pub fn fail_next_epoch_write(&self, kind: io::ErrorKind) {
        self.st.borrow_mut().fail_next_epoch_write = Some(kind);
    }

    /// Whether the log refuses writes since a write failed on a full disk
    /// (see [`Log::recover_from_full_disk`]).
    pub fn is_stopped_by_full_disk(&self) -> bool {
        self.st
            .borrow()
            .poisoned
            .as_ref()
            .is_some_and(|p| p.no_space)
    }

    pub fn log_start_offset(&self) -> u64 {
        self.st.borrow().log_start
    }

    /// Offset the next appended record will get.
    pub fn log_end_offset(&self) -> u64 {
        self.st.borrow().next_offset
    }

    /// Every offset below this has been flushed to stable storage.
    pub fn durable_offset(&self) -> u64 {
        self.st.borrow().durable_next
    }

    pub fn stats(&self) -> LogStats {
        let s = self.st.borrow();
        LogStats {
            log_start_offset: s.log_start,
            log_end_offset: s.next_offset,
            durable_offset: s.durable_next,
            size_bytes: s.size_bytes,
            segments: s.sealed.len() + 1,
            tail_cache_bytes: s.cache_bytes,
            index_cache_bytes: s.index_cache.bytes,
            ..s.stats
        }
    }

    /// Base offsets of all segments, oldest first.
    pub fn segment_bases(&self) -> Vec<u64> {
        let s = self.st.borrow();
        s.sealed.keys().copied().chain([s.active.base]).collect()
    }

    /// Both locks, in the order every caller takes them (appends, then
    /// flushes): for the operations that rewrite the log's files.
    async fn lock_all(&self) -> Result<(FifoGuard<'_>, glommio::sync::Permit<'_>)> {
        let a = self.append_lock.lock().await;
        let f = self
            .flush_lock
            .acquire_permit(1)
            .await
            .map_err(|_| LogError::Closed)?;
        Ok((a, f))
    }

    /// Bytes of write chunk this log holds (0 when idle or released).
    pub fn write_chunk_bytes_held(&self) -> usize {
        self.st
            .borrow()
            .active
            .chunk
            .as_ref()
            .map_or(0, |c| c.len())
    }

    /// Whether the log was closed (and is not just reopening after a cut).
    pub fn is_closed(&self) -> bool {
        let s = self.st.borrow();
        s.closed && !s.reopening
    }

    /// The latest leader epoch that appended to (or started on) this log.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.st.borrow().epochs.latest().map(|(e, _)| e)
    }

    /// The end offset of `epoch` here (see [`EpochCache::end_offset_for`]).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, u64) {
        let s = self.st.borrow();
        s.epochs.end_offset_for(epoch, s.next_offset)
    }
}
