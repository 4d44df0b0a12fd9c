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
    /// Magic 0 and 1 are Kafka's formats before 0.11; only 2 is stored.
    #[error("record batch magic {0} is not supported (RecordBatch v2, magic 2, is)")]
    BadMagic(u8),
    #[error("batch CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("batch declares {0} records; a batch holds at least one")]
    BadRecordCount(i32),
    #[error("batch's last offset delta {delta} does not match its {count} records")]
    BadOffsetDelta { delta: i32, count: i32 },
    #[error("unknown compression codec {0} (Kafka's are 0 to 4)")]
    UnknownCompression(u8),
    #[error("stored batch at offset {got} where {expected} was expected")]
    BadOffset { expected: u64, got: i64 },
    #[error("stored batch has leader epoch {got} where the log's epochs say {expected}")]
    BadEpoch { expected: i32, got: i32 },
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
    /// A write failed because the disk is full: the log refuses writes
    /// until [`crate::Log::recover_from_full_disk`] cuts what may be
    /// missing from its tail, once space is freed.
    #[error("the disk is full ({0}); writes to this log resume once space is freed")]
    NoSpace(String),
    #[error("the log is closed")]
    Closed,
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("a replicated batch starts at offset {got}, but the log ends at {expected}")]
    NotContiguous { expected: u64, got: u64 },
    #[error("a batch of leader epoch {epoch} at offset {offset}, after batches of epoch {latest}: the logs diverged")]
    EpochRegression {
        epoch: i32,
        latest: i32,
        offset: u64,
    },
    #[error("{dir} holds a log in Levee storage format 1 (before Kafka's RecordBatch v2); this version cannot read it: start with a new data directory (or read it with the release that wrote it)")]
    OldFormat { dir: String },
}

impl LogError {
    /// Whether this failure came from a full disk (or quota), and so may
    /// clear once space is freed: an `ENOSPC` I/O error, or a log that
    /// refuses writes since one.
    pub fn is_no_space(&self) -> bool {
        match self {
            LogError::NoSpace(_) => true,
            LogError::Io { source, .. } => levee_core::is_out_of_space(source),
            _ => false,
        }
    }
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
