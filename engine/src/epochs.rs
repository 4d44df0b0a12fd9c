//! The leader-epoch cache of a partition: for every leader epoch that
//! appended to the log, the offset of its first batch. A follower that
//! reconnects to a new leader asks it for the end offset of the follower's
//! last epoch and truncates whatever it has past that, which is how
//! replicas that diverged around a leader change are reconciled (Kafka's
//! KIP-101). Kept in `leader-epoch-checkpoint` beside the segments, one
//! `epoch start_offset` line per epoch, rewritten atomically on change.

/// Epoch start offsets, in increasing epoch and offset order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(i32, u64)>,
}

pub const EPOCH_FILE: &str = "leader-epoch-checkpoint";

impl EpochCache {
    pub fn entries(&self) -> &[(i32, u64)] {
        &self.entries
    }

    pub fn latest(&self) -> Option<(i32, u64)> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `offset`; a no-op unless `epoch` is
    /// newer than the latest one. Returns whether anything changed.
    pub fn assign(&mut self, epoch: i32, offset: u64) -> bool {
        match self.entries.last() {
            Some(&(e, _)) if epoch <= e => false,
            _ => {
                // An epoch cannot start before an earlier one's start.
                self.entries.retain(|&(_, s)| s <= offset);
                self.entries.push((epoch, offset));
                true
            }
        }
    }

    /// The epoch that wrote `offset`: the latest one starting at or before
    /// it (`None` before the first recorded epoch).
    pub fn epoch_at(&self, offset: u64) -> Option<i32> {
        self.entries
            .iter()
            .rev()
            .find(|&&(_, s)| s <= offset)
            .map(|&(e, _)| e)
    }

    /// Drops epochs that start at or after `offset` (the log was cut there).
    pub fn truncate_from(&mut self, offset: u64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|&(_, s)| s < offset);
        before != self.entries.len()
    }

    /// The end offset of `epoch` in a log ending at `log_end`: the start of
    /// the first epoch after it, or `log_end` if it is the latest. Returns
    /// the largest epoch not above `epoch` (or -1 if there is none) with it.
    pub fn end_offset_for(&self, epoch: i32, log_end: u64) -> (i32, u64) {
        let floor = self
            .entries
            .iter()
            .rev()
            .find(|&&(e, _)| e <= epoch)
            .map_or(-1, |&(e, _)| e);
        let end = self
            .entries
            .iter()
            .find(|&&(e, _)| e > epoch)
            .map_or(log_end, |&(_, s)| s);
        (floor, end.min(log_end))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::from("levee-leader-epochs 1\n");
        for (e, o) in &self.entries {
            s.push_str(&format!("{e} {o}\n"));
        }
        s.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<EpochCache> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.lines();
        if lines.next()? != "levee-leader-epochs 1" {
            return None;
        }
        let mut c = EpochCache::default();
        for l in lines {
            let (e, o) = l.split_once(' ')?;
            let (e, o) = (e.parse().ok()?, o.parse().ok()?);
            if !c.assign(e, o) {
                return None;
            }
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_offsets() {
        let mut c = EpochCache::default();
        assert_eq!(c.end_offset_for(3, 10), (-1, 10));
        assert!(c.assign(1, 0));
        assert!(!c.assign(1, 5));
        assert!(c.assign(3, 40));
        assert!(c.assign(4, 70));
        assert_eq!(c.end_offset_for(1, 100), (1, 40));
        assert_eq!(c.end_offset_for(2, 100), (1, 40));
        assert_eq!(c.end_offset_for(3, 100), (3, 70));
        assert_eq!(c.end_offset_for(4, 100), (4, 100));
        assert_eq!(c.end_offset_for(9, 100), (4, 100));
        assert_eq!(c.end_offset_for(0, 100), (-1, 0));
        assert_eq!(EpochCache::decode(&c.encode()), Some(c.clone()));
        assert!(c.truncate_from(40));
        assert_eq!(c.entries(), &[(1, 0)]);
        assert_eq!(EpochCache::decode(b"garbage"), None);
    }
}
