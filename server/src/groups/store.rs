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

#[cfg(test)]
mod tests {
    use super::*;

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
