//! Typed errors of the storage engine.

use std::io;

/// Why a record batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch too short: {len} bytes, the header alone is {min}")]
    TooShort { len: usize, min: usize },
    #[error("batch length field says {declared} bytes but {actual} bytes were given")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("batch of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unknown batch magic {0:#x} (this build reads magic {expected:#x})", expected = crate::batch::MAGIC)]
    BadMagic(u8),
    #[error("batch CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("batch header CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadHeaderCrc { stored: u32, computed: u32 },
    #[error("batch declares {0} records; a batch holds at least one")]
    BadRecordCount(u32),
    #[error("malformed record {index}: {reason}")]
    BadRecord { index: u32, reason: &'static str },
    #[error("records are compressed with codec {0}; decompress before iterating")]
    Compressed(u8),
}

/// Errors of a partition log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid record batch: {0}")]
    Batch(#[from] BatchError),
    #[error("offset {offset} is out of range: the log holds [{log_start}, {log_end})")]
    OffsetOutOfRange {
        offset: u64,
        log_start: u64,
        log_end: u64,
    },
    #[error("stored data is corrupt in {file} at byte {pos}: {reason}")]
    Corrupt {
        file: String,
        pos: u64,
        reason: String,
    },
    #[error("I/O error on {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("the log failed an earlier write and refuses further writes until reopened: {0}")]
    Poisoned(String),
    #[error("the log is closed")]
    Closed,
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("a replicated batch starts at offset {got}, but the log ends at {expected}")]
    NotContiguous { expected: u64, got: u64 },
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

#[cfg_attr(not(feature = "storage"), allow(dead_code))]
pub(crate) fn io_err(context: impl Into<String>, e: impl Into<io::Error>) -> LogError {
    LogError::Io {
        context: context.into(),
        source: e.into(),
    }
}

#[cfg(feature = "storage")]
pub(crate) fn glommio_err(context: impl Into<String>, e: glommio::GlommioError<()>) -> LogError {
    io_err(context, io::Error::from(e))
}
