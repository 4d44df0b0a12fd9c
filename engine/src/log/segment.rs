//! Rolling segments: sealing the active one, reusing retired segment files.

use super::*;

impl Log {
    /// Cuts the flushed active segment to its exact length and writes its
    /// indexes: what both a roll and a clean close need. Caller holds both
    /// locks and has flushed.
    pub(super) async fn seal_active_files(&self) -> Result<(PathBuf, u64, Summary)> {
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
        // What lay past the end was given back: a roll that fails after
        // this point (a full disk) must preallocate again on the next try.
        {
            let mut s = self.st.borrow_mut();
            if Rc::ptr_eq(&s.active.file, &file) {
                s.active.preallocated = s.active.preallocated.min(summary.covered_len);
            }
        }
        file.fdatasync().await.map_err(|e| glommio_err(ctx(), e))?;
        write_index_files(&dir, base, &idx, &summary).await?;
        Ok((dir, base, summary))
    }

    /// Renames the recycled file (if any, and no reader holds it) to
    /// `path` and opens it for the new active segment, with the bytes it
    /// already has on disk. `None`: create a new file.
    pub(super) async fn reuse_recycled(&self, path: &Path) -> Option<(DmaFile, u64)> {
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
    pub(super) async fn remove_recycled(&self) {
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
    pub(super) async fn roll(&self) -> Result<()> {
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
}
