//! The client's typed errors.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use levee_engine::BatchError;
use levee_schemas::proto::ErrorCode;
use levee_schemas::{error_name, is_retriable};

/// Everything a client call can fail with. Cloneable so that one failed
/// request can fail every message it carried.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No bootstrap server accepted a connection (or completed the handshake).
    #[error("could not connect to any of {addrs}: {reason} (is the broker running? check --bootstrap / LEVEE_BOOTSTRAP)")]
    Connect {
        /// The addresses that were tried.
        addrs: String,
        /// The last failure.
        reason: String,
    },
    /// The connection failed while requests were in flight, or an I/O error
    /// happened on it. The request may or may not have been applied.
    #[error("connection to {peer} lost: {reason} (the request may or may not have been applied; the next call reconnects)")]
    ConnectionLost {
        /// The broker's address.
        peer: String,
        /// What happened.
        reason: String,
    },
    /// A local I/O error (not on the broker connection).
    #[error("I/O error: {0}")]
    Io(#[source] Arc<io::Error>),
    /// The broker sent something this client cannot decode.
    #[error("protocol error: {0} (client and broker versions may not match)")]
    Protocol(String),
    /// The broker does not know the topic (or the partition).
    #[error("{}", unknown_topic_message(.topic, *.partition))]
    UnknownTopicOrPartition {
        /// The topic named in the request.
        topic: String,
        /// The partition, when one was named.
        partition: Option<u32>,
    },
    /// The broker answered with an error code.
    #[error("broker error {}: {}{}", error_name(*.code), if .message.is_empty() { "(no message)" } else { .message.as_str() }, server_hint(*.code, .message))]
    Server {
        /// The error code.
        code: ErrorCode,
        /// The broker's message (may be empty).
        message: String,
    },
    /// No response arrived within the request timeout.
    #[error("{what} timed out after {after:?} (the broker may be overloaded or unreachable; raise the request timeout or retry)")]
    Timeout {
        /// Which request.
        what: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// A fetched batch failed its CRC or length checks.
    #[error("corrupt batch in {topic}/{partition} at offset {offset}: {source} (the data was damaged on the broker or in transit; do not trust it)")]
    Checksum {
        /// Topic of the batch.
        topic: String,
        /// Partition of the batch.
        partition: u32,
        /// The position the batch was read at.
        offset: u64,
        /// The failed check.
        #[source]
        source: BatchError,
    },
    /// A fetched batch passed its CRC checks but its records do not decode,
    /// or its compressed records do not decompress.
    #[error("malformed batch in {topic}/{partition} at offset {offset}: {reason}")]
    MalformedBatch {
        /// Topic of the batch.
        topic: String,
        /// Partition of the batch.
        partition: u32,
        /// The position the batch was read at.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The consumer's position is outside the partition's log.
    #[error("offset {offset} is out of range for {topic}/{partition}: the log holds [{log_start}, {high_watermark}) (seek to a valid offset or start from earliest/latest)")]
    OffsetOutOfRange {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The requested offset.
        offset: u64,
        /// First offset still stored.
        log_start: u64,
        /// Offset after the last visible record.
        high_watermark: u64,
    },
    /// Bad arguments given to the client.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The producer or consumer was closed.
    #[error("the producer is closed")]
    Closed,
    /// The consumer group is rebalancing: the member must commit what it
    /// has processed and join again with its member id.
    /// [`crate::GroupConsumer`] does this itself.
    #[error("group `{group}` is rebalancing: join the group again (the group consumer does this by itself)")]
    Rebalance {
        /// The group.
        group: String,
    },
    /// The member is no longer part of the group's current generation
    /// (`UnknownMemberId`: expelled, e.g. after missing heartbeats for the
    /// session timeout; `IllegalGeneration`: a stale generation). Its
    /// partitions may belong to another member now: it must join again, and
    /// its uncommitted progress will be read again by whoever owns them.
    #[error("this member was fenced from group `{group}` ({}): {}{}", error_name(*.code), if .message.is_empty() { "no message" } else { .message.as_str() }, fenced_hint(*.code))]
    Fenced {
        /// The group.
        group: String,
        /// `UnknownMemberId` or `IllegalGeneration`.
        code: ErrorCode,
        /// The broker's message (may be empty).
        message: String,
    },
    /// Another consumer-group error (`InvalidGroupId`, `UnknownGroup`,
    /// `GroupNotEmpty`).
    #[error("{}", group_error_message(.group, *.code, .message))]
    Group {
        /// The group.
        group: String,
        /// The broker's code.
        code: ErrorCode,
        /// The broker's message (may be empty).
        message: String,
    },
    /// A transactional producer was fenced: another producer with the same
    /// transactional id started since (or this one's transaction ran past
    /// its timeout and was aborted at a new epoch). Fatal: this producer
    /// can do nothing more; drop it (and start a new one if this process
    /// should continue).
    #[error("transactional producer `{transactional_id}` was fenced by a newer producer with the same transactional id (or its transaction timed out): {message} (this producer cannot continue; create a new one)")]
    ProducerFenced {
        /// The transactional id.
        transactional_id: String,
        /// What happened.
        message: String,
    },
    /// The open transaction cannot commit (a record was not delivered,
    /// partitions or offsets could not be added to it, the commit was
    /// refused): call `abort_transaction`, then start a new one.
    #[error("the transaction cannot commit and must be aborted: {reason} (call abort_transaction, then begin a new transaction)")]
    AbortableTransaction {
        /// The first failure of the transaction.
        reason: String,
    },
    /// The call does not fit the transactional producer's state (sending
    /// outside a transaction, committing before `init_transactions`).
    #[error("invalid transaction state: {0}")]
    InvalidTxnState(String),
    /// A group consumer was assigned a partition for which the group has no
    /// committed offset, and its reset policy is `error`.
    #[error("group `{group}` has no committed offset for {topic}/{partition} and the offset reset policy is `error` (commit one with `levee group reset-offsets {group} --topic {topic} --to earliest|latest|OFFSET`, or use the earliest/latest policy)")]
    NoCommittedOffset {
        /// The group.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
}

fn fenced_hint(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::UnknownMemberId => " (the member was removed from the group, e.g. it missed heartbeats for longer than the session timeout; join again with a new member id)",
        _ => " (the member's generation is stale; join the group again)",
    }
}

fn group_error_message(group: &str, code: ErrorCode, message: &str) -> String {
    let (default, hint) = match code {
        ErrorCode::UnknownGroup => (
            format!("group `{group}` does not exist"),
            " (list groups with `levee group list`)".to_string(),
        ),
        ErrorCode::GroupNotEmpty => (
            format!("group `{group}` has active members"),
            format!(" (stop its consumers first; see `levee group describe {group}`)"),
        ),
        ErrorCode::InvalidGroupId => (
            format!("invalid group name `{group}`"),
            if message.is_empty() {
                " (use 1 to 249 letters, digits, '.', '_' and '-')".to_string()
            } else {
                String::new()
            },
        ),
        _ => (
            format!("broker error {} for group `{group}`", error_name(code)),
            String::new(),
        ),
    };
    // The broker's message usually names the group itself.
    let text = if message.is_empty() {
        default
    } else if message.contains(group) {
        message.to_string()
    } else {
        format!("{default}: {message}")
    };
    format!("{text}{hint}")
}

fn unknown_topic_message(topic: &str, partition: Option<u32>) -> String {
    match partition {
        Some(p) => format!(
            "topic `{topic}` or its partition {p} does not exist (create the topic with `levee topic create {topic}`, or check the partition count with `levee topic describe {topic}`)"
        ),
        None => format!("topic `{topic}` does not exist (create it with `levee topic create {topic}`)"),
    }
}

fn server_hint(code: ErrorCode, message: &str) -> &'static str {
    match code {
        // The broker says what to do about a full disk.
        ErrorCode::StorageError if message.contains("disk is full") => "",
        ErrorCode::BacklogFull => {
            " (consumers are too far behind: wait for them to catch up or raise max_backlog_bytes)"
        }
        ErrorCode::MessageTooLarge => " (send smaller messages or batches)",
        ErrorCode::UnsupportedVersion => " (upgrade the client or the broker)",
        ErrorCode::StorageError => " (the broker's disk failed; check the broker's logs)",
        ErrorCode::TopicAlreadyExists => " (choose another name or delete the topic first)",
        ErrorCode::InvalidTopicName => " (use letters, digits, '.', '_' and '-')",
        ErrorCode::InvalidConfig => " (check the topic settings)",
        ErrorCode::CorruptBatch => " (the batch was damaged in transit; retry)",
        ErrorCode::RequestTimedOut | ErrorCode::NotLeader | ErrorCode::ShuttingDown => {
            " (retriable: try again)"
        }
        _ => "",
    }
}

impl ClientError {
    /// Builds the error for a non-`None` code returned for `topic`
    /// (and `partition`), giving unknown topics their own variant.
    pub fn from_code(
        code: ErrorCode,
        message: Option<String>,
        topic: &str,
        partition: Option<u32>,
    ) -> ClientError {
        match code {
            ErrorCode::UnknownTopicOrPartition => ClientError::UnknownTopicOrPartition {
                topic: topic.to_string(),
                partition,
            },
            _ => ClientError::Server {
                code,
                message: message.unwrap_or_default(),
            },
        }
    }

    /// Builds the error for a non-`None` code returned by a group request.
    pub fn from_group_code(code: ErrorCode, message: Option<String>, group: &str) -> ClientError {
        let message = message.unwrap_or_default();
        let group = group.to_string();
        match code {
            ErrorCode::RebalanceInProgress => ClientError::Rebalance { group },
            ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration => ClientError::Fenced {
                group,
                code,
                message,
            },
            ErrorCode::UnknownGroup | ErrorCode::GroupNotEmpty | ErrorCode::InvalidGroupId => {
                ClientError::Group {
                    group,
                    code,
                    message,
                }
            }
            _ => ClientError::Server { code, message },
        }
    }

    /// Whether the member must join its group again: the group is
    /// rebalancing, or the member was fenced.
    pub fn needs_rejoin(&self) -> bool {
        matches!(
            self,
            ClientError::Rebalance { .. } | ClientError::Fenced { .. }
        )
    }

    /// Whether retrying the same request may succeed: retriable broker codes,
    /// lost connections and timeouts. Group membership errors are not
    /// retriable as such: see [`ClientError::needs_rejoin`].
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => is_retriable(*code),
            ClientError::ConnectionLost { .. }
            | ClientError::Connect { .. }
            | ClientError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// The broker's error code, when the broker sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            ClientError::UnknownTopicOrPartition { .. } => Some(ErrorCode::UnknownTopicOrPartition),
            ClientError::OffsetOutOfRange { .. } => Some(ErrorCode::OffsetOutOfRange),
            ClientError::Rebalance { .. } => Some(ErrorCode::RebalanceInProgress),
            ClientError::Fenced { code, .. } | ClientError::Group { code, .. } => Some(*code),
            ClientError::ProducerFenced { .. } => Some(ErrorCode::ProducerFenced),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}

/// Result alias of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
