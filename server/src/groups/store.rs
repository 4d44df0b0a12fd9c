//! A group's committed offsets and where they are kept: a log of its own,
//! written with `fsync = always`. Each commit is one batch of records
//! (key: topic and partition; value: offset, timestamp, metadata; no value:
//! the offset was removed); every [`SNAPSHOT_EVERY_BYTES`] of commits a
//! snapshot batch of all offsets follows, opened by a marker record, so
//! retention can drop older segments and replay at start-up stays short.

use crate::error::{OpError, OpResult};
use levee_engine::batch::{build_batch, records, split_batches, Record, RecordView};
use levee_engine::{FsyncPolicy, Log, LogConfig};
use levee_schemas::proto::ErrorCode;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Bytes of commits between two snapshots of a group's offsets.
pub const SNAPSHOT_EVERY_BYTES: u64 = 2 << 20;
/// Key of the record that opens a snapshot batch.
const SNAPSHOT_MARKER: &[u8] = b"S";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
    pub timestamp_ms: i64,
    /// The leader epoch of the record at `offset - 1` as the consumer saw
    /// it (Kafka's KIP-320), -1 when not given. Stored in a record header,
    /// so records without one (and older brokers) read -1.
    pub leader_epoch: i32,
}

/// The record header that carries a committed offset's leader epoch.
const EPOCH_HEADER: &[u8] = b"leader_epoch";

fn epoch_headers(c: Option<&Committed>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    match c {
        Some(c) if c.leader_epoch >= 0 => vec![(
            EPOCH_HEADER.to_vec(),
            Some(c.leader_epoch.to_be_bytes().to_vec()),
        )],
        _ => vec![],
    }
}

fn epoch_of(r: &RecordView<'_>) -> i32 {
    r.headers
        .iter()
        .find(|(k, _)| *k == EPOCH_HEADER)
        .and_then(|(_, v)| v.and_then(|v| v.try_into().ok()))
        .map_or(-1, i32::from_be_bytes)
}

/// A group's committed offsets by (topic, partition).
pub type OffsetMap = BTreeMap<(String, u32), Committed>;

/// One change of a commit: set an offset (`Some`) or remove it (`None`).
pub type OffsetChange = ((String, u32), Option<Committed>);

fn offset_key(topic: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 5);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_le_bytes());
    k
}

fn parse_key(k: &[u8]) -> Option<(String, u32)> {
    let zero = k.iter().position(|&b| b == 0)?;
    let topic = std::str::from_utf8(&k[..zero]).ok()?.to_string();
    let p = u32::from_le_bytes(k.get(zero + 1..zero + 5)?.try_into().ok()?);
    Some((topic, p))
}

fn offset_value(c: &Committed) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + c.metadata.len());
    v.extend_from_slice(&c.offset.to_le_bytes());
    v.extend_from_slice(&c.timestamp_ms.to_le_bytes());
    v.extend_from_slice(c.metadata.as_bytes());
    v
}

fn parse_value(v: &[u8]) -> Option<Committed> {
    Some(Committed {
        offset: i64::from_le_bytes(v.get(..8)?.try_into().ok()?),
        timestamp_ms: i64::from_le_bytes(v.get(8..16)?.try_into().ok()?),
        metadata: String::from_utf8_lossy(v.get(16..)?).into_owned(),
        leader_epoch: -1,
    })
}

/// The records of one commit.
pub fn commit_records(changes: &[OffsetChange], timestamp_ms: i64) -> Vec<Record> {
    changes
        .iter()
        .map(|((t, p), c)| Record {
            timestamp: timestamp_ms,
            key: Some(offset_key(t, *p)),
            value: c.as_ref().map(offset_value),
            headers: vec![],
        })
        .collect()
}

/// The records of a snapshot of every offset.
pub fn snapshot_records(offsets: &OffsetMap, now_ms: i64) -> Vec<Record> {
    std::iter::once(Record {
        timestamp: now_ms,
        key: Some(SNAPSHOT_MARKER.to_vec()),
        value: None,
        headers: vec![],
    })
    .chain(offsets.iter().map(|((t, p), c)| Record {
        timestamp: c.timestamp_ms,
        key: Some(offset_key(t, *p)),
        value: Some(offset_value(c)),
        headers: vec![],
    }))
    .collect()
}

/// Applies one stored batch's records to `offsets` (replay).
pub fn apply_records(offsets: &mut OffsetMap, recs: &[RecordView<'_>]) {
    for (i, r) in recs.iter().enumerate() {
        if i == 0 && r.key == Some(SNAPSHOT_MARKER) {
            offsets.clear();
            continue;
        }
        let Some(key) = r.key.and_then(parse_key) else {
            continue;
        };
        match r.value.and_then(parse_value) {
            Some(c) => {
                offsets.insert(key, c);
            }
            None => {
                offsets.remove(&key);
            }
        }
    }
}

/// Applies a commit's changes to `offsets`.
pub fn apply_changes(offsets: &mut OffsetMap, changes: Vec<OffsetChange>) {
    for (k, v) in changes {
        match v {
            Some(v) => {
                offsets.insert(k, v);
            }
            None => {
                offsets.remove(&k);
            }
        }
    }
}

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4 << 20,
        retention_bytes: Some(16 << 20),
        retention_age: None,
        segment_age: None,
        fsync: FsyncPolicy::Always,
        write_chunk_bytes: 64 << 10,
        max_inflight_writes: 2,
        tail_cache_bytes: 256 << 10,
        index_cache_bytes: 64 << 10,
        read_ahead_bytes: 256 << 10,
        read_ahead_windows: 1,
        preallocate_bytes: 4 << 20,
        retention_check_interval: Duration::from_secs(30),
        ..LogConfig::default()
    }
}

fn storage(what: &str, e: impl std::fmt::Display) -> OpError {
    OpError::new(ErrorCode::StorageError, format!("{what}: {e}"))
}

/// A failed write of the offsets log: a full disk says so.
fn write_failed(what: &str, e: levee_engine::LogError) -> OpError {
    if e.is_no_space() {
        OpError::disk_full(format!("{what}: {e}"))
    } else {
        storage(what, e)
    }
}

/// A group's offsets log.
pub struct OffsetLog {
    pub log: Log,
    bytes_since_snapshot: Cell<u64>,
}

impl OffsetLog {
    pub async fn open(dir: &Path) -> OpResult<OffsetLog> {
        let log = Log::open(dir, log_config())
            .await
            .map_err(|e| storage("opening a group's offsets", e))?;
        Ok(OffsetLog {
            log,
            bytes_since_snapshot: Cell::new(0),
        })
    }

    /// Rebuilds the committed offsets from the log.
    pub async fn replay(&self) -> OpResult<OffsetMap> {
        let mut offsets = BTreeMap::new();
        let mut next = self.log.log_start_offset();
        let end = self.log.log_end_offset();
        while next < end {
            let out = self
                .log
                .read(next, 1 << 20, None)
                .await
                .map_err(|e| storage("replaying group offsets", e))?;
            if out.data.is_empty() {
                break;
            }
            for b in split_batches(&out.data) {
                let recs = records(b).map_err(|e| storage("replaying group offsets", e))?;
                apply_records(&mut offsets, &recs);
            }
            next = out.next_offset;
        }
        Ok(offsets)
    }

    /// Appends a commit durably. Returns whether a snapshot is due.
    pub async fn append_commit(&self, recs: &[Record]) -> OpResult<bool> {
        let batch = build_batch(recs);
        let len = batch.len() as u64;
        self.log
            .append_durable(batch)
            .await
            .map_err(|e| write_failed("storing offsets", e))?;
        let since = self.bytes_since_snapshot.get() + len;
        self.bytes_since_snapshot.set(since);
        Ok(since >= SNAPSHOT_EVERY_BYTES)
    }

    /// Writes every committed offset as one batch, so older segments can go.
    pub async fn snapshot(&self, offsets: &OffsetMap, now_ms: i64) -> OpResult<()> {
        let recs = snapshot_records(offsets, now_ms);
        self.log
            .append_durable(build_batch(&recs))
            .await
            .map_err(|e| write_failed("writing an offsets snapshot", e))?;
        self.bytes_since_snapshot.set(0);
        Ok(())
    }
}

// ---------------------------------------------------------------------
// Group state in the internal offsets topic (`__consumer_offsets`): every
// group of one partition of it, as records whose keys name the group.
// A commit is one batch of offset records; a rebalance writes the group's
// generation; deleting a group writes tombstones (no value) for all of its
// keys. The records are set operations, so a snapshot (every offset and
// generation of every group of the partition, written again) makes
// everything before it unneeded: the leader then drops those segments
// (`Log::delete_before`), bounding the topic by groups x partitions.

const KEY_OFFSET: u8 = b'O';
const KEY_GROUP: u8 = b'G';
/// A transaction's pending offsets of a partition (KIP-447): the value is
/// until when the mark holds (wall-clock ms); no value clears it.
const KEY_PENDING: u8 = b'P';

/// What a group's metadata record holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMeta {
    /// The last generation handed out: a new coordinator goes on from it,
    /// so a generation number never repeats.
    pub generation: i32,
    /// `consumer` for Kafka consumer groups, empty for native ones.
    pub protocol_type: String,
    /// When (wall-clock ms) this generation was first written, 0 if not
    /// known: a group with no members loaded by a new coordinator counts
    /// its offsets retention from its last generation or commit, not from
    /// the load. Kept in a record header, so snapshots keep it.
    pub written_ms: i64,
}

/// The record header that carries a generation's first write time.
const WRITTEN_HEADER: &[u8] = b"written_ms";

/// Partitions whose offsets a transaction sent (TxnOffsetCommit) and has
/// neither committed nor aborted, with until when (wall-clock ms) that
/// holds at most.
pub type PendingMap = BTreeMap<(String, u32), i64>;

/// One group's stored state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredGroup {
    pub offsets: OffsetMap,
    pub meta: Option<GroupMeta>,
    pub pending: PendingMap,
}

/// Every group of one offsets-topic partition.
pub type StoredGroups = BTreeMap<String, StoredGroup>;

fn group_offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + topic.len() + 7);
    k.push(KEY_OFFSET);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(&offset_key(topic, partition));
    k
}

fn group_pending_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut k = group_offset_key(group, topic, partition);
    k[0] = KEY_PENDING;
    k
}

fn group_meta_key(group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + 1);
    k.push(KEY_GROUP);
    k.extend_from_slice(group.as_bytes());
    k
}

fn meta_value(m: &GroupMeta) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + m.protocol_type.len());
    v.extend_from_slice(&m.generation.to_le_bytes());
    v.extend_from_slice(m.protocol_type.as_bytes());
    v
}

fn parse_meta(v: &[u8]) -> Option<GroupMeta> {
    Some(GroupMeta {
        generation: i32::from_le_bytes(v.get(..4)?.try_into().ok()?),
        protocol_type: String::from_utf8_lossy(v.get(4..)?).into_owned(),
        written_ms: 0,
    })
}

/// The records of one group's commit.
pub fn group_commit_records(group: &str, changes: &[OffsetChange], ts: i64) -> Vec<Record> {
    changes
        .iter()
        .map(|((t, p), c)| Record {
            timestamp: ts,
            key: Some(group_offset_key(group, t, *p)),
            value: c.as_ref().map(offset_value),
            headers: epoch_headers(c.as_ref()),
        })
        .collect()
}

/// The records that mark `parts` of `group` pending until `until_ms`
/// (`Some`), or clear the mark (`None`).
pub fn group_pending_records(
    group: &str,
    parts: &[(String, u32)],
    until_ms: Option<i64>,
    ts: i64,
) -> Vec<Record> {
    parts
        .iter()
        .map(|(t, p)| Record {
            timestamp: ts,
            key: Some(group_pending_key(group, t, *p)),
            value: until_ms.map(|u| u.to_le_bytes().to_vec()),
            headers: vec![],
        })
        .collect()
}

/// The record of a group's generation.
/// (`meta.written_ms`, if known, else `ts`, is its write time.)
pub fn group_meta_record(group: &str, meta: &GroupMeta, ts: i64) -> Record {
    let written = if meta.written_ms > 0 {
        meta.written_ms
    } else {
        ts
    };
    Record {
        timestamp: ts,
        key: Some(group_meta_key(group)),
        value: Some(meta_value(meta)),
        headers: vec![(
            WRITTEN_HEADER.to_vec(),
            Some(written.to_be_bytes().to_vec()),
        )],
    }
}

/// The records that delete a group: a tombstone per offset and pending
/// mark, then one for its metadata.
pub fn group_tombstones(group: &str, g: &StoredGroup, ts: i64) -> Vec<Record> {
    g.offsets
        .keys()
        .map(|(t, p)| Record {
            timestamp: ts,
            key: Some(group_offset_key(group, t, *p)),
            value: None,
            headers: vec![],
        })
        .chain(g.pending.keys().map(|(t, p)| Record {
            timestamp: ts,
            key: Some(group_pending_key(group, t, *p)),
            value: None,
            headers: vec![],
        }))
        .chain(std::iter::once(Record {
            timestamp: ts,
            key: Some(group_meta_key(group)),
            value: None,
            headers: vec![],
        }))
        .collect()
}

/// A snapshot of `groups`: their records again (pending marks that have
/// not lapsed by `ts`), in batches of at most about `batch_bytes` of keys
/// and values each.
pub fn snapshot_batches<'a>(
    groups: impl Iterator<Item = (&'a str, &'a StoredGroup)>,
    ts: i64,
    batch_bytes: usize,
) -> Vec<Vec<Record>> {
    let mut out = vec![Vec::new()];
    let mut size = 0usize;
    let mut push = |r: Record, out: &mut Vec<Vec<Record>>| {
        let n = r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len) + 16;
        if size + n > batch_bytes && out.last().is_some_and(|b| !b.is_empty()) {
            out.push(Vec::new());
            size = 0;
        }
        size += n;
        if let Some(b) = out.last_mut() {
            b.push(r);
        }
    };
    for (name, g) in groups {
        if let Some(m) = &g.meta {
            push(group_meta_record(name, m, ts), &mut out);
        }
        for r in group_commit_records(
            name,
            &g.offsets
                .iter()
                .map(|(k, c)| (k.clone(), Some(c.clone())))
                .collect::<Vec<_>>(),
            ts,
        ) {
            push(r, &mut out);
        }
        for (tp, until) in g.pending.iter().filter(|(_, u)| **u > ts) {
            for r in group_pending_records(name, std::slice::from_ref(tp), Some(*until), ts) {
                push(r, &mut out);
            }
        }
    }
    out.retain(|b| !b.is_empty());
    out
}

/// The group and (topic, partition) of an offset or pending-mark key
/// (after its kind byte).
fn parse_group_partition_key(rest: &[u8]) -> Option<(&str, (String, u32))> {
    let zero = rest.iter().position(|&b| b == 0)?;
    let group = std::str::from_utf8(&rest[..zero]).ok()?;
    Some((group, parse_key(&rest[zero + 1..])?))
}

/// Applies one stored batch's records to `groups` (loading a partition).
/// Records it does not know are skipped.
pub fn apply_group_records(groups: &mut StoredGroups, recs: &[RecordView<'_>]) {
    for r in recs {
        let Some(key) = r.key else { continue };
        match key.split_first() {
            Some((&KEY_OFFSET, rest)) => {
                let Some((group, tp)) = parse_group_partition_key(rest) else {
                    continue;
                };
                match r.value.and_then(parse_value) {
                    Some(mut c) => {
                        c.leader_epoch = epoch_of(r);
                        groups
                            .entry(group.to_string())
                            .or_default()
                            .offsets
                            .insert(tp, c);
                    }
                    None => {
                        if let Some(g) = groups.get_mut(group) {
                            g.offsets.remove(&tp);
                        }
                    }
                }
            }
            Some((&KEY_PENDING, rest)) => {
                let Some((group, tp)) = parse_group_partition_key(rest) else {
                    continue;
                };
                let until = r
                    .value
                    .and_then(|v| v.try_into().ok())
                    .map(i64::from_le_bytes);
                match until {
                    Some(u) => {
                        groups
                            .entry(group.to_string())
                            .or_default()
                            .pending
                            .insert(tp, u);
                    }
                    None => {
                        if let Some(g) = groups.get_mut(group) {
                            g.pending.remove(&tp);
                        }
                    }
                }
            }
            Some((&KEY_GROUP, rest)) => {
                let Ok(group) = std::str::from_utf8(rest) else {
                    continue;
                };
                match r.value.and_then(parse_meta) {
                    Some(mut m) => {
                        // Records of older versions: their own timestamp.
                        m.written_ms = r
                            .headers
                            .iter()
                            .find(|(k, _)| *k == WRITTEN_HEADER)
                            .and_then(|(_, v)| v.and_then(|v| v.try_into().ok()))
                            .map_or(r.timestamp, i64::from_be_bytes);
                        groups.entry(group.to_string()).or_default().meta = Some(m)
                    }
                    // The group was deleted.
                    None => {
                        groups.remove(group);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_leader_epoch_survives_replay_and_none_reads_minus_one() {
        let with = Committed {
            offset: 10,
            metadata: "m".into(),
            timestamp_ms: 1,
            leader_epoch: 7,
        };
        let without = Committed {
            leader_epoch: -1,
            ..with.clone()
        };
        let changes = vec![
            (("t".to_string(), 0), Some(with.clone())),
            (("t".to_string(), 1), Some(without.clone())),
        ];
        let batch = build_batch(&group_commit_records("g", &changes, 1));
        let recs = records(&batch).unwrap();
        let mut groups = StoredGroups::new();
        apply_group_records(&mut groups, &recs);
        let g = &groups["g"];
        assert_eq!(g.offsets[&("t".to_string(), 0)], with);
        assert_eq!(g.offsets[&("t".to_string(), 1)], without);
    }

    #[test]
    fn group_records_replay_to_the_live_state_and_a_snapshot_replaces_the_past() {
        let c = |o| Committed {
            offset: o,
            metadata: "m".into(),
            timestamp_ms: 1,
            leader_epoch: -1,
        };
        let k = |p| ("t".to_string(), p);
        let mut live = StoredGroups::new();
        let mut stored: Vec<Vec<u8>> = Vec::new();
        let commit =
            |live: &mut StoredGroups, stored: &mut Vec<Vec<u8>>, g: &str, ch: Vec<OffsetChange>| {
                stored.push(build_batch(&group_commit_records(g, &ch, 1)));
                let e = live.entry(g.to_string()).or_default();
                apply_changes(&mut e.offsets, ch);
            };
        commit(
            &mut live,
            &mut stored,
            "a",
            vec![(k(0), Some(c(5))), (k(1), Some(c(7)))],
        );
        commit(&mut live, &mut stored, "b.x", vec![(k(0), Some(c(1)))]);
        // Written at 2: the snapshot below (at 5) keeps that time.
        let meta = GroupMeta {
            generation: 4,
            protocol_type: "consumer".into(),
            written_ms: 2,
        };
        stored.push(build_batch(&[group_meta_record("a", &meta, 2)]));
        live.get_mut("a").unwrap().meta = Some(meta.clone());
        commit(&mut live, &mut stored, "a", vec![(k(1), None)]);
        // Deleting group b: tombstones for everything it has.
        let b = live.remove("b.x").unwrap();
        stored.push(build_batch(&group_tombstones("b.x", &b, 3)));
        commit(&mut live, &mut stored, "c", vec![(k(9), Some(c(2)))]);

        let mut replayed = StoredGroups::new();
        for batch in &stored {
            apply_group_records(&mut replayed, &records(batch).unwrap());
        }
        assert_eq!(replayed, live);
        assert_eq!(replayed["a"].meta, Some(meta));
        assert!(!replayed.contains_key("b.x"));

        // A snapshot in small batches, then one more commit: replaying
        // only from the snapshot on gives the same state.
        let snap = snapshot_batches(live.iter().map(|(n, g)| (n.as_str(), g)), 5, 40);
        assert!(snap.len() > 1, "small batches: {}", snap.len());
        let from = stored.len();
        for b in &snap {
            stored.push(build_batch(b));
        }
        commit(&mut live, &mut stored, "a", vec![(k(3), Some(c(8)))]);
        let mut tail = StoredGroups::new();
        for batch in &stored[from..] {
            apply_group_records(&mut tail, &records(batch).unwrap());
        }
        assert_eq!(tail, live);
    }

    #[test]
    fn pending_marks_replay_end_with_a_commit_or_tombstone_and_lapse_out_of_snapshots() {
        let c = Committed {
            offset: 3,
            metadata: String::new(),
            timestamp_ms: 1,
            leader_epoch: -1,
        };
        let k = |p| ("t".to_string(), p);
        let parts = vec![k(0), k(1), k(2)];
        let mut stored = vec![
            build_batch(&group_pending_records("g", &parts, Some(1_000), 1)),
            build_batch(&group_pending_records("h", &parts[..1], Some(50), 1)),
        ];
        let replay = |stored: &[Vec<u8>]| {
            let mut groups = StoredGroups::new();
            for b in stored {
                apply_group_records(&mut groups, &records(b).unwrap());
            }
            groups
        };
        let g = replay(&stored);
        assert_eq!(g["g"].pending.len(), 3);
        assert_eq!(g["g"].pending[&k(1)], 1_000);
        assert_eq!(g["h"].pending[&k(0)], 50);
        // A committed transaction: its offset and the end of the mark in
        // one batch; an aborted one: a tombstone of the mark only.
        let mut recs = group_commit_records("g", &[(k(0), Some(c.clone()))], 2);
        recs.extend(group_pending_records("g", &parts[..1], None, 2));
        stored.push(build_batch(&recs));
        stored.push(build_batch(&group_pending_records(
            "g",
            &parts[1..2],
            None,
            2,
        )));
        let g = replay(&stored);
        assert_eq!(g["g"].offsets[&k(0)], c);
        assert_eq!(
            g["g"].pending.keys().cloned().collect::<Vec<_>>(),
            vec![k(2)]
        );
        // A snapshot at 100 keeps g's mark, not h's lapsed one; deleting
        // g removes its marks too.
        let snap = snapshot_batches(g.iter().map(|(n, s)| (n.as_str(), s)), 100, 1 << 20);
        let after = replay(&snap.iter().map(|b| build_batch(b)).collect::<Vec<_>>());
        assert_eq!(after["g"].pending[&k(2)], 1_000);
        assert!(after.get("h").is_none_or(|h| h.pending.is_empty()));
        stored.push(build_batch(&group_tombstones("g", &g["g"], 3)));
        assert!(!replay(&stored).contains_key("g"));
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(
            parse_key(&offset_key("t.x", 7)),
            Some(("t.x".to_string(), 7))
        );
        let c = Committed {
            offset: 42,
            metadata: "m".into(),
            timestamp_ms: 5,
            leader_epoch: -1,
        };
        let back = parse_value(&offset_value(&c)).unwrap();
        assert_eq!(
            (back.offset, back.metadata.as_str(), back.timestamp_ms),
            (42, "m", 5)
        );
    }

    #[test]
    fn replaying_commits_and_a_snapshot_gives_the_latest_offsets() {
        let c = |o| Committed {
            offset: o,
            metadata: String::new(),
            timestamp_ms: 1,
            leader_epoch: -1,
        };
        let k = |p| ("t".to_string(), p);
        let mut live = OffsetMap::new();
        let mut stored: Vec<Vec<u8>> = Vec::new();
        let commits: Vec<Vec<OffsetChange>> = vec![
            vec![(k(0), Some(c(5))), (k(1), Some(c(7)))],
            vec![(k(0), Some(c(9)))],
            vec![(k(1), None)],
        ];
        for ch in commits {
            stored.push(build_batch(&commit_records(&ch, 1)));
            apply_changes(&mut live, ch);
        }
        stored.push(build_batch(&snapshot_records(&live, 2)));
        stored.push(build_batch(&commit_records(&[(k(2), Some(c(1)))], 3)));
        apply_changes(&mut live, vec![(k(2), Some(c(1)))]);
        // Replaying everything, or only from the snapshot on, agrees.
        for from in [0, 3] {
            let mut replayed = OffsetMap::new();
            for b in &stored[from..] {
                apply_records(&mut replayed, &records(b).unwrap());
            }
            assert_eq!(replayed, live, "replay from batch {from}");
        }
        assert_eq!(live.get(&k(0)).map(|c| c.offset), Some(9));
        assert!(!live.contains_key(&k(1)));
    }
}
