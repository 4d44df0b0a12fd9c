//! Crash and damage tests: torn and corrupted segment tails, kill -9 of a
//! real writer process, and resident memory when reading a large log.

mod common;
use common::*;
use levee_engine::batch;
use levee_engine::{FsyncPolicy, Log, LogConfig};
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

struct Written {
    /// (base offset, next offset, start position, end position, bytes as stored)
    batches: Vec<(u64, u64, u64, u64, Vec<u8>)>,
    active: PathBuf,
}

/// Appends batches with fsync = always and "crashes" (drops without close).
fn write_pristine(dir: &Path, cfg: &LogConfig, n: u64) -> Written {
    run(async {
        let log = Log::open(dir, cfg.clone()).await.unwrap();
        let mut batches = Vec::new();
        let mut pos = 0u64;
        for i in 0..n {
            let b = make_batch(
                i,
                1 + (i % 4) as usize,
                50 + (i as usize * 37) % 700,
                i as i64,
            );
            let len = b.len() as u64;
            let info = log.append_durable(b).await.unwrap();
            assert_eq!(log.segment_bases().len(), 1);
            let stored = log.read(info.base_offset, 1, None).await.unwrap().data;
            batches.push((
                info.base_offset,
                info.last_offset + 1,
                pos,
                pos + len,
                stored,
            ));
            pos += len;
        }
        assert_eq!(log.durable_offset(), batches.last().unwrap().1);
        drop(log); // no close: no clean marker, preallocated tail left as is
        Written {
            batches,
            active: dir.join(format!("{:020}.log", 0)),
        }
    })
}

/// Reopens a damaged copy and checks it holds exactly `keep` batches, returns
/// them intact, and continues without gaps.
fn check_recovered(dir: &Path, cfg: &LogConfig, w: &Written, keep: usize, what: &str) {
    run(async {
        let log = Log::open(dir, cfg.clone()).await.unwrap();
        let expect_end = if keep == 0 { 0 } else { w.batches[keep - 1].1 };
        assert_eq!(log.log_end_offset(), expect_end, "{what}: wrong log end");
        let mut at = 0;
        let mut i = 0;
        while at < expect_end {
            let out = log.read(at, 64 << 10, None).await.unwrap();
            for b in batch::split_batches(&out.data) {
                assert_eq!(b, &w.batches[i].4[..], "{what}: batch {i} differs");
                i += 1;
            }
            at = out.next_offset;
        }
        assert_eq!(i, keep, "{what}: read back a different number of batches");
        let info = log
            .append_durable(make_batch(9999, 2, 10, 1))
            .await
            .unwrap();
        assert_eq!(
            info.base_offset, expect_end,
            "{what}: offsets do not continue"
        );
        let out = log.read(expect_end, 1 << 20, None).await.unwrap();
        assert_eq!(check_read(&out, expect_end).2, 1);
        log.close().await.unwrap();
    });
}

fn damage_trials(cfg: LogConfig, seed: u64) {
    let root = tempdir();
    let pristine = root.path().join("pristine");
    let w = write_pristine(&pristine, &cfg, 300);
    let end = w.batches.last().unwrap().3;
    // Recovery trusts the active segment below its last index checkpoint
    // (reads still verify every CRC there); damage is injected after it.
    let checkpoint = std::fs::read(pristine.join(format!("{:020}.index", 0)))
        .map(|b| u64::from_le_bytes(b[8..16].try_into().unwrap()))
        .unwrap_or(0);
    if cfg.index_checkpoint_bytes < end {
        assert!(checkpoint > 0, "no index checkpoint was written");
    }
    let flip_from = (end * 2 / 3).max(checkpoint);
    assert!(flip_from < end);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for trial in 0..60 {
        let dir = root.path().join(format!("t{trial}"));
        copy_dir(&pristine, &dir);
        let file = dir.join(w.active.file_name().unwrap());
        let (keep, what) = if trial % 2 == 0 {
            // Cut at a random byte position (sometimes on a batch boundary).
            let cut = if trial % 6 == 0 {
                w.batches[rng.gen_range(0..w.batches.len())].2
            } else {
                rng.gen_range(0..=end)
            };
            let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            f.set_len(cut).unwrap();
            let keep = w.batches.iter().take_while(|b| b.3 <= cut).count();
            (keep, format!("cut at {cut}"))
        } else {
            // Flip a random byte in the last third of the data.
            let at = rng.gen_range(flip_from..end);
            let mut bytes = std::fs::read(&file).unwrap();
            bytes[at as usize] ^= rng.gen_range(1..=255u8);
            std::fs::write(&file, bytes).unwrap();
            let keep = w.batches.iter().take_while(|b| b.3 <= at).count();
            (keep, format!("flip at {at}"))
        };
        check_recovered(&dir, &cfg, &w, keep, &what);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn torn_and_corrupt_tails_keep_exactly_the_complete_batches() {
    damage_trials(small_config(), 1);
}

#[test]
fn torn_tails_with_index_checkpoints() {
    // Checkpoints every 64 KiB: cuts below a checkpoint force a full rescan,
    // cuts above it scan from the checkpoint.
    let cfg = LogConfig {
        index_checkpoint_bytes: 64 << 10,
        ..small_config()
    };
    damage_trials(cfg, 2);
}

// ---- kill -9 of a real writer process ------------------------------------

fn writer_config() -> LogConfig {
    LogConfig {
        fsync: FsyncPolicy::Always,
        segment_bytes: 256 << 10,
        ..small_config()
    }
}

/// Child mode: appends durable batches forever, printing each acknowledged
/// end offset. Runs only when the parent test sets LEVEE_CRASH_CHILD.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var("LEVEE_CRASH_CHILD") else {
        return;
    };
    run(async {
        let log = Log::open(&dir, writer_config()).await.unwrap();
        let mut i = log.log_end_offset();
        loop {
            let b = make_batch(i, 1, 300, i as i64);
            let info = log.append_durable(b).await.unwrap();
            assert_eq!(info.base_offset, i);
            i = info.last_offset + 1;
            println!("ACK {i}");
        }
    });
}

#[test]
fn kill_9_never_loses_an_acknowledged_batch() {
    let root = tempdir();
    let dir = root.path().join("log");
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked_total = 0;
    for round in 0..4 {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env("LEVEE_CRASH_CHILD", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let started = Instant::now();
        let mut acked = 0u64;
        let target = 300 + round * 150;
        while let Some(Ok(line)) = lines.next() {
            if let Some(v) = line.strip_prefix("ACK ") {
                acked = v.trim().parse().unwrap();
                if acked >= acked_total + target || started.elapsed() > Duration::from_secs(20) {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(
            acked > acked_total,
            "round {round}: the child acknowledged nothing"
        );
        run(async {
            let log = Log::open(&dir, writer_config()).await.unwrap();
            let end = log.log_end_offset();
            assert!(
                end >= acked,
                "round {round}: acknowledged {acked} but recovered only {end}"
            );
            let mut at = 0;
            while at < end {
                let out = log.read(at, 256 << 10, None).await.unwrap();
                for b in batch::split_batches(&out.data) {
                    let h = batch::validate_stored(b, usize::MAX).unwrap();
                    let recs = batch::records(b).unwrap();
                    // The child's batch for offset i carries tag i.
                    let tag = u64::from_le_bytes(recs[0].value.unwrap()[..8].try_into().unwrap());
                    assert_eq!(
                        tag,
                        h.base_offset(),
                        "round {round}: wrong content at {}",
                        h.base_offset()
                    );
                }
                assert!(out.next_offset > at);
                at = out.next_offset;
            }
            assert_eq!(at, end);
            acked_total = end;
            // Opened uncleanly: close cleanly only every other round.
            if round % 2 == 0 {
                log.close().await.unwrap();
            }
        });
    }
}

// ---- bounded memory ---------------------------------------------------------

const BIG_LOG_BYTES: u64 = 256 << 20;

fn big_config() -> LogConfig {
    LogConfig {
        segment_bytes: 32 << 20,
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    }
}

#[test]
fn child_big_writer() {
    let Ok(dir) = std::env::var("LEVEE_BIG_WRITER") else {
        return;
    };
    run(async {
        let log = Log::open(&dir, big_config()).await.unwrap();
        let mut written = 0u64;
        let mut i = 0u64;
        while written < BIG_LOG_BYTES {
            let b = make_batch(i, 64, 1000, i as i64);
            written += b.len() as u64;
            i += 64;
            log.append(b).await.unwrap();
        }
        log.flush().await.unwrap();
        // No close: the reader's open must recover the active segment too.
    });
}

#[test]
fn child_big_reader() {
    let Ok(dir) = std::env::var("LEVEE_BIG_READER") else {
        return;
    };
    let base = rss_bytes();
    let mut peak = base;
    let mut total = 0u64;
    run(async {
        let log = Log::open(&dir, big_config()).await.unwrap();
        peak = peak.max(rss_bytes());
        let mut at = 0;
        while at < log.log_end_offset() {
            let out = log.read(at, 1 << 20, None).await.unwrap();
            total += out.data.len() as u64;
            at = out.next_offset;
            peak = peak.max(rss_bytes());
        }
    });
    println!("RSS base={base} peak={peak} read={total}");
}

#[test]
fn resident_memory_stays_bounded_reading_a_large_log() {
    let root = tempdir();
    let dir = root.path().join("big");
    let exe = std::env::current_exe().unwrap();
    let st = Command::new(&exe)
        .args(["--exact", "child_big_writer", "--test-threads=1"])
        .env("LEVEE_BIG_WRITER", &dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new(&exe)
        .args([
            "--exact",
            "child_big_reader",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LEVEE_BIG_READER", &dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.find("RSS ").map(|i| &l[i..]))
        .unwrap_or_else(|| {
            panic!(
                "reader reports no RSS: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let num = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (base, peak, read) = (num("base="), num("peak="), num("read="));
    assert!(read >= BIG_LOG_BYTES, "read {read} bytes");
    let growth = peak.saturating_sub(base);
    eprintln!("log {} MiB, RSS growth {} MiB", read >> 20, growth >> 20);
    assert!(
        growth < 40 << 20,
        "resident memory grew by {} MiB reading a {} MiB log",
        growth >> 20,
        read >> 20
    );
}
