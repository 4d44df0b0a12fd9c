//! The broker's typed failure of one operation: an error code (the native
//! protocol's `ErrorCode`, the broker's neutral vocabulary; each protocol
//! front end maps it to its own codes) and a message that says what went
//! wrong and what to do.

use levee_engine::LogError;
use levee_schemas::proto::ErrorCode;

/// A typed failure of one operation, sent back to the client.
#[derive(Debug, Clone)]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
}

impl OpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OpError {
            code,
            message: message.into(),
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
            | LogError::Corrupt { .. }
            | LogError::OldFormat { .. } => ErrorCode::StorageError,
        };
        OpError::new(code, e.to_string())
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

pub type OpResult<T> = Result<T, OpError>;
