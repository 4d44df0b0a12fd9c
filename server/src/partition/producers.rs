//! Idempotent producers (KIP-98), per partition, without I/O: for each
//! producer id, its epoch and the sequence ranges of its last 128 batches,
//! so that a retried batch is recognised (answered with its original
//! offsets, not written twice), a gap is refused (out of order), and a
//! producer from an older epoch is fenced.
//!
//! The table is rebuilt by feeding it the stored batches in offset order
//! ([`ProducerTable::record`]), after recovery and on a new leader, and
//! can be written to and read from a snapshot ([`ProducerTable::encode`],
//! [`ProducerTable::decode`]) so recovery does not rescan the whole log.

use std::collections::{BTreeMap, VecDeque};

/// Batches remembered per producer: Kafka keeps 5 (its clients' most
/// requests in flight with idempotence, one batch per partition each);
/// Levee's client may have up to 128 batches of a partition in flight
/// (several per request), and a batch sent again must still be recognised.
/// 32 held a saturated producer back (idempotence cost 8% of its
/// throughput; at 128, 2-5%); the cost is 24 bytes per batch remembered,
/// about 3 KiB per producer and partition.
pub const BATCHES_KEPT: usize = 128;

/// One stored batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: u64,
    pub last_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    epoch: i16,
    batches: VecDeque<SeqRange>,
    /// Largest batch timestamp seen (for expiry), ms.
    last_timestamp_ms: i64,
}

/// What to do with a produced batch of an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it.
    Append,
    /// Already written: answer with these offsets and write nothing.
    Duplicate { first_offset: u64, last_offset: u64 },
    /// A sequence gap (or an unknown producer not starting at 0):
    /// OUT_OF_ORDER_SEQUENCE_NUMBER.
    OutOfOrder { expected: i32, got: i32 },
    /// An older epoch than the producer's current one: fenced
    /// (INVALID_PRODUCER_EPOCH / PRODUCER_FENCED).
    Fenced { current: i16, got: i16 },
}

/// The sequence after `seq` (Kafka's wrap at `i32::MAX` to 0).
pub fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// The last sequence of a batch of `count` records starting at `first`.
pub fn last_seq(first: i32, count: u32) -> i32 {
    let last = i64::from(first) + i64::from(count) - 1;
    (last % (i64::from(i32::MAX) + 1)) as i32
}

/// The producer state of one partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerTable {
    producers: BTreeMap<i64, Entry>,
}

impl ProducerTable {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Judges a batch before it is appended.
    pub fn check(&self, pid: i64, epoch: i16, first_seq: i32, last_seq: i32) -> Verdict {
        let Some(e) = self.producers.get(&pid) else {
            return if first_seq == 0 {
                Verdict::Append
            } else {
                Verdict::OutOfOrder {
                    expected: 0,
                    got: first_seq,
                }
            };
        };
        if epoch < e.epoch {
            return Verdict::Fenced {
                current: e.epoch,
                got: epoch,
            };
        }
        if epoch > e.epoch {
            // A new epoch starts its sequences again.
            return if first_seq == 0 {
                Verdict::Append
            } else {
                Verdict::OutOfOrder {
                    expected: 0,
                    got: first_seq,
                }
            };
        }
        if let Some(b) = e
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Verdict::Duplicate {
                first_offset: b.first_offset,
                last_offset: b.last_offset,
            };
        }
        let expected = e.batches.back().map_or(0, |b| next_seq(b.last_seq));
        if first_seq == expected {
            Verdict::Append
        } else {
            Verdict::OutOfOrder {
                expected,
                got: first_seq,
            }
        }
    }

    /// Records a batch that was appended (or, rebuilding, that is stored).
    pub fn record(&mut self, pid: i64, epoch: i16, range: SeqRange, timestamp_ms: i64) {
        let e = self.producers.entry(pid).or_insert(Entry {
            epoch,
            batches: VecDeque::new(),
            last_timestamp_ms: timestamp_ms,
        });
        if epoch > e.epoch {
            e.epoch = epoch;
            e.batches.clear();
        }
        e.batches.push_back(range);
        while e.batches.len() > BATCHES_KEPT {
            e.batches.pop_front();
        }
        e.last_timestamp_ms = e.last_timestamp_ms.max(timestamp_ms);
    }

    /// The producer's current epoch, if it is known here.
    pub fn epoch(&self, pid: i64) -> Option<i16> {
        self.producers.get(&pid).map(|e| e.epoch)
    }

    /// A transaction marker of `epoch` was written for `pid`: a newer
    /// epoch fences the older one here too (its sequences start again).
    pub fn bump_epoch(&mut self, pid: i64, epoch: i16, timestamp_ms: i64) {
        let e = self.producers.entry(pid).or_insert(Entry {
            epoch,
            batches: VecDeque::new(),
            last_timestamp_ms: timestamp_ms,
        });
        if epoch > e.epoch {
            e.epoch = epoch;
            e.batches.clear();
        }
        e.last_timestamp_ms = e.last_timestamp_ms.max(timestamp_ms);
    }

    /// Forgets producers whose last batch is older than `expiration_ms`
    /// (Kafka's `producer.id.expiration.ms`). Returns how many went.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_timestamp_ms) < expiration_ms);
        before - self.producers.len()
    }

    /// Forgets what lies at or after `offset` (the log was truncated there).
    pub fn truncate(&mut self, offset: u64) {
        for e in self.producers.values_mut() {
            e.batches.retain(|b| b.last_offset < offset);
        }
        self.producers.retain(|_, e| !e.batches.is_empty());
    }

    /// A snapshot: for each producer, id, epoch, timestamp and batches
    /// (all big-endian), behind a count.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.producers.len() * 64);
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        for (pid, e) in &self.producers {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.last_timestamp_ms.to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.first_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        out
    }

    /// Reads a snapshot; `None` if it is not one (then rebuild from the log).
    pub fn decode(bytes: &[u8]) -> Option<ProducerTable> {
        struct R<'a>(&'a [u8]);
        impl R<'_> {
            fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
                let (h, t) = self.0.split_at_checked(N)?;
                self.0 = t;
                h.try_into().ok()
            }
        }
        let mut r = R(bytes);
        let n = u32::from_be_bytes(r.take()?);
        let mut t = ProducerTable::default();
        for _ in 0..n {
            let pid = i64::from_be_bytes(r.take()?);
            let epoch = i16::from_be_bytes(r.take()?);
            let ts = i64::from_be_bytes(r.take()?);
            let k = r.take::<1>()?[0] as usize;
            if k > BATCHES_KEPT {
                return None;
            }
            let mut batches = VecDeque::with_capacity(k);
            for _ in 0..k {
                batches.push_back(SeqRange {
                    first_seq: i32::from_be_bytes(r.take()?),
                    last_seq: i32::from_be_bytes(r.take()?),
                    first_offset: u64::from_be_bytes(r.take()?),
                    last_offset: u64::from_be_bytes(r.take()?),
                });
            }
            t.producers.insert(
                pid,
                Entry {
                    epoch,
                    batches,
                    last_timestamp_ms: ts,
                },
            );
        }
        r.0.is_empty().then_some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first_seq: i32, n: u32, first_offset: u64) -> SeqRange {
        SeqRange {
            first_seq,
            last_seq: last_seq(first_seq, n),
            first_offset,
            last_offset: first_offset + u64::from(n) - 1,
        }
    }

    #[test]
    fn a_new_producer_starts_at_sequence_zero() {
        let t = ProducerTable::default();
        assert_eq!(t.check(7, 0, 0, 9), Verdict::Append);
        assert_eq!(
            t.check(7, 0, 5, 9),
            Verdict::OutOfOrder {
                expected: 0,
                got: 5
            }
        );
    }

    #[test]
    fn the_next_batch_continues_the_sequence_and_a_gap_is_refused() {
        let mut t = ProducerTable::default();
        t.record(7, 0, range(0, 10, 100), 1);
        assert_eq!(t.check(7, 0, 10, 19), Verdict::Append);
        assert_eq!(
            t.check(7, 0, 11, 19),
            Verdict::OutOfOrder {
                expected: 10,
                got: 11
            }
        );
    }

    #[test]
    fn a_retried_batch_is_a_duplicate_with_its_original_offsets() {
        let mut t = ProducerTable::default();
        let kept = BATCHES_KEPT as u32;
        for i in 0..kept {
            t.record(7, 0, range(i as i32 * 10, 10, 100 + u64::from(i) * 10), 1);
        }
        assert_eq!(
            t.check(7, 0, 20, 29),
            Verdict::Duplicate {
                first_offset: 120,
                last_offset: 129
            }
        );
        // One more batch pushes the first out of those kept.
        t.record(
            7,
            0,
            range(kept as i32 * 10, 10, 100 + u64::from(kept) * 10),
            1,
        );
        assert!(matches!(t.check(7, 0, 0, 9), Verdict::OutOfOrder { .. }));
        assert!(matches!(t.check(7, 0, 10, 19), Verdict::Duplicate { .. }));
    }

    #[test]
    fn an_older_epoch_is_fenced_and_a_newer_one_restarts_at_zero() {
        let mut t = ProducerTable::default();
        t.record(7, 3, range(0, 10, 0), 1);
        assert_eq!(
            t.check(7, 2, 10, 19),
            Verdict::Fenced { current: 3, got: 2 }
        );
        assert_eq!(t.check(7, 4, 0, 4), Verdict::Append);
        assert!(matches!(t.check(7, 4, 10, 14), Verdict::OutOfOrder { .. }));
        t.record(7, 4, range(0, 5, 10), 1);
        assert_eq!(
            t.check(7, 3, 10, 19),
            Verdict::Fenced { current: 4, got: 3 }
        );
        assert_eq!(t.check(7, 4, 5, 9), Verdict::Append);
    }

    #[test]
    fn a_marker_of_a_newer_epoch_fences_the_older_one() {
        let mut t = ProducerTable::default();
        t.record(7, 1, range(0, 10, 0), 1);
        t.bump_epoch(7, 1, 2);
        assert_eq!(
            t.check(7, 1, 10, 19),
            Verdict::Append,
            "same epoch: no change"
        );
        t.bump_epoch(7, 2, 3);
        assert_eq!(t.epoch(7), Some(2));
        assert_eq!(
            t.check(7, 1, 10, 19),
            Verdict::Fenced { current: 2, got: 1 }
        );
        assert_eq!(t.check(7, 2, 0, 4), Verdict::Append);
        t.bump_epoch(8, 0, 3);
        assert_eq!(t.epoch(8), Some(0));
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(last_seq(i32::MAX - 1, 3), 0);
        assert_eq!(next_seq(i32::MAX), 0);
        let mut t = ProducerTable::default();
        t.record(1, 0, range(i32::MAX - 1, 3, 0), 1);
        assert_eq!(t.check(1, 0, 1, 5), Verdict::Append);
    }

    #[test]
    fn producers_expire_and_truncation_forgets_cut_batches() {
        let mut t = ProducerTable::default();
        t.record(1, 0, range(0, 10, 0), 1_000);
        t.record(2, 0, range(0, 10, 10), 5_000);
        assert_eq!(t.expire(6_000, 3_000), 1);
        assert_eq!(t.len(), 1);
        t.record(2, 0, range(10, 10, 20), 5_000);
        t.truncate(20);
        assert_eq!(
            t.check(2, 0, 10, 19),
            Verdict::Append,
            "the cut batch may be written again"
        );
        t.truncate(0);
        assert!(t.is_empty());
    }

    #[test]
    fn a_snapshot_round_trips_and_garbage_is_refused() {
        let mut t = ProducerTable::default();
        for pid in 0..3 {
            for i in 0..7u32 {
                t.record(pid, 2, range(i as i32 * 4, 4, u64::from(i) * 4), 9);
            }
        }
        let bytes = t.encode();
        assert_eq!(ProducerTable::decode(&bytes), Some(t));
        assert_eq!(ProducerTable::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(ProducerTable::decode(&[0, 0, 0, 9]), None);
    }
}
