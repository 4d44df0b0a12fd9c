//! The record format of transaction state in `__transaction_state`: one
//! record per change, key = the transactional id, value = its whole state
//! (no value: the id expired). Replaying a partition's records in order
//! gives each id's latest state.

use super::state::{TxnMeta, TxnState};
use levee_engine::batch::{Record, RecordView};
use std::collections::{BTreeMap, BTreeSet, HashMap};

const VERSION: u8 = 0;

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// A transactional id's state as a record value.
pub fn encode(m: &TxnMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + m.partitions.len() * 24);
    out.push(VERSION);
    out.extend_from_slice(&m.producer_id.to_be_bytes());
    out.extend_from_slice(&m.epoch.to_be_bytes());
    out.extend_from_slice(&m.timeout_ms.to_be_bytes());
    out.push(m.state.code());
    out.extend_from_slice(&m.started_ms.to_be_bytes());
    out.extend_from_slice(&m.updated_ms.to_be_bytes());
    out.extend_from_slice(&(m.partitions.len() as u32).to_be_bytes());
    for (t, p) in &m.partitions {
        put_str(&mut out, t);
        out.extend_from_slice(&p.to_be_bytes());
    }
    out.extend_from_slice(&(m.offsets.len() as u32).to_be_bytes());
    for (g, offs) in &m.offsets {
        put_str(&mut out, g);
        out.extend_from_slice(&(offs.len() as u32).to_be_bytes());
        for ((t, p), (o, e, md)) in offs {
            put_str(&mut out, t);
            out.extend_from_slice(&p.to_be_bytes());
            out.extend_from_slice(&o.to_be_bytes());
            out.extend_from_slice(&e.to_be_bytes());
            put_str(&mut out, md);
        }
    }
    out
}

struct R<'a>(&'a [u8]);

impl R<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (h, t) = self.0.split_at_checked(N)?;
        self.0 = t;
        h.try_into().ok()
    }
    fn string(&mut self) -> Option<String> {
        let n = u16::from_be_bytes(self.take()?) as usize;
        let (h, t) = self.0.split_at_checked(n)?;
        self.0 = t;
        String::from_utf8(h.to_vec()).ok()
    }
    /// A count, bounded by the bytes left (each element takes at least
    /// `min_len`), so a damaged count cannot make a huge allocation.
    fn count(&mut self, min_len: usize) -> Option<usize> {
        let n = u32::from_be_bytes(self.take()?) as usize;
        (n.saturating_mul(min_len) <= self.0.len()).then_some(n)
    }
}

/// Reads a record value; `None` if it is not one this version wrote.
pub fn decode(v: &[u8]) -> Option<TxnMeta> {
    let mut r = R(v);
    if r.take::<1>()?[0] != VERSION {
        return None;
    }
    let producer_id = i64::from_be_bytes(r.take()?);
    let epoch = i16::from_be_bytes(r.take()?);
    let timeout_ms = i64::from_be_bytes(r.take()?);
    let state = TxnState::from_code(r.take::<1>()?[0])?;
    let started_ms = i64::from_be_bytes(r.take()?);
    let updated_ms = i64::from_be_bytes(r.take()?);
    let mut partitions = BTreeSet::new();
    for _ in 0..r.count(6)? {
        let t = r.string()?;
        partitions.insert((t, u32::from_be_bytes(r.take()?)));
    }
    let mut offsets = BTreeMap::new();
    for _ in 0..r.count(6)? {
        let g = r.string()?;
        let mut offs = BTreeMap::new();
        for _ in 0..r.count(20)? {
            let t = r.string()?;
            let p = u32::from_be_bytes(r.take()?);
            let o = i64::from_be_bytes(r.take()?);
            let e = i32::from_be_bytes(r.take()?);
            offs.insert((t, p), (o, e, r.string()?));
        }
        offsets.insert(g, offs);
    }
    r.0.is_empty().then_some(TxnMeta {
        producer_id,
        epoch,
        timeout_ms,
        state,
        partitions,
        offsets,
        started_ms,
        updated_ms,
    })
}

/// The record of a change of `id` (`None`: the id is forgotten).
pub fn record(id: &str, m: Option<&TxnMeta>, ts: i64) -> Record {
    Record {
        timestamp: ts,
        key: Some(id.as_bytes().to_vec()),
        value: m.map(encode),
        headers: vec![],
    }
}

/// Applies stored records (replay): each id's latest state wins.
pub fn apply(states: &mut HashMap<String, TxnMeta>, recs: &[RecordView<'_>]) {
    for r in recs {
        let Some(id) = r.key.and_then(|k| std::str::from_utf8(k).ok()) else {
            continue;
        };
        match r.value.and_then(decode) {
            Some(m) if m.state != TxnState::Dead => {
                states.insert(id.to_string(), m);
            }
            _ => {
                states.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TxnMeta {
        let mut m = TxnMeta {
            producer_id: 42,
            epoch: 3,
            timeout_ms: 60_000,
            state: TxnState::PrepareCommit,
            partitions: BTreeSet::new(),
            offsets: BTreeMap::new(),
            started_ms: 1,
            updated_ms: 2,
        };
        m.partitions.insert(("a".into(), 0));
        m.partitions.insert(("b".into(), 7));
        let mut g = BTreeMap::new();
        g.insert(("in".to_string(), 1u32), (99i64, 4i32, "md".to_string()));
        m.offsets.insert("group".into(), g);
        m.offsets.insert("empty".into(), BTreeMap::new());
        m
    }

    #[test]
    fn a_state_round_trips_and_damage_is_refused() {
        let m = meta();
        let b = encode(&m);
        assert_eq!(decode(&b), Some(m));
        for cut in 0..b.len() {
            assert_eq!(decode(&b[..cut]), None, "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[0] = 9;
        assert_eq!(decode(&bad), None);
        // A huge count in a short record is refused, not allocated.
        let mut huge = b[..36].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&huge), None);
    }

    #[test]
    fn replay_keeps_the_latest_state_and_drops_forgotten_ids() {
        let m = meta();
        let recs = [
            record("t1", Some(&m), 1),
            record("t2", Some(&m), 1),
            record("t2", None, 2),
        ];
        let batch = levee_engine::batch::build_batch(&recs);
        let views = levee_engine::batch::records(&batch).unwrap();
        let mut states = HashMap::new();
        apply(&mut states, &views);
        assert_eq!(states.len(), 1);
        assert_eq!(states.get("t1"), Some(&m));
    }
}
