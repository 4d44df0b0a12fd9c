//! The record batch: the unit of storage and of the wire. See `engine/FORMAT.md`.
//!
//! A batch is a 64-byte little-endian header followed by its records. The
//! producer builds the batch and computes `crc` over everything after the CRC
//! field; the broker validates that CRC, then stamps the base offset and the
//! leader epoch and seals them with `header_crc`. Stored bytes are exactly
//! the producer's bytes except for those header fields, so a fetch returns
//! what was stored without re-encoding.

use crate::error::BatchError;
use zerocopy::little_endian::{I16, I32, I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Current batch format version.
pub const MAGIC: u8 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 64;
/// Bytes covered by `header_crc`: base offset, length, magic, epoch.
pub const HEADER_CRC_SPAN: usize = 20;
/// `crc` covers `[CRC_START, batch_len)`.
pub const CRC_START: usize = 28;

/// Compression codec, bits 0..=2 of `attributes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None = 0,
    Lz4 = 1,
    Zstd = 2,
}

impl Compression {
    pub fn from_attributes(attrs: u16) -> Option<Self> {
        match attrs & 0x7 {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            2 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// The fixed batch header, read in place from the batch bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BatchHeader {
    pub base_offset: U64,
    pub batch_len: U32,
    pub magic: u8,
    pub reserved0: u8,
    pub reserved1: U16,
    pub leader_epoch: I32,
    pub header_crc: U32,
    pub crc: U32,
    pub attributes: U16,
    pub producer_epoch: I16,
    pub record_count: U32,
    pub base_sequence: I32,
    pub first_timestamp: I64,
    pub max_timestamp: I64,
    pub producer_id: I64,
}

const _: () = assert!(std::mem::size_of::<BatchHeader>() == HEADER_LEN);

impl BatchHeader {
    /// Views the header at the start of `bytes` without copying.
    pub fn parse(bytes: &[u8]) -> Result<&BatchHeader, BatchError> {
        BatchHeader::ref_from_prefix(bytes)
            .map(|(h, _)| h)
            .map_err(|_| BatchError::TooShort {
                len: bytes.len(),
                min: HEADER_LEN,
            })
    }
    pub fn base_offset(&self) -> u64 {
        self.base_offset.get()
    }
    /// Length of the whole batch, header included.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.batch_len.get() as usize
    }
    pub fn record_count(&self) -> u32 {
        self.record_count.get()
    }
    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> u64 {
        self.base_offset() + u64::from(self.record_count().max(1)) - 1
    }
    pub fn next_offset(&self) -> u64 {
        self.base_offset() + u64::from(self.record_count())
    }
    pub fn compression(&self) -> Option<Compression> {
        Compression::from_attributes(self.attributes.get())
    }
}

fn header_crc_of(bytes: &[u8]) -> u32 {
    crc32c::crc32c(&bytes[..HEADER_CRC_SPAN])
}

/// Checks length, magic and the producer's CRC: what the broker does before
/// accepting a batch. `bytes` must be exactly one batch.
pub fn validate_produced(bytes: &[u8], max_len: usize) -> Result<&BatchHeader, BatchError> {
    let h = BatchHeader::parse(bytes)?;
    let declared = h.len();
    if declared != bytes.len() {
        return Err(BatchError::LengthMismatch {
            declared,
            actual: bytes.len(),
        });
    }
    if declared > max_len {
        return Err(BatchError::TooLarge {
            len: declared,
            max: max_len,
        });
    }
    if h.magic != MAGIC {
        return Err(BatchError::BadMagic(h.magic));
    }
    if h.record_count() == 0 {
        return Err(BatchError::BadRecordCount(0));
    }
    let computed = crc32c::crc32c(&bytes[CRC_START..]);
    if computed != h.crc.get() {
        return Err(BatchError::BadCrc {
            stored: h.crc.get(),
            computed,
        });
    }
    Ok(h)
}

/// Validates a stored batch: everything `validate_produced` checks plus the
/// broker's header CRC, so that every byte of a stored batch is covered.
pub fn validate_stored(bytes: &[u8], max_len: usize) -> Result<&BatchHeader, BatchError> {
    validate_stored_header(bytes, max_len)?;
    validate_produced(bytes, max_len)
}

/// Checks only the first `HEADER_CRC_SPAN` bytes (offset, length, magic,
/// epoch) against `header_crc`: enough to trust the length field while
/// scanning, before the whole batch has been read.
pub fn validate_stored_header(bytes: &[u8], max_len: usize) -> Result<&BatchHeader, BatchError> {
    let h = BatchHeader::parse(bytes)?;
    let computed = header_crc_of(bytes);
    if computed != h.header_crc.get() {
        return Err(BatchError::BadHeaderCrc {
            stored: h.header_crc.get(),
            computed,
        });
    }
    if h.magic != MAGIC {
        return Err(BatchError::BadMagic(h.magic));
    }
    if h.len() < HEADER_LEN {
        return Err(BatchError::TooShort {
            len: h.len(),
            min: HEADER_LEN,
        });
    }
    if h.len() > max_len {
        return Err(BatchError::TooLarge {
            len: h.len(),
            max: max_len,
        });
    }
    Ok(h)
}

/// The header at the front of `buf`. Every caller has checked that `buf`
/// holds one (validation, or the header space a batch buffer starts with).
fn header_mut(buf: &mut [u8]) -> &mut BatchHeader {
    BatchHeader::mut_from_prefix(buf)
        .map(|(h, _)| h)
        .expect("buffer starts with a whole batch header")
}

/// Stamps the broker-assigned base offset and leader epoch and reseals the
/// header CRC. The producer's CRC is untouched (it does not cover these).
pub fn assign(bytes: &mut [u8], base_offset: u64, leader_epoch: i32) {
    let h = header_mut(bytes);
    h.base_offset = U64::new(base_offset);
    h.leader_epoch = I32::new(leader_epoch);
    let crc = header_crc_of(bytes);
    header_mut(bytes).header_crc = U32::new(crc);
}

/// One record to put in a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// A record read in place from a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn zigzag_len(v: i64) -> usize {
    varint_len(zigzag(v))
}

fn bytes_len(b: Option<&[u8]>) -> usize {
    b.map_or(1, |b| zigzag_len(b.len() as i64) + b.len())
}

fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_zigzag(out, -1),
        Some(b) => {
            put_zigzag(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Producer-side fields of a batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchMeta {
    pub compression: Compression,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl Default for BatchMeta {
    fn default() -> Self {
        BatchMeta {
            compression: Compression::None,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }
}

/// Encodes the records region (uncompressed) of a batch.
pub fn encode_records(records: &[Record], first_timestamp: i64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_records_into(&mut out, records, first_timestamp);
    out
}

/// An upper bound on the encoded size of `records`' region, to size buffers.
pub fn encoded_records_bound(records: &[Record]) -> usize {
    let opt = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, Vec::len) + 10;
    records
        .iter()
        .map(|r| {
            32 + opt(&r.key)
                + opt(&r.value)
                + r.headers
                    .iter()
                    .map(|(k, v)| k.len() + 10 + opt(v))
                    .sum::<usize>()
        })
        .sum()
}

/// Appends the records region (uncompressed) of a batch to `out`.
pub fn encode_records_into(out: &mut Vec<u8>, records: &[Record], first_timestamp: i64) {
    out.reserve(encoded_records_bound(records));
    for (i, r) in records.iter().enumerate() {
        let ts_delta = r.timestamp.wrapping_sub(first_timestamp);
        let body = 1
            + zigzag_len(ts_delta)
            + varint_len(i as u64)
            + bytes_len(r.key.as_deref())
            + bytes_len(r.value.as_deref())
            + varint_len(r.headers.len() as u64)
            + r.headers
                .iter()
                .map(|(k, v)| bytes_len(Some(k)) + bytes_len(v.as_deref()))
                .sum::<usize>();
        // Written straight into `out`: the value is copied once.
        put_varint(out, body as u64);
        out.push(0u8); // record attributes
        put_zigzag(out, ts_delta);
        put_varint(out, i as u64);
        put_bytes(out, r.key.as_deref());
        put_bytes(out, r.value.as_deref());
        put_varint(out, r.headers.len() as u64);
        for (k, v) in &r.headers {
            put_bytes(out, Some(k));
            put_bytes(out, v.as_deref());
        }
    }
}

/// A buffer to build a batch in without copying it afterwards: the header's
/// [`HEADER_LEN`] bytes are reserved at the front; append the records region
/// after them, then call [`finish_batch`].
pub fn batch_buffer(records_capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + records_capacity);
    out.resize(HEADER_LEN, 0);
    out
}

/// Builds a complete batch with base offset 0, as a producer does. The
/// records region is `payload` (already compressed if `meta.compression` says
/// so); use [`build_batch`] for uncompressed records.
pub fn build_batch_raw(
    payload: &[u8],
    record_count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    meta: BatchMeta,
) -> Vec<u8> {
    let mut out = batch_buffer(payload.len());
    out.extend_from_slice(payload);
    finish_batch(out, record_count, first_timestamp, max_timestamp, meta)
}

/// Completes a batch built in place: `buf` is a [`batch_buffer`] (header
/// space, then the records region, compressed if `meta.compression` says
/// so). Writes the header and both CRCs, base offset 0.
///
/// # Panics
/// If `buf` is shorter than a header.
pub fn finish_batch(
    mut buf: Vec<u8>,
    record_count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    meta: BatchMeta,
) -> Vec<u8> {
    let len = buf.len();
    assert!(len >= HEADER_LEN, "a batch buffer starts with header space");
    buf[..HEADER_LEN].fill(0);
    {
        let h = header_mut(&mut buf);
        h.batch_len = U32::new(len as u32);
        h.magic = MAGIC;
        h.attributes = U16::new(meta.compression as u16);
        h.producer_epoch = I16::new(meta.producer_epoch);
        h.record_count = U32::new(record_count);
        h.base_sequence = I32::new(meta.base_sequence);
        h.first_timestamp = I64::new(first_timestamp);
        h.max_timestamp = I64::new(max_timestamp);
        h.producer_id = I64::new(meta.producer_id);
    }
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    header_mut(&mut buf).crc = U32::new(crc);
    let hcrc = header_crc_of(&buf);
    header_mut(&mut buf).header_crc = U32::new(hcrc);
    buf
}

/// Builds an uncompressed batch from records.
pub fn build_batch(records: &[Record]) -> Vec<u8> {
    assert!(!records.is_empty(), "a batch holds at least one record");
    let first = records.iter().map(|r| r.timestamp).min().unwrap_or(0);
    let max = records.iter().map(|r| r.timestamp).max().unwrap_or(0);
    let mut buf = batch_buffer(0);
    encode_records_into(&mut buf, records, first);
    finish_batch(buf, records.len() as u32, first, max, BatchMeta::default())
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    index: u32,
}

impl<'a> Cursor<'a> {
    fn err(&self, reason: &'static str) -> BatchError {
        BatchError::BadRecord {
            index: self.index,
            reason,
        }
    }
    fn varint(&mut self) -> Result<u64, BatchError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or(self.err("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }
    fn zigzag(&mut self) -> Result<i64, BatchError> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }
    fn bytes(&mut self) -> Result<Option<&'a [u8]>, BatchError> {
        let len = self.zigzag()?;
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| self.err("length overflow"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.buf.len())
            .ok_or(self.err("field runs past the record"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(Some(s))
    }
}

/// Decodes the records of an uncompressed batch in place.
pub fn records(batch: &[u8]) -> Result<Vec<RecordView<'_>>, BatchError> {
    let h = BatchHeader::parse(batch)?;
    match h.compression() {
        Some(Compression::None) => {}
        _ => return Err(BatchError::Compressed((h.attributes.get() & 7) as u8)),
    }
    let end = h.len().min(batch.len());
    let mut c = Cursor {
        buf: &batch[..end],
        pos: HEADER_LEN,
        index: 0,
    };
    let mut out = Vec::with_capacity((h.record_count() as usize).min(end / 8));
    for index in 0..h.record_count() {
        c.index = index;
        let len = c.varint()? as usize;
        let rec_end = c
            .pos
            .checked_add(len)
            .filter(|&e| e <= end)
            .ok_or(c.err("record runs past the batch"))?;
        let mut r = Cursor {
            buf: &batch[..rec_end],
            pos: c.pos,
            index,
        };
        let _attrs = *r.buf.get(r.pos).ok_or(r.err("missing attributes"))?;
        r.pos += 1;
        let ts_delta = r.zigzag()?;
        let off_delta = r.varint()?;
        let key = r.bytes()?;
        let value = r.bytes()?;
        let n = r.varint()?;
        if n > len as u64 {
            return Err(r.err("header count exceeds record size"));
        }
        let mut headers = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let k = r.bytes()?.ok_or(r.err("null header key"))?;
            headers.push((k, r.bytes()?));
        }
        if r.pos != rec_end {
            return Err(r.err("record length disagrees with its fields"));
        }
        out.push(RecordView {
            offset: h.base_offset() + off_delta,
            timestamp: h.first_timestamp.get().wrapping_add(ts_delta),
            key,
            value,
            headers,
        });
        c.pos = rec_end;
    }
    if c.pos != end {
        return Err(c.err("bytes left after the last record"));
    }
    Ok(out)
}

/// Iterates over the batches laid end to end in `buf` (as a fetch returns
/// them), stopping at the first incomplete one.
pub fn split_batches(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let rest = &buf[pos..];
        let h = BatchHeader::parse(rest).ok()?;
        let len = h.len();
        if len < HEADER_LEN || len > rest.len() {
            return None;
        }
        pos += len;
        Some(&rest[..len])
    })
}
