//! Opening a log: listing its directory, refusing an old format, scanning segments (recovery), rebuilding indexes.

use super::*;

/// How a scan names the batches a recycled file still holds.
pub(super) const STALE: &str = "stale batch of a recycled segment";

pub(super) struct ScanOutcome {
    pub(super) end: u64,
    pub(super) next_offset: u64,
    pub(super) max_ts: i64,
    pub(super) stop_reason: Option<String>,
}

/// Refuses a log written in Levee's storage format 1 (before Kafka's
/// RecordBatch v2), rather than scanning it as corrupt and cutting it.
pub(super) async fn refuse_format_1(dir: &Path, first: u64) -> Result<()> {
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
pub(super) async fn scan_segment(
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

/// What `open` needs from the log's directory.
pub(super) struct Listing {
    /// The last shutdown was clean (its marker is removed here).
    clean: bool,
    /// Segment base offsets and file sizes, in offset order.
    segments: Vec<(u64, u64)>,
}

/// Creates the log directory if needed, consumes the clean-shutdown marker,
/// deletes leftovers (temporary and recycled files) and lists the segments.
/// Plain (blocking) file calls: `open` runs it on the blocking thread.
pub(super) fn list_log_dir(dir: &Path) -> Result<Listing> {
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

/// The log start recorded in [`LOG_START_FILE`] (0: none). A damaged file
/// is reported and ignored (the log start then follows the segments).
async fn read_log_start_file(dir: &Path) -> u64 {
    let path = dir.join(LOG_START_FILE);
    let Some(bytes) = read_small_file(&path).await else {
        return 0;
    };
    match std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| t.trim_end_matches('\0').trim().parse::<u64>().ok())
    {
        Some(v) => v,
        None => {
            warn!(file = %path.display(), "damaged log start file: ignored");
            0
        }
    }
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
        // A recorded log start past the log end (the tail was lost in a
        // crash, or a follower truncated below it) is cut to the end.
        let recorded = read_log_start_file(&dir).await;
        let start_floor = recorded.min(next_offset);
        if recorded > next_offset {
            write_file_atomic(
                &dir.join(LOG_START_FILE),
                format!("{start_floor}\n").as_bytes(),
            )
            .await?;
        }
        let log_start = sealed
            .keys()
            .next()
            .copied()
            .unwrap_or(active_base)
            .max(start_floor);
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
            start_floor,
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
            fail_next_write: None,
            fail_next_epoch_write: None,
        };
        Ok(Log {
            st: Rc::new(RefCell::new(st)),
            io: Rc::new(LocalEvent::default()),
            flushed: LocalEvent::default(),
            append_lock: FifoLock::default(),
            flush_lock: Semaphore::new(1),
            start_lock: Semaphore::new(1),
        })
    }
}
