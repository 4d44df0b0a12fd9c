//! Transactions as one partition sees them, without I/O: the open
//! transaction of each producer (its first offset), the last stable
//! offset (LSO: below it no transaction is open), and the index of
//! aborted transactions (producer id, first offset, offset of the abort
//! marker) that read_committed consumers filter with.
//!
//! Fed the stored batches in offset order ([`PartitionTxns::on_batch`]),
//! on the leader as it appends and on a follower as it copies the
//! leader's log, so both build the same state; it is written with the
//! producer-state snapshot ([`PartitionTxns::encode`]) and rebuilt from
//! the log after it.

use std::collections::{BTreeMap, VecDeque};

/// Aborted transactions kept per partition at most (the oldest are
/// dropped first; [`PartitionTxns::trim`] drops those below the log start).
pub const ABORTED_KEPT: usize = 100_000;
/// Completed transactions remembered to undo a truncation of their marker.
const COMPLETED_KEPT: usize = 4096;

/// An aborted transaction: its producer, first offset and the offset of
/// its abort marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aborted {
    pub producer_id: i64,
    pub first_offset: u64,
    pub last_offset: u64,
}

/// A control batch's record: commit or abort of a producer's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub commit: bool,
    pub coordinator_epoch: i32,
}

impl Marker {
    /// The record's key: version 0, type (0 abort, 1 commit).
    pub fn key(&self) -> [u8; 4] {
        let t: i16 = i16::from(self.commit);
        let mut k = [0u8; 4];
        k[2..].copy_from_slice(&t.to_be_bytes());
        k
    }

    /// The record's value: version 0, coordinator epoch.
    pub fn value(&self) -> [u8; 6] {
        let mut v = [0u8; 6];
        v[2..].copy_from_slice(&self.coordinator_epoch.to_be_bytes());
        v
    }

    /// Reads a control record's key (and value); `None` if not a marker.
    pub fn parse(key: &[u8], value: Option<&[u8]>) -> Option<Marker> {
        let t = i16::from_be_bytes(key.get(2..4)?.try_into().ok()?);
        let coordinator_epoch = value
            .and_then(|v| v.get(2..6))
            .and_then(|b| b.try_into().ok())
            .map_or(0, i32::from_be_bytes);
        match t {
            0 | 1 => Some(Marker {
                commit: t == 1,
                coordinator_epoch,
            }),
            _ => None,
        }
    }
}

/// A transaction that ended, remembered in case its marker is truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Completed {
    producer_id: i64,
    first_offset: u64,
    marker_offset: u64,
}

/// One partition's transactions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartitionTxns {
    /// Open transaction of each producer: its first offset.
    open: BTreeMap<i64, u64>,
    aborted: VecDeque<Aborted>,
    completed: VecDeque<Completed>,
}

impl PartitionTxns {
    /// A stored batch: transactional data opens (or continues) its
    /// producer's transaction; a marker closes it.
    pub fn on_batch(&mut self, producer_id: i64, first: u64, last: u64, marker: Option<Marker>) {
        match marker {
            None => {
                self.open.entry(producer_id).or_insert(first);
            }
            Some(m) => {
                let Some(start) = self.open.remove(&producer_id) else {
                    // A marker of a transaction with no data here.
                    return;
                };
                if !m.commit {
                    self.aborted.push_back(Aborted {
                        producer_id,
                        first_offset: start,
                        last_offset: last,
                    });
                    while self.aborted.len() > ABORTED_KEPT {
                        self.aborted.pop_front();
                    }
                }
                self.completed.push_back(Completed {
                    producer_id,
                    first_offset: start,
                    marker_offset: last,
                });
                while self.completed.len() > COMPLETED_KEPT {
                    self.completed.pop_front();
                }
            }
        }
    }

    /// The last stable offset: the first offset of the oldest open
    /// transaction, or `high_watermark` (whichever is lower).
    pub fn last_stable_offset(&self, high_watermark: u64) -> u64 {
        self.open
            .values()
            .copied()
            .min()
            .map_or(high_watermark, |f| f.min(high_watermark))
    }

    /// Whether `producer_id` has a transaction open here.
    pub fn is_open(&self, producer_id: i64) -> bool {
        self.open.contains_key(&producer_id)
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// The aborted transactions that overlap `[from, to)`.
    pub fn aborted_in(&self, from: u64, to: u64) -> Vec<Aborted> {
        self.aborted
            .iter()
            .filter(|a| a.last_offset >= from && a.first_offset < to)
            .copied()
            .collect()
    }

    /// Drops aborted transactions wholly below `log_start`.
    pub fn trim(&mut self, log_start: u64) {
        while self
            .aborted
            .front()
            .is_some_and(|a| a.last_offset < log_start)
        {
            self.aborted.pop_front();
        }
        self.completed.retain(|c| c.marker_offset >= log_start);
    }

    /// The log was cut at `offset`: what starts there is forgotten, and a
    /// transaction whose marker was cut is open again.
    pub fn truncate(&mut self, offset: u64) {
        self.open.retain(|_, first| *first < offset);
        while self.aborted.back().is_some_and(|a| a.last_offset >= offset) {
            self.aborted.pop_back();
        }
        while let Some(c) = self.completed.back().copied() {
            if c.marker_offset < offset {
                break;
            }
            self.completed.pop_back();
            if c.first_offset < offset {
                self.open.insert(c.producer_id, c.first_offset);
            }
        }
    }

    /// A snapshot: open transactions, aborted ones and the recently
    /// completed ones, each behind a count (big-endian).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.open.len() as u32).to_be_bytes());
        for (pid, first) in &self.open {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&first.to_be_bytes());
        }
        out.extend_from_slice(&(self.aborted.len() as u32).to_be_bytes());
        for a in &self.aborted {
            out.extend_from_slice(&a.producer_id.to_be_bytes());
            out.extend_from_slice(&a.first_offset.to_be_bytes());
            out.extend_from_slice(&a.last_offset.to_be_bytes());
        }
        out.extend_from_slice(&(self.completed.len() as u32).to_be_bytes());
        for c in &self.completed {
            out.extend_from_slice(&c.producer_id.to_be_bytes());
            out.extend_from_slice(&c.first_offset.to_be_bytes());
            out.extend_from_slice(&c.marker_offset.to_be_bytes());
        }
    }

    /// Reads what [`PartitionTxns::encode`] wrote; `None` if it is not that.
    pub fn decode(mut b: &[u8]) -> Option<PartitionTxns> {
        fn take<const N: usize>(b: &mut &[u8]) -> Option<[u8; N]> {
            let (h, t) = b.split_at_checked(N)?;
            *b = t;
            h.try_into().ok()
        }
        let mut t = PartitionTxns::default();
        let n = u32::from_be_bytes(take(&mut b)?);
        for _ in 0..n {
            let pid = i64::from_be_bytes(take(&mut b)?);
            t.open.insert(pid, u64::from_be_bytes(take(&mut b)?));
        }
        let n = u32::from_be_bytes(take(&mut b)?) as usize;
        if n > ABORTED_KEPT {
            return None;
        }
        for _ in 0..n {
            t.aborted.push_back(Aborted {
                producer_id: i64::from_be_bytes(take(&mut b)?),
                first_offset: u64::from_be_bytes(take(&mut b)?),
                last_offset: u64::from_be_bytes(take(&mut b)?),
            });
        }
        let n = u32::from_be_bytes(take(&mut b)?) as usize;
        if n > COMPLETED_KEPT {
            return None;
        }
        for _ in 0..n {
            t.completed.push_back(Completed {
                producer_id: i64::from_be_bytes(take(&mut b)?),
                first_offset: u64::from_be_bytes(take(&mut b)?),
                marker_offset: u64::from_be_bytes(take(&mut b)?),
            });
        }
        b.is_empty().then_some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: Option<Marker> = Some(Marker {
        commit: true,
        coordinator_epoch: 0,
    });
    const ABORT: Option<Marker> = Some(Marker {
        commit: false,
        coordinator_epoch: 0,
    });

    #[test]
    fn marker_records_round_trip() {
        for commit in [false, true] {
            let m = Marker {
                commit,
                coordinator_epoch: 7,
            };
            assert_eq!(Marker::parse(&m.key(), Some(&m.value())), Some(m));
        }
        assert_eq!(Marker::parse(&[0, 0, 0, 5], None), None);
        assert_eq!(Marker::parse(&[0], None), None);
    }

    #[test]
    fn the_lso_stops_at_the_oldest_open_transaction() {
        let mut t = PartitionTxns::default();
        assert_eq!(t.last_stable_offset(10), 10);
        t.on_batch(1, 10, 14, None);
        t.on_batch(2, 15, 19, None);
        t.on_batch(1, 20, 24, None);
        assert_eq!(t.last_stable_offset(25), 10);
        assert_eq!(t.last_stable_offset(5), 5, "never above the HW");
        t.on_batch(1, 25, 25, COMMIT);
        assert_eq!(t.last_stable_offset(26), 15);
        t.on_batch(2, 26, 26, ABORT);
        assert_eq!(t.last_stable_offset(27), 27);
        assert!(!t.is_open(1) && !t.is_open(2));
    }

    #[test]
    fn aborted_transactions_are_indexed_and_found_by_range() {
        let mut t = PartitionTxns::default();
        t.on_batch(1, 0, 4, None);
        t.on_batch(1, 5, 5, ABORT);
        t.on_batch(2, 6, 9, None);
        t.on_batch(2, 10, 10, COMMIT);
        t.on_batch(3, 11, 12, None);
        t.on_batch(3, 13, 13, ABORT);
        // A marker without data here changes nothing.
        t.on_batch(4, 14, 14, ABORT);
        let a = |p, f, l| Aborted {
            producer_id: p,
            first_offset: f,
            last_offset: l,
        };
        assert_eq!(t.aborted_in(0, 100), vec![a(1, 0, 5), a(3, 11, 13)]);
        assert_eq!(t.aborted_in(6, 11), vec![]);
        assert_eq!(t.aborted_in(5, 6), vec![a(1, 0, 5)]);
        assert_eq!(t.aborted_in(12, 13), vec![a(3, 11, 13)]);
        t.trim(6);
        assert_eq!(t.aborted_in(0, 100), vec![a(3, 11, 13)]);
    }

    #[test]
    fn truncating_a_marker_reopens_its_transaction() {
        let mut t = PartitionTxns::default();
        t.on_batch(1, 0, 4, None);
        t.on_batch(1, 5, 5, ABORT);
        t.on_batch(2, 6, 7, None);
        t.on_batch(2, 8, 8, COMMIT);
        t.on_batch(3, 9, 9, None);
        t.truncate(8);
        assert!(t.is_open(2), "its commit marker was cut");
        assert!(!t.is_open(3), "its only batch was cut");
        assert_eq!(t.last_stable_offset(8), 6);
        t.truncate(5);
        assert!(t.is_open(1) && !t.is_open(2));
        assert_eq!(t.aborted_in(0, 100), vec![]);
        assert_eq!(t.last_stable_offset(5), 0);
    }

    #[test]
    fn a_snapshot_round_trips_and_garbage_is_refused() {
        let mut t = PartitionTxns::default();
        t.on_batch(1, 0, 4, None);
        t.on_batch(1, 5, 5, ABORT);
        t.on_batch(2, 6, 7, None);
        t.on_batch(3, 8, 9, None);
        t.on_batch(3, 10, 10, COMMIT);
        let mut b = Vec::new();
        t.encode(&mut b);
        assert_eq!(PartitionTxns::decode(&b), Some(t));
        assert_eq!(PartitionTxns::decode(&b[..b.len() - 1]), None);
        assert_eq!(PartitionTxns::decode(&[0, 0, 0, 1]), None);
    }
}
