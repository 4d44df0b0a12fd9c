//! The record batch: the unit of storage and of the wire, Kafka's
//! RecordBatch v2 byte for byte. See `engine/FORMAT.md`.
//!
//! A batch is a 61-byte big-endian header followed by its records. The
//! producer builds the batch and computes `crc` (CRC-32C) over everything
//! from `attributes` to the end; the broker validates that CRC, then stamps
//! the base offset and the partition leader epoch, which the CRC does not
//! cover. Stored bytes are exactly the producer's bytes except for those two
//! fields, so a fetch (native or Kafka) returns what was stored without
//! re-encoding. The broker-owned fields are checked by position instead: a
//! stored batch's base offset must continue the log, and its leader epoch
//! must be the one the log's epoch cache gives that offset
//! ([`check_placement`]).

use crate::error::BatchError;
use zerocopy::big_endian::{I16, I32, I64, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The batch format version (Kafka's magic 2).
pub const MAGIC: u8 = 2;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 61;
/// Bytes before the part `batch_length` counts: base offset and the length.
pub const LOG_OVERHEAD: usize = 12;
/// Where the magic byte is, in every Kafka batch format.
pub const MAGIC_AT: usize = 16;
/// `crc` covers `[CRC_START, len)`: attributes to the end.
pub const CRC_START: usize = 21;

/// Compression codec, bits 0..=2 of `attributes` (Kafka's codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Compression {
    pub fn from_attributes(attrs: i16) -> Option<Self> {
        match attrs & 0x7 {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Attribute bit: the timestamps are the broker's append time.
pub const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;
/// Attribute bit: the batch belongs to a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 1 << 4;
/// Attribute bit: a control batch (transaction marker), not user records.
pub const ATTR_CONTROL: i16 = 1 << 5;

/// The fixed batch header, read in place from the batch bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BatchHeader {
    pub base_offset: I64,
    /// Bytes after this field: the whole batch is `batch_length + 12`.
    pub batch_length: I32,
    pub partition_leader_epoch: I32,
    pub magic: u8,
    pub crc: U32,
    pub attributes: I16,
    pub last_offset_delta: I32,
    pub base_timestamp: I64,
    pub max_timestamp: I64,
    pub producer_id: I64,
    pub producer_epoch: I16,
    pub base_sequence: I32,
    pub records_count: I32,
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
        self.base_offset.get().max(0) as u64
    }
    /// Length of the whole batch, header included (0 if the length field
    /// is negative: never a valid batch).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        usize::try_from(self.batch_length.get()).map_or(0, |l| l + LOG_OVERHEAD)
    }
    pub fn record_count(&self) -> u32 {
        self.records_count.get().max(0) as u32
    }
    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> u64 {
        self.base_offset() + self.last_offset_delta.get().max(0) as u64
    }
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }
    pub fn compression(&self) -> Option<Compression> {
        Compression::from_attributes(self.attributes.get())
    }
    pub fn leader_epoch(&self) -> i32 {
        self.partition_leader_epoch.get()
    }
    pub fn first_timestamp(&self) -> i64 {
        self.base_timestamp.get()
    }
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp.get()
    }
    pub fn producer_id(&self) -> i64 {
        self.producer_id.get()
    }
    pub fn producer_epoch(&self) -> i16 {
        self.producer_epoch.get()
    }
    pub fn base_sequence(&self) -> i32 {
        self.base_sequence.get()
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes.get() & ATTR_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes.get() & ATTR_CONTROL != 0
    }
}

/// The structural checks shared by produced and stored batches: length
/// field, magic, record count, offset delta, codec. `bytes` holds at least
/// the header.
fn check_header(h: &BatchHeader, max_len: usize) -> Result<(), BatchError> {
    if h.magic != MAGIC {
        return Err(BatchError::BadMagic(h.magic));
    }
    let len = h.len();
    if len < HEADER_LEN {
        return Err(BatchError::TooShort {
            len,
            min: HEADER_LEN,
        });
    }
    if len > max_len {
        return Err(BatchError::TooLarge { len, max: max_len });
    }
    let count = h.records_count.get();
    if count < 1 {
        return Err(BatchError::BadRecordCount(count));
    }
    if h.last_offset_delta.get() != count - 1 {
        return Err(BatchError::BadOffsetDelta {
            delta: h.last_offset_delta.get(),
            count,
        });
    }
    if h.compression().is_none() {
        return Err(BatchError::UnknownCompression(
            (h.attributes.get() & 7) as u8,
        ));
    }
    Ok(())
}

/// Checks a produced batch: exactly `bytes` long and within `max_len`,
/// magic 2, a record count and last offset delta that agree, a known codec,
/// and the producer's CRC. No decompression and no walk over the records.
pub fn validate_produced(bytes: &[u8], max_len: usize) -> Result<&BatchHeader, BatchError> {
    let h = BatchHeader::parse(bytes)?;
    check_header(h, max_len)?;
    if h.len() != bytes.len() {
        return Err(BatchError::LengthMismatch {
            declared: h.len(),
            actual: bytes.len(),
        });
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

/// A batch that passed validation, its bytes shared (not copied) with the
/// request it came in, and the header fields the log needs, read once.
#[derive(Debug, Clone)]
pub struct CheckedBatch {
    pub bytes: bytes::Bytes,
    /// Bytes of the buffer `bytes` is a slice of (the request it came in):
    /// what keeping it costs, so the log's tail cache charges that much.
    pub backing: usize,
    pub record_count: u32,
    pub max_timestamp: i64,
    /// As stored (a replica's batch keeps its leader's stamps).
    pub base_offset: u64,
    pub leader_epoch: i32,
    /// Producer id, epoch and first sequence (id -1: not idempotent).
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl CheckedBatch {
    /// Validates `bytes` as one produced batch ([`validate_produced`]).
    pub fn produced(bytes: bytes::Bytes, max_len: usize) -> Result<CheckedBatch, BatchError> {
        let h = validate_produced(&bytes, max_len)?;
        let c = CheckedBatch::fields(h);
        Ok(CheckedBatch {
            backing: bytes.len(),
            bytes,
            ..c
        })
    }

    /// The same batch, charged for the `backing` buffer it shares.
    pub fn sharing(self, backing: usize) -> CheckedBatch {
        CheckedBatch {
            backing: backing.max(self.bytes.len()),
            ..self
        }
    }

    /// Validates `bytes` as one stored batch (a replica's copy of its
    /// leader's), keeping its base offset and leader epoch.
    pub fn stored(bytes: bytes::Bytes, max_len: usize) -> Result<CheckedBatch, BatchError> {
        let h = validate_stored(&bytes, max_len)?;
        let c = CheckedBatch::fields(h);
        Ok(CheckedBatch {
            backing: bytes.len(),
            bytes,
            ..c
        })
    }

    fn fields(h: &BatchHeader) -> CheckedBatch {
        CheckedBatch {
            bytes: bytes::Bytes::new(),
            backing: 0,
            record_count: h.record_count(),
            max_timestamp: h.max_timestamp(),
            base_offset: h.base_offset(),
            leader_epoch: h.leader_epoch(),
            producer_id: h.producer_id(),
            producer_epoch: h.producer_epoch(),
            base_sequence: h.base_sequence(),
        }
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The batch's first [`HEADER_LEN`] bytes with `base_offset` and
    /// `leader_epoch` stamped, for writing the batch without touching (or
    /// copying) the shared bytes.
    pub fn stamped_header(&self, base_offset: u64, leader_epoch: i32) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.bytes[..HEADER_LEN]);
        assign(&mut h, base_offset, leader_epoch);
        h
    }
}

/// Validates a stored batch's own bytes: everything `validate_produced`
/// checks. The broker-owned fields are checked by [`check_placement`].
pub fn validate_stored(bytes: &[u8], max_len: usize) -> Result<&BatchHeader, BatchError> {
    validate_produced(bytes, max_len)
}

/// Checks the header alone (length, magic, counts, codec), enough to trust
/// the length field while scanning, before the whole batch has been read.
pub fn validate_stored_header(bytes: &[u8], max_len: usize) -> Result<&BatchHeader, BatchError> {
    let h = BatchHeader::parse(bytes)?;
    check_header(h, max_len)?;
    Ok(h)
}

/// Checks the fields the broker stamped, which the CRC does not cover: the
/// base offset must be where the log continues, and the leader epoch the
/// one the log's epoch cache gives that offset (`None`: not known).
pub fn check_placement(
    h: &BatchHeader,
    expected_offset: u64,
    expected_epoch: Option<i32>,
) -> Result<(), BatchError> {
    if h.base_offset.get() < 0 || h.base_offset() != expected_offset {
        return Err(BatchError::BadOffset {
            expected: expected_offset,
            got: h.base_offset.get(),
        });
    }
    if let Some(e) = expected_epoch {
        if h.leader_epoch() != e {
            return Err(BatchError::BadEpoch {
                expected: e,
                got: h.leader_epoch(),
            });
        }
    }
    Ok(())
}

/// Whether `bytes` start with a batch of Levee's storage format 1 (the
/// format before Kafka's: magic 1 at byte 12, and a CRC32C of bytes
/// `[0, 20)` at byte 20, little-endian). Such a log must be refused, not
/// read as corrupt Kafka batches and truncated.
pub fn is_format_1(bytes: &[u8]) -> bool {
    let (Some(&magic), Some(crc)) = (bytes.get(12), bytes.get(20..24)) else {
        return false;
    };
    magic == 1
        && crc32c::crc32c(&bytes[..20]) == u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]])
}

/// The header at the front of `buf`. Every caller has checked that `buf`
/// holds one (validation, or the header space a batch buffer starts with).
fn header_mut(buf: &mut [u8]) -> &mut BatchHeader {
    BatchHeader::mut_from_prefix(buf)
        .map(|(h, _)| h)
        .expect("buffer starts with a whole batch header")
}

/// Stamps the broker-assigned base offset and leader epoch. The producer's
/// CRC is untouched (it does not cover them).
pub fn assign(bytes: &mut [u8], base_offset: u64, leader_epoch: i32) {
    let h = header_mut(bytes);
    h.base_offset = I64::new(base_offset as i64);
    h.partition_leader_epoch = I32::new(leader_epoch);
}

/// Stamps an idempotent producer's id, epoch and first sequence on a built
/// batch (whole, at least [`HEADER_LEN`] bytes) and computes its CRC again
/// (it covers them). The records are not touched.
pub fn set_producer(bytes: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    {
        let h = header_mut(bytes);
        h.producer_id = I64::new(producer_id);
        h.producer_epoch = I16::new(epoch);
        h.base_sequence = I32::new(base_sequence);
    }
    let crc = crc32c::crc32c(&bytes[CRC_START..]);
    header_mut(bytes).crc = U32::new(crc);
}

/// Marks a built batch (whole, at least [`HEADER_LEN`] bytes) as a
/// transactional producer's. The CRC is not computed again: call
/// [`set_producer`] after it, which does.
pub fn set_transactional(bytes: &mut [u8]) {
    let h = header_mut(bytes);
    h.attributes = I16::new(h.attributes.get() | ATTR_TRANSACTIONAL);
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
    put_varint(out, zigzag(v));
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
    pub transactional: bool,
}

impl Default for BatchMeta {
    fn default() -> Self {
        BatchMeta {
            compression: Compression::None,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            transactional: false,
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

/// The size of one encoded record after its length field.
fn record_body_len(r: &Record, ts_delta: i64, offset_delta: i64) -> usize {
    1 + zigzag_len(ts_delta)
        + zigzag_len(offset_delta)
        + bytes_len(r.key.as_deref())
        + bytes_len(r.value.as_deref())
        + zigzag_len(r.headers.len() as i64)
        + r.headers
            .iter()
            .map(|(k, v)| bytes_len(Some(k)) + bytes_len(v.as_deref()))
            .sum::<usize>()
}

/// Appends the records region (uncompressed) of a batch to `out`, in
/// Kafka's record encoding (every varint zigzag-encoded).
pub fn encode_records_into(out: &mut Vec<u8>, records: &[Record], first_timestamp: i64) {
    out.reserve(encoded_records_bound(records));
    for (i, r) in records.iter().enumerate() {
        let ts_delta = r.timestamp.wrapping_sub(first_timestamp);
        let body = record_body_len(r, ts_delta, i as i64);
        // Written straight into `out`: the value is copied once.
        put_zigzag(out, body as i64);
        out.push(0u8); // record attributes
        put_zigzag(out, ts_delta);
        put_zigzag(out, i as i64);
        put_bytes(out, r.key.as_deref());
        put_bytes(out, r.value.as_deref());
        put_zigzag(out, r.headers.len() as i64);
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
/// so). Writes the header and the CRC, base offset 0 and leader epoch -1,
/// as a Kafka producer does.
///
/// # Panics
/// If `buf` is shorter than a header, or `record_count` is 0.
pub fn finish_batch(
    mut buf: Vec<u8>,
    record_count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    meta: BatchMeta,
) -> Vec<u8> {
    let len = buf.len();
    assert!(len >= HEADER_LEN, "a batch buffer starts with header space");
    assert!(record_count >= 1, "a batch holds at least one record");
    buf[..HEADER_LEN].fill(0);
    let mut attrs = meta.compression as i16;
    if meta.transactional {
        attrs |= ATTR_TRANSACTIONAL;
    }
    {
        let h = header_mut(&mut buf);
        h.base_offset = I64::new(0);
        h.batch_length = I32::new((len - LOG_OVERHEAD) as i32);
        h.partition_leader_epoch = I32::new(-1);
        h.magic = MAGIC;
        h.attributes = I16::new(attrs);
        h.last_offset_delta = I32::new(record_count as i32 - 1);
        h.base_timestamp = I64::new(first_timestamp);
        h.max_timestamp = I64::new(max_timestamp);
        h.producer_id = I64::new(meta.producer_id);
        h.producer_epoch = I16::new(meta.producer_epoch);
        h.base_sequence = I32::new(meta.base_sequence);
        h.records_count = I32::new(record_count as i32);
    }
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    header_mut(&mut buf).crc = U32::new(crc);
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

/// Builds a control batch (a transaction marker, Kafka's
/// EndTransactionMarker): one record with `key` and `value`, transactional
/// and control attributes, the producer's id and epoch, no sequence.
pub fn build_control_batch(
    producer_id: i64,
    producer_epoch: i16,
    key: &[u8],
    value: &[u8],
    timestamp: i64,
) -> Vec<u8> {
    let rec = Record {
        timestamp,
        key: Some(key.to_vec()),
        value: Some(value.to_vec()),
        headers: vec![],
    };
    let mut buf = batch_buffer(0);
    encode_records_into(&mut buf, std::slice::from_ref(&rec), timestamp);
    let meta = BatchMeta {
        producer_id,
        producer_epoch,
        transactional: true,
        ..BatchMeta::default()
    };
    let mut buf = finish_batch(buf, 1, timestamp, timestamp, meta);
    {
        let h = header_mut(&mut buf);
        h.attributes = I16::new(h.attributes.get() | ATTR_CONTROL);
    }
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    header_mut(&mut buf).crc = U32::new(crc);
    buf
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

/// Decodes an uncompressed records region of `count` records, with the
/// batch's base offset and timestamp.
pub fn decode_records(
    region: &[u8],
    count: u32,
    base_offset: u64,
    base_timestamp: i64,
) -> Result<Vec<RecordView<'_>>, BatchError> {
    let end = region.len();
    let mut c = Cursor {
        buf: region,
        pos: 0,
        index: 0,
    };
    let mut out = Vec::with_capacity((count as usize).min(end / 7 + 1));
    for index in 0..count {
        c.index = index;
        let len = usize::try_from(c.zigzag()?).map_err(|_| c.err("negative record length"))?;
        let rec_end = c
            .pos
            .checked_add(len)
            .filter(|&e| e <= end)
            .ok_or(c.err("record runs past the batch"))?;
        let mut r = Cursor {
            buf: &region[..rec_end],
            pos: c.pos,
            index,
        };
        let _attrs = *r.buf.get(r.pos).ok_or(r.err("missing attributes"))?;
        r.pos += 1;
        let ts_delta = r.zigzag()?;
        let off_delta = u64::try_from(r.zigzag()?).map_err(|_| r.err("negative offset delta"))?;
        let key = r.bytes()?;
        let value = r.bytes()?;
        let n = r.zigzag()?;
        if n < 0 || n > len as i64 {
            return Err(r.err("header count out of range"));
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
            offset: base_offset + off_delta,
            timestamp: base_timestamp.wrapping_add(ts_delta),
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

/// Decodes the records of an uncompressed batch in place.
pub fn records(batch: &[u8]) -> Result<Vec<RecordView<'_>>, BatchError> {
    let h = BatchHeader::parse(batch)?;
    match h.compression() {
        Some(Compression::None) => {}
        _ => return Err(BatchError::Compressed((h.attributes.get() & 7) as u8)),
    }
    let end = h.len().clamp(HEADER_LEN, batch.len().max(HEADER_LEN));
    decode_records(
        &batch[HEADER_LEN..end],
        h.record_count(),
        h.base_offset(),
        h.first_timestamp(),
    )
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
