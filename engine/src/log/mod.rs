//! A partition log: a directory of segments written with direct I/O.
//!
//! Must be used from inside one glommio executor (the shard that owns the
//! partition). All methods take `&self`; concurrent tasks of that executor
//! may append, read and wait for durability at the same time.

use crate::batch::{self, BatchHeader, HEADER_LEN};
use crate::config::{FsyncPolicy, LogConfig};
use crate::epochs::{EpochCache, EPOCH_FILE};
use crate::error::{glommio_err, io_err, LogError, Result};
use crate::event::LocalEvent;
use crate::fifo::{FifoGuard, FifoLock};
use crate::index::{self, SegmentIndex, Summary};
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

const ALIGN: u64 = 4096;
const CLEAN_MARKER: &str = "clean-shutdown";
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

struct Cached {
    seg_base: u64,
    pos: u64,
    base_offset: u64,
    next_offset: u64,
    bytes: Vec<u8>,
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
    poisoned: Option<String>,
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
}

impl State {
    fn check_writable(&self) -> Result<()> {
        if self.closed {
            return Err(LogError::Closed);
        }
        if let Some(p) = &self.poisoned {
            return Err(LogError::Poisoned(p.clone()));
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
            self.cache_bytes -= front.bytes.len();
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

    fn path(&self, base: u64, ext: &str) -> PathBuf {
        self.dir.join(segment_name(base, ext))
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
}

/// How a scan names the batches a recycled file still holds.
const STALE: &str = "stale batch of a recycled segment";

struct ScanOutcome {
    end: u64,
    next_offset: u64,
    max_ts: i64,
    stop_reason: Option<String>,
}

/// Refuses a log written in Levee's storage format 1 (before Kafka's
/// RecordBatch v2), rather than scanning it as corrupt and cutting it.
async fn refuse_format_1(dir: &Path, first: u64) -> Result<()> {
    let path = dir.join(segment_name(first, "log"));
    let f = OpenOptions::new()
        .read(true)
        .dma_open(&path)
        .await
        .map_err(|e| glommio_err(path.display().to_string(), e))?;
    let size = f
        .file_size()
        .await
        .map_err(|e| glommio_err(path.display().to_string(), e))?;
    let head = if size >= 24 {
        f.read_at(0, 24)
            .await
            .map_err(|e| glommio_err(path.display().to_string(), e))?
            .to_vec()
    } else {
        Vec::new()
    };
    let _ = f.close().await;
    if batch::is_format_1(&head) {
        return Err(LogError::OldFormat {
            dir: dir.display().to_string(),
        });
    }
    Ok(())
}

/// Validates batches of a segment from `pos`, adding index entries.
#[allow(clippy::too_many_arguments)]
async fn scan_segment(
    file: &DmaFile,
    seg_base: u64,
    mut pos: u64,
    mut next: u64,
    size: u64,
    cfg: &LogConfig,
    index: &mut SegmentIndex,
    mut max_ts: i64,
    epochs: &EpochCache,
) -> Result<ScanOutcome> {
    let window = cfg.read_ahead_bytes.max(1 << 20);
    let mut win_start = 0u64;
    let mut win: Vec<u8> = Vec::new();
    let mut stop_reason = None;
    let path = || format!("segment {seg_base}");
    while pos < size {
        if pos + HEADER_LEN as u64 > size {
            stop_reason = Some("incomplete batch header at the end".to_string());
            break;
        }
        let need_header = pos + HEADER_LEN as u64;
        if pos < win_start || need_header > win_start + win.len() as u64 {
            let len = (window as u64).min(size - pos) as usize;
            let r = file
                .read_at(pos, len)
                .await
                .map_err(|e| glommio_err(path(), e))?;
            win = r.to_vec();
            win_start = pos;
        }
        let at = (pos - win_start) as usize;
        let h = match batch::validate_stored_header(&win[at..], cfg.max_batch_bytes) {
            Ok(h) => *h,
            Err(e) => {
                stop_reason = Some(e.to_string());
                break;
            }
        };
        let len = h.len() as u64;
        if pos + len > size {
            stop_reason = Some(format!("batch of {len} bytes runs past the end"));
            break;
        }
        if h.base_offset() != next {
            stop_reason = Some(if h.base_offset() < seg_base {
                // Left in a recycled file by the segment it used to be.
                format!(
                    "{STALE} (offset {}) where {next} was expected",
                    h.base_offset()
                )
            } else {
                format!("batch offset {} where {next} was expected", h.base_offset())
            });
            break;
        }
        if pos + len > win_start + win.len() as u64 {
            let len = (window as u64).max(len).min(size - pos) as usize;
            let r = file
                .read_at(pos, len)
                .await
                .map_err(|e| glommio_err(path(), e))?;
            win = r.to_vec();
            win_start = pos;
        }
        let at = (pos - win_start) as usize;
        if let Err(e) = batch::validate_stored(&win[at..at + len as usize], cfg.max_batch_bytes)
            .and_then(|h| batch::check_placement(h, next, epochs.epoch_at(next)))
        {
            stop_reason = Some(e.to_string());
            break;
        }
        max_ts = max_ts.max(h.max_timestamp());
        let rel = (h.base_offset() - seg_base) as u32;
        index.maybe_add(rel, pos, max_ts, cfg.index_interval_bytes);
        next = h.next_offset();
        pos += len;
    }
    Ok(ScanOutcome {
        end: pos,
        next_offset: next,
        max_ts,
        stop_reason,
    })
}

async fn open_rw(path: &Path) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(|e| glommio_err(path.display().to_string(), e))
}

async fn open_ro(path: &Path) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .dma_open(path)
        .await
        .map_err(|e| glommio_err(path.display().to_string(), e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(format!("fsync of directory {}", dir.display()), e))
}

/// `sync_dir` through the shard's io_uring, for the paths that run on a
/// shard (open, roll, close): the reactor is not blocked meanwhile.
async fn sync_dir_async(dir: &Path) -> Result<()> {
    let ctx = || format!("fsync of directory {}", dir.display());
    // glommio opens directories relative to no directory: give it an
    // absolute path (a relative data directory is common: ./levee-data).
    let dir = std::path::absolute(dir).map_err(|e| io_err(ctx(), e))?;
    let d = glommio::io::Directory::open(&dir)
        .await
        .map_err(|e| glommio_err(ctx(), e))?;
    let r = d.sync().await.map_err(|e| glommio_err(ctx(), e));
    let _ = d.close().await;
    r
}

/// What `open` needs from the log's directory.
struct Listing {
    /// The last shutdown was clean (its marker is removed here).
    clean: bool,
    /// Segment base offsets and file sizes, in offset order.
    segments: Vec<(u64, u64)>,
}

/// Creates the log directory if needed, consumes the clean-shutdown marker,
/// deletes leftovers (temporary and recycled files) and lists the segments.
/// Plain (blocking) file calls: `open` runs it on the blocking thread.
fn list_log_dir(dir: &Path) -> Result<Listing> {
    let listing = |e| io_err(format!("listing {}", dir.display()), e);
    std::fs::create_dir_all(dir).map_err(|e| io_err(format!("creating {}", dir.display()), e))?;
    let marker = dir.join(CLEAN_MARKER);
    let clean = marker.exists();
    if clean {
        std::fs::remove_file(&marker).map_err(|e| io_err(marker.display().to_string(), e))?;
    }
    let mut segments = Vec::new();
    for e in std::fs::read_dir(dir).map_err(listing)? {
        let e = e.map_err(listing)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(b) = stem.parse::<u64>() {
                let size = e
                    .metadata()
                    .map_err(|err| io_err(e.path().display().to_string(), err))?
                    .len();
                segments.push((b, size));
            }
        } else if name.ends_with(".tmp") || name.ends_with(&format!(".{RECYCLE_EXT}")) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    segments.sort_unstable();
    Ok(Listing { clean, segments })
}

/// Cuts a closed log's files at the batch holding `offset`: later segments
/// are deleted, the segment holding it is cut and its indexes removed (the
/// reopen rebuilds them). Plain (blocking) file calls: this runs rarely (a
/// follower truncating after a leader change), on a log that is closed
/// meanwhile, and `cut` runs it on the blocking thread.
fn cut_files(dir: &Path, offset: u64, empty: bool) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut bases = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| io_err(format!("listing {}", dir.display()), e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(b) = name
            .strip_suffix(".log")
            .and_then(|s| s.parse::<u64>().ok())
        {
            bases.push(b);
        }
    }
    bases.sort_unstable();
    let remove = |b: u64, exts: &[&str]| {
        for ext in exts {
            let p = dir.join(segment_name(b, ext));
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("removing {}", p.display()), e)),
            }
        }
        Ok(())
    };
    let holding = if empty {
        None
    } else {
        bases.iter().rposition(|&b| b < offset)
    };
    match holding {
        None => {
            for &b in &bases {
                remove(b, &["log", "index", "timeindex"])?;
            }
            let p = dir.join(segment_name(offset, "log"));
            std::fs::File::create(&p).map_err(|e| io_err(p.display().to_string(), e))?;
        }
        Some(i) => {
            for &b in &bases[i + 1..] {
                remove(b, &["log", "index", "timeindex"])?;
            }
            let base = bases[i];
            let p = dir.join(segment_name(base, "log"));
            let ctx = || p.display().to_string();
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .map_err(|e| io_err(ctx(), e))?;
            let size = f.metadata().map_err(|e| io_err(ctx(), e))?.len();
            let mut pos = 0u64;
            let mut hdr = [0u8; HEADER_LEN];
            while pos + HEADER_LEN as u64 <= size {
                f.read_exact_at(&mut hdr, pos)
                    .map_err(|e| io_err(ctx(), e))?;
                let Ok(h) = BatchHeader::parse(&hdr) else {
                    break;
                };
                if h.next_offset() > offset || h.len() < HEADER_LEN {
                    break;
                }
                pos += h.len() as u64;
            }
            f.set_len(pos).map_err(|e| io_err(ctx(), e))?;
            f.sync_all().map_err(|e| io_err(ctx(), e))?;
            remove(base, &["index", "timeindex"])?;
        }
    }
    let marker = dir.join(CLEAN_MARKER);
    let _ = std::fs::remove_file(marker);
    sync_dir(dir)
}

/// Writes a whole small file with direct I/O, durably, replacing any old one.
async fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let ctx = || tmp.display().to_string();
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&tmp)
        .await
        .map_err(|e| glommio_err(ctx(), e))?;
    if !bytes.is_empty() {
        let mut buf = f.alloc_dma_buffer(align_up(bytes.len() as u64) as usize);
        buf.as_bytes_mut().fill(0);
        buf.as_bytes_mut()[..bytes.len()].copy_from_slice(bytes);
        f.write_at(buf, 0)
            .await
            .map_err(|e| glommio_err(ctx(), e))?;
        f.truncate(bytes.len() as u64)
            .await
            .map_err(|e| glommio_err(ctx(), e))?;
    }
    f.fdatasync().await.map_err(|e| glommio_err(ctx(), e))?;
    f.close().await.map_err(|e| glommio_err(ctx(), e))?;
    glommio::io::rename(&tmp, path)
        .await
        .map_err(|e| glommio_err(path.display().to_string(), e))
}

async fn write_index_files(
    dir: &Path,
    base: u64,
    idx: &SegmentIndex,
    summary: &Summary,
) -> Result<()> {
    write_file_atomic(
        &dir.join(segment_name(base, "index")),
        &index::encode_offsets(idx, summary),
    )
    .await?;
    write_file_atomic(
        &dir.join(segment_name(base, "timeindex")),
        &index::encode_times(idx, summary),
    )
    .await
}

/// Reads a whole small file through the shard's io_uring (direct I/O).
/// `None` if it is missing or unreadable.
async fn read_small_file(path: &Path) -> Option<Vec<u8>> {
    let f = DmaFile::open(path).await.ok()?;
    let res = async {
        let size = f.file_size().await.ok()?;
        if size == 0 {
            return Some(Vec::new());
        }
        let r = f.read_at(0, size as usize).await.ok()?;
        (r.len() as u64 == size).then(|| r.to_vec())
    }
    .await;
    let _ = f.close().await;
    res
}

async fn read_index_files(dir: &Path, base: u64) -> Option<(Summary, SegmentIndex)> {
    let o = read_small_file(&dir.join(segment_name(base, "index"))).await?;
    let t = read_small_file(&dir.join(segment_name(base, "timeindex"))).await?;
    let (s, offsets) = index::decode_offsets(&o)?;
    let (s2, times) = index::decode_times(&t)?;
    (s == s2).then_some((s, SegmentIndex { offsets, times }))
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering from a crash
    /// if the last shutdown was not clean.
    pub async fn open(dir: impl AsRef<Path>, cfg: LogConfig) -> Result<Log> {
        cfg.validate()?;
        let dir = dir.as_ref().to_path_buf();
        // Directory calls have no io_uring form here: run them on the
        // executor's blocking thread, not on the shard's.
        let listing = {
            let dir = dir.clone();
            glommio::executor()
                .spawn_blocking(move || list_log_dir(&dir))
                .await?
        };
        crate::probe::prepare_io_device(&dir).await?;
        let clean = listing.clean;
        if clean {
            sync_dir_async(&dir).await?;
        }
        let (mut bases, sizes): (Vec<u64>, Vec<u64>) = listing.segments.into_iter().unzip();
        if let Some(&first) = bases.first() {
            refuse_format_1(&dir, first).await?;
        }
        let epoch_path = dir.join(EPOCH_FILE);
        let mut epochs = match read_small_file(&epoch_path).await {
            Some(b) => EpochCache::decode(&b).unwrap_or_else(|| {
                warn!(file = %epoch_path.display(), "damaged leader-epoch checkpoint: starting it afresh");
                EpochCache::default()
            }),
            None => EpochCache::default(),
        };
        let mut stats = LogStats::default();
        let mut sealed = BTreeMap::new();
        let mut size_bytes = 0u64;
        let mut expected_next: Option<u64> = None;
        let mut i = 0;
        // Sealed segments: trust a valid index whose covered length matches
        // the file, else rebuild the index by scanning the segment.
        while i + 1 < bases.len() {
            let base = bases[i];
            let path = dir.join(segment_name(base, "log"));
            let size = sizes[i];
            if let Some(exp) = expected_next {
                if exp != base {
                    return Err(LogError::Corrupt {
                        file: path.display().to_string(),
                        pos: 0,
                        reason: format!("segment starts at offset {base}, previous ends at {exp}"),
                    });
                }
            }
            let summary = match read_index_files(&dir, base).await {
                Some((s, _)) if s.covered_len == size => s,
                _ => {
                    info!(segment = base, "rebuilding missing or damaged index");
                    let f = open_rw(&path).await?;
                    let mut idx = SegmentIndex::default();
                    let out =
                        scan_segment(&f, base, 0, base, size, &cfg, &mut idx, i64::MIN, &epochs)
                            .await?;
                    stats.recovered_bytes_scanned += out.end;
                    let s = Summary {
                        covered_len: out.end,
                        next_offset: out.next_offset,
                        max_timestamp: out.max_ts,
                    };
                    if let Some(reason) = out.stop_reason {
                        // Corruption inside a sealed segment: keep what is
                        // valid and drop everything after it, as Kafka does.
                        warn!(segment = base, pos = out.end, %reason, "corrupt sealed segment: truncating the log here");
                        f.truncate(out.end)
                            .await
                            .map_err(|e| glommio_err(path.display().to_string(), e))?;
                        f.fdatasync()
                            .await
                            .map_err(|e| glommio_err(path.display().to_string(), e))?;
                        stats.truncated_bytes += size - out.end;
                        for &later in &bases[i + 1..] {
                            for ext in ["log", "index", "timeindex"] {
                                let _ =
                                    glommio::io::remove(dir.join(segment_name(later, ext))).await;
                            }
                        }
                        sync_dir_async(&dir).await?;
                        for ext in ["index", "timeindex"] {
                            let _ = glommio::io::remove(dir.join(segment_name(base, ext))).await;
                        }
                        bases.truncate(i + 1);
                        let _ = f.close().await;
                        break;
                    }
                    write_index_files(&dir, base, &idx, &s).await?;
                    let _ = f.close().await;
                    s
                }
            };
            expected_next = Some(summary.next_offset);
            size_bytes += summary.covered_len;
            sealed.insert(
                base,
                Sealed {
                    summary,
                    file: None,
                },
            );
            i += 1;
        }
        // The last segment becomes the active one.
        let active_base = match bases.last() {
            Some(&b) => b,
            None => 0,
        };
        if let Some(exp) = expected_next {
            if exp != active_base {
                return Err(LogError::Corrupt {
                    file: dir
                        .join(segment_name(active_base, "log"))
                        .display()
                        .to_string(),
                    pos: 0,
                    reason: format!(
                        "segment starts at offset {active_base}, previous ends at {exp}"
                    ),
                });
            }
        }
        let apath = dir.join(segment_name(active_base, "log"));
        let existed = !bases.is_empty();
        let file = if existed {
            open_rw(&apath).await?
        } else {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .dma_open(&apath)
                .await
                .map_err(|e| glommio_err(apath.display().to_string(), e))?;
            sync_dir_async(&dir).await?;
            f
        };
        let size = file
            .file_size()
            .await
            .map_err(|e| glommio_err(apath.display().to_string(), e))?;
        let mut index = SegmentIndex::default();
        let (end, next_offset, max_ts, checkpointed) = match read_index_files(&dir, active_base)
            .await
        {
            Some((s, idx)) if clean && s.covered_len == size => {
                debug!(
                    segment = active_base,
                    "clean shutdown: skipping recovery scan"
                );
                index = idx;
                (s.covered_len, s.next_offset, s.max_timestamp, s.covered_len)
            }
            found => {
                let (start, next, ts) = match found {
                    Some((s, idx)) if s.covered_len <= size => {
                        index = idx;
                        index.truncate_to_len(s.covered_len);
                        (s.covered_len, s.next_offset, s.max_timestamp)
                    }
                    _ => (0, active_base, i64::MIN),
                };
                let out = scan_segment(
                    &file,
                    active_base,
                    start,
                    next,
                    size,
                    &cfg,
                    &mut index,
                    ts,
                    &epochs,
                )
                .await?;
                stats.recovered_bytes_scanned += out.end - start;
                if out.end < size {
                    // The tail past the last valid batch is torn, corrupt or
                    // preallocated zeros: cut it so it can never resurface.
                    let zeros_only = out.stop_reason.is_none()
                        || out
                            .stop_reason
                            .as_deref()
                            .is_some_and(|r| r.contains("magic 0 ") || r.starts_with(STALE));
                    if !zeros_only {
                        warn!(segment = active_base, pos = out.end, reason = ?out.stop_reason, "truncating corrupt log tail");
                    }
                    file.truncate(out.end)
                        .await
                        .map_err(|e| glommio_err(apath.display().to_string(), e))?;
                    stats.truncated_bytes += size - out.end;
                }
                if existed {
                    file.fdatasync()
                        .await
                        .map_err(|e| glommio_err(apath.display().to_string(), e))?;
                }
                (out.end, out.next_offset, out.max_ts, start)
            }
        };
        // Reload the partial last block so later rewrites of it keep its
        // bytes. A log that ends on a block boundary (a new one, among
        // others) gets its write chunk on its first append, so idle
        // partitions hold no chunk.
        let chunk_pos = align_down(end);
        let fill = (end - chunk_pos) as usize;
        let chunk = if fill > 0 {
            let mut chunk = file.alloc_dma_buffer(cfg.write_chunk_bytes);
            chunk.as_bytes_mut().fill(0);
            let r = file
                .read_at(chunk_pos, fill)
                .await
                .map_err(|e| glommio_err(apath.display().to_string(), e))?;
            chunk.as_bytes_mut()[..fill].copy_from_slice(&r[..fill]);
            Some(chunk)
        } else {
            None
        };
        size_bytes += end;
        let log_start = sealed.keys().next().copied().unwrap_or(active_base);
        if epochs.truncate_from(next_offset) {
            // Epochs whose batches were lost in the crash.
            write_file_atomic(&epoch_path, &epochs.encode()).await?;
        }
        stats.segments = sealed.len() + 1;
        info!(dir = %dir.display(), log_start, next_offset, clean, "opened log");
        let st = State {
            dir,
            active: Active {
                base: active_base,
                file: Rc::new(file),
                index,
                end,
                max_ts,
                chunk,
                chunk_pos,
                fill,
                preallocated: end,
                inflight: BTreeSet::new(),
                partial_inflight: false,
                written_end: end,
                created: Instant::now(),
                checkpointed,
            },
            cfg,
            sealed,
            next_offset,
            log_start,
            durable_next: next_offset,
            size_bytes,
            cache: VecDeque::new(),
            cache_bytes: 0,
            index_cache: IndexCache::default(),
            prefetch: VecDeque::new(),
            last_window: VecDeque::new(),
            poisoned: None,
            closed: false,
            flushing: false,
            stats,
            epochs,
            reopening: false,
            recycled: None,
            last_active: Instant::now(),
            released: false,
        };
        Ok(Log {
            st: Rc::new(RefCell::new(st)),
            io: Rc::new(LocalEvent::default()),
            flushed: LocalEvent::default(),
            append_lock: FifoLock::default(),
            flush_lock: Semaphore::new(1),
        })
    }

    pub fn config(&self) -> LogConfig {
        self.st.borrow().cfg.clone()
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

    /// Validates a producer's batch, assigns its offsets and appends it. The
    /// batch is durable once [`Log::wait_durable`] for its last offset returns
    /// (under `fsync = always`), or per the log's policy.
    pub async fn append(&self, batch: Vec<u8>) -> Result<AppendInfo> {
        self.append_with_epoch(batch, 0).await
    }

    pub async fn append_with_epoch(&self, batch: Vec<u8>, leader_epoch: i32) -> Result<AppendInfo> {
        self.append_inner(batch, Some(leader_epoch)).await
    }

    /// Appends a batch copied from the partition's leader as it is stored
    /// there: offsets and leader epoch kept, both CRCs checked. It must
    /// start exactly at this log's end.
    pub async fn append_replica(&self, batch: Vec<u8>) -> Result<AppendInfo> {
        self.append_inner(batch, None).await
    }

    async fn append_inner(&self, mut batch: Vec<u8>, assign: Option<i32>) -> Result<AppendInfo> {
        let (count, max_ts, stored_epoch) = {
            let max = self.st.borrow().cfg.max_batch_bytes;
            let h = match assign {
                Some(_) => batch::validate_produced(&batch, max)?,
                None => batch::validate_stored(&batch, max)?,
            };
            (h.record_count(), h.max_timestamp(), h.leader_epoch())
        };
        let _permit = self.append_lock.lock().await;
        let leader_epoch = assign.unwrap_or(stored_epoch);
        {
            let s = self.st.borrow();
            s.check_writable()?;
            if assign.is_none() {
                let got = BatchHeader::parse(&batch)?.base_offset();
                if got != s.next_offset {
                    return Err(LogError::NotContiguous {
                        expected: s.next_offset,
                        got,
                    });
                }
            }
        }
        self.note_epoch(leader_epoch).await?;
        self.reload_partial_chunk().await?;
        let len = batch.len() as u64;
        let must_roll = {
            let s = self.st.borrow();
            s.check_writable()?;
            let a = &s.active;
            let rel_overflow = s.next_offset - a.base + u64::from(count) > u64::from(u32::MAX);
            a.end > 0
                && (a.end + len > s.cfg.segment_bytes
                    || rel_overflow
                    || s.cfg
                        .segment_age
                        .is_some_and(|age| a.created.elapsed() >= age))
        };
        if must_roll {
            self.roll().await?;
        }
        // Preallocate ahead of the write position, in steps that grow with
        // the segment (1 MiB up to `preallocate_bytes`): a busy partition
        // extends its file rarely, and a thousand quiet ones do not reserve
        // `preallocate_bytes` of disk each.
        let prealloc = {
            let s = self.st.borrow();
            let a = &s.active;
            (a.end + len > a.preallocated).then(|| {
                let step = a.end.clamp(1 << 20, s.cfg.preallocate_bytes.max(1 << 20));
                let target = (a.end + len + step).min(s.cfg.segment_bytes.max(a.end + len));
                (a.file.clone(), align_up(target))
            })
        };
        if let Some((file, target)) = prealloc {
            file.pre_allocate(target, false)
                .await
                .map_err(|e| glommio_err("preallocating the active segment", e))?;
            self.st.borrow_mut().active.preallocated = target;
        }
        let (base_offset, pos, seg_base) = {
            let s = self.st.borrow_mut();
            let base = s.next_offset;
            if assign.is_some() {
                batch::assign(&mut batch, base, leader_epoch);
            }
            (base, s.active.end, s.active.base)
        };
        // Copy into aligned chunks; full chunks are written in the background.
        let mut copied = 0usize;
        while copied < batch.len() {
            let full = {
                let mut guard = self.st.borrow_mut();
                let s = &mut *guard;
                let a = &mut s.active;
                if a.chunk.is_none() {
                    // Not zeroed: every byte is written before it reaches the
                    // disk, and a partial flush zeroes its padding.
                    let c = a.file.alloc_dma_buffer(s.cfg.write_chunk_bytes);
                    let a = &mut s.active;
                    a.chunk = Some(c);
                    a.fill = 0;
                }
                let a = &mut s.active;
                let chunk = a.chunk.as_mut().expect("chunk allocated above");
                let n = (chunk.len() - a.fill).min(batch.len() - copied);
                chunk.as_bytes_mut()[a.fill..a.fill + n]
                    .copy_from_slice(&batch[copied..copied + n]);
                a.fill += n;
                copied += n;
                a.fill == chunk.len()
            };
            if full {
                self.issue_full_chunk().await?;
            }
        }
        let mut s = self.st.borrow_mut();
        let interval = s.cfg.index_interval_bytes;
        let a = &mut s.active;
        a.max_ts = a.max_ts.max(max_ts);
        let ts = a.max_ts;
        a.index
            .maybe_add((base_offset - a.base) as u32, pos, ts, interval);
        a.end = pos + len;
        s.next_offset = base_offset + u64::from(count);
        s.size_bytes += len;
        let next_offset = s.next_offset;
        s.cache_bytes += batch.len();
        s.cache.push_back(Cached {
            seg_base,
            pos,
            base_offset,
            next_offset,
            bytes: batch,
        });
        s.evict_cache();
        Ok(AppendInfo {
            base_offset,
            last_offset: next_offset - 1,
            max_timestamp: max_ts,
        })
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

    /// After an idle release, the partial last block comes back from disk
    /// before the next append continues it. Caller holds `append_lock`.
    async fn reload_partial_chunk(&self) -> Result<()> {
        let reload = {
            let mut s = self.st.borrow_mut();
            s.last_active = Instant::now();
            s.released = false;
            let a = &s.active;
            (a.chunk.is_none() && a.fill > 0)
                .then(|| (a.file.clone(), a.chunk_pos, a.fill, s.cfg.write_chunk_bytes))
        };
        if let Some((file, pos, fill, len)) = reload {
            let r = file
                .read_at(pos, fill)
                .await
                .map_err(|e| glommio_err("reloading the partial last block", e))?;
            if r.len() < fill {
                return Err(LogError::Corrupt {
                    file: "active segment".into(),
                    pos,
                    reason: format!("partial block reads back {} of {fill} bytes", r.len()),
                });
            }
            let mut c = file.alloc_dma_buffer(len);
            c.as_bytes_mut()[..fill].copy_from_slice(&r[..fill]);
            self.st.borrow_mut().active.chunk = Some(c);
        }
        Ok(())
    }

    /// Gives back an idle log's memory (see `LogConfig::idle_release`).
    async fn release_if_idle(&self) -> Result<()> {
        let idle_for = {
            let s = self.st.borrow();
            match s.cfg.idle_release {
                Some(d) if !s.released && !s.closed && s.last_active.elapsed() >= d => d,
                _ => return Ok(()),
            }
        };
        let _locks = self.lock_all().await?;
        self.flush_locked().await?;
        let mut s = self.st.borrow_mut();
        let a = &s.active;
        if s.closed
            || s.last_active.elapsed() < idle_for
            || s.durable_next < s.next_offset
            || !a.inflight.is_empty()
            || a.partial_inflight
        {
            return Ok(());
        }
        s.active.chunk = None;
        s.drop_read_state();
        s.released = true;
        debug!(dir = %s.dir.display(), "idle log released its memory");
        Ok(())
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

    /// Records `epoch` as starting at the log end if it is newer than the
    /// latest known epoch, durably, before any batch of it is written.
    /// Caller holds `append_lock`.
    async fn note_epoch(&self, epoch: i32) -> Result<()> {
        let changed = {
            let mut s = self.st.borrow_mut();
            let next = s.next_offset;
            match s.epochs.latest() {
                Some((e, _)) if epoch == e => None,
                Some((e, start)) if epoch < e => {
                    if start < next {
                        // Batches of a newer epoch are already here: this
                        // one comes from a log that diverged from ours.
                        return Err(LogError::EpochRegression {
                            epoch,
                            latest: e,
                            offset: next,
                        });
                    }
                    // Epochs that started at the end and wrote nothing
                    // (this replica led briefly) give way, as in Kafka.
                    s.epochs.truncate_from(next);
                    s.epochs.assign(epoch, next);
                    Some((s.dir.join(EPOCH_FILE), s.epochs.encode()))
                }
                _ if epoch < 0 => None,
                _ => {
                    s.epochs.assign(epoch, next);
                    Some((s.dir.join(EPOCH_FILE), s.epochs.encode()))
                }
            }
        };
        if let Some((path, bytes)) = changed {
            write_file_atomic(&path, &bytes).await?;
        }
        Ok(())
    }

    /// A new leader of `epoch` marks where its epoch starts (the log end),
    /// so followers asking for the previous epoch learn where it ended.
    pub async fn assign_epoch_start(&self, epoch: i32) -> Result<()> {
        let _permit = self.append_lock.lock().await;
        self.st.borrow().check_writable()?;
        self.note_epoch(epoch).await
    }

    /// Whether the log was closed (and is not just reopening after a cut).
    pub fn is_closed(&self) -> bool {
        let s = self.st.borrow();
        s.closed && !s.reopening
    }

    /// Writes a small state file that belongs with this log (a snapshot of
    /// state derived from it), atomically and durably, in its directory.
    pub async fn write_state_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.st.borrow().dir.join(name);
        write_file_atomic(&path, bytes).await
    }

    /// Reads a state file written by [`Log::write_state_file`] (`None`:
    /// absent or unreadable).
    pub async fn read_state_file(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.st.borrow().dir.join(name);
        read_small_file(&path).await
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

    /// Removes every batch at or after `offset` (a follower dropping a suffix
    /// the new leader does not have). Cuts at the start of the batch holding
    /// `offset`. The log is flushed, its files cut and reopened; reads and
    /// appends meanwhile fail with [`LogError::Closed`].
    pub async fn truncate_to(&self, offset: u64) -> Result<()> {
        self.cut(offset, false).await
    }

    /// Drops the whole log and restarts it empty at `offset` (a follower
    /// whose log ends before the leader's log start: the leader no longer
    /// has what lies between).
    pub async fn reset_to(&self, offset: u64) -> Result<()> {
        self.cut(offset, true).await
    }

    async fn cut(&self, offset: u64, empty: bool) -> Result<()> {
        let _locks = self.lock_all().await?;
        {
            let s = self.st.borrow();
            s.check_writable()?;
            if offset >= s.next_offset && !empty {
                return Ok(());
            }
        }
        self.flush_locked().await?;
        {
            let mut s = self.st.borrow_mut();
            s.closed = true;
            s.reopening = true;
        }
        let (dir, cfg) = {
            let s = self.st.borrow();
            (s.dir.clone(), s.cfg.clone())
        };
        let res = self.seal_active_files().await;
        let res = match res {
            Ok(_) => {
                let dir = dir.clone();
                glommio::executor()
                    .spawn_blocking(move || cut_files(&dir, offset, empty))
                    .await
            }
            Err(e) => Err(e),
        };
        let res = match res {
            Ok(()) => {
                let mut epochs = self.st.borrow().epochs.clone();
                epochs.truncate_from(if empty { 0 } else { offset });
                write_file_atomic(&dir.join(EPOCH_FILE), &epochs.encode()).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            let mut s = self.st.borrow_mut();
            s.poisoned = Some(format!("truncating to offset {offset} failed: {e}"));
            s.reopening = false;
            return Err(e);
        }
        // Drop the old files before reopening.
        self.st.borrow_mut().drop_read_state();
        let reopened = match Log::open(&dir, cfg).await {
            Ok(l) => l,
            Err(e) => {
                let mut s = self.st.borrow_mut();
                s.poisoned = Some(format!("reopening after truncation failed: {e}"));
                s.reopening = false;
                return Err(e);
            }
        };
        let fresh = Rc::try_unwrap(reopened.st)
            .map_err(|_| LogError::Closed)?
            .into_inner();
        let old = std::mem::replace(&mut *self.st.borrow_mut(), fresh);
        let _ = old.active.file.close_rc().await;
        info!(dir = %dir.display(), offset, "truncated log");
        self.io.notify();
        self.flushed.notify();
        Ok(())
    }

    /// Hands the full current chunk to a background write, waiting while too
    /// many writes are in flight.
    async fn issue_full_chunk(&self) -> Result<()> {
        loop {
            let listen = self.io.listen();
            {
                let s = self.st.borrow();
                s.check_writable()?;
                if s.active.inflight.len() < s.cfg.max_inflight_writes {
                    break;
                }
            }
            listen.await;
        }
        let (file, buf, pos, skip) = {
            let mut s = self.st.borrow_mut();
            let a = &mut s.active;
            let buf = a.chunk.take().expect("a full chunk is present");
            let pos = a.chunk_pos;
            a.chunk_pos += buf.len() as u64;
            a.fill = 0;
            a.inflight.insert(pos);
            // Blocks that flushes of this chunk already wrote are skipped
            // (the last block is always written).
            let done = a.written_end.saturating_sub(pos).min(buf.len() as u64);
            let skip = align_down(done).min(buf.len() as u64 - ALIGN) as usize;
            (a.file.clone(), buf, pos, skip)
        };
        let (buf, write_pos) = if skip > 0 {
            let mut rest = file.alloc_dma_buffer(buf.len() - skip);
            rest.as_bytes_mut().copy_from_slice(&buf.as_bytes()[skip..]);
            (rest, pos + skip as u64)
        } else {
            (buf, pos)
        };
        let st = self.st.clone();
        let io = self.io.clone();
        glommio::spawn_local(async move {
            // Never overlap the flush's rewrite of this same chunk.
            loop {
                let listen = io.listen();
                if !st.borrow().active.partial_inflight {
                    break;
                }
                listen.await;
            }
            let want = buf.len();
            let res = file.write_at(buf, write_pos).await;
            {
                let mut s = st.borrow_mut();
                s.active.inflight.remove(&pos);
                match res {
                    Ok(n) if n == want => {}
                    Ok(n) => {
                        s.poisoned = Some(format!("short write of {n} of {want} bytes at {pos}"))
                    }
                    Err(e) => s.poisoned = Some(format!("write at {pos} failed: {e}")),
                }
                s.evict_cache();
            }
            io.notify();
        })
        .detach();
        Ok(())
    }

    /// Writes everything appended so far and flushes it with one fdatasync.
    /// Caller holds `flush_lock`.
    async fn flush_locked(&self) -> Result<()> {
        let (target_next, file, partial, upto, end_snap, written_snap) = {
            let mut guard = self.st.borrow_mut();
            let s = &mut *guard;
            s.check_writable().or_else(|e| match e {
                LogError::Closed => Ok(()),
                e => Err(e),
            })?;
            if s.durable_next >= s.next_offset {
                return Ok(());
            }
            let a = &mut s.active;
            let partial = if a.fill > 0 {
                let chunk = a.chunk.as_ref().expect("fill > 0 implies a chunk");
                // Only from the block where the last flush of this chunk
                // ended: what lies before it is on disk already, and
                // rewriting it at every group commit would multiply the
                // bytes written under fsync=always with small batches.
                let done = (a.written_end.saturating_sub(a.chunk_pos) as usize).min(a.fill);
                let start = align_down(done as u64) as usize;
                let n = align_up(a.fill as u64) as usize - start;
                let mut buf = a.file.alloc_dma_buffer(n);
                let have = a.fill - start;
                buf.as_bytes_mut()[..have].copy_from_slice(&chunk.as_bytes()[start..a.fill]);
                buf.as_bytes_mut()[have..].fill(0);
                a.partial_inflight = true;
                Some((buf, a.chunk_pos + start as u64))
            } else {
                None
            };
            let upto = a.chunk_pos;
            let (end_snap, written_snap) = (a.end, a.chunk_pos + a.fill as u64);
            (
                s.next_offset,
                a.file.clone(),
                partial,
                upto,
                end_snap,
                written_snap,
            )
        };
        if let Some((buf, pos)) = partial {
            let res = file.write_at(buf, pos).await;
            {
                let mut s = self.st.borrow_mut();
                s.active.partial_inflight = false;
                if res.is_ok() && Rc::ptr_eq(&s.active.file, &file) {
                    s.active.written_end = s.active.written_end.max(written_snap);
                }
            }
            self.io.notify();
            if let Err(e) = res {
                let msg = format!("write at {pos} failed: {e}");
                self.st.borrow_mut().poisoned = Some(msg.clone());
                return Err(LogError::Poisoned(msg));
            }
        }
        // Wait for full-chunk writes issued before this flush.
        loop {
            let listen = self.io.listen();
            {
                let s = self.st.borrow();
                if let Some(p) = &s.poisoned {
                    return Err(LogError::Poisoned(p.clone()));
                }
                if s.active.inflight.range(..upto).next().is_none() {
                    break;
                }
            }
            listen.await;
        }
        if let Err(e) = file.fdatasync().await {
            let msg = format!("fdatasync failed: {e}");
            self.st.borrow_mut().poisoned = Some(msg.clone());
            return Err(LogError::Poisoned(msg));
        }
        let checkpoint = {
            let mut s = self.st.borrow_mut();
            s.durable_next = s.durable_next.max(target_next);
            s.stats.flushes += 1;
            s.evict_cache();
            let a = &s.active;
            (end_snap >= a.checkpointed + s.cfg.index_checkpoint_bytes
                && Rc::ptr_eq(&a.file, &file))
            .then(|| {
                // Index entries and summary as of the snapshot, which is
                // now durable and ends on a batch boundary.
                let mut idx = a.index.clone();
                idx.truncate_to_len(end_snap);
                let summary = Summary {
                    covered_len: end_snap,
                    next_offset: target_next,
                    max_timestamp: a.max_ts,
                };
                (s.dir.clone(), a.base, idx, summary)
            })
        };
        // Waiters are answered now, not after the index checkpoint below:
        // it only shortens a later recovery scan.
        self.flushed.notify();
        if let Some((dir, base, idx, summary)) = checkpoint {
            write_index_files(&dir, base, &idx, &summary).await?;
            self.st.borrow_mut().active.checkpointed = summary.covered_len;
        }
        Ok(())
    }

    /// Flushes everything appended so far.
    pub async fn flush(&self) -> Result<()> {
        let _p = self
            .flush_lock
            .acquire_permit(1)
            .await
            .map_err(|_| LogError::Closed)?;
        self.flush_locked().await
    }

    /// Waits until `offset` is durable. Under `fsync = always` this joins or
    /// leads a group commit: one waiter flushes, and every batch appended
    /// before its flush started is covered by it; the others just wait. Under
    /// the other policies it returns at once (durability then comes from the
    /// interval flush or from replication).
    pub async fn wait_durable(&self, offset: u64) -> Result<()> {
        loop {
            let listen = self.flushed.listen();
            let wait = {
                let s = self.st.borrow();
                if s.durable_next > offset || s.cfg.fsync != FsyncPolicy::Always {
                    return Ok(());
                }
                if let Some(p) = &s.poisoned {
                    return Err(LogError::Poisoned(p.clone()));
                }
                if offset >= s.next_offset {
                    return Err(LogError::OffsetOutOfRange {
                        offset,
                        log_start: s.log_start,
                        log_end: s.next_offset,
                    });
                }
                s.flushing
            };
            if wait {
                listen.await;
                continue;
            }
            let _leader = FlushLeader::new(&self.st, &self.flushed);
            // Let producers that are ready to run append first, so that this
            // one flush covers them too.
            futures_lite::future::yield_now().await;
            self.flush().await?;
        }
    }

    /// Appends and, under `fsync = always`, waits until the batch is durable.
    pub async fn append_durable(&self, batch: Vec<u8>) -> Result<AppendInfo> {
        let info = self.append(batch).await?;
        self.wait_durable(info.last_offset).await?;
        Ok(info)
    }

    /// Cuts the flushed active segment to its exact length and writes its
    /// indexes: what both a roll and a clean close need. Caller holds both
    /// locks and has flushed.
    async fn seal_active_files(&self) -> Result<(PathBuf, u64, Summary)> {
        let (file, dir, base, idx, summary) = {
            let s = self.st.borrow();
            let a = &s.active;
            (
                a.file.clone(),
                s.dir.clone(),
                a.base,
                a.index.clone(),
                Summary {
                    covered_len: a.end,
                    next_offset: s.next_offset,
                    max_timestamp: a.max_ts,
                },
            )
        };
        let ctx = || format!("sealing segment {base}");
        file.truncate(summary.covered_len)
            .await
            .map_err(|e| glommio_err(ctx(), e))?;
        file.fdatasync().await.map_err(|e| glommio_err(ctx(), e))?;
        write_index_files(&dir, base, &idx, &summary).await?;
        Ok((dir, base, summary))
    }

    /// Renames the recycled file (if any, and no reader holds it) to
    /// `path` and opens it for the new active segment, with the bytes it
    /// already has on disk. `None`: create a new file.
    async fn reuse_recycled(&self, path: &Path) -> Option<(DmaFile, u64)> {
        let r = {
            let mut s = self.st.borrow_mut();
            let busy = s
                .recycled
                .as_ref()?
                .holder
                .as_ref()
                .is_some_and(|h| Rc::strong_count(h) > 1);
            if busy {
                return None;
            }
            s.recycled.take()?
        };
        if let Some(h) = r.holder {
            let _ = h.close_rc().await;
        }
        if let Err(e) = glommio::io::rename(&r.path, path).await {
            warn!(from = %r.path.display(), error = %e, "could not reuse a recycled segment file: deleting it");
            let _ = glommio::io::remove(&r.path).await;
            return None;
        }
        match OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await
        {
            Ok(f) => {
                debug!(path = %path.display(), bytes = r.len, "reusing a recycled segment file");
                Some((f, align_down(r.len)))
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "could not open a recycled segment file: deleting it");
                let _ = glommio::io::remove(path).await;
                None
            }
        }
    }

    /// Deletes the recycled file, if any.
    async fn remove_recycled(&self) {
        let taken = self.st.borrow_mut().recycled.take();
        if let Some(r) = taken {
            if let Some(h) = r.holder {
                let _ = h.close_rc().await;
            }
            if let Err(e) = glommio::io::remove(&r.path).await {
                if !matches!(&e, glommio::GlommioError::IoError(io) if io.kind() == std::io::ErrorKind::NotFound)
                {
                    warn!(path = %r.path.display(), error = %e, "could not delete a recycled segment file");
                }
            }
        }
    }

    /// Seals the active segment and starts a new one. Caller holds `append_lock`.
    async fn roll(&self) -> Result<()> {
        let started = Instant::now();
        let _p = self
            .flush_lock
            .acquire_permit(1)
            .await
            .map_err(|_| LogError::Closed)?;
        self.flush_locked().await?;
        let (dir, base, summary) = self.seal_active_files().await?;
        let new_base = summary.next_offset;
        let path = dir.join(segment_name(new_base, "log"));
        let (f, preallocated) = match self.reuse_recycled(&path).await {
            Some(reused) => reused,
            None => (
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .dma_open(&path)
                    .await
                    .map_err(|e| glommio_err(path.display().to_string(), e))?,
                0,
            ),
        };
        sync_dir_async(&dir).await?;
        let mut s = self.st.borrow_mut();
        let old = std::mem::replace(
            &mut s.active,
            Active {
                base: new_base,
                file: Rc::new(f),
                index: SegmentIndex::default(),
                end: 0,
                max_ts: i64::MIN,
                // Allocated by the first append to the new segment.
                chunk: None,
                chunk_pos: 0,
                fill: 0,
                preallocated,
                inflight: BTreeSet::new(),
                partial_inflight: false,
                written_end: 0,
                created: Instant::now(),
                checkpointed: 0,
            },
        );
        s.sealed.insert(
            base,
            Sealed {
                summary,
                file: Some(old.file),
            },
        );
        debug!(
            sealed = base,
            new = new_base,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "rolled segment"
        );
        Ok(())
    }

    /// Reads whole batches starting with the one holding `offset`, up to
    /// `max_bytes` (at least one batch is returned if any is visible), not
    /// past `visible_end` (e.g. a high watermark; `None` = log end).
    pub async fn read(
        &self,
        offset: u64,
        max_bytes: usize,
        visible_end: Option<u64>,
    ) -> Result<ReadOutcome> {
        let (log_start, log_end) = {
            let mut s = self.st.borrow_mut();
            s.last_active = Instant::now();
            s.released = false;
            (s.log_start, s.next_offset)
        };
        if offset < log_start || offset > log_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            });
        }
        let bound = visible_end.unwrap_or(log_end).min(log_end);
        let mut out = ReadOutcome {
            data: Vec::new(),
            next_offset: offset,
            log_start_offset: log_start,
            log_end_offset: log_end,
        };
        while out.next_offset < bound && out.data.len() < max_bytes {
            let before = out.next_offset;
            if !self.read_from_cache(&mut out, max_bytes, bound) {
                self.read_from_disk(&mut out, max_bytes, bound).await?;
            }
            if out.next_offset == before {
                break;
            }
        }
        Ok(out)
    }

    /// Serves the read from the tail cache if it covers the wanted offset.
    fn read_from_cache(&self, out: &mut ReadOutcome, max_bytes: usize, bound: u64) -> bool {
        let s = self.st.borrow();
        let want = out.next_offset;
        let Some(front) = s.cache.front() else {
            return false;
        };
        if front.base_offset > want {
            return false;
        }
        let start = s.cache.partition_point(|c| c.next_offset <= want);
        for c in s.cache.iter().skip(start) {
            if c.base_offset >= bound {
                break;
            }
            if !out.data.is_empty() && out.data.len() + c.bytes.len() > max_bytes {
                break;
            }
            out.data.extend_from_slice(&c.bytes);
            out.next_offset = c.next_offset;
        }
        true
    }

    async fn segment_index(&self, base: u64) -> Result<Rc<SegmentIndex>> {
        if let Some(i) = self.st.borrow().index_cache.map.get(&base) {
            return Ok(i.clone());
        }
        let dir = self.st.borrow().dir.clone();
        let idx = match read_index_files(&dir, base).await {
            Some((_, idx)) => idx,
            None => {
                // Rebuild a lost index of a sealed segment.
                let (file, size, cfg) = self.sealed_file(base).await?;
                let mut idx = SegmentIndex::default();
                let epochs = self.st.borrow().epochs.clone();
                let out = scan_segment(
                    &file,
                    base,
                    0,
                    base,
                    size,
                    &cfg,
                    &mut idx,
                    i64::MIN,
                    &epochs,
                )
                .await?;
                let summary = Summary {
                    covered_len: out.end,
                    next_offset: out.next_offset,
                    max_timestamp: out.max_ts,
                };
                write_index_files(&dir, base, &idx, &summary).await?;
                idx
            }
        };
        let idx = Rc::new(idx);
        let mut s = self.st.borrow_mut();
        let cap = s.cfg.index_cache_bytes;
        let c = &mut s.index_cache;
        c.bytes += idx.mem_bytes();
        c.map.insert(base, idx.clone());
        c.order.push_back(base);
        while c.bytes > cap && c.order.len() > 1 {
            if let Some(old) = c.order.pop_front() {
                if let Some(i) = c.map.remove(&old) {
                    c.bytes -= i.mem_bytes();
                }
            }
        }
        Ok(idx)
    }

    async fn sealed_file(&self, base: u64) -> Result<(Rc<DmaFile>, u64, LogConfig)> {
        let (existing, path, size, cfg) = {
            let s = self.st.borrow();
            let seg = s.sealed.get(&base).ok_or(LogError::OffsetOutOfRange {
                offset: base,
                log_start: s.log_start,
                log_end: s.next_offset,
            })?;
            (
                seg.file.clone(),
                s.path(base, "log"),
                seg.summary.covered_len,
                s.cfg.clone(),
            )
        };
        if let Some(f) = existing {
            return Ok((f, size, cfg));
        }
        let f = Rc::new(open_ro(&path).await?);
        if let Some(seg) = self.st.borrow_mut().sealed.get_mut(&base) {
            seg.file = Some(f.clone());
        }
        Ok((f, size, cfg))
    }

    async fn read_from_disk(
        &self,
        out: &mut ReadOutcome,
        max_bytes: usize,
        bound: u64,
    ) -> Result<()> {
        let want = out.next_offset;
        if out.data.capacity() == 0 {
            // A reader behind the tail cache usually fills its whole fetch:
            // size the buffer once instead of growing (and copying) it.
            out.data.reserve(max_bytes.min(MAX_READ_RESERVE));
        }
        // Which segment holds `want`?
        let (seg_base, is_active) = {
            let s = self.st.borrow();
            match s.sealed.range(..=want).next_back() {
                Some((&b, seg)) if want < seg.summary.next_offset => (b, false),
                _ if want >= s.active.base => (s.active.base, true),
                _ => {
                    // In a gap left by retention racing us.
                    return Err(LogError::OffsetOutOfRange {
                        offset: want,
                        log_start: s.log_start,
                        log_end: s.next_offset,
                    });
                }
            }
        };
        let (file, pos, end, max_batch) = if is_active {
            let s = self.st.borrow();
            let a = &s.active;
            let (rel, pos) = a.index.lookup((want - a.base) as u32);
            (
                a.file.clone(),
                (pos, seg_base + u64::from(rel)),
                s.active_readable_end(),
                s.cfg.max_batch_bytes,
            )
        } else {
            let idx = self.segment_index(seg_base).await?;
            let (file, size, cfg) = self.sealed_file(seg_base).await?;
            let (rel, pos) = idx.lookup((want - seg_base) as u32);
            (
                file,
                (pos, seg_base + u64::from(rel)),
                size,
                cfg.max_batch_bytes,
            )
        };
        // Where the batch at `pos` must start: the index says, then each
        // batch continues the one before (the base offsets are not under
        // the CRC, so this is what protects them on reads).
        let (mut pos, mut expected) = pos;
        let corrupt = |pos: u64, reason: String| LogError::Corrupt {
            file: segment_name(seg_base, "log"),
            pos,
            reason,
        };
        let w = self.st.borrow().cfg.read_ahead_bytes as u64;
        let mut win: Option<(u64, glommio::io::ReadResult)> = None;
        while pos + HEADER_LEN as u64 <= end && out.next_offset < bound {
            let k = pos / w;
            let buf = match &win {
                Some((start, r)) if *start == k * w => r.clone(),
                _ => {
                    let r = self.window(seg_base, &file, k * w, end).await?;
                    win = Some((k * w, r.clone()));
                    r
                }
            };
            let at = (pos - k * w) as usize;
            let taken = if at + HEADER_LEN <= buf.len() {
                let h = *BatchHeader::parse(&buf[at..]).map_err(|e| corrupt(pos, e.to_string()))?;
                let blen = h.len();
                if is_active && (HEADER_LEN..=max_batch).contains(&blen) && pos + blen as u64 > end
                {
                    // Half written: the rest is still in the chunk being
                    // filled; the tail cache holds the whole batch.
                    break;
                }
                if blen < HEADER_LEN || blen > max_batch || pos + blen as u64 > end {
                    return Err(corrupt(pos, format!("batch length {blen}")));
                }
                if at + blen <= buf.len() {
                    self.take_batch(
                        out,
                        &buf[at..at + blen],
                        max_bytes,
                        bound,
                        max_batch,
                        &mut expected,
                    )
                    .map_err(|r| corrupt(pos, r))?
                } else {
                    // The batch spans windows: assemble it.
                    let mut whole = Vec::with_capacity(blen);
                    whole.extend_from_slice(&buf[at..]);
                    while whole.len() < blen {
                        let next = pos + whole.len() as u64;
                        let r = self.window(seg_base, &file, next, end).await?;
                        let n = (blen - whole.len()).min(r.len());
                        if n == 0 {
                            return Err(corrupt(pos, "batch runs past the readable data".into()));
                        }
                        whole.extend_from_slice(&r[..n]);
                        win = Some((next, r));
                    }
                    self.take_batch(out, &whole, max_bytes, bound, max_batch, &mut expected)
                        .map_err(|r| corrupt(pos, r))?
                }
                .then_some(blen)
            } else {
                // The header itself spans windows.
                let r = file
                    .read_at(pos, HEADER_LEN)
                    .await
                    .map_err(|e| glommio_err(segment_name(seg_base, "log"), e))?;
                let blen = BatchHeader::parse(&r)
                    .map_err(|e| corrupt(pos, e.to_string()))?
                    .len();
                if is_active && (HEADER_LEN..=max_batch).contains(&blen) && pos + blen as u64 > end
                {
                    break;
                }
                if blen < HEADER_LEN || blen > max_batch || pos + blen as u64 > end {
                    return Err(corrupt(pos, format!("batch length {blen}")));
                }
                let r = file
                    .read_at(pos, blen)
                    .await
                    .map_err(|e| glommio_err(segment_name(seg_base, "log"), e))?;
                if r.len() < blen {
                    return Err(corrupt(pos, "batch runs past the end of the file".into()));
                }
                self.take_batch(out, &r[..blen], max_bytes, bound, max_batch, &mut expected)
                    .map_err(|r| corrupt(pos, r))?
                    .then_some(blen)
            };
            match taken {
                Some(blen) => pos += blen as u64,
                None => break,
            }
        }
        Ok(())
    }

    /// Reads the window of a segment that starts at `start` (a multiple of
    /// the read-ahead size, or any position for the tail of a spanning
    /// batch), taking it from the prefetched windows if it is there, and
    /// starts reading the next windows in the background.
    async fn window(
        &self,
        seg_base: u64,
        file: &Rc<DmaFile>,
        start: u64,
        end: u64,
    ) -> Result<glommio::io::ReadResult> {
        let (w, depth) = {
            let s = self.st.borrow();
            (s.cfg.read_ahead_bytes as u64, s.cfg.read_ahead_windows)
        };
        let len = w.min(end.saturating_sub(start)) as usize;
        let key = (seg_base, start, len);
        if let Some((_, r)) = self.st.borrow().last_window.iter().find(|(k, _)| *k == key) {
            return Ok(r.clone());
        }
        let pre = {
            let mut s = self.st.borrow_mut();
            s.prefetch
                .iter()
                .position(|(k, _)| *k == key)
                .and_then(|i| s.prefetch.remove(i))
        };
        let res = match pre {
            Some((_, task)) => task.await,
            None => file.read_at(start, len).await.map_err(io::Error::from),
        };
        let r = res.map_err(|e| io_err(segment_name(seg_base, "log"), e))?;
        if start.is_multiple_of(w) {
            let mut s = self.st.borrow_mut();
            // The next read usually continues inside this window.
            s.last_window.retain(|(k, _)| *k != key);
            s.last_window.push_back((key, r.clone()));
            while s.last_window.len() > 2 {
                s.last_window.pop_front();
            }
            for j in 1..=depth as u64 {
                let ps = start + j * w;
                if ps >= end {
                    break;
                }
                let pl = w.min(end - ps) as usize;
                let pk = (seg_base, ps, pl);
                if s.prefetch.iter().any(|(k, _)| *k == pk) {
                    continue;
                }
                let f = file.clone();
                let task = glommio::spawn_local(async move {
                    f.read_at(ps, pl).await.map_err(io::Error::from)
                });
                s.prefetch.push_back((pk, task));
                while s.prefetch.len() > depth.max(1) * 2 {
                    s.prefetch.pop_front();
                }
            }
        }
        Ok(r)
    }

    /// Adds one stored batch to a read if it is wanted and fits. Returns
    /// whether the read should continue.
    fn take_batch(
        &self,
        out: &mut ReadOutcome,
        b: &[u8],
        max_bytes: usize,
        bound: u64,
        max_batch: usize,
        expected: &mut u64,
    ) -> std::result::Result<bool, String> {
        let h = batch::validate_stored(b, max_batch).map_err(|e| e.to_string())?;
        let epoch = self.st.borrow().epochs.epoch_at(*expected);
        batch::check_placement(h, *expected, epoch).map_err(|e| e.to_string())?;
        *expected = h.next_offset();
        if h.next_offset() <= out.next_offset {
            return Ok(true); // before the wanted offset: skip
        }
        if h.base_offset() >= bound {
            return Ok(false);
        }
        if !out.data.is_empty() && out.data.len() + b.len() > max_bytes {
            return Ok(false);
        }
        out.data.extend_from_slice(b);
        out.next_offset = h.next_offset();
        Ok(out.data.len() < max_bytes)
    }

    /// The offset of the first record whose timestamp is at or after `ts`,
    /// or `None` if every record is older.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<u64>> {
        // First segment whose newest record is at or after `ts`.
        let (seg_base, is_active) = {
            let s = self.st.borrow();
            match s
                .sealed
                .iter()
                .find(|(_, seg)| seg.summary.max_timestamp >= ts)
            {
                Some((&b, _)) => (b, false),
                None if s.active.max_ts >= ts && s.active.end > 0 => (s.active.base, true),
                None => return Ok(None),
            }
        };
        let rel = if is_active {
            self.st.borrow().active.index.lookup_time(ts)
        } else {
            self.segment_index(seg_base).await?.lookup_time(ts)
        };
        let mut at = (seg_base + u64::from(rel)).max(self.log_start_offset());
        loop {
            let r = self.read(at, 1 << 20, None).await?;
            if r.data.is_empty() {
                return Ok(None);
            }
            for b in batch::split_batches(&r.data) {
                let h = BatchHeader::parse(b)?;
                if h.max_timestamp.get() < ts {
                    continue;
                }
                return Ok(Some(match batch::records(b) {
                    Ok(recs) => recs
                        .iter()
                        .find(|r| r.timestamp >= ts)
                        .map_or(h.base_offset(), |r| r.offset),
                    Err(_) => h.base_offset(),
                }));
            }
            at = r.next_offset;
        }
    }

    /// Deletes whole sealed segments beyond the size or age limits, advancing
    /// the log start offset. Appends are not blocked. Returns segments deleted.
    /// The files are renamed and unlinked off the shard's thread (glommio's
    /// blocking pool): unlinking a large segment can take milliseconds.
    pub async fn enforce_retention(&self) -> Result<usize> {
        self.enforce_retention_at(now_ms()).await
    }

    pub async fn enforce_retention_at(&self, now_ms: i64) -> Result<usize> {
        let mut doomed = Vec::new();
        {
            let mut s = self.st.borrow_mut();
            while let Some((&base, seg)) = s.sealed.iter().next() {
                let len = seg.summary.covered_len;
                let by_size = s
                    .cfg
                    .retention_bytes
                    .is_some_and(|r| s.size_bytes - len >= r);
                let by_age = s
                    .cfg
                    .retention_age
                    .is_some_and(|age| seg.summary.max_timestamp < now_ms - age.as_millis() as i64);
                if !(by_size || by_age) {
                    break;
                }
                let Some(seg) = s.sealed.remove(&base) else {
                    break;
                };
                s.size_bytes -= len;
                s.log_start = s.sealed.keys().next().copied().unwrap_or(s.active.base);
                if let Some(i) = s.index_cache.map.remove(&base) {
                    s.index_cache.bytes -= i.mem_bytes();
                    s.index_cache.order.retain(|b| *b != base);
                }
                while s.cache.front().is_some_and(|c| c.seg_base == base) {
                    let c = s.cache.pop_front().expect("checked");
                    s.cache_bytes -= c.bytes.len();
                }
                doomed.push((base, len, seg.file));
            }
        }
        let (dir, recycle) = {
            let s = self.st.borrow();
            (
                s.dir.clone(),
                s.cfg.recycle_segments && s.recycled.is_none(),
            )
        };
        let count = doomed.len();
        // The newest doomed segment's file is kept for the next roll.
        let keep = if recycle { doomed.pop() } else { None };
        if let Some((base, len, holder)) = keep {
            let from = dir.join(segment_name(base, "log"));
            let to = dir.join(segment_name(base, RECYCLE_EXT));
            match glommio::io::rename(&from, &to).await {
                Ok(()) => {
                    info!(
                        segment = base,
                        "retention: segment deleted, its file kept for reuse"
                    );
                    let taken = self.st.borrow().recycled.is_some();
                    if taken {
                        // A concurrent retention pass kept one first.
                        let _ = glommio::io::remove(&to).await;
                    } else {
                        self.st.borrow_mut().recycled = Some(Recycled {
                            path: to,
                            len,
                            holder,
                        });
                    }
                    for ext in ["index", "timeindex"] {
                        let _ = glommio::io::remove(dir.join(segment_name(base, ext))).await;
                    }
                }
                Err(_) => doomed.push((base, len, holder)),
            }
        }
        for (base, _, holder) in doomed {
            info!(segment = base, "retention: deleting segment");
            drop(holder);
            for ext in ["log", "index", "timeindex"] {
                let p = dir.join(segment_name(base, ext));
                if let Err(e) = glommio::io::remove(&p).await {
                    let e = io::Error::from(e);
                    if e.kind() != io::ErrorKind::NotFound {
                        return Err(io_err(format!("deleting {}", p.display()), e));
                    }
                }
            }
        }
        Ok(count)
    }

    /// Periodic work for this log: the interval flush and retention. Spawn it
    /// on the owning shard; it returns when the log is closed.
    pub async fn run_background(&self) -> Result<()> {
        let (policy, retention_every) = {
            let s = self.st.borrow();
            (s.cfg.fsync, s.cfg.retention_check_interval)
        };
        let tick = match policy {
            FsyncPolicy::Interval(d) => d.min(retention_every),
            _ => retention_every.min(Duration::from_secs(1)),
        };
        let mut last_retention = Instant::now();
        loop {
            glommio::timer::sleep(tick).await;
            {
                let s = self.st.borrow();
                if s.reopening {
                    continue;
                }
                if s.closed {
                    return Ok(());
                }
            }
            if matches!(policy, FsyncPolicy::Interval(_)) {
                self.flush().await?;
            }
            if last_retention.elapsed() >= retention_every {
                self.enforce_retention().await?;
                last_retention = Instant::now();
            }
            self.release_if_idle().await?;
        }
    }

    /// Flushes, writes the indexes, trims preallocated space and marks the log
    /// clean, so the next open skips the recovery scan.
    pub async fn close(&self) -> Result<()> {
        let _locks = self.lock_all().await?;
        if self.st.borrow().closed {
            return Ok(());
        }
        self.flush_locked().await?;
        self.st.borrow_mut().closed = true;
        let (dir, _, summary) = self.seal_active_files().await?;
        self.remove_recycled().await;
        write_file_atomic(&dir.join(CLEAN_MARKER), b"").await?;
        sync_dir_async(&dir).await?;
        info!(dir = %dir.display(), next_offset = summary.next_offset, "closed log cleanly");
        Ok(())
    }
}
