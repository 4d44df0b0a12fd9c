//! A full disk: the broker's disk-full state, and the space reserve that
//! keeps the operator's ways out working when the disk is full.
//!
//! Produce fails with a storage error once a write of the data directory
//! fails with `ENOSPC`; the broker then reports the disk as full (`/health`,
//! `levee_disk_full`). Freeing space means deleting topics, lowering
//! retention or deleting groups, and each of those first writes a little
//! metadata (`topics.toml`), which would fail too. So the broker keeps a
//! reserve file, `<data_dir>/space.reserve` (`space_reserve_bytes`, 8 MiB by
//! default), allocated while space allows: a metadata write that fails with
//! `ENOSPC` deletes it and tries again ([`SpaceState::with_reserve`]).
//! Shard 0 checks the disk every second ([`SpaceState::check`]): it
//! re-creates the reserve once twice its size is free, and clears the
//! disk-full state once the reserve's size is free, after which the shards
//! reopen the logs a full disk stopped (see `Shard::recover_full_disk`).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// The reserve file, in the data directory.
pub const RESERVE_FILE: &str = "space.reserve";

/// How often shard 0 checks the disk.
pub const CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Below this much free space the disk stays reported full, whatever the
/// reserve's size.
const MIN_RESUME_BYTES: u64 = 1 << 20;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Bytes this process may still write on the filesystem holding `dir`
/// (root may use the blocks ext4 reserves for it).
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: geteuid has no preconditions.
    let blocks = if unsafe { libc::geteuid() } == 0 {
        st.f_bfree
    } else {
        st.f_bavail
    };
    Ok((blocks as u64).saturating_mul(st.f_frsize as u64))
}

/// What one periodic check found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// Free bytes after the check (after re-creating the reserve).
    pub free: u64,
    /// The reserve was re-created by this check.
    pub reserve_created: bool,
    /// The disk was reported full and no longer is.
    pub cleared: bool,
}

/// The disk-full state of one data directory, shared by every shard.
#[derive(Debug)]
pub struct SpaceState {
    dir: PathBuf,
    reserve_bytes: u64,
    full: AtomicBool,
    /// When the disk was last reported full (ms since the epoch; 0: never).
    full_since_ms: AtomicU64,
    reserve_held: AtomicBool,
    /// Free bytes at the last check.
    free: AtomicU64,
    /// What failed for lack of space, last.
    last_failure: Mutex<String>,
    /// Serializes the reserve file's creation and deletion.
    file: Mutex<()>,
}

impl SpaceState {
    /// The state of `dir`, whose reserve is `reserve_bytes` (0: no reserve).
    /// Touches no file: call [`SpaceState::ensure_reserve`] at start-up.
    pub fn new(dir: &Path, reserve_bytes: u64) -> SpaceState {
        SpaceState {
            dir: dir.to_path_buf(),
            reserve_bytes,
            full: AtomicBool::new(false),
            full_since_ms: AtomicU64::new(0),
            reserve_held: AtomicBool::new(false),
            free: AtomicU64::new(0),
            last_failure: Mutex::new(String::new()),
            file: Mutex::new(()),
        }
    }

    pub fn reserve_path(&self) -> PathBuf {
        self.dir.join(RESERVE_FILE)
    }

    pub fn reserve_bytes(&self) -> u64 {
        self.reserve_bytes
    }

    /// Whether a write failed for lack of space and not enough was freed since.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// When the disk was reported full (ms since the epoch), if it is.
    pub fn full_since_ms(&self) -> Option<u64> {
        self.is_full()
            .then(|| self.full_since_ms.load(Ordering::Acquire))
    }

    /// What last failed for lack of space.
    pub fn last_failure(&self) -> String {
        self.last_failure
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Whether the reserve file is in place.
    pub fn reserve_held(&self) -> bool {
        self.reserve_held.load(Ordering::Acquire)
    }

    /// Free bytes the disk needs before writes are let resume: the
    /// reserve's size, at least 1 MiB.
    pub fn resume_bytes(&self) -> u64 {
        self.reserve_bytes.max(MIN_RESUME_BYTES)
    }

    /// Free bytes at the last check.
    pub fn last_free_bytes(&self) -> u64 {
        self.free.load(Ordering::Acquire)
    }

    /// A write (`what`) failed for lack of space: the disk is full.
    pub fn note_full(&self, what: &str) {
        if let Ok(mut s) = self.last_failure.lock() {
            *s = what.to_string();
        }
        if !self.full.swap(true, Ordering::AcqRel) {
            self.full_since_ms.store(now_ms(), Ordering::Release);
            warn!(
                dir = %self.dir.display(),
                failed = what,
                "the disk is full: writes fail until space is freed (delete topics, lower retention with `levee topic alter`, delete consumer groups)"
            );
        }
    }

    fn clear_full(&self, free: u64) -> bool {
        let was = self.full.swap(false, Ordering::AcqRel);
        if was {
            info!(
                dir = %self.dir.display(),
                free_bytes = free,
                "the disk has free space again: writes resume"
            );
        }
        was
    }

    /// Creates the reserve file if it is missing and twice its size is
    /// free (so that taking it leaves writers as much). Returns whether
    /// the reserve is held afterwards.
    pub fn ensure_reserve(&self) -> io::Result<bool> {
        if self.reserve_bytes == 0 {
            return Ok(false);
        }
        let _g = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.reserve_path();
        match std::fs::metadata(&path) {
            // Allocated, not just long (a sparse file holds nothing back).
            Ok(m) if m.len() >= self.reserve_bytes && m.blocks() * 512 >= self.reserve_bytes => {
                self.reserve_held.store(true, Ordering::Release);
                return Ok(true);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.reserve_held.store(false, Ordering::Release);
        if free_bytes(&self.dir)? < self.reserve_bytes.saturating_mul(2) {
            return Ok(false);
        }
        match allocate(&path, self.reserve_bytes) {
            Ok(()) => {
                self.reserve_held.store(true, Ordering::Release);
                Ok(true)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                if levee_core::is_out_of_space(&e) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Deletes the reserve file; returns the bytes it held (0: none).
    pub fn release_reserve(&self) -> io::Result<u64> {
        let _g = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.reserve_path();
        let held = match std::fs::metadata(&path) {
            Ok(m) => m.blocks() * 512,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        if held > 0 || path.exists() {
            std::fs::remove_file(&path)?;
        }
        self.reserve_held.store(false, Ordering::Release);
        Ok(held)
    }

    /// Runs a metadata write `f` (named `what`); if it fails for lack of
    /// space, releases the reserve and runs it once more. The reserve is
    /// re-created by a later [`SpaceState::check`] once space is back.
    pub fn with_reserve<T>(
        &self,
        what: &str,
        mut f: impl FnMut() -> io::Result<T>,
    ) -> io::Result<T> {
        match f() {
            Err(e) if levee_core::is_out_of_space(&e) => {
                self.note_full(what);
                let freed = self.release_reserve().unwrap_or_else(|re| {
                    warn!(path = %self.reserve_path().display(), error = %re, "cannot delete the space reserve");
                    0
                });
                if freed == 0 {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "{e} (the disk is full and the space reserve `{}` is used up: free space by hand, e.g. delete a partition directory of a topic you do not need, then retry)",
                            self.reserve_path().display()
                        ),
                    ));
                }
                warn!(
                    freed_bytes = freed,
                    write = what,
                    "the disk is full: released the space reserve to write metadata; it is re-created once space is freed"
                );
                f()
            }
            other => other,
        }
    }

    /// The periodic check: measures free space, re-creates the reserve when
    /// it can, and clears the disk-full state once the reserve's size
    /// (at least 1 MiB) is free.
    pub fn check(&self) -> io::Result<Check> {
        if self.is_full() {
            // ext4 counts the blocks of deleted files as free only once its
            // journal commits (every 5 s by default): commit it now, so
            // that space an operator freed shows at once.
            self.settle();
        }
        let mut reserve_created = false;
        if self.reserve_bytes > 0 && !self.reserve_held() {
            reserve_created = self.ensure_reserve()?;
            if reserve_created {
                info!(
                    path = %self.reserve_path().display(),
                    bytes = self.reserve_bytes,
                    "space reserve (re-)created"
                );
            }
        }
        let free = free_bytes(&self.dir)?;
        self.free.store(free, Ordering::Release);
        let cleared = self.is_full() && free >= self.resume_bytes() && self.clear_full(free);
        Ok(Check {
            free,
            reserve_created,
            cleared,
        })
    }
}

impl SpaceState {
    fn settle(&self) {
        if let Ok(d) = std::fs::File::open(&self.dir) {
            // SAFETY: a valid descriptor; syncfs has no other precondition.
            unsafe { libc::syncfs(d.as_raw_fd()) };
        }
    }
}

/// Allocates `len` bytes to a new file at `path`, durably: fallocate, or
/// written zeros where the filesystem cannot preallocate.
fn allocate(path: &Path, len: u64) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    // SAFETY: a valid descriptor, offsets within off_t.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(e);
        }
        use std::io::Write;
        let zeros = vec![0u8; 1 << 20];
        let mut w = &f;
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            w.write_all(&zeros[..n])?;
            left -= n as u64;
        }
    }
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn the_reserve_is_allocated_released_and_recreated() {
        let d = dir();
        let s = SpaceState::new(d.path(), 2 << 20);
        assert!(!s.reserve_held());
        assert!(s.ensure_reserve().unwrap());
        let m = std::fs::metadata(s.reserve_path()).unwrap();
        assert_eq!(m.len(), 2 << 20);
        assert!(m.blocks() * 512 >= 2 << 20, "allocated, not sparse");
        // Held already: nothing changes.
        assert!(s.ensure_reserve().unwrap());
        assert!(s.release_reserve().unwrap() >= 2 << 20);
        assert!(!s.reserve_path().exists());
        assert!(!s.reserve_held());
        assert_eq!(s.release_reserve().unwrap(), 0);
        let c = s.check().unwrap();
        assert!(c.reserve_created && !c.cleared);
        assert!(s.reserve_held());
    }

    #[test]
    fn a_sparse_or_short_reserve_file_is_replaced() {
        let d = dir();
        let s = SpaceState::new(d.path(), 1 << 20);
        let f = std::fs::File::create(s.reserve_path()).unwrap();
        f.set_len(1 << 20).unwrap();
        drop(f);
        assert!(s.ensure_reserve().unwrap());
        assert!(std::fs::metadata(s.reserve_path()).unwrap().blocks() * 512 >= 1 << 20);
    }

    #[test]
    fn no_reserve_when_its_size_is_zero() {
        let d = dir();
        let s = SpaceState::new(d.path(), 0);
        assert!(!s.ensure_reserve().unwrap());
        assert!(!s.reserve_path().exists());
        let c = s.check().unwrap();
        assert!(!c.reserve_created);
    }

    #[test]
    fn a_write_that_finds_the_disk_full_gets_the_reserve_and_is_retried() {
        let d = dir();
        let s = SpaceState::new(d.path(), 1 << 20);
        s.ensure_reserve().unwrap();
        let mut calls = 0;
        let r = s.with_reserve("test metadata", || {
            calls += 1;
            if calls == 1 {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.unwrap(), 2);
        assert!(!s.reserve_held() && !s.reserve_path().exists());
        assert!(s.is_full());
        assert!(s.full_since_ms().is_some());
        assert_eq!(s.last_failure(), "test metadata");
        // The reserve is spent: the next full-disk failure says so.
        let e = s
            .with_reserve("again", || -> io::Result<()> {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            })
            .unwrap_err();
        assert!(e.to_string().contains("reserve"), "{e}");
        assert!(levee_core::is_out_of_space(&e) || e.kind() == io::ErrorKind::StorageFull);
        // Other failures are not retried and do not mark the disk full.
        let s2 = SpaceState::new(d.path(), 1 << 20);
        let mut n = 0;
        let e = s2
            .with_reserve("x", || -> io::Result<()> {
                n += 1;
                Err(io::Error::from_raw_os_error(libc::EIO))
            })
            .unwrap_err();
        assert_eq!((n, e.raw_os_error()), (1, Some(libc::EIO)));
        assert!(!s2.is_full());
    }

    #[test]
    fn the_check_clears_the_full_state_once_space_is_free() {
        let d = dir();
        let s = SpaceState::new(d.path(), 1 << 20);
        s.note_full("produce");
        assert!(s.is_full());
        let c = s.check().unwrap();
        // The test directory's filesystem has room: reserve made, state cleared.
        assert!(c.reserve_created && c.cleared, "{c:?}");
        assert!(!s.is_full());
        assert!(s.full_since_ms().is_none());
        assert!(s.last_free_bytes() > 0);
        assert!(!s.check().unwrap().cleared, "cleared once");
    }

    #[test]
    fn free_bytes_of_a_directory() {
        let d = dir();
        assert!(free_bytes(d.path()).unwrap() > 0);
        assert!(free_bytes(&d.path().join("missing")).is_err());
    }
}
