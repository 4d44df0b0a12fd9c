//! The data directory: O_DIRECT, its disk, I/O scheduler, rotational flag.

use crate::*;
use std::alloc::Layout;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

// ---------------------------------------------------------------------------
// 3. O_DIRECT and the filesystem

/// A zeroed heap buffer aligned for direct I/O.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl AlignedBuf {
    pub(crate) fn new(len: usize) -> Option<Self> {
        if len == 0 {
            return None;
        }
        let layout = Layout::from_size_align(len, ALIGN).ok()?;
        // SAFETY: layout has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(AlignedBuf { ptr, layout })
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to layout.size() initialised (zeroed) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
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

pub(crate) fn statfs(dir: &Path) -> Result<libc::statfs, io::Error> {
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

pub(crate) fn fs_magic(st: &libc::statfs) -> u32 {
    (st.f_type as u64 & 0xffff_ffff) as u32
}

pub(crate) fn temp_path(dir: &Path, what: &str) -> PathBuf {
    dir.join(format!(".levee-tune-{what}-{}.tmp", std::process::id()))
}

pub(crate) fn open_direct(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Creates a file with O_DIRECT, writes and reads back one aligned block.
pub(crate) fn direct_io_roundtrip(dir: &Path) -> Result<(), String> {
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

pub(crate) fn block_device_of(dir: &Path) -> DeviceLookup {
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
pub(crate) fn leaf_disks(sys: &Path, out: &mut Vec<Disk>, depth: u32) {
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
pub(crate) fn mount_source(dir: &Path) -> Option<String> {
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

pub(crate) fn is_virtual_disk(name: &str) -> bool {
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
