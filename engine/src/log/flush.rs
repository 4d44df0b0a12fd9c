//! Writing chunks and group commit: full-chunk writes in flight, flushes, durability waits.

use super::*;

impl Log {
    /// Hands the full current chunk to a background write, waiting while too
    /// many writes are in flight.
    pub(super) async fn issue_full_chunk(&self) -> Result<()> {
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
            let injected = st.borrow_mut().fail_next_write.take();
            let res = match injected {
                Some(kind) => Err(io::Error::from(kind)),
                None => file.write_at(buf, write_pos).await.map_err(io::Error::from),
            };
            {
                let mut s = st.borrow_mut();
                s.active.inflight.remove(&pos);
                match res {
                    Ok(n) if n == want => {}
                    Ok(n) => {
                        s.poisoned = Some(Poison::other(format!(
                            "short write of {n} of {want} bytes at {pos}"
                        )))
                    }
                    Err(e) => {
                        let p = Poison::io(format!("write at {pos} failed"), e);
                        warn!(dir = %s.dir.display(), reason = %p.reason, "a segment write failed: the log refuses writes");
                        s.poisoned = Some(p);
                    }
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
    pub(super) async fn flush_locked(&self) -> Result<()> {
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
            let injected = self.st.borrow_mut().fail_next_write.take();
            let res = match injected {
                Some(kind) => Err(io::Error::from(kind)),
                None => file.write_at(buf, pos).await.map_err(io::Error::from),
            };
            {
                let mut s = self.st.borrow_mut();
                s.active.partial_inflight = false;
                if res.is_ok() && Rc::ptr_eq(&s.active.file, &file) {
                    s.active.written_end = s.active.written_end.max(written_snap);
                }
            }
            self.io.notify();
            if let Err(e) = res {
                let p = Poison::io(format!("write at {pos} failed"), e);
                warn!(dir = %self.st.borrow().dir.display(), reason = %p.reason, "a flush write failed: the log refuses writes");
                let err = p.error();
                self.st.borrow_mut().poisoned = Some(p);
                return Err(err);
            }
        }
        // Wait for full-chunk writes issued before this flush.
        loop {
            let listen = self.io.listen();
            {
                let s = self.st.borrow();
                if let Some(p) = &s.poisoned {
                    return Err(p.error());
                }
                if s.active.inflight.range(..upto).next().is_none() {
                    break;
                }
            }
            listen.await;
        }
        if let Err(e) = file.fdatasync().await {
            let p = Poison::io("fdatasync failed".to_string(), e.into());
            warn!(dir = %self.st.borrow().dir.display(), reason = %p.reason, "fdatasync failed: the log refuses writes");
            let err = p.error();
            self.st.borrow_mut().poisoned = Some(p);
            return Err(err);
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
            // The data is durable whatever happens here: a checkpoint that
            // cannot be written (a full disk) only leaves a longer scan.
            match write_index_files(&dir, base, &idx, &summary).await {
                Ok(()) => self.st.borrow_mut().active.checkpointed = summary.covered_len,
                Err(e) => {
                    warn!(dir = %dir.display(), segment = base, error = %e, "writing the active segment's index checkpoint failed; a recovery would scan from the previous one")
                }
            }
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
                    return Err(p.error());
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
}
