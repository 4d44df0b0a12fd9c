//! Reading: the tail cache, read-ahead windows, disk reads with position checks, timestamp lookups.

use super::*;

impl Log {
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
    pub(super) fn read_from_cache(
        &self,
        out: &mut ReadOutcome,
        max_bytes: usize,
        bound: u64,
    ) -> bool {
        let s = self.st.borrow();
        let want = out.next_offset;
        let Some(front) = s.cache.front() else {
            return false;
        };
        if front.base_offset > want {
            return false;
        }
        let start = s.cache.partition_point(|c| c.next_offset <= want);
        // Size the output once: growing it batch by batch would copy what
        // it already holds at every doubling.
        let (mut n, mut need) = (out.data.len(), 0usize);
        for c in s.cache.iter().skip(start) {
            if c.base_offset >= bound || (n > 0 && n + c.bytes.len() > max_bytes) {
                break;
            }
            n += c.bytes.len();
            need += c.bytes.len();
        }
        out.data.reserve(need);
        for c in s.cache.iter().skip(start) {
            if c.base_offset >= bound {
                break;
            }
            if !out.data.is_empty() && out.data.len() + c.bytes.len() > max_bytes {
                break;
            }
            let at = out.data.len();
            out.data.extend_from_slice(&c.bytes);
            batch::assign(&mut out.data[at..], c.base_offset, c.leader_epoch);
            out.next_offset = c.next_offset;
        }
        true
    }

    pub(super) async fn segment_index(&self, base: u64) -> Result<Rc<SegmentIndex>> {
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

    pub(super) async fn sealed_file(&self, base: u64) -> Result<(Rc<DmaFile>, u64, LogConfig)> {
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

    pub(super) async fn read_from_disk(
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
    pub(super) async fn window(
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
    pub(super) fn take_batch(
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

    /// The offset and timestamp of the first record whose timestamp is at
    /// or after `ts`, or `None` if every record is older.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(u64, i64)>> {
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
                let whole = (h.base_offset(), h.max_timestamp.get());
                return Ok(Some(match batch::records(b) {
                    Ok(recs) => recs
                        .iter()
                        .find(|r| r.timestamp >= ts)
                        .map_or(whole, |r| (r.offset, r.timestamp)),
                    Err(_) => whole,
                }));
            }
            at = r.next_offset;
        }
    }
}
