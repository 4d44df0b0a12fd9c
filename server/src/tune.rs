//! `levee tune`: host checks for a dedicated Levee host.
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

use std::alloc::Layout;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
#[allow(clippy::unnecessary_cast)] // rlim_t is u32 on some 32-bit targets
const RLIM_INFINITY: u64 = libc::RLIM_INFINITY as u64;
/// Direct-I/O alignment used by the checks (and by the engine's segments).
const ALIGN: usize = 4096;
/// glommio refuses to start an executor below this RLIMIT_MEMLOCK.
const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;
/// Locked memory recommended per shard: glommio registers its 10 MiB I/O
/// buffer with each of its three rings (main, latency, poll).
const MEMLOCK_PER_SHARD: u64 = 32 * MIB;
/// Size written and read by `--measure-disk`.
const MEASURE_BYTES: u64 = 256 * MIB;
/// Writes in flight during `--measure-disk` (one thread each).
const MEASURE_QD: usize = 4;
/// Rounds of 4 KiB write + fdatasync timed by `--measure-disk`.
const SYNC_ROUNDS: usize = 64;

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

pub fn run(args: TuneArgs) -> ExitCode {
    match args.cmd {
        TuneCommand::Check(a) => {
            let results = run_checks(&a);
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

// ---------------------------------------------------------------------------
// Results and output

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Pass,
    Info,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Info => "INFO",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: &'static str,
    pub status: Status,
    /// What was found on this host.
    pub found: String,
    /// The fix: a command or a setting. Empty when nothing is to be done.
    pub fix: String,
}

impl CheckResult {
    fn new(name: &'static str, status: Status, found: impl Into<String>) -> Self {
        CheckResult {
            name,
            status,
            found: found.into(),
            fix: String::new(),
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = fix.into();
        self
    }

    /// The one-line text form.
    pub fn line(&self) -> String {
        let mut s = format!("{}  {:<16} {}", self.status.as_str(), self.name, self.found);
        if !self.fix.is_empty() {
            let _ = write!(s, "  => fix: {}", self.fix);
        }
        s
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `[{"check": .., "status": .., "found": .., "fix": ..}, ...]`
pub fn to_json(results: &[CheckResult]) -> String {
    let items: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "  {{\"check\": {}, \"status\": {}, \"found\": {}, \"fix\": {}}}",
                json_str(r.name),
                json_str(r.status.as_str()),
                json_str(&r.found),
                json_str(&r.fix)
            )
        })
        .collect();
    if items.is_empty() {
        "[]".into()
    } else {
        format!("[\n{}\n]", items.join(",\n"))
    }
}

// ---------------------------------------------------------------------------
// Running the checks

/// Runs every check, in the order of `tuning/README.md`.
pub fn run_checks(args: &CheckArgs) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let mut cfg = crate::config::ServerConfig::default();
    if let Some(path) = &args.config {
        match crate::config::ServerConfig::from_file(path) {
            Ok(c) => cfg = c,
            Err(e) => results.push(
                CheckResult::new(
                    "config",
                    Status::Fail,
                    format!("{e}; checking the defaults"),
                )
                .fix("fix the file (levee.example.toml lists every option)"),
            ),
        }
    }
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
fn prepare_data_dir(dir: &Path) -> (PathBuf, bool, Option<String>) {
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

fn read_trim(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("could not read {path}: {e}"))
}

fn could_not_read(name: &'static str, msg: String) -> CheckResult {
    CheckResult::new(name, Status::Warn, msg)
}

// ---------------------------------------------------------------------------
// 1. io_uring

fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// "6.18.44-fc-v657" -> (6, 18).
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Calls io_uring_setup with 4 entries; Ok(()) if a ring could be made.
fn try_io_uring_setup() -> Result<(), io::Error> {
    // struct io_uring_params is 120 bytes of u32/u64 fields; zeroed is valid.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup(entries, params) with a zeroed, writable,
    // 120-byte, 8-aligned params struct.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            4 as libc::c_uint,
            params.as_mut_ptr(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is the ring we just created and own.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

pub fn check_io_uring() -> CheckResult {
    let disabled = read_trim("/proc/sys/kernel/io_uring_disabled");
    let kernel = kernel_release();
    judge_io_uring(try_io_uring_setup(), disabled, kernel.as_deref())
}

pub fn judge_io_uring(
    setup: Result<(), io::Error>,
    disabled: Result<String, String>,
    kernel: Option<&str>,
) -> CheckResult {
    const NAME: &str = "io_uring";
    let mut found = match &setup {
        Ok(()) => "io_uring_setup works".to_string(),
        Err(e) => format!("io_uring_setup failed: {e}"),
    };
    let disabled_val = match &disabled {
        Ok(v) => {
            let _ = write!(found, "; kernel.io_uring_disabled = {v}");
            v.parse::<u32>().ok()
        }
        // Kernels before 6.6 have no such sysctl: io_uring is always allowed.
        Err(_) => {
            found.push_str("; no kernel.io_uring_disabled (kernel < 6.6: always allowed)");
            None
        }
    };
    let version = kernel.and_then(parse_kernel_version);
    if let Some(k) = kernel {
        let _ = write!(found, "; kernel {k}");
    }
    let enable_fix = "sysctl -w kernel.io_uring_disabled=0 (and put kernel.io_uring_disabled = 0 \
                      in /etc/sysctl.d/99-levee.conf); in a container, allow io_uring_setup/\
                      io_uring_enter/io_uring_register in the seccomp profile";
    match setup {
        Err(e) => {
            let fix = match e.raw_os_error() {
                Some(libc::ENOSYS) => {
                    "use a kernel built with CONFIG_IO_URING (5.8 or newer; 5.10+ LTS recommended)"
                }
                _ => enable_fix,
            };
            CheckResult::new(NAME, Status::Fail, found).fix(fix)
        }
        Ok(()) => {
            if let Some((maj, min)) = version {
                if (maj, min) < (5, 8) {
                    return CheckResult::new(NAME, Status::Fail, found + " (glommio needs 5.8+)")
                        .fix("upgrade the kernel to 5.10 LTS or newer");
                }
            }
            match disabled_val {
                Some(1) => CheckResult::new(
                    NAME,
                    Status::Warn,
                    found
                        + " (allowed only for kernel.io_uring_group and CAP_SYS_ADMIN; this \
                             process may be, the levee service user may not)",
                )
                .fix(
                    "sysctl -w kernel.io_uring_disabled=0, or add the levee user to the group \
                     set in kernel.io_uring_group",
                ),
                Some(2) => CheckResult::new(NAME, Status::Fail, found).fix(enable_fix),
                _ => CheckResult::new(NAME, Status::Pass, found),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Locked memory

#[allow(clippy::unnecessary_cast)] // rlim_t is u32 on some 32-bit targets
fn getrlimit(resource: libc::__rlimit_resource_t) -> Result<(u64, u64), io::Error> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is a valid rlimit to fill.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r.rlim_cur as u64, r.rlim_max as u64))
}

fn fmt_limit(v: u64) -> String {
    if v == RLIM_INFINITY {
        "unlimited".into()
    } else if v >= MIB && v.is_multiple_of(MIB) {
        format!("{} MiB", v / MIB)
    } else if v >= 1024 && v.is_multiple_of(1024) {
        format!("{} KiB", v / 1024)
    } else {
        format!("{v}")
    }
}

pub fn check_memlock(shards: Option<usize>) -> CheckResult {
    match getrlimit(libc::RLIMIT_MEMLOCK) {
        // SAFETY: geteuid cannot fail.
        Ok((soft, hard)) => judge_memlock(soft, hard, shards, unsafe { libc::geteuid() } == 0),
        Err(e) => could_not_read("memlock", format!("could not read RLIMIT_MEMLOCK: {e}")),
    }
}

pub fn judge_memlock(soft: u64, hard: u64, shards: Option<usize>, root: bool) -> CheckResult {
    const NAME: &str = "memlock";
    let fix = "LimitMEMLOCK=infinity in the systemd unit (tuning/levee.service); from a shell \
               `ulimit -l unlimited`, or `levee - memlock unlimited` in \
               /etc/security/limits.conf";
    let want = (64 * MIB).max(shards.unwrap_or(1) as u64 * MEMLOCK_PER_SHARD);
    let mut found = format!(
        "RLIMIT_MEMLOCK {} (hard {})",
        fmt_limit(soft),
        fmt_limit(hard)
    );
    if soft == RLIM_INFINITY || soft >= want {
        return CheckResult::new(NAME, Status::Pass, found);
    }
    if soft < GLOMMIO_MIN_MEMLOCK {
        found.push_str(": glommio refuses to start a shard below 512 KiB");
        return CheckResult::new(NAME, Status::Fail, found).fix(fix);
    }
    let _ = write!(
        found,
        ", under the {} recommended: each shard registers a 10 MiB I/O buffer with its three \
         io_uring rings (~30 MiB locked); below that glommio logs a warning and runs without \
         registered buffers. Levee works within 8 MiB with the defaults, a little slower",
        fmt_limit(want)
    );
    if root {
        found.push_str(" (root is exempt through CAP_IPC_LOCK; the levee service user is not)");
    }
    CheckResult::new(NAME, Status::Warn, found).fix(fix)
}

// ---------------------------------------------------------------------------
// 3. O_DIRECT and the filesystem

/// A zeroed heap buffer aligned for direct I/O.
struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> Option<Self> {
        if len == 0 {
            return None;
        }
        let layout = Layout::from_size_align(len, ALIGN).ok()?;
        // SAFETY: layout has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(AlignedBuf { ptr, layout })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to layout.size() initialised (zeroed) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Filesystem name for a statfs f_type.
pub fn fs_name(magic: u32) -> &'static str {
    match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x0102_1994 => "tmpfs",
        0x8584_58f6 => "ramfs",
        0x9123_683E => "btrfs",
        0x794c_7630 => "overlayfs",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        0xCA45_1A4E => "bcachefs",
        0x6969 => "nfs",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x0102_1997 => "9p",
        0x6573_5546 => "fuse",
        0x0000_4d44 => "vfat",
        0x0000_9FA0 => "proc",
        0x6265_6572 => "sysfs",
        0x7371_7368 => "squashfs",
        0x00c3_6400 => "ceph",
        _ => "unknown",
    }
}

fn statfs(dir: &Path) -> Result<libc::statfs, io::Error> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statfs is plain old data; the call fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string, st a valid statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn fs_magic(st: &libc::statfs) -> u32 {
    (st.f_type as u64 & 0xffff_ffff) as u32
}

fn temp_path(dir: &Path, what: &str) -> PathBuf {
    dir.join(format!(".levee-tune-{what}-{}.tmp", std::process::id()))
}

fn open_direct(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Creates a file with O_DIRECT, writes and reads back one aligned block.
fn direct_io_roundtrip(dir: &Path) -> Result<(), String> {
    let path = temp_path(dir, "odirect");
    let file = open_direct(&path).map_err(|e| format!("open(O_DIRECT) failed: {e}"))?;
    let r = (|| {
        let mut w = AlignedBuf::new(ALIGN).ok_or("cannot allocate an aligned buffer")?;
        for (i, b) in w.as_mut_slice().iter_mut().enumerate() {
            *b = (i * 31 + 7) as u8;
        }
        file.write_all_at(w.as_slice(), 0)
            .map_err(|e| format!("O_DIRECT write failed: {e}"))?;
        let mut r = AlignedBuf::new(ALIGN).ok_or("cannot allocate an aligned buffer")?;
        file.read_exact_at(r.as_mut_slice(), 0)
            .map_err(|e| format!("O_DIRECT read failed: {e}"))?;
        if r.as_slice() != w.as_slice() {
            return Err("O_DIRECT read back different bytes".to_string());
        }
        Ok(())
    })();
    drop(file);
    let _ = std::fs::remove_file(&path);
    r
}

pub fn check_odirect(dir: &Path, note: Option<&str>) -> CheckResult {
    let fs = statfs(dir).map(|st| fs_magic(&st));
    judge_odirect(dir, fs, direct_io_roundtrip(dir), note)
}

pub fn judge_odirect(
    dir: &Path,
    fs: Result<u32, io::Error>,
    roundtrip: Result<(), String>,
    note: Option<&str>,
) -> CheckResult {
    const NAME: &str = "o_direct";
    let fs_desc = match &fs {
        Ok(m) => format!("{} (f_type 0x{m:X})", fs_name(*m)),
        Err(e) => format!("unknown filesystem (statfs failed: {e})"),
    };
    let name = fs.as_ref().map(|m| fs_name(*m)).unwrap_or("unknown");
    let mut found = format!("{} is on {fs_desc}", dir.display());
    if let Some(n) = note {
        let _ = write!(found, " [{n}]");
    }
    let move_fix = "put data_dir on an ext4 or xfs filesystem on a local disk";
    match roundtrip {
        Err(e) => {
            let _ = write!(found, ": {e}");
            let fix = if e.contains("denied") || e.contains("Read-only") {
                "make data_dir writable by the levee user (chown -R levee: DIR), on a read-write \
                 ext4 or xfs mount"
            } else {
                move_fix
            };
            CheckResult::new(NAME, Status::Fail, found).fix(fix)
        }
        Ok(()) => {
            found.push_str(": 4 KiB O_DIRECT write and read back OK");
            match name {
                "ext4" | "xfs" => CheckResult::new(NAME, Status::Pass, found),
                "tmpfs" | "ramfs" => CheckResult::new(
                    NAME,
                    Status::Fail,
                    found + ", but memory filesystems lose every message on reboot",
                )
                .fix(move_fix),
                "overlayfs" => CheckResult::new(
                    NAME,
                    Status::Warn,
                    found + ", but a container's overlay layer is slow and not kept",
                )
                .fix("mount a volume (ext4 or xfs) at data_dir"),
                "btrfs" | "zfs" | "bcachefs" => CheckResult::new(
                    NAME,
                    Status::Warn,
                    found
                        + ", but copy-on-write filesystems add write amplification under \
                             O_DIRECT",
                )
                .fix(
                    "prefer ext4 or xfs; on btrfs at least `chattr +C` the empty data_dir \
                     (nodatacow)",
                ),
                "nfs" | "cifs" | "smb2" | "9p" | "fuse" | "ceph" => CheckResult::new(
                    NAME,
                    Status::Warn,
                    found + ", but network/FUSE filesystems have unpredictable fsync latency",
                )
                .fix(move_fix),
                _ => CheckResult::new(NAME, Status::Info, found)
                    .fix("ext4 and xfs are the tested filesystems"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 4. Disk scheduler and rotational flag

/// Linux dev_t -> (major, minor), as glibc's gnu_dev_major/minor.
pub fn dev_major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x00ff);
    (major, minor)
}

/// The active value of a sysfs choice list: "none [mq-deadline] kyber" ->
/// "mq-deadline". A single value without brackets is itself.
pub fn bracketed(s: &str) -> Option<&str> {
    let s = s.trim();
    if let Some(start) = s.find('[') {
        let rest = &s[start + 1..];
        let end = rest.find(']')?;
        let v = rest[..end].trim();
        return (!v.is_empty()).then_some(v);
    }
    let mut words = s.split_whitespace();
    let first = words.next()?;
    words.next().is_none().then_some(first)
}

/// A whole disk (not a partition) found under /sys/block.
#[derive(Debug, Clone)]
pub struct Disk {
    pub name: String,
    pub sys: PathBuf,
}

/// The device holding `dir`: Ok(disks) (several for dm/md devices), or why
/// it could not be found.
pub type DeviceLookup = Result<Vec<Disk>, String>;

fn block_device_of(dir: &Path) -> DeviceLookup {
    let meta =
        std::fs::metadata(dir).map_err(|e| format!("could not stat {}: {e}", dir.display()))?;
    let (mut major, mut minor) = dev_major_minor(meta.dev());
    if major == 0 {
        // Anonymous device (btrfs, overlayfs, tmpfs): try the mount's source.
        match mount_source(dir) {
            Some(src) if src.starts_with("/dev/") => {
                let m =
                    std::fs::metadata(&src).map_err(|e| format!("could not stat {src}: {e}"))?;
                (major, minor) = dev_major_minor(m.rdev());
            }
            Some(src) => {
                return Err(format!(
                    "{} is not on a block device (mount source `{src}`)",
                    dir.display()
                ))
            }
            None => return Err(format!("{} is not on a block device", dir.display())),
        }
    }
    let link = format!("/sys/dev/block/{major}:{minor}");
    let sys = std::fs::canonicalize(&link).map_err(|e| format!("could not read {link}: {e}"))?;
    let mut disks = Vec::new();
    leaf_disks(&sys, &mut disks, 0);
    if disks.is_empty() {
        return Err(format!("no disk found under {}", sys.display()));
    }
    Ok(disks)
}

/// Resolves partitions to their disk and dm/md devices to the disks under them.
fn leaf_disks(sys: &Path, out: &mut Vec<Disk>, depth: u32) {
    let mut sys = sys.to_path_buf();
    if sys.join("partition").exists() {
        if let Some(p) = sys.parent() {
            sys = p.to_path_buf();
        }
    }
    let slaves: Vec<PathBuf> = std::fs::read_dir(sys.join("slaves"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if depth < 8 && !slaves.is_empty() {
        for s in slaves {
            if let Ok(c) = std::fs::canonicalize(&s) {
                leaf_disks(&c, out, depth + 1);
            }
        }
        return;
    }
    let name = sys
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !out.iter().any(|d| d.name == name) {
        out.push(Disk { name, sys });
    }
}

/// The source device of the mount holding `dir`, from /proc/self/mountinfo.
fn mount_source(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let (Some(mount_point), Some(source)) = (
            left.split_whitespace().nth(4),
            right.split_whitespace().nth(1),
        ) else {
            continue;
        };
        let mp = Path::new(mount_point);
        if dir.starts_with(mp) {
            let len = mount_point.len();
            if best.as_ref().is_none_or(|(l, _)| len >= *l) {
                best = Some((len, source.to_string()));
            }
        }
    }
    best.map(|(_, s)| s)
}

fn is_virtual_disk(name: &str) -> bool {
    name.starts_with("vd") || name.starts_with("xvd")
}

pub fn check_scheduler(device: &DeviceLookup) -> CheckResult {
    const NAME: &str = "disk-scheduler";
    let disks = match device {
        Ok(d) => d,
        Err(e) => return CheckResult::new(NAME, Status::Info, format!("{e}: nothing to tune")),
    };
    let mut parts = Vec::new();
    let mut worst = Status::Pass;
    let mut fixes = Vec::new();
    for d in disks {
        let path = d.sys.join("queue/scheduler");
        let sched = read_trim(&path.to_string_lossy());
        let rot = read_trim(&d.sys.join("queue/rotational").to_string_lossy()).ok();
        let nr = read_trim(&d.sys.join("queue/nr_requests").to_string_lossy()).ok();
        let (status, desc) = judge_scheduler(&d.name, sched.as_deref().ok(), rot.as_deref());
        let mut p = format!("{}: {desc}", d.name);
        if let Some(nr) = nr {
            let _ = write!(p, ", nr_requests {nr}");
        }
        if let Err(e) = &sched {
            let _ = write!(p, " ({e})");
        }
        parts.push(p);
        if status == Status::Warn {
            fixes.push(format!("echo none > /sys/block/{}/queue/scheduler", d.name));
        }
        worst = worst.max(status);
    }
    let mut r = CheckResult::new(NAME, worst, parts.join("; "));
    if !fixes.is_empty() {
        r = r.fix(format!(
            "{} (now), and the udev rule in tuning/README.md to keep it across reboots",
            fixes.join("; ")
        ));
    }
    r
}

/// Judges one disk's scheduler. `rotational` is "0" or "1".
pub fn judge_scheduler(
    name: &str,
    scheduler: Option<&str>,
    rotational: Option<&str>,
) -> (Status, String) {
    let Some(s) = scheduler else {
        return (Status::Info, "no scheduler to choose".into());
    };
    let Some(active) = bracketed(s) else {
        return (Status::Info, format!("scheduler list `{s}` not understood"));
    };
    let spinning = rotational == Some("1") && !is_virtual_disk(name);
    match active {
        "none" | "noop" => (Status::Pass, format!("scheduler {active}")),
        "mq-deadline" | "deadline" if spinning => (
            Status::Pass,
            format!("scheduler {active} (right for a spinning disk)"),
        ),
        _ => (
            Status::Warn,
            format!(
                "scheduler {active}: NVMe and virtio disks do best with `none` (no extra \
                 queueing or per-request lock on the I/O path)"
            ),
        ),
    }
}

pub fn check_rotational(device: &DeviceLookup) -> CheckResult {
    const NAME: &str = "disk-rotational";
    let disks = match device {
        Ok(d) => d,
        Err(e) => return CheckResult::new(NAME, Status::Info, e.clone()),
    };
    let mut parts = Vec::new();
    let mut worst = Status::Pass;
    for d in disks {
        let path = d.sys.join("queue/rotational");
        let (status, desc) = match read_trim(&path.to_string_lossy()) {
            Err(e) => (Status::Info, e),
            Ok(v) => judge_rotational(&d.name, &v),
        };
        parts.push(format!("{}: {desc}", d.name));
        worst = worst.max(status);
    }
    let mut r = CheckResult::new(NAME, worst, parts.join("; "));
    if worst == Status::Warn {
        r = r.fix(
            "use SSD/NVMe for data_dir; a spinning disk serves one writer well but seeks \
             between partitions and between producers and lagging consumers",
        );
    }
    r
}

pub fn judge_rotational(name: &str, rotational: &str) -> (Status, String) {
    match rotational {
        "0" => (Status::Pass, "solid state".into()),
        "1" if is_virtual_disk(name) => (
            Status::Info,
            "rotational=1, but virtio/Xen disks report 1 whatever the backing store is".into(),
        ),
        "1" => (Status::Warn, "spinning disk (rotational=1)".into()),
        v => (Status::Info, format!("rotational=`{v}`")),
    }
}

// ---------------------------------------------------------------------------
// 5. CPU frequency governor

pub fn check_governor() -> CheckResult {
    let base = "/sys/devices/system/cpu";
    let mut govs: Vec<(usize, Result<String, String>)> = Vec::new();
    match std::fs::read_dir(base) {
        Err(e) => {
            return could_not_read("cpu-governor", format!("could not read {base}: {e}"));
        }
        Ok(rd) => {
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(id) = name
                    .strip_prefix("cpu")
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                let path = entry.path().join("cpufreq/scaling_governor");
                if path.exists() {
                    govs.push((id, read_trim(&path.to_string_lossy())));
                }
            }
        }
    }
    govs.sort_by_key(|(id, _)| *id);
    judge_governor(&govs)
}

pub fn judge_governor(govs: &[(usize, Result<String, String>)]) -> CheckResult {
    const NAME: &str = "cpu-governor";
    if govs.is_empty() {
        return CheckResult::new(
            NAME,
            Status::Info,
            "no cpufreq scaling_governor files (virtual machine? the hypervisor sets the \
             frequency)",
        );
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut errors = Vec::new();
    for (_, g) in govs {
        match g {
            Ok(g) => match counts.iter_mut().find(|(n, _)| n == g) {
                Some((_, c)) => *c += 1,
                None => counts.push((g.clone(), 1)),
            },
            Err(e) => errors.push(e.clone()),
        }
    }
    let mut found = counts
        .iter()
        .map(|(g, c)| format!("{c} CPU(s) {g}"))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(e) = errors.first() {
        let _ = write!(found, "; {e}");
    }
    if counts.iter().all(|(g, _)| g == "performance") && errors.is_empty() {
        CheckResult::new(NAME, Status::Pass, found)
    } else {
        CheckResult::new(
            NAME,
            Status::Warn,
            found
                + ": shards poll and sleep in short bursts, so a power-saving governor adds \
                     wake-up latency",
        )
        .fix("cpupower frequency-set -g performance (or the tuned profile throughput-performance)")
    }
}

// ---------------------------------------------------------------------------
// 6. Cores vs shards

/// Parses a sysfs CPU list such as "0-3,5" into sorted, unique CPU ids.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let s = s.trim();
    let mut cpus = Vec::new();
    if s.is_empty() {
        return Ok(cpus);
    }
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let parse = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{part}` in `{s}` is not a CPU id or range"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b {
            return Err(format!("range `{part}` is backwards"));
        }
        if b - a > 1 << 16 {
            return Err(format!("range `{part}` is too large"));
        }
        cpus.extend(a..=b);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// What a `cores` setting asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoresSpec {
    All,
    Count(usize),
    List(Vec<usize>),
}

pub fn parse_cores_spec(spec: &str) -> Result<CoresSpec, String> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "all" {
        return Ok(CoresSpec::All);
    }
    if !spec.contains([',', '-']) {
        return spec
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .map(CoresSpec::Count)
            .ok_or_else(|| format!("`{spec}` is not `all`, a count, or a CPU list like `0,2-3`"));
    }
    parse_cpu_list(spec).map(CoresSpec::List)
}

fn usable_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn shard_count(cores: &str) -> Result<usize, String> {
    Ok(match parse_cores_spec(cores)? {
        CoresSpec::All => usable_cpus(),
        CoresSpec::Count(n) => n,
        CoresSpec::List(l) => l.len(),
    })
}

pub fn check_cores(cores: &str) -> CheckResult {
    let online = read_trim("/sys/devices/system/cpu/online").and_then(|s| parse_cpu_list(&s));
    judge_cores(cores, online, usable_cpus())
}

/// `online`: /sys/devices/system/cpu/online; `usable`: CPUs this process may
/// run on (available_parallelism: affinity and cgroup quota), which is what
/// `levee serve` counts.
pub fn judge_cores(cores: &str, online: Result<Vec<usize>, String>, usable: usize) -> CheckResult {
    const NAME: &str = "cores";
    let spec = match parse_cores_spec(cores) {
        Ok(s) => s,
        Err(e) => {
            return CheckResult::new(NAME, Status::Fail, format!("cores = \"{cores}\": {e}"))
                .fix("cores = \"all\", a count, or a CPU list like \"1-7\"")
        }
    };
    let mut found = match &online {
        Ok(l) => format!("{} CPUs online", l.len()),
        Err(e) => e.clone(),
    };
    let n_online = online.as_ref().map(|l| l.len()).unwrap_or(usable);
    if usable != n_online {
        let _ = write!(found, ", {usable} usable by this process (affinity/cgroup)");
    }
    let (shards, ids) = match &spec {
        CoresSpec::All => (usable, (0..usable).collect::<Vec<_>>()),
        CoresSpec::Count(n) => (*n, (0..*n).collect()),
        CoresSpec::List(l) => (l.len(), l.clone()),
    };
    let _ = write!(found, "; cores = \"{cores}\" -> {shards} shard(s)");
    // `levee serve` refuses a count or CPU id past the usable CPUs.
    let missing: Vec<usize> = ids.iter().copied().filter(|&c| c >= usable).collect();
    if shards > usable || !missing.is_empty() {
        let _ = write!(
            found,
            ": more shards than CPUs (CPU {missing:?} not usable); `levee serve` refuses to start"
        );
        return CheckResult::new(NAME, Status::Fail, found).fix(format!(
            "cores = \"all\" or at most {usable} (one shard per core; a shard never shares its core)"
        ));
    }
    if let Ok(l) = &online {
        let offline: Vec<usize> = ids.iter().copied().filter(|c| !l.contains(c)).collect();
        if !offline.is_empty() {
            let _ = write!(found, ": CPU {offline:?} offline");
            return CheckResult::new(NAME, Status::Fail, found).fix(format!(
                "pick online CPUs (/sys/devices/system/cpu/online: {})",
                l.iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
    }
    let idle: Vec<usize> = (0..usable).filter(|c| !ids.contains(c)).collect();
    let big = usable >= 8;
    if idle.is_empty() {
        if big {
            found.push_str("; every core runs a shard");
            return CheckResult::new(NAME, Status::Pass, found).fix(format!(
                "optional on a host this big: --cores 1-{} leaves core 0 for NIC/NVMe IRQs \
                 and housekeeping (see tuning/README.md)",
                usable - 1
            ));
        }
        return CheckResult::new(NAME, Status::Pass, found + "; every core runs a shard");
    }
    if idle == [0] {
        return CheckResult::new(
            NAME,
            Status::Pass,
            found + "; core 0 left for IRQs and housekeeping",
        );
    }
    let _ = write!(found, "; {} idle core(s) {idle:?}", idle.len());
    CheckResult::new(NAME, Status::Warn, found).fix(format!(
        "cores = \"all\" on a dedicated host{}",
        if big {
            format!(", or \"1-{}\" to keep only core 0 for IRQs", usable - 1)
        } else {
            String::new()
        }
    ))
}

// ---------------------------------------------------------------------------
// 7. Transparent huge pages

pub fn check_thp() -> CheckResult {
    let enabled = read_trim("/sys/kernel/mm/transparent_hugepage/enabled");
    let defrag = read_trim("/sys/kernel/mm/transparent_hugepage/defrag");
    judge_thp(enabled, defrag.ok())
}

pub fn judge_thp(enabled: Result<String, String>, defrag: Option<String>) -> CheckResult {
    const NAME: &str = "thp";
    let enabled = match enabled {
        Ok(e) => e,
        Err(e) => return CheckResult::new(NAME, Status::Info, e + " (kernel without THP?)"),
    };
    let Some(active) = bracketed(&enabled) else {
        return CheckResult::new(
            NAME,
            Status::Info,
            format!("enabled = `{enabled}` not understood"),
        );
    };
    let mut found = format!("transparent_hugepage/enabled = {active}");
    let defrag_active = defrag.as_deref().and_then(bracketed).map(str::to_string);
    if let Some(d) = &defrag_active {
        let _ = write!(found, ", defrag = {d}");
    }
    let fix = "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (boot: \
               transparent_hugepage=madvise on the kernel command line)";
    match active {
        "always" => CheckResult::new(
            NAME,
            Status::Warn,
            found + ": khugepaged compaction and huge-page faults cause latency spikes",
        )
        .fix(fix),
        _ if defrag_active.as_deref() == Some("always") => CheckResult::new(
            NAME,
            Status::Warn,
            found + ": defrag=always stalls page faults on direct compaction",
        )
        .fix("echo defer+madvise > /sys/kernel/mm/transparent_hugepage/defrag"),
        "madvise" | "never" => CheckResult::new(NAME, Status::Pass, found),
        _ => CheckResult::new(NAME, Status::Info, found),
    }
}

// ---------------------------------------------------------------------------
// 8. Open files

pub fn check_nofile() -> CheckResult {
    match getrlimit(libc::RLIMIT_NOFILE) {
        Ok((soft, hard)) => judge_nofile(soft, hard),
        Err(e) => could_not_read("nofile", format!("could not read RLIMIT_NOFILE: {e}")),
    }
}

pub fn judge_nofile(soft: u64, hard: u64) -> CheckResult {
    const NAME: &str = "nofile";
    let found = format!(
        "RLIMIT_NOFILE {} (hard {})",
        fmt_limit(soft),
        fmt_limit(hard)
    );
    if soft >= 65536 {
        return CheckResult::new(NAME, Status::Pass, found);
    }
    CheckResult::new(
        NAME,
        Status::Warn,
        found + ", under 65536: each partition keeps 3 files per segment (.log, .index, \
                 .timeindex) open, plus one socket per client connection",
    )
    .fix("LimitNOFILE=1048576 in the systemd unit (tuning/levee.service); from a shell `ulimit -n 1048576`")
}

// ---------------------------------------------------------------------------
// 10. sysctls and the root device

pub fn check_swappiness() -> CheckResult {
    judge_swappiness(read_trim("/proc/sys/vm/swappiness"))
}

pub fn judge_swappiness(v: Result<String, String>) -> CheckResult {
    const NAME: &str = "swappiness";
    let v = match v {
        Ok(v) => v,
        Err(e) => return could_not_read(NAME, e),
    };
    match v.parse::<u32>() {
        Ok(n) if n <= 10 => CheckResult::new(NAME, Status::Pass, format!("vm.swappiness = {n}")),
        Ok(n) => CheckResult::new(
            NAME,
            Status::Warn,
            format!(
                "vm.swappiness = {n}: the kernel may swap out shard memory (tail caches, \
                 indexes) to keep page cache, and a swapped-in page stalls a whole shard"
            ),
        )
        .fix("sysctl -w vm.swappiness=1 (persist: tuning/sysctl.conf in /etc/sysctl.d/)"),
        Err(_) => CheckResult::new(NAME, Status::Info, format!("vm.swappiness = `{v}`")),
    }
}

pub fn check_somaxconn() -> CheckResult {
    judge_somaxconn(read_trim("/proc/sys/net/core/somaxconn"))
}

pub fn judge_somaxconn(v: Result<String, String>) -> CheckResult {
    const NAME: &str = "somaxconn";
    let v = match v {
        Ok(v) => v,
        Err(e) => return could_not_read(NAME, e),
    };
    match v.parse::<u32>() {
        Ok(n) if n >= 1024 => {
            CheckResult::new(NAME, Status::Pass, format!("net.core.somaxconn = {n}"))
        }
        Ok(n) => CheckResult::new(
            NAME,
            Status::Warn,
            format!(
                "net.core.somaxconn = {n}: a burst of client connections overflows the accept \
                 queue and clients see SYN retries (1 s, 3 s)"
            ),
        )
        .fix("sysctl -w net.core.somaxconn=4096 (persist: tuning/sysctl.conf)"),
        Err(_) => CheckResult::new(NAME, Status::Info, format!("net.core.somaxconn = `{v}`")),
    }
}

pub fn check_root_device(dir: &Path) -> CheckResult {
    const NAME: &str = "data-device";
    let d = match std::fs::metadata(dir) {
        Ok(m) => m.dev(),
        Err(e) => return could_not_read(NAME, format!("could not stat {}: {e}", dir.display())),
    };
    let r = match std::fs::metadata("/") {
        Ok(m) => m.dev(),
        Err(e) => return could_not_read(NAME, format!("could not stat /: {e}")),
    };
    let (maj, min) = dev_major_minor(d);
    if d == r {
        CheckResult::new(
            NAME,
            Status::Info,
            format!(
                "{} is on the same filesystem as / (device {maj}:{min}): logs, package updates \
                 and a full disk are shared with the system",
                dir.display()
            ),
        )
        .fix("on a dedicated host, give data_dir its own disk (ext4/xfs, mounted noatime)")
    } else {
        CheckResult::new(
            NAME,
            Status::Pass,
            format!(
                "{} has its own filesystem (device {maj}:{min}), not /'s",
                dir.display()
            ),
        )
    }
}

// ---------------------------------------------------------------------------
// 9. Measured disk bandwidth

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn fill_block(buf: &mut [u8], block: u64) {
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

fn mibs(bytes: u64, d: Duration) -> f64 {
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

fn measure_bandwidth(path: &Path, bytes: u64, block: usize) -> Result<(f64, f64), String> {
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

fn measure_sync(path: &Path) -> Result<(Duration, Duration), String> {
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

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_brackets() {
        assert_eq!(
            bracketed("none [mq-deadline] kyber bfq"),
            Some("mq-deadline")
        );
        assert_eq!(bracketed("[none] mq-deadline kyber bfq \n"), Some("none"));
        assert_eq!(bracketed("none"), Some("none"));
        assert_eq!(bracketed(""), None);
        assert_eq!(bracketed("none mq-deadline"), None);
        assert_eq!(bracketed("none [mq-deadline"), None);
        assert_eq!(bracketed("[]"), None);
    }

    #[test]
    fn scheduler_judgement() {
        let s = |n, sch, r| judge_scheduler(n, Some(sch), Some(r)).0;
        assert_eq!(s("nvme0n1", "[none] mq-deadline", "0"), Status::Pass);
        assert_eq!(s("nvme0n1", "none [mq-deadline]", "0"), Status::Warn);
        assert_eq!(s("vda", "none [mq-deadline]", "1"), Status::Warn);
        assert_eq!(s("sda", "none [mq-deadline]", "1"), Status::Pass);
        assert_eq!(s("sda", "[bfq] none", "1"), Status::Warn);
        assert_eq!(judge_scheduler("zram0", None, None).0, Status::Info);
        assert_eq!(judge_rotational("vda", "1").0, Status::Info);
        assert_eq!(judge_rotational("sda", "1").0, Status::Warn);
        assert_eq!(judge_rotational("nvme0n1", "0").0, Status::Pass);
    }

    #[test]
    fn thp() {
        let j = |e: &str, d: Option<&str>| judge_thp(Ok(e.into()), d.map(String::from)).status;
        assert_eq!(j("[always] madvise never", None), Status::Warn);
        assert_eq!(j("always [madvise] never", None), Status::Pass);
        assert_eq!(j("always madvise [never]", None), Status::Pass);
        assert_eq!(
            j(
                "always [madvise] never",
                Some("[always] defer defer+madvise madvise never")
            ),
            Status::Warn
        );
        assert_eq!(
            j(
                "always [madvise] never",
                Some("always defer defer+madvise [madvise] never")
            ),
            Status::Pass
        );
        assert_eq!(
            judge_thp(Err("could not read x".into()), None).status,
            Status::Info
        );
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5").unwrap(), vec![0, 1, 2, 3, 5]);
        assert_eq!(parse_cpu_list("0\n").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0-1,1,8-9").unwrap(), vec![0, 1, 8, 9]);
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<usize>::new());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("0-").is_err());
        assert_eq!(parse_cores_spec("all").unwrap(), CoresSpec::All);
        assert_eq!(parse_cores_spec("2").unwrap(), CoresSpec::Count(2));
        assert_eq!(
            parse_cores_spec("1-2").unwrap(),
            CoresSpec::List(vec![1, 2])
        );
        assert!(parse_cores_spec("0").is_err());
    }

    #[test]
    fn cores_judgement() {
        let on = |n: usize| Ok((0..n).collect::<Vec<_>>());
        assert_eq!(judge_cores("all", on(4), 4).status, Status::Pass);
        assert_eq!(judge_cores("2", on(4), 4).status, Status::Warn);
        assert_eq!(judge_cores("8", on(4), 4).status, Status::Fail);
        assert_eq!(judge_cores("0,5", on(4), 4).status, Status::Fail);
        assert_eq!(judge_cores("1-15", on(16), 16).status, Status::Pass);
        assert_eq!(judge_cores("x", on(4), 4).status, Status::Fail);
        assert_eq!(
            judge_cores("all", Err("could not read".into()), 2).status,
            Status::Pass
        );
        // CPU 2 offline.
        assert_eq!(
            judge_cores("0-3", Ok(vec![0, 1, 3, 4]), 4).status,
            Status::Fail
        );
    }

    #[test]
    fn fs_names() {
        assert_eq!(fs_name(0xEF53), "ext4");
        assert_eq!(fs_name(0x5846_5342), "xfs");
        assert_eq!(fs_name(0x0102_1994), "tmpfs");
        assert_eq!(fs_name(0x9123_683E), "btrfs");
        assert_eq!(fs_name(0x794c_7630), "overlayfs");
        assert_eq!(fs_name(0x1234), "unknown");
        let ok = |m: u32| judge_odirect(Path::new("d"), Ok(m), Ok(()), None).status;
        assert_eq!(ok(0xEF53), Status::Pass);
        assert_eq!(ok(0x0102_1994), Status::Fail);
        assert_eq!(ok(0x9123_683E), Status::Warn);
        let bad = judge_odirect(
            Path::new("d"),
            Ok(0x0102_1994),
            Err("open(O_DIRECT) failed: Invalid argument".into()),
            None,
        );
        assert_eq!(bad.status, Status::Fail);
        assert!(bad.fix.contains("ext4"), "{}", bad.fix);
    }

    #[test]
    fn dev_numbers() {
        // glibc's makedev, to check the split round-trips.
        let makedev = |maj: u64, min: u64| {
            ((maj & 0xffff_f000) << 32)
                | ((maj & 0x0fff) << 8)
                | ((min & 0xffff_ff00) << 12)
                | (min & 0x00ff)
        };
        assert_eq!(dev_major_minor(0xfe00), (254, 0));
        assert_eq!(dev_major_minor(0x0803), (8, 3));
        for (maj, min) in [(259, 1), (4097, 0x12345), (0, 42), (253, 0)] {
            assert_eq!(dev_major_minor(makedev(maj, min)), (maj, min));
        }
    }

    #[test]
    fn limits_and_sysctls() {
        let inf = RLIM_INFINITY;
        assert_eq!(
            judge_memlock(inf, inf, Some(64), false).status,
            Status::Pass
        );
        assert_eq!(
            judge_memlock(8 * MIB, 8 * MIB, Some(2), false).status,
            Status::Warn
        );
        assert_eq!(
            judge_memlock(64 * KIB, 64 * KIB, Some(2), false).status,
            Status::Fail
        );
        assert_eq!(
            judge_memlock(64 * MIB, inf, Some(2), false).status,
            Status::Pass
        );
        assert_eq!(
            judge_memlock(64 * MIB, inf, Some(8), false).status,
            Status::Warn
        );
        assert_eq!(judge_nofile(1024, 4096).status, Status::Warn);
        assert_eq!(judge_nofile(1 << 20, 1 << 20).status, Status::Pass);
        assert_eq!(judge_swappiness(Ok("60".into())).status, Status::Warn);
        assert_eq!(judge_swappiness(Ok("1".into())).status, Status::Pass);
        assert_eq!(
            judge_swappiness(Err("could not read".into())).status,
            Status::Warn
        );
        assert_eq!(judge_somaxconn(Ok("4096".into())).status, Status::Pass);
        assert_eq!(judge_somaxconn(Ok("128".into())).status, Status::Warn);
        assert_eq!(parse_kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(parse_kernel_version("x"), None);
        let old = judge_io_uring(Ok(()), Err("none".into()), Some("5.4.0"));
        assert_eq!(old.status, Status::Fail);
        let off = judge_io_uring(Ok(()), Ok("2".into()), Some("6.8.0"));
        assert_eq!(off.status, Status::Fail);
        let enosys = judge_io_uring(
            Err(io::Error::from_raw_os_error(libc::ENOSYS)),
            Err("none".into()),
            Some("6.8.0"),
        );
        assert_eq!(enosys.status, Status::Fail);
        assert!(enosys.fix.contains("CONFIG_IO_URING"));
    }

    const KIB: u64 = 1024;

    #[test]
    fn governor() {
        assert_eq!(judge_governor(&[]).status, Status::Info);
        let g = |v: &[&str]| {
            let v: Vec<_> = v
                .iter()
                .enumerate()
                .map(|(i, s)| (i, Ok(s.to_string())))
                .collect();
            judge_governor(&v).status
        };
        assert_eq!(g(&["performance", "performance"]), Status::Pass);
        assert_eq!(g(&["performance", "powersave"]), Status::Warn);
    }

    #[test]
    fn json_escaping() {
        let r = CheckResult::new("x", Status::Warn, "a \"b\"\n\\c\u{1}").fix("d");
        let j = to_json(&[r]);
        assert!(j.contains(r#""found": "a \"b\"\n\\c\u0001""#), "{j}");
        assert!(j.contains(r#""status": "WARN""#), "{j}");
        assert_eq!(to_json(&[]), "[]");
    }

    fn test_dir() -> tempfile::TempDir {
        // Under target/tmp like the other tests: /tmp may be tmpfs.
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
        let _ = std::fs::create_dir_all(&base);
        tempfile::Builder::new()
            .prefix("tune-")
            .tempdir_in(&base)
            .or_else(|_| tempfile::tempdir())
            .expect("a temporary directory")
    }

    #[test]
    fn every_check_reports_on_this_machine() {
        let tmp = test_dir();
        let args = CheckArgs {
            data_dir: Some(tmp.path().join("data")),
            cores: Some("all".into()),
            ..Default::default()
        };
        let results = run_checks(&args);
        let names: Vec<_> = results.iter().map(|r| r.name).collect();
        for want in [
            "io_uring",
            "memlock",
            "o_direct",
            "disk-scheduler",
            "disk-rotational",
            "cpu-governor",
            "cores",
            "thp",
            "nofile",
            "swappiness",
            "somaxconn",
            "data-device",
            "disk-bandwidth",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        for r in &results {
            let line = r.line();
            println!("{line}");
            assert!(!r.found.is_empty(), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
        // The directory created for the checks is removed again.
        assert!(!tmp.path().join("data").exists());
        assert!(to_json(&results).starts_with('['));
        // No temporary files left behind.
        assert_eq!(
            std::fs::read_dir(tmp.path())
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );
    }

    #[test]
    fn measure_disk_small() {
        let tmp = test_dir();
        let r = measure_disk(tmp.path(), 4 * MIB);
        println!("{}", r.line());
        assert_eq!(r.name, "disk-bandwidth");
        assert!(!r.found.is_empty());
        assert_eq!(
            std::fs::read_dir(tmp.path())
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );
    }
}
