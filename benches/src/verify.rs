//! Per-message verification: checksums, sequence gaps, duplicates,
//! reordering, and (at the end) loss of acknowledged messages.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::payload::{self, PayloadError};

/// A set of `u64` stored as disjoint, non-adjacent half-open ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Adds `[start, end)`.
    pub fn insert_range(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        // Merge with every range that overlaps or touches [start, end].
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=end)
            .rev()
            .take_while(|(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }

    /// Adds one value.
    pub fn insert(&mut self, v: u64) {
        self.insert_range(v, v.saturating_add(1));
    }

    /// Whether `v` is in the set.
    pub fn contains(&self, v: u64) -> bool {
        self.ranges
            .range(..=v)
            .next_back()
            .is_some_and(|(_, &e)| v < e)
    }

    /// Removes `v`; whether it was there.
    pub fn remove(&mut self, v: u64) -> bool {
        let Some((&s, &e)) = self.ranges.range(..=v).next_back() else {
            return false;
        };
        if v >= e {
            return false;
        }
        self.ranges.remove(&s);
        if s < v {
            self.ranges.insert(s, v);
        }
        if v + 1 < e {
            self.ranges.insert(v + 1, e);
        }
        true
    }

    /// Number of values.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// Values of `self` that are not in `other`: their count and up to
    /// `sample` of them.
    pub fn minus(&self, other: &RangeSet, sample: usize) -> (u64, Vec<u64>) {
        let mut count = 0;
        let mut samples = Vec::new();
        for (s, e) in self.ranges() {
            let mut cur = s;
            for (os, oe) in other.ranges.range(..e).map(|(&a, &b)| (a, b)) {
                if oe <= cur {
                    continue;
                }
                if os > cur {
                    let upto = os.min(e);
                    count += upto - cur;
                    samples.extend((cur..upto).take(sample.saturating_sub(samples.len())));
                }
                cur = cur.max(oe);
                if cur >= e {
                    break;
                }
            }
            if cur < e {
                count += e - cur;
                samples.extend((cur..e).take(sample.saturating_sub(samples.len())));
            }
        }
        (count, samples)
    }
}

/// How one message compared with its stream's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next sequence number.
    InOrder,
    /// Later than expected; this many sequence numbers were skipped (so far).
    Gap(u64),
    /// An earlier sequence number that had been skipped: arrived late.
    Reordered,
    /// A sequence number already received.
    Duplicate,
    /// A sequence number received before the stream's partition last changed
    /// hands (a group rebalance), received again for the first time since:
    /// the at-least-once redelivery of an uncommitted window.
    Redelivered,
}

/// One (run, producer, partition) stream's state.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    /// The next expected sequence number.
    pub next: u64,
    /// Skipped sequence numbers not (yet) received.
    pub missing: RangeSet,
    started: bool,
    /// `next` when the partition last changed hands: sequence numbers below
    /// it may legitimately arrive once more.
    handover_next: u64,
    /// Sequence numbers below `handover_next` received since the handover.
    since_handover: RangeSet,
}

impl Stream {
    /// Records `seq`. A stream of this run starts at 0; a stream of another
    /// run (`from_zero` false) starts wherever it is first seen.
    pub fn observe(&mut self, seq: u64, from_zero: bool) -> Seen {
        if !self.started {
            self.started = true;
            if !from_zero {
                self.next = seq;
            }
        }
        if seq == self.next {
            self.next += 1;
            Seen::InOrder
        } else if seq > self.next {
            let skipped = seq - self.next;
            self.missing.insert_range(self.next, seq);
            self.next = seq + 1;
            Seen::Gap(skipped)
        } else if self.missing.remove(seq) {
            if seq < self.handover_next {
                self.since_handover.insert(seq);
            }
            Seen::Reordered
        } else if seq < self.handover_next && !self.since_handover.contains(seq) {
            self.since_handover.insert(seq);
            Seen::Redelivered
        } else {
            Seen::Duplicate
        }
    }

    /// The stream's partition changed hands (another consumer, or the same
    /// one in a new group generation): everything received so far may be
    /// delivered once more.
    pub fn handover(&mut self) {
        self.handover_next = self.next;
        self.since_handover = RangeSet::default();
    }
}

/// Who read a batch: a consumer task and its group generation (0 outside a
/// group). A partition read under another owner than the previous batch's
/// has changed hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The consumer task.
    pub consumer: usize,
    /// Its group generation when it fetched the batch.
    pub generation: i32,
}

/// Counters of one consumer's verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Records read.
    pub records: u64,
    /// Records of this run.
    pub own: u64,
    /// Bench records of an earlier run (consume-only runs read these).
    pub earlier_runs: u64,
    /// Records that are not bench messages (no header).
    pub not_bench: u64,
    /// Checksum failures.
    pub corrupt: u64,
    /// Records whose header names another partition than the one they were read from.
    pub wrong_partition: u64,
    /// Duplicates of this run's messages not explained by a rebalance
    /// (failures).
    pub duplicates: u64,
    /// This run's messages read again after their partition changed hands in
    /// a group rebalance (at-least-once delivery of the uncommitted window;
    /// not failures).
    pub redelivered: u64,
    /// Times a partition changed hands between batches (group mode).
    pub handovers: u64,
    /// This run's messages that arrived after a later one of the same stream.
    pub reordered: u64,
    /// Sequence numbers skipped when a later one arrived (may arrive later: see `reordered`).
    pub gaps_seen: u64,
    /// Duplicates among earlier runs' messages (informational).
    pub earlier_duplicates: u64,
    /// Gaps among earlier runs' messages (informational: their acknowledgements are unknown).
    pub earlier_gaps: u64,
    /// Batches the client rejected (CRC or malformed).
    pub corrupt_batches: u64,
}

impl Counts {
    /// Adds another consumer's counters.
    pub fn add(&mut self, o: &Counts) {
        self.records += o.records;
        self.own += o.own;
        self.earlier_runs += o.earlier_runs;
        self.not_bench += o.not_bench;
        self.corrupt += o.corrupt;
        self.wrong_partition += o.wrong_partition;
        self.duplicates += o.duplicates;
        self.redelivered += o.redelivered;
        self.handovers += o.handovers;
        self.reordered += o.reordered;
        self.gaps_seen += o.gaps_seen;
        self.earlier_duplicates += o.earlier_duplicates;
        self.earlier_gaps += o.earlier_gaps;
        self.corrupt_batches += o.corrupt_batches;
    }
}

/// What a checked record turned out to be (for the caller's statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// A message of this run, sent at this time (ns since the epoch).
    Own {
        /// Send time.
        sent_ns: u64,
        /// First arrival (not a duplicate or a redelivery).
        first: bool,
    },
    /// Anything else.
    Other,
}

/// Checks the records one consumer reads, or (behind a mutex) those every
/// member of a group reads, so that a partition can move between them.
#[derive(Debug, Clone)]
pub struct Verifier {
    run_id: u64,
    /// This run's streams: (producer, partition) → state.
    pub own: HashMap<(u32, u32), Stream>,
    earlier: HashMap<(u64, u32, u32), Stream>,
    /// Who read each partition's last batch.
    owners: HashMap<u32, Owner>,
    /// Counters.
    pub counts: Counts,
}

impl Verifier {
    /// A verifier for run `run_id`.
    pub fn new(run_id: u64) -> Verifier {
        Verifier {
            run_id,
            own: HashMap::new(),
            earlier: HashMap::new(),
            owners: HashMap::new(),
            counts: Counts::default(),
        }
    }

    /// Notes who reads `partition`'s next records. When the owner differs
    /// from the previous batch's, the partition has changed hands: its
    /// streams accept one redelivery of what was received before. Returns
    /// whether it changed hands.
    pub fn owner(&mut self, partition: u32, owner: Owner) -> bool {
        match self.owners.insert(partition, owner) {
            Some(prev) if prev != owner => {
                self.counts.handovers += 1;
                for ((_, p), s) in self.own.iter_mut() {
                    if *p == partition {
                        s.handover();
                    }
                }
                for ((_, _, p), s) in self.earlier.iter_mut() {
                    if *p == partition {
                        s.handover();
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Checks one record read from `partition`.
    pub fn check(&mut self, partition: u32, value: &[u8]) -> Checked {
        self.check_parsed(partition, payload::verify(value))
    }

    /// Checks one record read from `partition` whose payload was already
    /// verified with [`payload::verify`] (the checksum, the costly part, can
    /// run outside the lock of a shared verifier).
    pub fn check_parsed(
        &mut self,
        partition: u32,
        parsed: Result<payload::Header, PayloadError>,
    ) -> Checked {
        self.counts.records += 1;
        let h = match parsed {
            Ok(h) => h,
            Err(PayloadError::Foreign) => {
                self.counts.not_bench += 1;
                return Checked::Other;
            }
            Err(PayloadError::Corrupt) => {
                self.counts.corrupt += 1;
                return Checked::Other;
            }
        };
        if h.partition != partition {
            self.counts.wrong_partition += 1;
            return Checked::Other;
        }
        if h.run_id != self.run_id {
            self.counts.earlier_runs += 1;
            let s = self
                .earlier
                .entry((h.run_id, h.producer, h.partition))
                .or_default();
            match s.observe(h.seq, false) {
                Seen::Gap(n) => self.counts.earlier_gaps += n,
                Seen::Duplicate => self.counts.earlier_duplicates += 1,
                Seen::Redelivered => {}
                Seen::Reordered => {
                    self.counts.earlier_gaps = self.counts.earlier_gaps.saturating_sub(1)
                }
                Seen::InOrder => {}
            }
            return Checked::Other;
        }
        self.counts.own += 1;
        let s = self.own.entry((h.producer, h.partition)).or_default();
        let first = match s.observe(h.seq, true) {
            Seen::InOrder => true,
            Seen::Gap(n) => {
                self.counts.gaps_seen += n;
                true
            }
            Seen::Reordered => {
                self.counts.reordered += 1;
                true
            }
            Seen::Duplicate => {
                self.counts.duplicates += 1;
                false
            }
            Seen::Redelivered => {
                self.counts.redelivered += 1;
                false
            }
        };
        Checked::Own {
            sent_ns: h.sent_ns,
            first,
        }
    }
}

/// What one producer sent to one partition.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    /// Sequence numbers 0..count were handed to the producer.
    pub count: u64,
    /// Those whose delivery failed (not acknowledged).
    pub failed: RangeSet,
}

/// The end-of-run loss check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Loss {
    /// Acknowledged messages never received.
    pub lost: u64,
    /// Up to 10 of them as (producer, partition, sequence).
    pub lost_samples: Vec<(u32, u32, u64)>,
    /// Messages whose delivery failed and were not received either.
    pub failed_not_received: u64,
}

/// Compares what was sent (per (producer, partition)) with what the
/// consumers' streams saw.
pub fn find_loss(sent: &HashMap<(u32, u32), Sent>, seen: &HashMap<(u32, u32), Stream>) -> Loss {
    let mut loss = Loss::default();
    let empty = Stream::default();
    let mut keys: Vec<_> = sent.keys().copied().collect();
    keys.sort_unstable();
    for key in keys {
        let Some(s) = sent.get(&key) else { continue };
        let stream = seen.get(&key).unwrap_or(&empty);
        // Not received: the gaps, plus everything past the last one seen.
        let mut missing = stream.missing.clone();
        missing.insert_range(stream.next, s.count.max(stream.next));
        let (lost, samples) = missing.minus(&s.failed, 10 - loss.lost_samples.len().min(10));
        loss.lost += lost;
        loss.lost_samples
            .extend(samples.into_iter().map(|q| (key.0, key.1, q)));
        let (received_failed, _) = s.failed.minus(&missing, 0);
        loss.failed_not_received += s.failed.len() - received_failed;
    }
    loss
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{encode, FillerPool, Header};

    fn set(rs: &[(u64, u64)]) -> RangeSet {
        let mut s = RangeSet::default();
        for &(a, b) in rs {
            s.insert_range(a, b);
        }
        s
    }

    #[test]
    fn range_set_basics() {
        let mut s = RangeSet::default();
        for v in [5, 3, 4, 10, 6, 9] {
            s.insert(v);
        }
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![(3, 7), (9, 11)]);
        assert_eq!(s.len(), 6);
        assert!(s.contains(3) && s.contains(6) && s.contains(10));
        assert!(!s.contains(7) && !s.contains(2) && !s.contains(11));
        assert!(s.remove(4));
        assert!(!s.remove(4));
        assert_eq!(
            s.ranges().collect::<Vec<_>>(),
            vec![(3, 4), (5, 7), (9, 11)]
        );
        s.insert_range(0, 20);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![(0, 20)]);
        assert!(!s.is_empty());
    }

    #[test]
    fn range_set_minus() {
        let a = set(&[(0, 10), (20, 30)]);
        let b = set(&[(2, 4), (8, 22), (29, 40)]);
        let (n, sample) = a.minus(&b, 100);
        assert_eq!(n, 2 + 4 + 7);
        assert_eq!(sample, vec![0, 1, 4, 5, 6, 7, 22, 23, 24, 25, 26, 27, 28]);
        assert_eq!(a.minus(&RangeSet::default(), 3), (20, vec![0, 1, 2]));
        assert_eq!(a.minus(&a, 3), (0, vec![]));
    }

    #[test]
    fn stream_counts_gaps_reorders_and_duplicates() {
        let mut s = Stream::default();
        let seen: Vec<Seen> = [0, 1, 4, 2, 5, 5, 1, 3, 3]
            .iter()
            .map(|&q| s.observe(q, true))
            .collect();
        assert_eq!(
            seen,
            vec![
                Seen::InOrder,
                Seen::InOrder,
                Seen::Gap(2),
                Seen::Reordered,
                Seen::InOrder,
                Seen::Duplicate,
                Seen::Duplicate,
                Seen::Reordered,
                Seen::Duplicate,
            ]
        );
        assert!(s.missing.is_empty());
        // A stream of another run starts where it is first seen.
        let mut e = Stream::default();
        assert_eq!(e.observe(100, false), Seen::InOrder);
        assert_eq!(e.observe(102, false), Seen::Gap(1));
    }

    fn msg(run: u64, producer: u32, partition: u32, seq: u64) -> Vec<u8> {
        let pool = FillerPool::new(9, 64);
        encode(
            &Header {
                run_id: run,
                producer,
                partition,
                seq,
                sent_ns: 1000 + seq,
            },
            64,
            &pool,
        )
    }

    #[test]
    fn verifier_counts_everything() {
        let mut v = Verifier::new(1);
        assert_eq!(
            v.check(0, &msg(1, 0, 0, 0)),
            Checked::Own {
                sent_ns: 1000,
                first: true
            }
        );
        v.check(0, &msg(1, 0, 0, 2)); // gap of 1
        v.check(0, &msg(1, 0, 0, 1)); // reordered
        assert_eq!(
            v.check(0, &msg(1, 0, 0, 1)),
            Checked::Own {
                sent_ns: 1001,
                first: false
            }
        ); // duplicate
        v.check(1, &msg(1, 1, 1, 0));
        let mut bad = msg(1, 0, 0, 3);
        bad[50] ^= 0x20;
        assert_eq!(v.check(0, &bad), Checked::Other);
        assert_eq!(v.check(0, b"plain text"), Checked::Other);
        assert_eq!(v.check(2, &msg(1, 0, 0, 3)), Checked::Other); // wrong partition
        v.check(0, &msg(7, 0, 0, 50)); // earlier run
        v.check(0, &msg(7, 0, 0, 50)); // earlier run dup
        v.check(0, &msg(7, 0, 0, 53)); // earlier run gap of 2
        let c = &v.counts;
        assert_eq!(c.records, 11);
        assert_eq!(c.own, 5);
        assert_eq!(c.gaps_seen, 1);
        assert_eq!(c.reordered, 1);
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.corrupt, 1);
        assert_eq!(c.not_bench, 1);
        assert_eq!(c.wrong_partition, 1);
        assert_eq!(c.earlier_runs, 3);
        assert_eq!(c.earlier_duplicates, 1);
        assert_eq!(c.earlier_gaps, 2);
        let mut total = Counts::default();
        total.add(c);
        total.add(c);
        assert_eq!(total.records, 22);
    }

    const A0: Owner = Owner {
        consumer: 0,
        generation: 1,
    };
    const B0: Owner = Owner {
        consumer: 1,
        generation: 1,
    };
    const A1: Owner = Owner {
        consumer: 0,
        generation: 2,
    };
    const B1: Owner = Owner {
        consumer: 1,
        generation: 2,
    };

    fn read(v: &mut Verifier, owner: Owner, partition: u32, seqs: impl IntoIterator<Item = u64>) {
        v.owner(partition, owner);
        for q in seqs {
            v.check(partition, &msg(1, 0, partition, q));
        }
    }

    #[test]
    fn rebalance_redelivery_is_not_a_duplicate() {
        let mut v = Verifier::new(1);
        // Consumer A reads 0..10 of partition 0 but committed only up to 6
        // when the partition moved to B, which reads 6..15.
        read(&mut v, A0, 0, 0..10);
        assert!(v.owner(0, B1), "a new owner is a handover");
        assert!(!v.owner(0, B1), "the same owner is not");
        assert_eq!(
            v.check(0, &msg(1, 0, 0, 6)),
            Checked::Own {
                sent_ns: 1006,
                first: false
            }
        );
        read(&mut v, B1, 0, 7..15);
        assert_eq!(v.counts.redelivered, 4);
        assert_eq!(v.counts.duplicates, 0);
        assert_eq!(v.counts.handovers, 1);
        // B reads 8 once more within its generation: a real duplicate, and
        // so is 12, read first after the handover.
        read(&mut v, B1, 0, [8, 12]);
        assert_eq!(v.counts.duplicates, 2);
        assert_eq!(v.counts.redelivered, 4);
        // Nothing is lost: 0..15 all arrived.
        let mut sent = HashMap::new();
        sent.insert(
            (0, 0),
            Sent {
                count: 15,
                failed: RangeSet::default(),
            },
        );
        assert_eq!(find_loss(&sent, &v.own), Loss::default());
    }

    #[test]
    fn the_same_consumer_in_a_new_generation_may_read_again() {
        let mut v = Verifier::new(1);
        read(&mut v, A0, 0, 0..5);
        // A keeps partition 0 across a rebalance but its position was
        // looked up again from the committed offset 3.
        read(&mut v, A1, 0, 3..6);
        assert_eq!((v.counts.redelivered, v.counts.duplicates), (2, 0));
        // Without a rebalance in between, reading again is a duplicate.
        read(&mut v, A1, 0, [4]);
        assert_eq!((v.counts.redelivered, v.counts.duplicates), (2, 1));
        // Other partitions are unaffected by partition 0's handovers.
        read(&mut v, B0, 1, 0..3);
        read(&mut v, B0, 1, [2]);
        assert_eq!(v.counts.duplicates, 2);
        assert_eq!(v.counts.handovers, 1);
    }

    #[test]
    fn each_handover_allows_one_more_redelivery() {
        let mut v = Verifier::new(1);
        read(&mut v, A0, 0, 0..4);
        read(&mut v, B1, 0, 2..4); // redelivered: 2, 3
        read(&mut v, A1, 0, 3..5); // B left 3 uncommitted: 3 again, then 4
        read(&mut v, A1, 0, [3]); // and once more within A1: duplicate
        assert_eq!(v.counts.redelivered, 3);
        assert_eq!(v.counts.duplicates, 1);
        assert_eq!(v.counts.handovers, 2);
        assert_eq!(v.counts.own, 9);
    }

    #[test]
    fn a_late_message_after_a_handover_is_reordered_then_a_duplicate() {
        let mut v = Verifier::new(1);
        // Sequence 1 is missing when the partition changes hands...
        read(&mut v, A0, 0, [0, 2]);
        assert_eq!(v.counts.gaps_seen, 1);
        // ...then arrives (reordered), and arrives once more in the same
        // generation: that second copy is a real duplicate.
        read(&mut v, B1, 0, [1, 1]);
        assert_eq!(v.counts.reordered, 1);
        assert_eq!(v.counts.duplicates, 1);
        assert_eq!(v.counts.redelivered, 0);
    }

    #[test]
    fn loss_counts_only_acknowledged_missing_messages() {
        let mut v = Verifier::new(1);
        // Producer 0 → partition 0: sent 0..10, 3 and 4 failed, 3 arrived anyway,
        // 4..6 never arrived, 8..10 never arrived.
        for q in [0, 1, 2, 3, 6, 7] {
            v.check(0, &msg(1, 0, 0, q));
        }
        // Producer 1 → partition 0: sent 0..3, nothing arrived.
        let mut sent = HashMap::new();
        sent.insert(
            (0, 0),
            Sent {
                count: 10,
                failed: set(&[(3, 5)]),
            },
        );
        sent.insert(
            (1, 0),
            Sent {
                count: 3,
                failed: RangeSet::default(),
            },
        );
        let loss = find_loss(&sent, &v.own);
        assert_eq!(loss.lost, 1 + 2 + 3);
        assert_eq!(loss.failed_not_received, 1);
        assert_eq!(
            loss.lost_samples,
            vec![
                (0, 0, 5),
                (0, 0, 8),
                (0, 0, 9),
                (1, 0, 0),
                (1, 0, 1),
                (1, 0, 2)
            ]
        );
        // Everything received: no loss.
        let mut w = Verifier::new(1);
        for q in 0..3 {
            w.check(0, &msg(1, 1, 0, q));
        }
        let mut only = HashMap::new();
        only.insert(
            (1, 0),
            Sent {
                count: 3,
                failed: RangeSet::default(),
            },
        );
        assert_eq!(find_loss(&only, &w.own), Loss::default());
    }
}
