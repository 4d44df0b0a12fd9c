//! Telling a full disk from other I/O failures.

use std::io;

/// Whether `e` says the disk (or the user's quota) is full: `ENOSPC` or
/// `EDQUOT`, by errno or by kind (glommio's enhanced errors keep only the
/// kind). Such a failure can clear once space is freed, unlike a failing
/// disk.
pub fn is_out_of_space(e: &io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
        || matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_errors_by_errno_and_by_kind() {
        assert!(is_out_of_space(&io::Error::from_raw_os_error(28)));
        assert!(is_out_of_space(&io::Error::from_raw_os_error(122)));
        assert!(is_out_of_space(&io::Error::new(
            io::ErrorKind::StorageFull,
            "wrapped"
        )));
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(5)));
        assert!(!is_out_of_space(&io::Error::other("no")));
    }
}
