//! When appended batches are flushed to stable storage: the `fsync` setting
//! of the broker (`log.fsync`) and of a topic.

use std::str::FromStr;
use std::time::Duration;

/// When appended batches are flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Group commit: a caller waiting on `wait_durable` triggers one
    /// `fdatasync` that covers every batch appended before it started.
    Always,
    /// A background flush every interval (the engine's `Log::run_background`).
    Interval(Duration),
    /// Never flush on a timer; rely on replication. Segments are still
    /// flushed when they roll and when the log closes.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;

    /// `always`, `never` or `interval:<ms>` (`interval:100` or
    /// `interval:100ms`; an interval of 0 is 1 ms).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => {
                let ms = other
                    .strip_prefix("interval:")
                    .and_then(|v| v.trim_end_matches("ms").parse::<u64>().ok())
                    .ok_or_else(|| {
                        format!(
                            "fsync policy `{other}` is not one of `always`, `never`, `interval:<ms>`"
                        )
                    })?;
                Ok(FsyncPolicy::Interval(Duration::from_millis(ms.max(1))))
            }
        }
    }
}

impl FsyncPolicy {
    /// Checks an fsync setting that is passed on as text (a topic's
    /// setting, sent to the broker): the text itself if it parses.
    pub fn check_setting(s: &str) -> Result<String, String> {
        s.parse::<FsyncPolicy>().map(|_| s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!("never".parse(), Ok(FsyncPolicy::Never));
        assert_eq!(
            "interval:100".parse(),
            Ok(FsyncPolicy::Interval(Duration::from_millis(100)))
        );
        assert_eq!(
            "interval:250ms".parse(),
            Ok(FsyncPolicy::Interval(Duration::from_millis(250)))
        );
        assert_eq!(
            "interval:0".parse(),
            Ok(FsyncPolicy::Interval(Duration::from_millis(1)))
        );
        for bad in [
            "",
            "sometimes",
            "Always",
            "interval:",
            "interval:x",
            "interval:-1",
        ] {
            let e = bad.parse::<FsyncPolicy>().unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn settings_are_checked_and_kept_as_text() {
        assert_eq!(
            FsyncPolicy::check_setting("interval:100"),
            Ok("interval:100".to_string())
        );
        assert_eq!(FsyncPolicy::check_setting("never"), Ok("never".to_string()));
        assert!(FsyncPolicy::check_setting("sometimes").is_err());
    }
}
