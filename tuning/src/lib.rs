//! `levee tune`: host checks for a dedicated Levee host. It owns reading the
//! host and judging what it read; it changes no host setting (it prints the
//! fix) and must not depend on the broker: the CLI hands it the broker
//! settings it judges (data directory, cores).
//!
//! `levee tune check` runs one check per host setting that matters to a
//! thread-per-core, direct-I/O broker and prints one line per check:
//! `PASS`, `INFO`, `WARN` or `FAIL`, what was found, and the fix. It exits
//! non-zero when any check fails. `tuning/README.md` maps every check to the
//! files in `tuning/` that fix it.
//!
//! Every check is a function returning a [`CheckResult`]; reading the host and
//! judging what was read are separate functions so the judgement can be unit
//! tested. A missing `/proc` or `/sys` file is never a panic: it is a line
//! saying "could not read ...".

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub(crate) const MIB: u64 = 1 << 20;
#[allow(clippy::unnecessary_cast)] // rlim_t is u32 on some 32-bit targets
pub(crate) const RLIM_INFINITY: u64 = libc::RLIM_INFINITY as u64;
/// Direct-I/O alignment used by the checks (and by the engine's segments).
pub(crate) const ALIGN: usize = 4096;
/// glommio refuses to start an executor below this RLIMIT_MEMLOCK.
pub(crate) const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;
/// Locked memory recommended per shard: glommio registers its 10 MiB I/O
/// buffer with each of its three rings (main, latency, poll).
pub(crate) const MEMLOCK_PER_SHARD: u64 = 32 * MIB;
/// Size written and read by `--measure-disk`.
pub(crate) const MEASURE_BYTES: u64 = 256 * MIB;
/// Writes in flight during `--measure-disk` (one thread each).
pub(crate) const MEASURE_QD: usize = 4;
/// Rounds of 4 KiB write + fdatasync timed by `--measure-disk`.
pub(crate) const SYNC_ROUNDS: usize = 64;

/// Host tuning commands.
#[derive(clap::Args)]
pub struct TuneArgs {
    #[command(subcommand)]
    pub cmd: TuneCommand,
}

#[derive(clap::Subcommand)]
pub enum TuneCommand {
    /// Check this host's settings and print PASS/WARN/FAIL lines with fixes
    /// (exit status 1 if any check fails).
    Check(CheckArgs),
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct CheckArgs {
    /// Data directory to check [default: the config's data_dir, else ./levee-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Broker TOML configuration to take data_dir and cores from.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Shards as `levee serve --cores` takes them: "all", a count, or "0,2-3"
    /// [default: the config's cores, else all].
    #[arg(long)]
    pub cores: Option<String>,
    /// Also measure the data directory's disk (writes and reads 256 MiB; takes seconds).
    #[arg(long)]
    pub measure_disk: bool,
    /// Print a JSON array of {check, status, found, fix} instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// The broker settings the checks use, from its configuration file; the
/// caller reads the file (this crate does not know the broker's config).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub data_dir: PathBuf,
    pub cores: String,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            data_dir: PathBuf::from("./levee-data"),
            cores: "all".into(),
        }
    }
}

/// Runs `levee tune`. `configured`: the broker's settings (defaults without
/// `--config`), or why its configuration file could not be read.
pub fn run(args: TuneArgs, configured: Result<BrokerSettings, String>) -> ExitCode {
    match args.cmd {
        TuneCommand::Check(a) => {
            let results = run_checks(&a, configured);
            let text = if a.json {
                to_json(&results)
            } else {
                results
                    .iter()
                    .map(CheckResult::line)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            // A closed pipe (`levee tune check | head`) is not an error worth a panic.
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{text}").and_then(|()| out.flush());
            if results.iter().any(|r| r.status == Status::Fail) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

mod cpu;
mod kernel;
mod limits;
mod measure;
mod report;
mod storage;

pub use cpu::*;
pub use kernel::*;
pub use limits::*;
pub use measure::*;
pub use report::*;
pub use storage::*;

// ---------------------------------------------------------------------------
// Running the checks

/// Runs every check, in the order of `tuning/README.md`.
pub fn run_checks(
    args: &CheckArgs,
    configured: Result<BrokerSettings, String>,
) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let cfg = match configured {
        Ok(c) => c,
        Err(e) => {
            results.push(
                CheckResult::new(
                    "config",
                    Status::Fail,
                    format!("{e}; checking the defaults"),
                )
                .fix("fix the file (levee.example.toml lists every option)"),
            );
            BrokerSettings::default()
        }
    };
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| cfg.data_dir.clone());
    let cores = args.cores.clone().unwrap_or_else(|| cfg.cores.clone());
    let shards = shard_count(&cores);

    let (dir, created, note) = prepare_data_dir(&data_dir);
    let device = block_device_of(&dir);

    results.push(check_io_uring());
    results.push(check_memlock(shards.as_ref().ok().copied()));
    results.push(check_odirect(&dir, note.as_deref()));
    results.push(check_scheduler(&device));
    results.push(check_rotational(&device));
    results.push(check_governor());
    results.push(check_cores(&cores));
    results.push(check_thp());
    results.push(check_nofile());
    results.push(check_swappiness());
    results.push(check_somaxconn());
    results.push(check_root_device(&dir));
    if args.measure_disk {
        results.push(measure_disk(&dir, MEASURE_BYTES));
    } else {
        results.push(CheckResult::new(
            "disk-bandwidth",
            Status::Info,
            "not measured: add --measure-disk (writes and reads 256 MiB in the data dir, a few \
             seconds); benches/disk-limits.sh measures it with fio at queue depth 8 for the \
             authoritative figure",
        ));
    }
    if created {
        // Leave no trace when the directory was only created for the checks.
        let _ = std::fs::remove_dir(&dir);
    }
    results
}

/// The directory to test: `dir` itself (created if missing), else its nearest
/// existing parent. Returns (dir, created by us, note for the report).
pub(crate) fn prepare_data_dir(dir: &Path) -> (PathBuf, bool, Option<String>) {
    if dir.is_dir() {
        return (dir.to_path_buf(), false, None);
    }
    match std::fs::create_dir_all(dir) {
        Ok(()) => (dir.to_path_buf(), true, None),
        Err(e) => {
            let mut p = dir.parent();
            while let Some(q) = p {
                if q.as_os_str().is_empty() {
                    p = Some(Path::new("."));
                    break;
                }
                if q.is_dir() {
                    break;
                }
                p = q.parent();
            }
            let parent = p.unwrap_or(Path::new(".")).to_path_buf();
            let note = format!(
                "could not create {} ({e}); tested its nearest existing parent {}",
                dir.display(),
                parent.display()
            );
            (parent, false, Some(note))
        }
    }
}

pub(crate) fn read_trim(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("could not read {path}: {e}"))
}

pub(crate) fn could_not_read(name: &'static str, msg: String) -> CheckResult {
    CheckResult::new(name, Status::Warn, msg)
}

#[cfg(test)]
mod tests;
