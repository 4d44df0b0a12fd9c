//! Sparse offset and time indexes of a segment, and their on-disk form.
//!
//! File layout (both kinds): a 40-byte header — magic `u32`, entry count
//! `u32`, covered length `u64` (segment bytes the index describes), next
//! offset `u64` (offset after the last covered batch), max timestamp `i64`,
//! CRC32C `u32` of header bytes `[0, 32)` and all entries, 4 bytes padding —
//! then the entries. Offset index entries are `(relative offset u32, position
//! u32)`; time index entries are `(timestamp i64, relative offset u32, pad
//! u32)`. A file whose magic, size or CRC is wrong is ignored and rebuilt.

pub const OFFSET_MAGIC: u32 = u32::from_le_bytes(*b"LVIX");
pub const TIME_MAGIC: u32 = u32::from_le_bytes(*b"LVTI");
pub const FILE_HEADER_LEN: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub rel_offset: u32,
    pub pos: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub rel_offset: u32,
}

/// Summary of a segment, kept in memory for every segment (a few bytes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub covered_len: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
}

/// Both indexes of one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
}

impl SegmentIndex {
    pub fn mem_bytes(&self) -> usize {
        self.offsets.len() * 8 + self.times.len() * 16
    }

    /// Position of the last indexed batch starting at or before `rel_offset`.
    pub fn lookup(&self, rel_offset: u32) -> (u32, u64) {
        let i = self.offsets.partition_point(|e| e.rel_offset <= rel_offset);
        if i == 0 {
            (0, 0)
        } else {
            let e = self.offsets[i - 1];
            (e.rel_offset, u64::from(e.pos))
        }
    }

    /// Relative offset from which to scan for the first record with a
    /// timestamp at or after `ts`.
    pub fn lookup_time(&self, ts: i64) -> u32 {
        let i = self.times.partition_point(|e| e.timestamp < ts);
        if i == 0 {
            0
        } else {
            self.times[i - 1].rel_offset
        }
    }

    /// Records a batch starting at `pos`; `last_indexed_pos` is where the
    /// previous entry points, so entries are at least `interval` bytes apart.
    pub fn maybe_add(&mut self, rel_offset: u32, pos: u64, max_ts_so_far: i64, interval: u64) {
        let due = match self.offsets.last() {
            None => true,
            Some(e) => pos >= u64::from(e.pos) + interval,
        };
        if !due {
            return;
        }
        self.offsets.push(OffsetEntry {
            rel_offset,
            pos: pos as u32,
        });
        if self
            .times
            .last()
            .is_none_or(|t| max_ts_so_far > t.timestamp)
        {
            self.times.push(TimeEntry {
                timestamp: max_ts_so_far,
                rel_offset,
            });
        }
    }

    /// Drops entries at or beyond `len` bytes.
    pub fn truncate_to_len(&mut self, len: u64) {
        let keep = self.offsets.partition_point(|e| u64::from(e.pos) < len);
        self.offsets.truncate(keep);
        let last_rel = self.offsets.last().map(|e| e.rel_offset);
        let keep_t = self
            .times
            .partition_point(|t| last_rel.is_some_and(|r| t.rel_offset <= r));
        self.times.truncate(keep_t);
    }
}

fn header(magic: u32, count: usize, s: &Summary) -> Vec<u8> {
    let mut h = Vec::with_capacity(FILE_HEADER_LEN);
    h.extend_from_slice(&magic.to_le_bytes());
    h.extend_from_slice(&(count as u32).to_le_bytes());
    h.extend_from_slice(&s.covered_len.to_le_bytes());
    h.extend_from_slice(&s.next_offset.to_le_bytes());
    h.extend_from_slice(&s.max_timestamp.to_le_bytes());
    h
}

fn seal(mut h: Vec<u8>, entries: &[u8]) -> Vec<u8> {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h), entries);
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&[0u8; 4]);
    h.extend_from_slice(entries);
    h
}

pub fn encode_offsets(idx: &SegmentIndex, s: &Summary) -> Vec<u8> {
    let mut e = Vec::with_capacity(idx.offsets.len() * 8);
    for o in &idx.offsets {
        e.extend_from_slice(&o.rel_offset.to_le_bytes());
        e.extend_from_slice(&o.pos.to_le_bytes());
    }
    seal(header(OFFSET_MAGIC, idx.offsets.len(), s), &e)
}

pub fn encode_times(idx: &SegmentIndex, s: &Summary) -> Vec<u8> {
    let mut e = Vec::with_capacity(idx.times.len() * 16);
    for t in &idx.times {
        e.extend_from_slice(&t.timestamp.to_le_bytes());
        e.extend_from_slice(&t.rel_offset.to_le_bytes());
        e.extend_from_slice(&[0u8; 4]);
    }
    seal(header(TIME_MAGIC, idx.times.len(), s), &e)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks a file's header and CRC; returns its summary, entry count and entries.
fn open_file(bytes: &[u8], magic: u32, entry_len: usize) -> Option<(Summary, &[u8])> {
    if bytes.len() < FILE_HEADER_LEN || u32_at(bytes, 0) != magic {
        return None;
    }
    let count = u32_at(bytes, 4) as usize;
    if bytes.len() != FILE_HEADER_LEN + count.checked_mul(entry_len)? {
        return None;
    }
    let entries = &bytes[FILE_HEADER_LEN..];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..32]), entries);
    if crc != u32_at(bytes, 32) {
        return None;
    }
    let s = Summary {
        covered_len: u64_at(bytes, 8),
        next_offset: u64_at(bytes, 16),
        max_timestamp: u64_at(bytes, 24) as i64,
    };
    Some((s, entries))
}

/// Reads only the summary of an offset index file (its first 40 bytes are
/// enough to decide whether it is worth loading, but the CRC needs it all).
pub fn decode_offsets(bytes: &[u8]) -> Option<(Summary, Vec<OffsetEntry>)> {
    let (s, e) = open_file(bytes, OFFSET_MAGIC, 8)?;
    let entries: Vec<OffsetEntry> = e
        .chunks_exact(8)
        .map(|c| OffsetEntry {
            rel_offset: u32_at(c, 0),
            pos: u32_at(c, 4),
        })
        .collect();
    let sorted = entries
        .windows(2)
        .all(|w| w[0].rel_offset < w[1].rel_offset && w[0].pos < w[1].pos);
    let inside = entries
        .last()
        .is_none_or(|e| u64::from(e.pos) < s.covered_len.max(1));
    (sorted && inside).then_some((s, entries))
}

pub fn decode_times(bytes: &[u8]) -> Option<(Summary, Vec<TimeEntry>)> {
    let (s, e) = open_file(bytes, TIME_MAGIC, 16)?;
    let entries: Vec<TimeEntry> = e
        .chunks_exact(16)
        .map(|c| TimeEntry {
            timestamp: u64_at(c, 0) as i64,
            rel_offset: u32_at(c, 8),
        })
        .collect();
    let sorted = entries
        .windows(2)
        .all(|w| w[0].timestamp < w[1].timestamp && w[0].rel_offset < w[1].rel_offset);
    sorted.then_some((s, entries))
}
