//! Process and system limits: locked memory, open files, swappiness, listen backlog.

use crate::*;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

// ---------------------------------------------------------------------------
// 2. Locked memory

#[allow(clippy::unnecessary_cast)] // rlim_t is u32 on some 32-bit targets
pub(crate) fn getrlimit(resource: libc::__rlimit_resource_t) -> Result<(u64, u64), io::Error> {
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

pub(crate) fn fmt_limit(v: u64) -> String {
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
