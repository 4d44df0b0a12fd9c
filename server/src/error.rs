//! The broker's typed failure of one operation: an error code (the native
//! protocol's `ErrorCode`, the broker's neutral vocabulary; each protocol
//! front end maps it to its own codes) and a message that says what went
//! wrong and what to do.

use levee_engine::LogError;
use levee_schemas::proto::ErrorCode;

/// How messages of disk-full storage errors begin.
pub const DISK_FULL: &str = "the broker's disk is full";

/// A typed failure of one operation, sent back to the client.
#[derive(Debug, Clone)]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
    /// The failure is a full disk (see [`OpError::disk_full`]): the broker
    /// reports it (`/health`, `levee_disk_full`) until space is freed.
    pub no_space: bool,
}

impl OpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OpError {
            code,
            message: message.into(),
            no_space: false,
        }
    }

    pub fn unknown_partition(topic: &str, partition: u32) -> Self {
        OpError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("partition {partition} of topic `{topic}` does not exist"),
        )
    }

    pub fn shutting_down() -> Self {
        OpError::new(ErrorCode::ShuttingDown, "the broker is shutting down")
    }

    pub fn from_log(e: LogError) -> Self {
        let code = match &e {
            LogError::Batch(levee_engine::BatchError::TooLarge { .. }) => {
                ErrorCode::MessageTooLarge
            }
            LogError::Batch(_) => ErrorCode::CorruptBatch,
            LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            LogError::Closed => ErrorCode::ShuttingDown,
            LogError::Config(_) => ErrorCode::InvalidConfig,
            LogError::NotContiguous { .. } | LogError::EpochRegression { .. } => {
                ErrorCode::InvalidRequest
            }
            LogError::Io { .. }
            | LogError::Poisoned(_)
            | LogError::NoSpace(_)
            | LogError::Corrupt { .. }
            | LogError::OldFormat { .. } => ErrorCode::StorageError,
        };
        if e.is_no_space() {
            return OpError::disk_full(e);
        }
        OpError::new(code, e.to_string())
    }

    /// A write refused because the broker's disk is full: a storage error
    /// that says what to do.
    pub fn disk_full(e: impl std::fmt::Display) -> Self {
        OpError {
            no_space: true,
            ..OpError::new(
                ErrorCode::StorageError,
                format!(
                    "{DISK_FULL}: {e}; free space (`levee topic delete`, a lower retention with `levee topic alter`, `levee group delete`) and writes resume without a restart"
                ),
            )
        }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

pub type OpResult<T> = Result<T, OpError>;
