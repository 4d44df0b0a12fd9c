//! Cutting the log: a follower's truncation and reset (KIP-101).

use super::*;

/// Cuts a closed log's files at the batch holding `offset`: later segments
/// are deleted, the segment holding it is cut and its indexes removed (the
/// reopen rebuilds them). Plain (blocking) file calls: this runs rarely (a
/// follower truncating after a leader change), on a log that is closed
/// meanwhile, and `cut` runs it on the blocking thread.
pub(super) fn cut_files(dir: &Path, offset: u64, empty: bool) -> Result<()> {
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

impl Log {
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

    pub(super) async fn cut(&self, offset: u64, empty: bool) -> Result<()> {
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
                let injected = self.st.borrow_mut().fail_next_write.take();
                match injected {
                    Some(kind) => Err(io_err("writing the leader epochs", io::Error::from(kind))),
                    None => write_file_atomic(&dir.join(EPOCH_FILE), &epochs.encode()).await,
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            let mut s = self.st.borrow_mut();
            let reason = format!("truncating to offset {offset} failed: {e}");
            s.reopening = false;
            if e.is_no_space() {
                // The files hold the old log or a prefix of it: once there
                // is room, `recover_from_full_disk` reopens it from them
                // (and a follower truncates again).
                s.poisoned = Some(Poison::no_space(reason));
                s.closed = false;
            } else {
                s.poisoned = Some(Poison::other(reason));
            }
            return Err(e);
        }
        // Drop the old files before reopening.
        self.st.borrow_mut().drop_read_state();
        let reopened = match Log::open(&dir, cfg).await {
            Ok(l) => l,
            Err(e) => {
                let mut s = self.st.borrow_mut();
                s.poisoned = Some(Poison::other(format!(
                    "reopening after truncation failed: {e}"
                )));
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

    /// Makes a log that stopped on a full disk (see
    /// [`Log::is_stopped_by_full_disk`]) writable again, once space was
    /// freed. Its in-memory tail may hold batches whose write failed, so
    /// they are not trusted: after the writes in flight end, the log is
    /// reopened as after a crash, its active segment scanned, and cut at
    /// the first batch that is not whole and valid on disk, then synced.
    /// Everything durable before the failure is below that cut; batches
    /// appended after it (never acknowledged as durable) are kept only if
    /// they reached the disk whole. Returns the log end before and after,
    /// or `None` if the log was not stopped by a full disk. If the reopen
    /// fails the log stays stopped, and this can be called again.
    pub async fn recover_from_full_disk(&self) -> Result<Option<(u64, u64)>> {
        let _locks = self.lock_all().await?;
        {
            let s = self.st.borrow();
            if s.closed {
                return Err(LogError::Closed);
            }
            if !s.poisoned.as_ref().is_some_and(|p| p.no_space) {
                return Ok(None);
            }
        }
        // Writes issued before the failure finish first: the scan must see
        // the file as they leave it.
        loop {
            let listen = self.io.listen();
            {
                let s = self.st.borrow();
                if s.active.inflight.is_empty() && !s.active.partial_inflight {
                    break;
                }
            }
            listen.await;
        }
        let (dir, cfg, old_end) = {
            let mut s = self.st.borrow_mut();
            s.closed = true;
            s.reopening = true;
            s.drop_read_state();
            s.recycled = None;
            (s.dir.clone(), s.cfg.clone(), s.next_offset)
        };
        let reopened = match Log::open(&dir, cfg).await {
            Ok(l) => l,
            Err(e) => {
                let mut s = self.st.borrow_mut();
                s.closed = false;
                s.reopening = false;
                warn!(dir = %dir.display(), error = %e, "reopening a log stopped by a full disk failed; it stays stopped");
                return Err(e);
            }
        };
        let fresh = Rc::try_unwrap(reopened.st)
            .map_err(|_| LogError::Closed)?
            .into_inner();
        let new_end = fresh.next_offset;
        let old = std::mem::replace(&mut *self.st.borrow_mut(), fresh);
        let _ = old.active.file.close_rc().await;
        info!(
            dir = %dir.display(),
            old_end,
            new_end,
            "log stopped by a full disk accepts writes again"
        );
        self.io.notify();
        self.flushed.notify();
        Ok(Some((old_end, new_end)))
    }
}
