//! Appending batches: validation, offsets, the DMA chunk copy, preallocation, leader epochs.

use super::*;

impl Log {
    /// Validates a producer's batch, assigns its offsets and appends it. The
    /// batch is durable once [`Log::wait_durable`] for its last offset returns
    /// (under `fsync = always`), or per the log's policy.
    pub async fn append(&self, batch: Vec<u8>) -> Result<AppendInfo> {
        self.append_with_epoch(batch, 0).await
    }

    pub async fn append_with_epoch(&self, batch: Vec<u8>, leader_epoch: i32) -> Result<AppendInfo> {
        let max = self.st.borrow().cfg.max_batch_bytes;
        let b = CheckedBatch::produced(bytes::Bytes::from(batch), max)?;
        self.append_inner(b, Some(leader_epoch)).await
    }

    /// Appends a produced batch its caller validated ([`CheckedBatch`]: the
    /// header is read once per request), stamping its offsets and `leader_epoch`.
    /// Its bytes are shared, not copied, until the one copy into the active
    /// segment's DMA chunk.
    pub async fn append_checked(&self, b: CheckedBatch, leader_epoch: i32) -> Result<AppendInfo> {
        self.append_inner(b, Some(leader_epoch)).await
    }

    /// Appends a batch copied from the partition's leader as it is stored
    /// there: offsets and leader epoch kept, the CRC checked. It must start
    /// exactly at this log's end.
    pub async fn append_replica(&self, batch: impl Into<bytes::Bytes>) -> Result<AppendInfo> {
        let max = self.st.borrow().cfg.max_batch_bytes;
        let b = CheckedBatch::stored(batch.into(), max)?;
        self.append_inner(b, None).await
    }

    /// The largest batch this log accepts.
    pub fn max_batch_bytes(&self) -> usize {
        self.st.borrow().cfg.max_batch_bytes
    }

    pub(super) async fn append_inner(
        &self,
        batch: CheckedBatch,
        assign: Option<i32>,
    ) -> Result<AppendInfo> {
        let (count, max_ts, stored_epoch) =
            (batch.record_count, batch.max_timestamp, batch.leader_epoch);
        {
            let max = self.st.borrow().cfg.max_batch_bytes;
            if batch.len() > max {
                return Err(BatchError::TooLarge {
                    len: batch.len(),
                    max,
                }
                .into());
            }
        }
        let _permit = self.append_lock.lock().await;
        let leader_epoch = assign.unwrap_or(stored_epoch);
        {
            let s = self.st.borrow();
            s.check_writable()?;
            if assign.is_none() {
                let got = batch.base_offset;
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
                (a.file.clone(), align_up(target), align_up(a.end + len))
            })
        };
        if let Some((file, target, needed)) = prealloc {
            let done = match file.pre_allocate(target, false).await {
                Ok(()) => target,
                Err(e) => {
                    let e = io::Error::from(e);
                    if !(levee_core::is_out_of_space(&e) && needed < target) {
                        return Err(io_err("preallocating the active segment", e));
                    }
                    // A nearly full disk may still hold this batch: take
                    // only what it needs, so writes go on to the last block.
                    file.pre_allocate(needed, false)
                        .await
                        .map_err(|e| glommio_err("preallocating the active segment", e))?;
                    needed
                }
            };
            self.st.borrow_mut().active.preallocated = done;
        }
        let (base_offset, pos, seg_base) = {
            let s = self.st.borrow();
            (s.next_offset, s.active.end, s.active.base)
        };
        // The header with this log's stamps, then the shared bytes after it:
        // the batch's one copy is into aligned chunks (full chunks are
        // written in the background).
        let header = batch.stamped_header(base_offset, leader_epoch);
        let body = &batch.bytes[HEADER_LEN..];
        let total = batch.len();
        let mut copied = 0usize;
        while copied < total {
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
                let n = if copied < HEADER_LEN {
                    (chunk.len() - a.fill).min(HEADER_LEN - copied)
                } else {
                    (chunk.len() - a.fill).min(total - copied)
                };
                let src = if copied < HEADER_LEN {
                    &header[copied..copied + n]
                } else {
                    &body[copied - HEADER_LEN..copied - HEADER_LEN + n]
                };
                chunk.as_bytes_mut()[a.fill..a.fill + n].copy_from_slice(src);
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
        // Charged for the buffer it shares, so that slices of large
        // requests cannot pin more than `tail_cache_bytes` of them.
        let charge = batch.backing.max(batch.len());
        s.cache_bytes += charge;
        s.cache.push_back(Cached {
            charge,
            seg_base,
            pos,
            base_offset,
            leader_epoch,
            next_offset,
            bytes: batch.bytes,
        });
        s.evict_cache();
        Ok(AppendInfo {
            base_offset,
            last_offset: next_offset - 1,
            max_timestamp: max_ts,
        })
    }

    /// After an idle release, the partial last block comes back from disk
    /// before the next append continues it. Caller holds `append_lock`.
    pub(super) async fn reload_partial_chunk(&self) -> Result<()> {
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

    /// Records `epoch` as starting at the log end if it is newer than the
    /// latest known epoch, durably, before any batch of it is written.
    /// Caller holds `append_lock`.
    pub(super) async fn note_epoch(&self, epoch: i32) -> Result<()> {
        // The new epochs are written before they are adopted: should the
        // write fail (a full disk), the log must not append batches of an
        // epoch its file does not have (a reopen would find them corrupt),
        // nor take a later call for this epoch as already done.
        let changed = {
            let s = self.st.borrow();
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
                    let mut epochs = s.epochs.clone();
                    epochs.truncate_from(next);
                    epochs.assign(epoch, next);
                    Some(epochs)
                }
                _ if epoch < 0 => None,
                _ => {
                    let mut epochs = s.epochs.clone();
                    epochs.assign(epoch, next);
                    Some(epochs)
                }
            }
        };
        if let Some(epochs) = changed {
            let path = self.st.borrow().dir.join(EPOCH_FILE);
            let injected = self.st.borrow_mut().fail_next_epoch_write.take();
            match injected {
                Some(kind) => {
                    return Err(crate::error::io_err(
                        "writing the leader epochs",
                        io::Error::from(kind),
                    ))
                }
                None => write_file_atomic(&path, &epochs.encode()).await?,
            }
            self.st.borrow_mut().epochs = epochs;
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

    /// Appends and, under `fsync = always`, waits until the batch is durable.
    pub async fn append_durable(&self, batch: Vec<u8>) -> Result<AppendInfo> {
        let info = self.append(batch).await?;
        self.wait_durable(info.last_offset).await?;
        Ok(info)
    }
}
