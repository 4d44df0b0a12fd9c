//! Durable Raft storage: one append-only log file of CRC32C-framed records,
//! replayed into memory on open, plus `raft::Storage` over the in-memory copy.
//!
//! All I/O here is blocking `std::fs` I/O done on the coordinator thread.
//! That is deliberate: the coordinator is not on the data path, its writes
//! are small and rare, and the Ready contract needs them durable before
//! messages go out anyway.
//!
//! # On-disk format
//!
//! `<data_dir>/coordinator/raft.log`:
//!
//! ```text
//! file   := magic "LEVRAFT1" record*
//! record := len:u32 LE | crc:u32 LE (CRC32C of body) | body[len]
//! body   := kind:u8 | payload
//! kind 1 Entries   payload = (n:u32 LE | protobuf eraftpb::Entry[n])*
//!                  appended at entries[0].index; any existing entry at or
//!                  after that index is replaced (this is the "truncate
//!                  after" marker: Raft's conflicting suffix is dropped)
//! kind 2 HardState payload = protobuf eraftpb::HardState
//! kind 3 ConfState payload = protobuf eraftpb::ConfState
//! kind 4 Snapshot  payload = protobuf eraftpb::Snapshot (metadata + the
//!                  JSON state machine); drops every entry up to its index
//! kind 5 Identity  payload = node_id:u64 LE (first record of the file)
//! ```
//!
//! Replay stops at the first record that is short, fails its CRC, or cannot
//! be decoded: that is a torn tail from a crash mid-write; the file is cut
//! back to the last good record. A record that passes its CRC but does not
//! fit the log (a gap in indexes) is real corruption and refuses the open.
//!
//! Compaction rewrites the whole file (identity, snapshot, conf state, hard
//! state, remaining entries) into `raft.log.tmp`, fsyncs it, renames it over
//! `raft.log` and fsyncs the directory.

use crate::error::StorageError;
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const LOG_FILE: &str = "raft.log";
const MAGIC: &[u8; 8] = b"LEVRAFT1";
const KIND_ENTRIES: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_CONF_STATE: u8 = 3;
const KIND_SNAPSHOT: u8 = 4;
const KIND_IDENTITY: u8 = 5;
/// Largest record accepted on replay (a snapshot of the whole metadata).
const MAX_RECORD: usize = 256 << 20;

/// Raft storage persisted in `<data_dir>/coordinator/raft.log`.
pub struct DiskStorage {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    node_id: u64,
    hard_state: HardState,
    conf_state: ConfState,
    /// Last snapshot (metadata + state-machine data); index 0 = none.
    snapshot: Snapshot,
    entries: Vec<Entry>,
    /// Records buffered since the last `sync`.
    pending: Vec<u8>,
    /// Number of records the last open recovered and the bytes it cut.
    pub recovered_records: usize,
    pub truncated_bytes: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn encode_record(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = (payload.len() + 1) as u32;
    let mut crc = crc32c::crc32c(&[kind]);
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

fn pb_bytes<M: PbMessage>(m: &M) -> Vec<u8> {
    // Encoding an in-memory message only fails on missing required fields,
    // which proto3 messages do not have.
    m.write_to_bytes().unwrap_or_default()
}

fn encode_entries(ents: &[Entry]) -> Vec<u8> {
    let mut p = Vec::new();
    for e in ents {
        let b = pb_bytes(e);
        p.extend_from_slice(&(b.len() as u32).to_le_bytes());
        p.extend_from_slice(&b);
    }
    p
}

fn decode_entries(mut p: &[u8]) -> Option<Vec<Entry>> {
    let mut out = Vec::new();
    while !p.is_empty() {
        if p.len() < 4 {
            return None;
        }
        let n = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
        p = &p[4..];
        if p.len() < n {
            return None;
        }
        out.push(Entry::parse_from_bytes(&p[..n]).ok()?);
        p = &p[n..];
    }
    Some(out)
}

/// One decoded record.
enum Record {
    Entries(Vec<Entry>),
    HardState(HardState),
    ConfState(ConfState),
    Snapshot(Snapshot),
    Identity(u64),
}

/// Splits `buf` into records; returns them and the length of the valid prefix.
fn parse_records(buf: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut pos = 0usize;
    loop {
        let rest = &buf[pos..];
        if rest.len() < 9 {
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 || len > MAX_RECORD || rest.len() < 8 + len {
            break;
        }
        let body = &rest[8..8 + len];
        if crc32c::crc32c(body) != crc {
            break;
        }
        let payload = &body[1..];
        let rec = match body[0] {
            KIND_ENTRIES => decode_entries(payload).map(Record::Entries),
            KIND_HARD_STATE => HardState::parse_from_bytes(payload)
                .ok()
                .map(Record::HardState),
            KIND_CONF_STATE => ConfState::parse_from_bytes(payload)
                .ok()
                .map(Record::ConfState),
            KIND_SNAPSHOT => Snapshot::parse_from_bytes(payload)
                .ok()
                .map(Record::Snapshot),
            KIND_IDENTITY if payload.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(payload);
                Some(Record::Identity(u64::from_le_bytes(b)))
            }
            _ => None,
        };
        match rec {
            Some(r) => out.push(r),
            None => break,
        }
        pos += 8 + len;
    }
    (out, pos)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl DiskStorage {
    /// Opens (or creates) the storage in `dir` (normally
    /// `<data_dir>/coordinator`). A new log starts with `voters` as its
    /// configuration; an existing one must belong to `node_id` and have the
    /// same voters.
    pub fn open(dir: &Path, node_id: u64, voters: &[u64]) -> Result<DiskStorage, StorageError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(LOG_FILE);
        let exists = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut st = DiskStorage {
            dir: dir.to_path_buf(),
            path: path.clone(),
            file: file.try_clone().map_err(io_err(&path))?,
            node_id,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot: Snapshot::default(),
            entries: Vec::new(),
            pending: Vec::new(),
            recovered_records: 0,
            truncated_bytes: 0,
        };
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(io_err(&path))?;
        if !exists || buf.len() < MAGIC.len() {
            // Fresh (or torn before the magic was complete): start a new log.
            let mut init = MAGIC.to_vec();
            encode_record(&mut init, KIND_IDENTITY, &node_id.to_le_bytes());
            let cs = ConfState {
                voters: voters.to_vec(),
                ..Default::default()
            };
            encode_record(&mut init, KIND_CONF_STATE, &pb_bytes(&cs));
            file.set_len(0).map_err(io_err(&path))?;
            file.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
            file.write_all(&init).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            sync_dir(dir)?;
            st.conf_state = cs;
            return Ok(st);
        }
        if &buf[..MAGIC.len()] != MAGIC {
            return Err(StorageError::Corrupt {
                path,
                reason: "not a Levee coordinator log (bad magic)".into(),
            });
        }
        let (records, valid) = parse_records(&buf[MAGIC.len()..]);
        if records.is_empty() {
            // Torn while the log was being created: nothing was ever
            // acknowledged from it, so start it again.
            drop(file);
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            return DiskStorage::open(dir, node_id, voters);
        }
        let valid = (valid + MAGIC.len()) as u64;
        st.recovered_records = records.len();
        let mut identity = None;
        for r in records {
            match r {
                Record::Identity(id) => identity = Some(id),
                Record::HardState(hs) => st.hard_state = hs,
                Record::ConfState(cs) => st.conf_state = cs,
                Record::Snapshot(s) => {
                    st.install_snapshot(s)
                        .map_err(|reason| StorageError::Corrupt {
                            path: path.clone(),
                            reason,
                        })?
                }
                Record::Entries(e) => {
                    st.append_mem(&e).map_err(|reason| StorageError::Corrupt {
                        path: path.clone(),
                        reason,
                    })?
                }
            }
        }
        match identity {
            Some(id) if id == node_id => {}
            Some(id) => {
                return Err(StorageError::Mismatch {
                    path,
                    found: format!("node {id}"),
                    configured: format!("node {node_id}"),
                })
            }
            None => {
                return Err(StorageError::Corrupt {
                    path,
                    reason: "the identity record is missing".into(),
                })
            }
        }
        let mut stored = st.conf_state.voters.clone();
        stored.sort_unstable();
        let mut want = voters.to_vec();
        want.sort_unstable();
        if stored != want {
            return Err(StorageError::Mismatch {
                path,
                found: format!("coordinators {stored:?}"),
                configured: format!("coordinators {want:?}"),
            });
        }
        if valid < buf.len() as u64 {
            st.truncated_bytes = buf.len() as u64 - valid;
            tracing::warn!(
                path = %path.display(),
                cut = st.truncated_bytes,
                "coordinator log had a torn tail; cut back to the last good record"
            );
            file.set_len(valid).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        st.file.seek(SeekFrom::End(0)).map_err(io_err(&path))?;
        Ok(st)
    }

    fn first_index_mem(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last_index_mem(&self) -> u64 {
        self.entries
            .last()
            .map(|e| e.index)
            .unwrap_or_else(|| self.snapshot_index())
    }

    /// Index of the last snapshot (0 if none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    /// The last snapshot (with the state-machine data), if any.
    pub fn last_snapshot(&self) -> Option<&Snapshot> {
        (self.snapshot_index() > 0).then_some(&self.snapshot)
    }

    /// Number of log entries after the last snapshot.
    pub fn entries_len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    fn append_mem(&mut self, ents: &[Entry]) -> Result<(), String> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index < self.first_index_mem() {
            // Entries below the snapshot are already covered by it; keep
            // only the part after it (happens when a snapshot record was
            // written after entries it covers).
            let keep: Vec<Entry> = ents
                .iter()
                .filter(|e| e.index >= self.first_index_mem())
                .cloned()
                .collect();
            return self.append_mem(&keep);
        }
        if first.index > self.last_index_mem() + 1 {
            return Err(format!(
                "gap in the log: last index {}, next record starts at {}",
                self.last_index_mem(),
                first.index
            ));
        }
        for w in ents.windows(2) {
            if w[1].index != w[0].index + 1 {
                return Err("entries of one record are not consecutive".into());
            }
        }
        let keep = (first.index - self.first_index_mem()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
        Ok(())
    }

    fn install_snapshot(&mut self, s: Snapshot) -> Result<(), String> {
        let meta = s.get_metadata();
        let index = meta.index;
        if index < self.snapshot_index() {
            return Err(format!(
                "snapshot at {index} is older than the one at {}",
                self.snapshot_index()
            ));
        }
        // Keep entries after the snapshot if they agree with it, else drop all.
        let agrees = self
            .entries
            .iter()
            .find(|e| e.index == index)
            .map(|e| e.term == meta.term)
            .unwrap_or(false);
        if agrees {
            self.entries.retain(|e| e.index > index);
        } else {
            self.entries.clear();
        }
        if self.hard_state.term < meta.term {
            self.hard_state.term = meta.term;
        }
        if self.hard_state.commit < index {
            self.hard_state.commit = index;
        }
        self.conf_state = meta.get_conf_state().clone();
        self.snapshot = s;
        Ok(())
    }

    /// Appends entries (replacing any conflicting suffix). Buffered until
    /// [`sync`](Self::sync).
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), StorageError> {
        if ents.is_empty() {
            return Ok(());
        }
        self.append_mem(ents)
            .map_err(|reason| StorageError::Corrupt {
                path: self.path.clone(),
                reason,
            })?;
        encode_record(&mut self.pending, KIND_ENTRIES, &encode_entries(ents));
        Ok(())
    }

    /// Records a new hard state. Buffered until [`sync`](Self::sync).
    pub fn set_hard_state(&mut self, hs: &HardState) {
        self.hard_state = hs.clone();
        encode_record(&mut self.pending, KIND_HARD_STATE, &pb_bytes(hs));
    }

    /// Records a new commit index. Buffered until [`sync`](Self::sync).
    pub fn set_commit(&mut self, commit: u64) {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs);
    }

    /// Installs a snapshot received from the leader. Buffered until
    /// [`sync`](Self::sync).
    pub fn apply_snapshot(&mut self, s: Snapshot) -> Result<(), StorageError> {
        encode_record(&mut self.pending, KIND_SNAPSHOT, &pb_bytes(&s));
        self.install_snapshot(s)
            .map_err(|reason| StorageError::Corrupt {
                path: self.path.clone(),
                reason,
            })
    }

    /// Writes buffered records and fsyncs the log (blocking).
    ///
    /// A failed write or sync (a full disk) leaves the file as it was
    /// before and the records buffered, so that the call can be made again:
    /// nothing torn stays in front of the records a retry writes whole
    /// (a reader takes a torn record for the end of the log).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let start = self.file.stream_position().map_err(io_err(&self.path))?;
        let res = if take_injected_full_disk(&self.dir) {
            // As a disk that fills in the middle of the write.
            let half = self.pending.len() / 2;
            self.file
                .write_all(&self.pending[..half])
                .and_then(|()| Err(std::io::Error::from_raw_os_error(28)))
        } else {
            self.file
                .write_all(&self.pending)
                .and_then(|()| self.file.sync_data())
        };
        if let Err(e) = res {
            let undone = self
                .file
                .set_len(start)
                .and_then(|()| self.file.seek(SeekFrom::Start(start)).map(|_| ()));
            if let Err(u) = undone {
                // The file may now end in a torn record: a retry must not
                // append after it (a restart drops it as a torn tail).
                return Err(StorageError::Corrupt {
                    path: self.path.clone(),
                    reason: format!("a write failed ({e}) and could not be undone: {u}"),
                });
            }
            return Err(io_err(&self.path)(e));
        }
        self.pending.clear();
        Ok(())
    }

    /// Takes a snapshot of the state machine at `index` (which must be
    /// applied) with `data`, drops the entries it covers and rewrites the
    /// log file atomically (temp file, fsync, rename, directory fsync).
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), StorageError> {
        self.sync()?;
        if index <= self.snapshot_index() || index > self.last_index_mem() {
            return Ok(());
        }
        let term = self.term(index).map_err(|e| StorageError::Corrupt {
            path: self.path.clone(),
            reason: format!("no term for snapshot index {index}: {e}"),
        })?;
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        self.entries.retain(|e| e.index > index);
        self.snapshot = snap;

        let mut out = MAGIC.to_vec();
        encode_record(&mut out, KIND_IDENTITY, &self.node_id.to_le_bytes());
        encode_record(&mut out, KIND_SNAPSHOT, &pb_bytes(&self.snapshot));
        encode_record(&mut out, KIND_CONF_STATE, &pb_bytes(&self.conf_state));
        encode_record(&mut out, KIND_HARD_STATE, &pb_bytes(&self.hard_state));
        if !self.entries.is_empty() {
            encode_record(&mut out, KIND_ENTRIES, &encode_entries(&self.entries));
        }
        let tmp = self.dir.join(format!("{LOG_FILE}.tmp"));
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&out).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        sync_dir(&self.dir)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        file.seek(SeekFrom::End(0)).map_err(io_err(&self.path))?;
        self.file = file;
        Ok(())
    }
}

/// Test hook: syncs of the storage in `dir` still to fail as on a full disk.
static INJECTED_FULL_DISK: std::sync::Mutex<Vec<(PathBuf, u32)>> =
    std::sync::Mutex::new(Vec::new());

/// Makes the next `n` syncs of the storage in `dir` write half of their
/// records and then fail with `ENOSPC`, as a disk that fills mid-write:
/// for tests of what follows.
#[doc(hidden)]
pub fn inject_full_disk(dir: &Path, n: u32) {
    let mut v = INJECTED_FULL_DISK.lock().unwrap_or_else(|p| p.into_inner());
    v.retain(|(d, _)| d != dir);
    v.push((dir.to_path_buf(), n));
}

fn take_injected_full_disk(dir: &Path) -> bool {
    let mut v = INJECTED_FULL_DISK.lock().unwrap_or_else(|p| p.into_inner());
    match v.iter_mut().find(|(d, n)| d == dir && *n > 0) {
        Some((_, n)) => {
            *n -= 1;
            true
        }
        None => false,
    }
}

fn store_err(e: raft::StorageError) -> raft::Error {
    raft::Error::Store(e)
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index_mem() {
            return Err(store_err(raft::StorageError::Compacted));
        }
        if high > self.last_index_mem() + 1 || low > high {
            return Err(store_err(raft::StorageError::Unavailable));
        }
        let off = self.first_index_mem();
        let mut ents = self.entries[(low - off) as usize..(high - off) as usize].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if idx < self.first_index_mem() {
            return Err(store_err(raft::StorageError::Compacted));
        }
        if idx > self.last_index_mem() {
            return Err(store_err(raft::StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first_index_mem()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_mem())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_mem())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_index() == 0 || self.snapshot_index() < request_index {
            return Err(store_err(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("payload-{index}-{term}").into_bytes().into(),
            ..Default::default()
        }
    }

    #[test]
    fn replay_after_reopen_and_conflicting_suffix() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = DiskStorage::open(dir.path(), 1, &[1, 2, 3]).unwrap();
            s.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>())
                .unwrap();
            let hs = HardState {
                term: 2,
                vote: 2,
                commit: 3,
                ..Default::default()
            };
            s.set_hard_state(&hs);
            // Conflicting suffix from a new leader replaces 4 and 5.
            s.append(&[entry(4, 2)]).unwrap();
            s.sync().unwrap();
        }
        let s = DiskStorage::open(dir.path(), 1, &[1, 2, 3]).unwrap();
        assert_eq!(s.last_index().unwrap(), 4);
        assert_eq!(s.term(4).unwrap(), 2);
        assert_eq!(s.term(3).unwrap(), 1);
        assert_eq!(s.hard_state().commit, 3);
        assert_eq!(s.hard_state().vote, 2);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        assert!(matches!(
            DiskStorage::open(dir.path(), 2, &[1, 2, 3]),
            Err(StorageError::Mismatch { .. })
        ));
        assert!(matches!(
            DiskStorage::open(dir.path(), 1, &[1]),
            Err(StorageError::Mismatch { .. })
        ));
    }

    #[test]
    fn compaction_keeps_snapshot_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = DiskStorage::open(dir.path(), 1, &[1]).unwrap();
            s.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>())
                .unwrap();
            s.set_commit(10);
            s.compact(7, b"state@7".to_vec()).unwrap();
            s.append(&[entry(11, 1)]).unwrap();
            s.sync().unwrap();
        }
        let s = DiskStorage::open(dir.path(), 1, &[1]).unwrap();
        assert_eq!(s.first_index().unwrap(), 8);
        assert_eq!(s.last_index().unwrap(), 11);
        assert_eq!(s.term(7).unwrap(), 1);
        assert!(s.term(6).is_err());
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(&snap.data[..], b"state@7");
        assert_eq!(snap.get_metadata().index, 7);
        assert_eq!(
            s.entries(8, 12, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            4
        );
        assert!(!dir.path().join("raft.log.tmp").exists());
    }

    /// Writes many records, then cuts the file at random points: every
    /// reopen must recover a prefix of the records written, never garbage.
    #[test]
    fn torn_tail_recovers_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut boundaries = Vec::new(); // (file length, last index) after each sync
        {
            let mut s = DiskStorage::open(dir.path(), 1, &[1, 2, 3]).unwrap();
            boundaries.push((std::fs::metadata(&path).unwrap().len(), 0u64));
            for i in 1..=60u64 {
                s.append(&[entry(i, 1 + i / 20)]).unwrap();
                s.sync().unwrap();
                boundaries.push((std::fs::metadata(&path).unwrap().len(), i));
                if i % 7 == 0 {
                    s.set_commit(i - 1);
                    s.sync().unwrap();
                    boundaries.push((std::fs::metadata(&path).unwrap().len(), i));
                }
            }
        }
        let full = std::fs::read(&path).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for round in 0..200 {
            let cut = if round == 0 {
                full.len()
            } else {
                rng.gen_range(MAGIC.len() + 1..full.len())
            };
            let mut data = full[..cut].to_vec();
            // Sometimes scribble over the tail as a torn sector would.
            if round % 3 == 0 && cut > 40 {
                for b in &mut data[cut - 5..cut] {
                    *b = rng.gen();
                }
            }
            std::fs::write(&path, &data).unwrap();
            let s = DiskStorage::open(dir.path(), 1, &[1, 2, 3]).unwrap();
            let last = s.last_index().unwrap();
            // The recovered log is a prefix: its last index is one of the
            // synced boundaries not beyond the cut (or one record short of
            // the scribbled one), and every entry is intact.
            let best = boundaries
                .iter()
                .filter(|(len, _)| *len as usize <= cut)
                .map(|(_, i)| *i)
                .max()
                .unwrap_or(0);
            assert!(last <= best, "round {round}: recovered {last} > {best}");
            if round % 3 != 0 {
                assert_eq!(last, best, "round {round}");
            }
            let ents = s
                .entries(1, last + 1, None, GetEntriesContext::empty(false))
                .unwrap();
            for (k, e) in ents.iter().enumerate() {
                assert_eq!(*e, entry(k as u64 + 1, 1 + (k as u64 + 1) / 20));
            }
            drop(s);
            // The torn tail was cut off: the file is now a clean prefix.
            let after = std::fs::read(&path).unwrap();
            // (A cut inside the first records re-creates the initial log.)
            assert!(after.len() <= cut.max(boundaries[0].0 as usize));
            assert_eq!(&after[..], &full[..after.len()]);
        }
    }
}
