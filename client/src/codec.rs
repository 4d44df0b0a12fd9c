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

/// The header Kafka's Java client (xerial snappy-java) puts before snappy
/// blocks: magic, then version 1 and compatible version 1.
const XERIAL_HEADER: [u8; 16] = [
    0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1,
];
/// Uncompressed bytes per xerial block (snappy-java's default).
const XERIAL_BLOCK: usize = 32 << 10;

/// Compresses a records region the way Kafka clients do: gzip, snappy in
/// xerial framing (as the Java client), the LZ4 frame format (KIP-57), and
/// a zstd frame.
pub fn compress(raw: &[u8], compression: Compression) -> Result<Vec<u8>, String> {
    use std::io::Write;
    match compression {
        Compression::None => Ok(raw.to_vec()),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(raw.len() / 2),
                flate2::Compression::fast(),
            );
            e.write_all(raw)
                .and_then(|_| e.finish())
                .map_err(|e| format!("gzip compression failed: {e}"))
        }
        Compression::Snappy => {
            let mut out = Vec::with_capacity(raw.len() / 2 + 32);
            out.extend_from_slice(&XERIAL_HEADER);
            let mut enc = snap::raw::Encoder::new();
            for block in raw.chunks(XERIAL_BLOCK) {
                let c = enc
                    .compress_vec(block)
                    .map_err(|e| format!("snappy compression failed: {e}"))?;
                out.extend_from_slice(&(c.len() as u32).to_be_bytes());
                out.extend_from_slice(&c);
            }
            Ok(out)
        }
        Compression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(raw.len() / 2));
            e.write_all(raw)
                .map_err(|e| format!("lz4 compression failed: {e}"))?;
            e.finish()
                .map_err(|e| format!("lz4 compression failed: {e}"))
        }
        Compression::Zstd => {
            zstd::bulk::compress(raw, 3).map_err(|e| format!("zstd compression failed: {e}"))
        }
    }
}

/// Reads at most `limit` bytes from a decompressing reader; more is an error.
fn read_limited(r: impl Read, limit: usize, codec: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    r.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("{codec} decompression failed: {e}"))?;
    if out.len() > limit {
        return Err(format!(
            "{codec} data decompresses past the limit of {limit} bytes"
        ));
    }
    Ok(out)
}

/// Raw snappy, with the decompressed size checked against `limit` first.
fn unsnappy(block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let n = snap::raw::decompress_len(block)
        .map_err(|e| format!("snappy decompression failed: {e}"))?;
    if out.len() + n > limit {
        return Err(format!(
            "snappy data decompresses past the limit of {limit} bytes"
        ));
    }
    let start = out.len();
    out.resize(start + n, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| format!("snappy decompression failed: {e}"))?;
    Ok(())
}

/// Decompresses a records region, refusing to produce more than `limit`
/// bytes. Snappy is read in xerial framing (Kafka's Java client) or raw
/// (librdkafka).
pub fn decompress(data: &[u8], compression: Compression, limit: usize) -> Result<Vec<u8>, String> {
    match compression {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => read_limited(flate2::read::GzDecoder::new(data), limit, "gzip"),
        Compression::Snappy => {
            let mut out = Vec::new();
            if data.starts_with(&XERIAL_HEADER[..8]) {
                let mut rest = data.get(16..).ok_or("snappy header cut short")?;
                while !rest.is_empty() {
                    let len = rest
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                        .ok_or("snappy block length cut short")?;
                    let block = rest.get(4..4 + len).ok_or("snappy block cut short")?;
                    unsnappy(block, limit, &mut out)?;
                    rest = &rest[4 + len..];
                }
            } else {
                unsnappy(data, limit, &mut out)?;
            }
            Ok(out)
        }
        Compression::Lz4 => read_limited(lz4_flex::frame::FrameDecoder::new(data), limit, "lz4"),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(data)
                .map_err(|e| format!("zstd decompression failed: {e}"))?;
            read_limited(decoder, limit, "zstd")
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
    if header.is_control() {
        // Transaction markers carry no user records.
        return Ok(());
    }
    let region = bytes
        .get(HEADER_LEN..header.len().min(bytes.len()))
        .ok_or_else(|| DecodeError::Malformed("batch shorter than its header".into()))?;
    let raw;
    let region = if compression == Compression::None {
        region
    } else {
        raw = decompress(region, compression, MAX_DECOMPRESSED_BYTES)
            .map_err(DecodeError::Malformed)?;
        &raw[..]
    };
    let views = batch::decode_records(
        region,
        header.record_count(),
        header.base_offset(),
        header.first_timestamp(),
    )
    .map_err(|e| DecodeError::Malformed(e.to_string()))?;
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
        for codec in ALL_CODECS {
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
        for codec in &ALL_CODECS[1..] {
            let codec = *codec;
            let c = build_batch(&recs, codec).unwrap();
            assert!(
                c.len() < plain.len(),
                "{codec:?}: {} >= {}",
                c.len(),
                plain.len()
            );
        }
    }

    const ALL_CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// A flip anywhere the producer's CRC, the length or the magic covers.
    /// (The base offset and leader epoch, bytes 0-7 and 12-15, are the
    /// broker's: its log checks them by position.)
    #[test]
    fn corruption_is_a_checksum_error() {
        let recs = sample_records(10);
        for codec in ALL_CODECS {
            let b = stored(build_batch(&recs, codec).unwrap(), 5);
            for pos in [9, 16, 17, 21, 30, 70, b.len() - 1] {
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
        for codec in &ALL_CODECS[1..] {
            let c = compress(&raw, *codec).unwrap();
            assert!(decompress(&c, *codec, 9_999).is_err(), "{codec:?}");
            assert_eq!(decompress(&c, *codec, 10_000).unwrap(), raw, "{codec:?}");
            assert!(decompress(&[1, 2], *codec, 100).is_err(), "{codec:?}");
            assert!(decompress(&[0xff; 40], *codec, 100).is_err(), "{codec:?}");
        }
        // Raw snappy, as librdkafka writes it, reads too.
        let rawsnappy = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        assert_eq!(
            decompress(&rawsnappy, Compression::Snappy, 10_000).unwrap(),
            raw
        );
    }

    /// Batches built by a real Kafka client library (kafka-python; see
    /// `engine/tests/data/gen_kafka_batches.py`): Levee's encoding of the
    /// same records is identical byte for byte uncompressed (the leader
    /// epoch, broker-owned, aside), and every codec decodes to them.
    #[test]
    fn kafka_clients_batches_match_byte_for_byte() {
        let golden = include_str!("../../engine/tests/data/kafka_batches.txt");
        let base = 1_700_000_000_000i64;
        let kv = |s: &str| Some(s.as_bytes().to_vec());
        let recs = vec![
            Record {
                timestamp: base,
                key: kv("k0"),
                value: kv("value zero"),
                headers: vec![],
            },
            Record {
                timestamp: base + 1,
                key: None,
                value: kv("value one"),
                headers: vec![(b"h1".to_vec(), kv("x")), (b"h2".to_vec(), None)],
            },
            Record {
                timestamp: base + 5,
                key: kv("k2"),
                value: None,
                headers: vec![],
            },
            Record {
                timestamp: base + 7,
                key: kv(""),
                value: kv(""),
                headers: vec![(vec![], kv(""))],
            },
            Record {
                timestamp: base + 9,
                key: kv("k4"),
                value: Some(vec![b'v'; 300]),
                headers: vec![],
            },
        ];
        let hex = |h: &str| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect::<Vec<u8>>()
        };
        let mut seen = 0;
        for line in golden.lines() {
            let (codec, h) = line.split_once(' ').unwrap();
            let theirs = hex(h);
            if codec == "none" {
                let mut ours = build_batch(&recs, Compression::None).unwrap();
                batch::assign(&mut ours, 0, 0);
                assert_eq!(ours, theirs, "uncompressed encoding differs from Kafka's");
            }
            let mut out = Vec::new();
            decode_stored_batch(&theirs, 1 << 24, 0, &mut out).unwrap();
            assert_eq!(out.len(), recs.len(), "{codec}");
            for (d, r) in out.iter().zip(&recs) {
                assert_eq!(
                    (&d.key, &d.value, &d.headers, d.timestamp),
                    (&r.key, &r.value, &r.headers, r.timestamp),
                    "{codec}"
                );
            }
            seen += 1;
        }
        assert_eq!(seen, 5);
    }

    #[test]
    fn empty_batch_is_refused() {
        assert!(build_batch(&[], Compression::None).is_err());
    }
}
