//! The kernel: io_uring availability.

use crate::*;
use std::io;

// ---------------------------------------------------------------------------
// 1. io_uring

pub(crate) fn kernel_release() -> Option<String> {
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
pub(crate) fn try_io_uring_setup() -> Result<(), io::Error> {
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
