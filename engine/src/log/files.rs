//! File helpers: opening segments, syncing the directory, atomic small files, index files.

use super::*;

pub(super) async fn open_rw(path: &Path) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(|e| glommio_err(path.display().to_string(), e))
}

pub(super) async fn open_ro(path: &Path) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .dma_open(path)
        .await
        .map_err(|e| glommio_err(path.display().to_string(), e))
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(format!("fsync of directory {}", dir.display()), e))
}

/// `sync_dir` through the shard's io_uring, for the paths that run on a
/// shard (open, roll, close): the reactor is not blocked meanwhile.
pub(super) async fn sync_dir_async(dir: &Path) -> Result<()> {
    let ctx = || format!("fsync of directory {}", dir.display());
    // glommio opens directories relative to no directory: give it an
    // absolute path (a relative data directory is common: ./levee-data).
    let dir = std::path::absolute(dir).map_err(|e| io_err(ctx(), e))?;
    let d = glommio::io::Directory::open(&dir)
        .await
        .map_err(|e| glommio_err(ctx(), e))?;
    let r = d.sync().await.map_err(|e| glommio_err(ctx(), e));
    let _ = d.close().await;
    r
}

/// Writes a whole small file with direct I/O, durably, replacing any old
/// one. On failure the temporary file is removed (on a full disk it
/// would hold on to blocks).
pub(super) async fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let res = write_file_atomic_inner(path, &tmp, bytes).await;
    if res.is_err() {
        let _ = glommio::io::remove(&tmp).await;
    }
    res
}

async fn write_file_atomic_inner(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<()> {
    let ctx = || tmp.display().to_string();
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(tmp)
        .await
        .map_err(|e| glommio_err(ctx(), e))?;
    if !bytes.is_empty() {
        let mut buf = f.alloc_dma_buffer(align_up(bytes.len() as u64) as usize);
        buf.as_bytes_mut().fill(0);
        buf.as_bytes_mut()[..bytes.len()].copy_from_slice(bytes);
        f.write_at(buf, 0)
            .await
            .map_err(|e| glommio_err(ctx(), e))?;
        f.truncate(bytes.len() as u64)
            .await
            .map_err(|e| glommio_err(ctx(), e))?;
    }
    f.fdatasync().await.map_err(|e| glommio_err(ctx(), e))?;
    f.close().await.map_err(|e| glommio_err(ctx(), e))?;
    glommio::io::rename(tmp, path)
        .await
        .map_err(|e| glommio_err(path.display().to_string(), e))
}

pub(super) async fn write_index_files(
    dir: &Path,
    base: u64,
    idx: &SegmentIndex,
    summary: &Summary,
) -> Result<()> {
    write_file_atomic(
        &dir.join(segment_name(base, "index")),
        &index::encode_offsets(idx, summary),
    )
    .await?;
    write_file_atomic(
        &dir.join(segment_name(base, "timeindex")),
        &index::encode_times(idx, summary),
    )
    .await
}

/// Reads a whole small file through the shard's io_uring (direct I/O).
/// `None` if it is missing or unreadable.
pub(super) async fn read_small_file(path: &Path) -> Option<Vec<u8>> {
    let f = DmaFile::open(path).await.ok()?;
    let res = async {
        let size = f.file_size().await.ok()?;
        if size == 0 {
            return Some(Vec::new());
        }
        let r = f.read_at(0, size as usize).await.ok()?;
        (r.len() as u64 == size).then(|| r.to_vec())
    }
    .await;
    let _ = f.close().await;
    res
}

pub(super) async fn read_index_files(dir: &Path, base: u64) -> Option<(Summary, SegmentIndex)> {
    let o = read_small_file(&dir.join(segment_name(base, "index"))).await?;
    let t = read_small_file(&dir.join(segment_name(base, "timeindex"))).await?;
    let (s, offsets) = index::decode_offsets(&o)?;
    let (s2, times) = index::decode_times(&t)?;
    (s == s2).then_some((s, SegmentIndex { offsets, times }))
}

impl Log {
    /// Writes a small state file that belongs with this log (a snapshot of
    /// state derived from it), atomically and durably, in its directory.
    pub async fn write_state_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.st.borrow().dir.join(name);
        write_file_atomic(&path, bytes).await
    }

    /// Reads a state file written by [`Log::write_state_file`] (`None`:
    /// absent or unreadable).
    pub async fn read_state_file(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.st.borrow().dir.join(name);
        read_small_file(&path).await
    }
}
