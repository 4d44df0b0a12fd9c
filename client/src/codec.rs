//! Record batches on the client side: building (with compression) for the
//! producer, validating and decoding (with decompression) for the consumer,
//! and Kafka's murmur2 partitioner.

use std::io::Read;

use levee_engine::batch::{self, BatchHeader, BatchMeta, HEADER_LEN};
use levee_engine::{BatchError, Compression, Record};

/// Largest records region this client will decompress a batch into.
pub const MAX_DECOMPRESSED_BYTES: usize = 256 << 20;

/// Kafka's murmur2 hash (seed `0x9747b28c`), bit-for-bit as
/// `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a keyed message:
/// `(murmur2(key) & 0x7fffffff) % partitions`. `partitions` must be > 0.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions.max(1)
}

/// Builds a producer batch from `records` (at least one), compressing the
/// records region with `compression`.
pub fn build_batch(records: &[Record], compression: Compression) -> Result<Vec<u8>, String> {
    if records.is_empty() {
        return Err("a batch holds at least one record".into());
    }
    let first = records.iter().map(|r| r.timestamp).min().unwrap_or(0);
    let max = records.iter().map(|r| r.timestamp).max().unwrap_or(0);
    let count = u32::try_from(records.len()).map_err(|_| "too many records in one batch")?;
    let meta = BatchMeta {
        compression,
        ..BatchMeta::default()
    };
    if compression == Compression::None {
        // Encoded straight after the header space: no copy of the records.
        let mut buf = batch::batch_buffer(0);
        batch::encode_records_into(&mut buf, records, first);
        return Ok(batch::finish_batch(buf, count, first, max, meta));
    }
    let raw = batch::encode_records(records, first);
    let payload = compress(&raw, compression)?;
    Ok(batch::build_batch_raw(&payload, count, first, max, meta))
}

/// Compresses a records region.
pub fn compress(raw: &[u8], compression: Compression) -> Result<Vec<u8>, String> {
    match compression {
        Compression::None => Ok(raw.to_vec()),
        Compression::Lz4 => Ok(lz4_flex::compress_prepend_size(raw)),
        Compression::Zstd => {
            zstd::bulk::compress(raw, 3).map_err(|e| format!("zstd compression failed: {e}"))
        }
    }
}

/// Decompresses a records region, refusing to produce more than `limit` bytes.
pub fn decompress(data: &[u8], compression: Compression, limit: usize) -> Result<Vec<u8>, String> {
    match compression {
        Compression::None => Ok(data.to_vec()),
        Compression::Lz4 => {
            let Some(prefix) = data.get(..4) else {
                return Err("lz4 block shorter than its size prefix".into());
            };
            let size = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            if size > limit {
                return Err(format!(
                    "lz4 block claims {size} decompressed bytes, over the limit of {limit}"
                ));
            }
            lz4_flex::block::decompress(&data[4..], size)
                .map_err(|e| format!("lz4 decompression failed: {e}"))
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(data)
                .map_err(|e| format!("zstd decompression failed: {e}"))?;
            let mut out = Vec::new();
            decoder
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("zstd decompression failed: {e}"))?;
            if out.len() > limit {
                return Err(format!(
                    "zstd data decompresses past the limit of {limit} bytes"
                ));
            }
            Ok(out)
        }
    }
}

/// One record decoded from a batch, owning its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    /// The record's offset.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The key (`None`: null key).
    pub key: Option<Vec<u8>>,
    /// The value (`None`: null value).
    pub value: Option<Vec<u8>>,
    /// Record headers.
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Why a fetched batch could not be used.
#[derive(Debug)]
pub enum DecodeError {
    /// Length, magic or a CRC check failed.
    Checksum(BatchError),
    /// CRCs are fine but the contents are malformed.
    Malformed(String),
}

/// Validates one stored batch (both CRCs) and decodes its records,
/// decompressing them when the batch is compressed. Records with an offset
/// below `min_offset` are skipped. Returns the offset after the batch.
pub fn decode_stored_batch(
    bytes: &[u8],
    max_batch_bytes: usize,
    min_offset: u64,
    out: &mut Vec<DecodedRecord>,
) -> Result<u64, DecodeError> {
    let header = batch::validate_stored(bytes, max_batch_bytes).map_err(DecodeError::Checksum)?;
    decode_records(header, bytes, min_offset, out)?;
    Ok(header.next_offset())
}

/// Decodes the records of a batch whose checks already passed.
pub fn decode_records(
    header: &BatchHeader,
    bytes: &[u8],
    min_offset: u64,
    out: &mut Vec<DecodedRecord>,
) -> Result<(), DecodeError> {
    let compression = header.compression().ok_or_else(|| {
        DecodeError::Malformed(format!(
            "unknown compression codec {}",
            header.attributes.get() & 7
        ))
    })?;
    let push = |views: Vec<levee_engine::RecordView<'_>>, out: &mut Vec<DecodedRecord>| {
        for v in views {
            if v.offset < min_offset {
                continue;
            }
            out.push(DecodedRecord {
                offset: v.offset,
                timestamp: v.timestamp,
                key: v.key.map(<[u8]>::to_vec),
                value: v.value.map(<[u8]>::to_vec),
                headers: v
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                    .collect(),
            });
        }
    };
    if compression == Compression::None {
        let views = batch::records(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        push(views, out);
        return Ok(());
    }
    let region = bytes
        .get(HEADER_LEN..header.len().min(bytes.len()))
        .ok_or_else(|| DecodeError::Malformed("batch shorter than its header".into()))?;
    let raw =
        decompress(region, compression, MAX_DECOMPRESSED_BYTES).map_err(DecodeError::Malformed)?;
    // Re-assemble an uncompressed batch: same header with the codec bits
    // cleared and the length updated, then the decompressed records.
    let total = HEADER_LEN + raw.len();
    let total_u32 = u32::try_from(total)
        .map_err(|_| DecodeError::Malformed("decompressed batch exceeds 4 GiB".into()))?;
    let mut plain = Vec::with_capacity(total);
    plain.extend_from_slice(&bytes[..HEADER_LEN]);
    plain[8..12].copy_from_slice(&total_u32.to_le_bytes());
    let attrs = header.attributes.get() & !7;
    plain[28..30].copy_from_slice(&attrs.to_le_bytes());
    plain.extend_from_slice(&raw);
    let views = batch::records(&plain).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    push(views, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_vectors() {
        // Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key), want, "{}", String::from_utf8_lossy(key));
        }
        // toPositive(-790332482) = 1357151166; % 50 = 16.
        assert_eq!(partition_for_key(b"foobar", 50), 16);
    }

    fn sample_records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                timestamp: 1_700_000_000_000 + i as i64,
                key: (i % 3 != 0).then(|| format!("key-{i}").into_bytes()),
                value: Some(format!("value number {i} {}", "x".repeat(i % 50)).into_bytes()),
                headers: if i % 5 == 0 {
                    vec![(b"h".to_vec(), Some(b"v".to_vec())), (b"n".to_vec(), None)]
                } else {
                    Vec::new()
                },
            })
            .collect()
    }

    fn stored(mut b: Vec<u8>, base: u64) -> Vec<u8> {
        batch::assign(&mut b, base, 0);
        b
    }

    #[test]
    fn batch_round_trip_every_codec() {
        let recs = sample_records(200);
        for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let b = build_batch(&recs, codec).unwrap();
            batch::validate_produced(&b, 1 << 24).unwrap();
            let h = BatchHeader::parse(&b).unwrap();
            assert_eq!(h.compression(), Some(codec));
            let b = stored(b, 1000);
            let mut out = Vec::new();
            decode_stored_batch(&b, 1 << 24, 0, &mut out).unwrap();
            assert_eq!(out.len(), recs.len(), "{codec:?}");
            for (i, (d, r)) in out.iter().zip(&recs).enumerate() {
                assert_eq!(d.offset, 1000 + i as u64);
                assert_eq!(d.timestamp, r.timestamp);
                assert_eq!(d.key, r.key);
                assert_eq!(d.value, r.value);
                assert_eq!(d.headers, r.headers);
            }
            // Skipping records below the requested offset.
            let mut out = Vec::new();
            decode_stored_batch(&b, 1 << 24, 1150, &mut out).unwrap();
            assert_eq!(out.len(), 50);
            assert_eq!(out[0].offset, 1150);
        }
    }

    #[test]
    fn compressed_batches_are_smaller() {
        let recs = sample_records(500);
        let plain = build_batch(&recs, Compression::None).unwrap();
        for codec in [Compression::Lz4, Compression::Zstd] {
            let c = build_batch(&recs, codec).unwrap();
            assert!(
                c.len() < plain.len(),
                "{codec:?}: {} >= {}",
                c.len(),
                plain.len()
            );
        }
    }

    #[test]
    fn corruption_is_a_checksum_error() {
        let recs = sample_records(10);
        for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let b = stored(build_batch(&recs, codec).unwrap(), 5);
            for pos in [0, 9, 21, 30, 70, b.len() - 1] {
                let mut bad = b.clone();
                bad[pos] ^= 0x10;
                let mut out = Vec::new();
                assert!(
                    matches!(
                        decode_stored_batch(&bad, 1 << 24, 0, &mut out),
                        Err(DecodeError::Checksum(_))
                    ),
                    "{codec:?} flip at {pos}"
                );
            }
        }
    }

    #[test]
    fn decompression_limits_and_garbage() {
        let raw = vec![7u8; 10_000];
        let lz = compress(&raw, Compression::Lz4).unwrap();
        assert!(decompress(&lz, Compression::Lz4, 9_999).is_err());
        assert_eq!(decompress(&lz, Compression::Lz4, 10_000).unwrap(), raw);
        let zs = compress(&raw, Compression::Zstd).unwrap();
        assert!(decompress(&zs, Compression::Zstd, 9_999).is_err());
        assert_eq!(decompress(&zs, Compression::Zstd, 10_000).unwrap(), raw);
        assert!(decompress(&[1, 2], Compression::Lz4, 100).is_err());
        assert!(decompress(&[0xff; 40], Compression::Lz4, 100).is_err());
        assert!(decompress(&[0xff; 40], Compression::Zstd, 100).is_err());
    }

    #[test]
    fn empty_batch_is_refused() {
        assert!(build_batch(&[], Compression::None).is_err());
    }
}
