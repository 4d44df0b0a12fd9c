//! Measuring the disk: direct-I/O bandwidth and fdatasync latency.

use crate::*;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// 9. Measured disk bandwidth

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

pub(crate) fn fill_block(buf: &mut [u8], block: u64) {
    // Non-repeating bytes so a deduplicating or compressing backend can't cheat.
    let mut x = block.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    buf[..8].copy_from_slice(&block.to_le_bytes());
}

pub(crate) fn mibs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64().max(1e-9)
}

/// Writes `bytes` in 1 MiB O_DIRECT blocks, MEASURE_QD in flight, then
/// fdatasync; reads it back; then times SYNC_ROUNDS 4 KiB append+fdatasync.
pub fn measure_disk(dir: &Path, bytes: u64) -> CheckResult {
    const NAME: &str = "disk-bandwidth";
    let block = MIB as usize;
    let bytes = bytes.div_ceil(MIB).max(1) * MIB;
    if let Ok(st) = statfs(dir) {
        #[allow(clippy::unnecessary_cast)] // the field types vary by target
        let free = (st.f_bavail as u64).saturating_mul(st.f_bsize as u64);
        if free < bytes + 64 * MIB {
            return CheckResult::new(
                NAME,
                Status::Warn,
                format!(
                    "not measured: {} MiB free in {}, {} MiB needed",
                    free / MIB,
                    dir.display(),
                    bytes / MIB + 64
                ),
            );
        }
    }
    let path = temp_path(dir, "bw");
    let r = measure_bandwidth(&path, bytes, block);
    let _ = std::fs::remove_file(&path);
    let (w, r) = match r {
        Ok(v) => v,
        Err(e) => return CheckResult::new(NAME, Status::Warn, format!("measurement failed: {e}")),
    };
    let path = temp_path(dir, "sync");
    let lat = measure_sync(&path);
    let _ = std::fs::remove_file(&path);
    let mut found = format!(
        "O_DIRECT 1 MiB blocks, {MEASURE_QD} in flight, {} MiB: write+fdatasync {w:.0} MiB/s, \
         read {r:.0} MiB/s",
        bytes / MIB
    );
    match lat {
        Ok((p50, p99)) => {
            let _ = write!(
                found,
                "; 4 KiB append+fdatasync p50 {:.2} ms, p99 {:.2} ms ({SYNC_ROUNDS} rounds)",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
        }
        Err(e) => {
            let _ = write!(found, "; fdatasync latency not measured: {e}");
        }
    }
    found.push_str(" (benches/disk-limits.sh: fio at queue depth 8)");
    CheckResult::new(NAME, Status::Info, found)
}

pub(crate) fn measure_bandwidth(
    path: &Path,
    bytes: u64,
    block: usize,
) -> Result<(f64, f64), String> {
    let file = open_direct(path).map_err(|e| format!("open(O_DIRECT) {}: {e}", path.display()))?;
    {
        use std::os::fd::AsRawFd;
        // Preallocate like the engine's active segment; ignore "not supported".
        // SAFETY: fd is open for writing.
        unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    }
    let blocks = bytes / block as u64;
    let run = |write: bool| -> Result<Duration, String> {
        let start = Instant::now();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..MEASURE_QD as u64)
                .map(|t| {
                    let file = &file;
                    s.spawn(move || -> Result<(), String> {
                        let mut buf =
                            AlignedBuf::new(block).ok_or("cannot allocate an aligned buffer")?;
                        let mut i = t;
                        while i < blocks {
                            let off = i * block as u64;
                            if write {
                                fill_block(buf.as_mut_slice(), i);
                                file.write_all_at(buf.as_slice(), off)
                                    .map_err(|e| format!("write at {off}: {e}"))?;
                            } else {
                                file.read_exact_at(buf.as_mut_slice(), off)
                                    .map_err(|e| format!("read at {off}: {e}"))?;
                                if buf.as_slice()[..8] != i.to_le_bytes() {
                                    return Err(format!("block {i} read back wrong"));
                                }
                            }
                            i += MEASURE_QD as u64;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| "measuring thread panicked".to_string())??;
            }
            Ok::<(), String>(())
        })?;
        if write {
            file.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
        }
        Ok(start.elapsed())
    };
    let w = run(true)?;
    let r = run(false)?;
    Ok((mibs(bytes, w), mibs(bytes, r)))
}

pub(crate) fn measure_sync(path: &Path) -> Result<(Duration, Duration), String> {
    let file = open_direct(path).map_err(|e| format!("open(O_DIRECT): {e}"))?;
    let mut buf = AlignedBuf::new(ALIGN).ok_or("cannot allocate an aligned buffer")?;
    let mut lat = Vec::with_capacity(SYNC_ROUNDS);
    for i in 0..SYNC_ROUNDS as u64 {
        fill_block(buf.as_mut_slice(), i);
        let start = Instant::now();
        file.write_all_at(buf.as_slice(), i * ALIGN as u64)
            .map_err(|e| format!("write: {e}"))?;
        file.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
        lat.push(start.elapsed());
    }
    lat.sort_unstable();
    Ok((percentile(&lat, 0.50), percentile(&lat, 0.99)))
}
