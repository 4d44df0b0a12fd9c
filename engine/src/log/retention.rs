//! Background work: retention, interval flushes, idle release, and closing.

use super::*;

impl Log {
    /// Gives back an idle log's memory (see `LogConfig::idle_release`).
    pub(super) async fn release_if_idle(&self) -> Result<()> {
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

    /// Deletes whole sealed segments beyond the size or age limits, advancing
    /// the log start offset. Appends are not blocked. Returns segments deleted.
    /// The files are renamed and unlinked off the shard's thread (glommio's
    /// blocking pool): unlinking a large segment can take milliseconds.
    pub async fn enforce_retention(&self) -> Result<usize> {
        self.enforce_retention_at(now_ms()).await
    }

    pub async fn enforce_retention_at(&self, now_ms: i64) -> Result<usize> {
        self.delete_segments(now_ms, 0).await
    }

    /// Deletes the whole sealed segments that end at or before `offset`
    /// (every record in them is below it), advancing the log start offset
    /// to at most `offset`: for a log whose records below `offset` are no
    /// longer needed (a compacted internal topic's snapshot starts there).
    /// Retention limits apply too. Returns segments deleted.
    pub async fn delete_before(&self, offset: u64) -> Result<usize> {
        self.delete_segments(now_ms(), offset).await
    }

    /// Advances the log start offset to `offset` (Kafka's DeleteRecords):
    /// reads below it fail with [`LogError::OffsetOutOfRange`] and the
    /// sealed segments wholly below it are deleted. The new start is
    /// durable (in [`LOG_START_FILE`]) before this returns, so it survives
    /// a restart. An offset at or below the log start changes nothing; one
    /// past the log end is [`LogError::OffsetOutOfRange`]. Returns the log
    /// start afterwards.
    pub async fn advance_log_start(&self, offset: u64) -> Result<u64> {
        let _p = self
            .start_lock
            .acquire_permit(1)
            .await
            .map_err(|_| LogError::Closed)?;
        let dir = {
            let s = self.st.borrow();
            if s.closed {
                return Err(LogError::Closed);
            }
            if offset > s.next_offset {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    log_start: s.log_start,
                    log_end: s.next_offset,
                });
            }
            if offset <= s.log_start {
                return Ok(s.log_start);
            }
            s.dir.clone()
        };
        write_file_atomic(&dir.join(LOG_START_FILE), format!("{offset}\n").as_bytes()).await?;
        {
            let mut s = self.st.borrow_mut();
            s.start_floor = s.start_floor.max(offset);
            s.log_start = s.derived_log_start();
        }
        info!(dir = %dir.display(), log_start = offset, "log start advanced");
        self.delete_segments(now_ms(), offset).await?;
        Ok(self.log_start_offset())
    }

    async fn delete_segments(&self, now_ms: i64, floor: u64) -> Result<usize> {
        let mut doomed = Vec::new();
        {
            let mut s = self.st.borrow_mut();
            let floor = floor.max(s.start_floor);
            while let Some((&base, seg)) = s.sealed.iter().next() {
                let next_base = s.sealed.keys().nth(1).copied().unwrap_or(s.active.base);
                let below_floor = next_base <= floor;
                let len = seg.summary.covered_len;
                let by_size = s
                    .cfg
                    .retention_bytes
                    .is_some_and(|r| s.size_bytes - len >= r);
                let by_age = s
                    .cfg
                    .retention_age
                    .is_some_and(|age| seg.summary.max_timestamp < now_ms - age.as_millis() as i64);
                if !(by_size || by_age || below_floor) {
                    break;
                }
                let Some(seg) = s.sealed.remove(&base) else {
                    break;
                };
                s.size_bytes -= len;
                s.log_start = s.derived_log_start();
                if let Some(i) = s.index_cache.map.remove(&base) {
                    s.index_cache.bytes -= i.mem_bytes();
                    s.index_cache.order.retain(|b| *b != base);
                }
                while s.cache.front().is_some_and(|c| c.seg_base == base) {
                    let c = s.cache.pop_front().expect("checked");
                    s.cache_bytes -= c.charge;
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
    /// on the owning shard; it returns when the log is closed. A failed step
    /// is logged (at most once a minute) and the loop goes on: retention
    /// must keep running on a log whose writes fail, since it is what frees
    /// a full disk. The settings are read at every tick, so
    /// [`Log::set_config`] takes effect without a restart.
    pub async fn run_background(&self) -> Result<()> {
        let mut last_retention = Instant::now();
        let mut last_warning: Option<Instant> = None;
        loop {
            let (policy, retention_every) = {
                let s = self.st.borrow();
                (s.cfg.fsync, s.cfg.retention_check_interval)
            };
            let tick = match policy {
                FsyncPolicy::Interval(d) => d.min(retention_every),
                _ => retention_every.min(Duration::from_secs(1)),
            };
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
            let mut failed = None;
            if matches!(policy, FsyncPolicy::Interval(_)) {
                if let Err(e) = self.flush().await {
                    failed = Some(("interval flush", e));
                }
            }
            if last_retention.elapsed() >= retention_every {
                last_retention = Instant::now();
                if let Err(e) = self.enforce_retention().await {
                    failed = Some(("retention", e));
                }
            }
            if failed.is_none() {
                if let Err(e) = self.release_if_idle().await {
                    failed = Some(("idle release", e));
                }
            }
            if let Some((what, e)) = failed {
                if matches!(e, LogError::Closed) && self.is_closed() {
                    return Ok(());
                }
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    last_warning = Some(Instant::now());
                    warn!(dir = %self.st.borrow().dir.display(), step = what, error = %e, "background work of a log failed; retrying");
                }
            }
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
        // The sealed segments' handles go now, not when the last holder of
        // the log does: the space of a deleted topic's files is freed only
        // once nothing holds them open.
        self.st.borrow_mut().drop_read_state();
        info!(dir = %dir.display(), next_offset = summary.next_offset, "closed log cleanly");
        Ok(())
    }
}
