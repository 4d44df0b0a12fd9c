//! The benchmark's message payload: a fixed header that identifies the
//! message and a filler, all covered by a CRC32C.
//!
//! Layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `LVB1` |
//! | 4..8 | CRC32C of bytes 8.. |
//! | 8..16 | run id (random per `levee bench` invocation) |
//! | 16..20 | producer id |
//! | 20..24 | partition the producer sent it to |
//! | 24..32 | sequence number within (producer, partition), from 0 |
//! | 32..40 | send time, ns since the Unix epoch |
//! | 40.. | filler |

/// Bytes of the header; the smallest message size.
pub const HEADER_LEN: usize = 40;
const MAGIC: &[u8; 4] = b"LVB1";

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The bench run that produced it.
    pub run_id: u64,
    /// Producer index within the run.
    pub producer: u32,
    /// Partition the producer addressed.
    pub partition: u32,
    /// Sequence number within (producer, partition).
    pub seq: u64,
    /// Send time, ns since the Unix epoch.
    pub sent_ns: u64,
}

/// Why a payload did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    /// Shorter than the header, or without the magic: not a bench message.
    Foreign,
    /// The checksum does not match: the message was damaged.
    Corrupt,
}

/// A deterministic, cheap pseudo-random generator (splitmix64).
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Filler bytes that payloads copy windows from. Drawn from a 16-letter
/// alphabet so that lz4/zstd have something to do (about 2:1), while no two
/// consecutive messages carry the same bytes.
#[derive(Debug, Clone)]
pub struct FillerPool {
    bytes: Vec<u8>,
}

impl FillerPool {
    /// A pool able to fill messages of `message_size` bytes.
    pub fn new(seed: u64, message_size: usize) -> FillerPool {
        let len = message_size.max(HEADER_LEN) + 64 * 1024;
        let mut rng = SplitMix(seed);
        let mut bytes = Vec::with_capacity(len + 8);
        while bytes.len() < len {
            let r = rng.next_u64();
            for i in 0..16 {
                bytes.push(b'a' + ((r >> (i * 4)) & 0xF) as u8);
            }
        }
        bytes.truncate(len);
        FillerPool { bytes }
    }

    fn window(&self, seq: u64, len: usize) -> &[u8] {
        let span = self.bytes.len() - len;
        let start = if span == 0 {
            0
        } else {
            (seq.wrapping_mul(7919) % span as u64) as usize
        };
        &self.bytes[start..start + len]
    }
}

/// Appends a payload of `size` bytes (at least [`HEADER_LEN`]) to `out`.
pub fn encode_into(h: &Header, size: usize, pool: &FillerPool, out: &mut Vec<u8>) {
    let size = size.max(HEADER_LEN);
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&h.run_id.to_le_bytes());
    out.extend_from_slice(&h.producer.to_le_bytes());
    out.extend_from_slice(&h.partition.to_le_bytes());
    out.extend_from_slice(&h.seq.to_le_bytes());
    out.extend_from_slice(&h.sent_ns.to_le_bytes());
    out.extend_from_slice(pool.window(h.seq, size - HEADER_LEN));
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Builds a payload of `size` bytes (at least [`HEADER_LEN`]).
pub fn encode(h: &Header, size: usize, pool: &FillerPool) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.max(HEADER_LEN));
    encode_into(h, size, pool, &mut out);
    out
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks a payload's checksum and reads its header.
pub fn verify(payload: &[u8]) -> Result<Header, PayloadError> {
    if payload.len() < HEADER_LEN || &payload[0..4] != MAGIC {
        return Err(PayloadError::Foreign);
    }
    if crc32c::crc32c(&payload[8..]) != le_u32(payload, 4) {
        return Err(PayloadError::Corrupt);
    }
    Ok(Header {
        run_id: le_u64(payload, 8),
        producer: le_u32(payload, 16),
        partition: le_u32(payload, 20),
        seq: le_u64(payload, 24),
        sent_ns: le_u64(payload, 32),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn encode_into_matches_encode() {
        let pool = FillerPool::new(3, 100);
        let h = Header {
            run_id: 1,
            producer: 2,
            partition: 3,
            seq: 4,
            sent_ns: 5,
        };
        let mut out = vec![9u8; 3];
        encode_into(&h, 100, &pool, &mut out);
        assert_eq!(&out[3..], &encode(&h, 100, &pool)[..]);
        assert_eq!(verify(&out[3..]).unwrap().seq, 4);
    }

    use super::*;

    fn header() -> Header {
        Header {
            run_id: 0xDEAD_BEEF_0102_0304,
            producer: 7,
            partition: 3,
            seq: 123_456,
            sent_ns: 1_700_000_000_000_000_000,
        }
    }

    #[test]
    fn round_trip_sizes() {
        let pool = FillerPool::new(1, 4096);
        for size in [0, 1, HEADER_LEN, HEADER_LEN + 1, 100, 1024, 4096] {
            let p = encode(&header(), size, &pool);
            assert_eq!(p.len(), size.max(HEADER_LEN));
            assert_eq!(verify(&p), Ok(header()));
        }
    }

    #[test]
    fn every_bit_flip_is_caught() {
        let pool = FillerPool::new(2, 200);
        let p = encode(&header(), 200, &pool);
        for byte in 0..p.len() {
            for bit in 0..8 {
                let mut q = p.clone();
                q[byte] ^= 1 << bit;
                let r = verify(&q);
                if byte < 4 {
                    assert_eq!(r, Err(PayloadError::Foreign), "byte {byte}");
                } else {
                    assert_eq!(r, Err(PayloadError::Corrupt), "byte {byte} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn truncation_and_foreign() {
        let pool = FillerPool::new(3, 100);
        let p = encode(&header(), 100, &pool);
        assert_eq!(verify(&p[..HEADER_LEN - 1]), Err(PayloadError::Foreign));
        assert_eq!(verify(&p[..99]), Err(PayloadError::Corrupt));
        assert_eq!(verify(b"hello world"), Err(PayloadError::Foreign));
        assert_eq!(verify(&[]), Err(PayloadError::Foreign));
    }

    #[test]
    fn filler_varies_and_compresses_somewhat() {
        let pool = FillerPool::new(4, 1024);
        let mut h = header();
        let a = encode(&h, 1024, &pool);
        h.seq += 1;
        let b = encode(&h, 1024, &pool);
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
        assert!(a[HEADER_LEN..].iter().all(|c| (b'a'..=b'p').contains(c)));
    }
}
