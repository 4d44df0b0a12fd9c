//! The Levee wire protocol: the flatbuffers schema in `levee.fbs` (compiled
//! at build time by planus) and the frame codec shared by the server and the
//! client. It owns the native protocol's bytes and nothing else: no I/O, and
//! it must not depend on the engine, the broker or the client.
//!
//! A frame is `u32 LE frame_len`, then `frame_len` bytes: `u32 LE header_len`,
//! a flatbuffer header of that many bytes, then a payload of record batches.
//! Record batches never go through a flatbuffer builder; headers refer to
//! slices of the payload by offset and length.

pub mod generated {
    #![allow(
        clippy::all,
        clippy::pedantic,
        unused,
        dead_code,
        missing_docs,
        unsafe_code
    )]
    include!(concat!(env!("OUT_DIR"), "/levee_generated.rs"));
}

pub use generated::levee::proto;
pub use planus;

use planus::ReadAsRoot;
use proto::{ErrorCode, RequestHeader, RequestHeaderRef, ResponseHeader, ResponseHeaderRef};

/// The protocol version this build speaks. 2: record batches are Kafka's
/// RecordBatch v2 (version 1 carried Levee's own batch format). The
/// schema's Hello defaults stay 1, so an older client, which leaves its
/// default-valued versions out, is read as speaking 1 and refused.
pub const PROTOCOL_VERSION: u16 = 2;
/// Bytes before the header: frame length and header length.
pub const FRAME_PREFIX_LEN: usize = 8;
/// Default upper bound on a frame (64 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 64 << 20;

/// Why a frame could not be taken apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds max_frame_bytes {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame of {0} bytes is too short to hold a header length")]
    TooShort(usize),
    #[error("header length {header_len} overruns the frame of {frame_len} bytes")]
    HeaderOverrun { header_len: usize, frame_len: usize },
    #[error("payload slice [{offset}, +{len}) overruns the payload of {payload_len} bytes")]
    PayloadOverrun {
        offset: u32,
        len: u32,
        payload_len: usize,
    },
    #[error("header does not decode: {0}")]
    BadHeader(String),
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::MessageTooLarge,
            _ => ErrorCode::InvalidRequest,
        }
    }
}

/// Reads the 4-byte length prefix and checks it against `max_frame_bytes`.
/// The result is how many bytes follow the prefix.
pub fn frame_len(prefix: [u8; 4], max_frame_bytes: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    if len < 4 {
        return Err(FrameError::TooShort(len));
    }
    Ok(len)
}

/// Splits a frame body (the bytes after the length prefix) into its
/// flatbuffer header and its payload.
pub fn split_frame(body: &[u8]) -> Result<(&[u8], &[u8]), FrameError> {
    if body.len() < 4 {
        return Err(FrameError::TooShort(body.len()));
    }
    let header_len = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
    let rest = &body[4..];
    if header_len > rest.len() {
        return Err(FrameError::HeaderOverrun {
            header_len,
            frame_len: body.len(),
        });
    }
    Ok(rest.split_at(header_len))
}

/// The part of `payload` a header entry names.
pub fn payload_slice(payload: &[u8], offset: u32, len: u32) -> Result<&[u8], FrameError> {
    let start = offset as usize;
    start
        .checked_add(len as usize)
        .and_then(|end| payload.get(start..end))
        .ok_or(FrameError::PayloadOverrun {
            offset,
            len,
            payload_len: payload.len(),
        })
}

/// Decodes a request frame body into an owned header and the payload slice.
pub fn decode_request(body: &[u8]) -> Result<(RequestHeader, &[u8]), FrameError> {
    let (header, payload) = split_frame(body)?;
    let r =
        RequestHeaderRef::read_as_root(header).map_err(|e| FrameError::BadHeader(e.to_string()))?;
    let owned = RequestHeader::try_from(r).map_err(|e| FrameError::BadHeader(e.to_string()))?;
    Ok((owned, payload))
}

/// Decodes a response frame body into an owned header and the payload slice.
pub fn decode_response(body: &[u8]) -> Result<(ResponseHeader, &[u8]), FrameError> {
    let (header, payload) = split_frame(body)?;
    let r = ResponseHeaderRef::read_as_root(header)
        .map_err(|e| FrameError::BadHeader(e.to_string()))?;
    let owned = ResponseHeader::try_from(r).map_err(|e| FrameError::BadHeader(e.to_string()))?;
    Ok((owned, payload))
}

/// Appends the frame prefix and the serialized `header` to `out`; the caller
/// then writes `payload_len` payload bytes (from `out` or with a vectored write).
pub fn encode_frame<T: planus::WriteAsOffset<U>, U>(
    builder: &mut planus::Builder,
    header: &T,
    payload_len: usize,
    out: &mut Vec<u8>,
) {
    builder.clear();
    let bytes = builder.finish(header, None);
    let frame_len = 4 + bytes.len() + payload_len;
    out.reserve(FRAME_PREFIX_LEN + bytes.len());
    out.extend_from_slice(&(frame_len as u32).to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Encodes a whole request frame (prefix, header, payload) into a new buffer.
pub fn request_frame(header: &RequestHeader, payload: &[u8]) -> Vec<u8> {
    let mut b = planus::Builder::new();
    let mut out = Vec::with_capacity(FRAME_PREFIX_LEN + 256 + payload.len());
    encode_frame(&mut b, header, payload.len(), &mut out);
    out.extend_from_slice(payload);
    out
}

/// Encodes a whole response frame (prefix, header, payload) into a new buffer.
pub fn response_frame(header: &ResponseHeader, payload: &[u8]) -> Vec<u8> {
    let mut b = planus::Builder::new();
    let mut out = Vec::with_capacity(FRAME_PREFIX_LEN + 256 + payload.len());
    encode_frame(&mut b, header, payload.len(), &mut out);
    out.extend_from_slice(payload);
    out
}

/// A short human name for an error code, for messages and metrics.
pub fn error_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::None => "none",
        ErrorCode::Unknown => "unknown",
        ErrorCode::InvalidRequest => "invalid_request",
        ErrorCode::UnsupportedVersion => "unsupported_version",
        ErrorCode::CorruptBatch => "corrupt_batch",
        ErrorCode::UnknownTopicOrPartition => "unknown_topic_or_partition",
        ErrorCode::TopicAlreadyExists => "topic_already_exists",
        ErrorCode::InvalidConfig => "invalid_config",
        ErrorCode::OffsetOutOfRange => "offset_out_of_range",
        ErrorCode::MessageTooLarge => "message_too_large",
        ErrorCode::BacklogFull => "backlog_full",
        ErrorCode::RequestTimedOut => "request_timed_out",
        ErrorCode::StorageError => "storage_error",
        ErrorCode::ShuttingDown => "shutting_down",
        ErrorCode::NotLeader => "not_leader",
        ErrorCode::InvalidTopicName => "invalid_topic_name",
        ErrorCode::InvalidGroupId => "invalid_group_id",
        ErrorCode::UnknownGroup => "unknown_group",
        ErrorCode::UnknownMemberId => "unknown_member_id",
        ErrorCode::IllegalGeneration => "illegal_generation",
        ErrorCode::RebalanceInProgress => "rebalance_in_progress",
        ErrorCode::GroupNotEmpty => "group_not_empty",
        ErrorCode::NotEnoughReplicas => "not_enough_replicas",
        ErrorCode::FencedLeaderEpoch => "fenced_leader_epoch",
        ErrorCode::CoordinatorUnavailable => "coordinator_unavailable",
        ErrorCode::InconsistentGroupProtocol => "inconsistent_group_protocol",
        ErrorCode::MemberIdRequired => "member_id_required",
        ErrorCode::OutOfOrderSequence => "out_of_order_sequence",
        ErrorCode::InvalidProducerEpoch => "invalid_producer_epoch",
        ErrorCode::InvalidPartitions => "invalid_partitions",
        ErrorCode::InvalidReplicaAssignment => "invalid_replica_assignment",
        ErrorCode::CoordinatorLoadInProgress => "coordinator_load_in_progress",
        ErrorCode::InvalidTxnState => "invalid_txn_state",
        ErrorCode::ConcurrentTransactions => "concurrent_transactions",
        ErrorCode::ProducerFenced => "producer_fenced",
        ErrorCode::InvalidProducerIdMapping => "invalid_producer_id_mapping",
        ErrorCode::TransactionalIdNotFound => "transactional_id_not_found",
        ErrorCode::InvalidTransactionTimeout => "invalid_transaction_timeout",
    }
}

/// Whether a client should retry a request that failed with `code`.
pub fn is_retriable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::RequestTimedOut
            | ErrorCode::NotLeader
            | ErrorCode::ShuttingDown
            | ErrorCode::NotEnoughReplicas
            | ErrorCode::FencedLeaderEpoch
            | ErrorCode::CoordinatorUnavailable
            | ErrorCode::CoordinatorLoadInProgress
            | ErrorCode::ConcurrentTransactions
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Fetch, FetchPartition, Request};

    #[test]
    fn request_round_trip_with_payload() {
        let header = RequestHeader {
            correlation_id: 42,
            request: Request::Fetch(Box::new(Fetch {
                max_wait_ms: 10,
                min_bytes: 1,
                max_bytes: 1 << 20,
                partitions: Some(vec![FetchPartition {
                    topic: "t".into(),
                    partition: 3,
                    offset: 7,
                    max_bytes: 4096,
                    leader_epoch: -1,
                    log_start_offset: -1,
                }]),
                replica_id: -1,
                isolation_level: 0,
            })),
        };
        let frame = request_frame(&header, b"payload");
        let len = frame_len(frame[..4].try_into().unwrap(), 1 << 20).unwrap();
        assert_eq!(len, frame.len() - 4);
        let (decoded, payload) = decode_request(&frame[4..]).unwrap();
        assert_eq!(decoded, header);
        assert_eq!(payload, b"payload");
        assert_eq!(payload_slice(payload, 3, 4).unwrap(), b"load");
        assert!(payload_slice(payload, 3, 5).is_err());
        assert!(payload_slice(payload, u32::MAX, 2).is_err());
    }

    #[test]
    fn oversized_and_truncated_frames_are_typed_errors() {
        assert!(matches!(
            frame_len((100u32).to_le_bytes(), 99),
            Err(FrameError::TooLarge { len: 100, max: 99 })
        ));
        assert!(matches!(
            frame_len(2u32.to_le_bytes(), 99),
            Err(FrameError::TooShort(2))
        ));
        assert!(matches!(
            split_frame(&[200, 0, 0, 0, 1, 2]),
            Err(FrameError::HeaderOverrun { .. })
        ));
        assert!(decode_request(&[4, 0, 0, 0, 1, 2, 3, 4]).is_err());
    }
}
