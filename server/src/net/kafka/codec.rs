//! The Kafka wire protocol's framing around the `kafka-protocol` crate's
//! message codecs: request headers, response frames, the APIs and versions
//! this broker serves, and the mapping of Levee's error codes to Kafka's.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use levee_schemas::proto::ErrorCode;

/// Kafka error codes this broker answers with.
pub mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_REQUEST: i16 = 42;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
    pub const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
    pub const CONCURRENT_TRANSACTIONS: i16 = 51;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const INVALID_RECORD: i16 = 87;
    pub const UNSTABLE_OFFSET_COMMIT: i16 = 88;
    pub const PRODUCER_FENCED: i16 = 90;
    pub const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;
    pub const THROTTLING_QUOTA_EXCEEDED: i16 = 89;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
}

/// Levee's error code as Kafka's. `group`: the request is a group
/// request, where a broker that cannot serve it says NOT_COORDINATOR.
pub fn kafka_error(e: ErrorCode, group: bool) -> i16 {
    use code::*;
    match e {
        ErrorCode::None => NONE,
        ErrorCode::Unknown => UNKNOWN_SERVER_ERROR,
        ErrorCode::InvalidRequest => INVALID_REQUEST,
        ErrorCode::UnsupportedVersion => UNSUPPORTED_VERSION,
        ErrorCode::CorruptBatch => CORRUPT_MESSAGE,
        ErrorCode::UnknownTopicOrPartition => UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode::TopicAlreadyExists => TOPIC_ALREADY_EXISTS,
        ErrorCode::InvalidConfig => INVALID_CONFIG,
        ErrorCode::OffsetOutOfRange => OFFSET_OUT_OF_RANGE,
        ErrorCode::MessageTooLarge => MESSAGE_TOO_LARGE,
        // Consumers must catch up first: a retriable refusal.
        ErrorCode::BacklogFull => THROTTLING_QUOTA_EXCEEDED,
        ErrorCode::RequestTimedOut => REQUEST_TIMED_OUT,
        ErrorCode::StorageError => KAFKA_STORAGE_ERROR,
        ErrorCode::ShuttingDown | ErrorCode::NotLeader if group => NOT_COORDINATOR,
        ErrorCode::ShuttingDown | ErrorCode::NotLeader => NOT_LEADER_OR_FOLLOWER,
        ErrorCode::InvalidTopicName => INVALID_TOPIC_EXCEPTION,
        ErrorCode::InvalidGroupId => INVALID_GROUP_ID,
        ErrorCode::UnknownGroup => GROUP_ID_NOT_FOUND,
        ErrorCode::UnknownMemberId => UNKNOWN_MEMBER_ID,
        ErrorCode::IllegalGeneration => ILLEGAL_GENERATION,
        ErrorCode::RebalanceInProgress => REBALANCE_IN_PROGRESS,
        ErrorCode::GroupNotEmpty => NON_EMPTY_GROUP,
        ErrorCode::NotEnoughReplicas => NOT_ENOUGH_REPLICAS,
        ErrorCode::FencedLeaderEpoch => FENCED_LEADER_EPOCH,
        ErrorCode::CoordinatorUnavailable => COORDINATOR_NOT_AVAILABLE,
        ErrorCode::InconsistentGroupProtocol => INCONSISTENT_GROUP_PROTOCOL,
        ErrorCode::MemberIdRequired => MEMBER_ID_REQUIRED,
        ErrorCode::OutOfOrderSequence => OUT_OF_ORDER_SEQUENCE_NUMBER,
        ErrorCode::InvalidProducerEpoch => INVALID_PRODUCER_EPOCH,
        ErrorCode::InvalidPartitions => INVALID_PARTITIONS,
        ErrorCode::InvalidReplicaAssignment => INVALID_REPLICA_ASSIGNMENT,
        ErrorCode::CoordinatorLoadInProgress => COORDINATOR_LOAD_IN_PROGRESS,
        ErrorCode::InvalidTxnState => INVALID_TXN_STATE,
        ErrorCode::ConcurrentTransactions => CONCURRENT_TRANSACTIONS,
        ErrorCode::ProducerFenced => PRODUCER_FENCED,
        ErrorCode::InvalidProducerIdMapping => INVALID_PRODUCER_ID_MAPPING,
        ErrorCode::TransactionalIdNotFound => TRANSACTIONAL_ID_NOT_FOUND,
        ErrorCode::InvalidTransactionTimeout => INVALID_TRANSACTION_TIMEOUT,
    }
}

/// The APIs this broker serves and their versions, as ApiVersions
/// advertises them. Anything else is answered with UNSUPPORTED_VERSION.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::WriteTxnMarkers, 1, 1),
];

/// Whether `key` at `version` is served.
pub fn supported(key: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|&(k, min, max)| k == key && (min..=max).contains(&version))
}

/// The fixed start of every request: (api key, api version, correlation id).
pub fn peek_header(body: &[u8]) -> Option<(i16, i16, i32)> {
    let b = body.get(..8)?;
    Some((
        i16::from_be_bytes([b[0], b[1]]),
        i16::from_be_bytes([b[2], b[3]]),
        i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
    ))
}

/// Runs a decoder, turning a panic in it (a codec bug on hostile input)
/// into an error for this request only.
fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the request could not be decoded".into()),
    }
}

/// Decodes the request header of a served API; `body` is left at the
/// request's own fields.
pub fn decode_header(key: ApiKey, version: i16, body: &mut Bytes) -> Result<RequestHeader, String> {
    let hv = key.request_header_version(version);
    guarded(|| RequestHeader::decode(body, hv))
}

/// Decodes a request body at `version`. Bytes after the request's fields
/// are ignored, as Kafka brokers do (librdkafka 2.x sends a few after
/// Metadata v12).
pub fn decode<T: Decodable>(body: &mut Bytes, version: i16) -> Result<T, String> {
    guarded(|| T::decode(body, version))
}

/// A response frame: size, header (correlation id; tagged fields for
/// flexible versions), body.
pub fn frame<T: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Vec<u8> {
    let hv = key.response_header_version(version);
    // Sized once: a Fetch response carries megabytes of records, and a
    // buffer that grows by doubling copies them again at each step.
    let size = body.compute_size(version).unwrap_or(0);
    let mut out = BytesMut::with_capacity(size + 9);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&correlation_id.to_be_bytes());
    if hv >= 1 {
        out.extend_from_slice(&[0]); // no tagged fields
    }
    if let Err(e) = body.encode(&mut out, version) {
        // Only a broker bug can get here (a field this version cannot
        // carry); say so to the client as an error-only frame.
        tracing::error!(api = ?key, version, error = %e, "encoding a Kafka response failed");
        return minimal_error(correlation_id, code::UNKNOWN_SERVER_ERROR);
    }
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    // The buffer itself becomes the Vec (no copy: it is not shared).
    Vec::from(out)
}

/// The frame for an API or version this broker does not serve: the
/// correlation id and UNSUPPORTED_VERSION, which is how ApiVersions v0 and
/// most responses begin. The connection stays open.
pub fn minimal_error(correlation_id: i32, error: i16) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    out.extend_from_slice(&6u32.to_be_bytes());
    out.extend_from_slice(&correlation_id.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out
}

/// Decodes a whole request frame body (header and request) of any served
/// API, discarding the result: what the fuzz target and the random-input
/// tests drive. Unguarded, so that a panic in a decoder shows.
pub fn decode_any(frame_body: &[u8]) -> Result<(), String> {
    use kafka_protocol::messages as m;
    let (key, version, _) = peek_header(frame_body).ok_or("short header")?;
    let api = ApiKey::try_from(key).map_err(|_| "unknown api key".to_string())?;
    if !supported(api, version) {
        return Err("unsupported version".into());
    }
    let mut b = Bytes::copy_from_slice(frame_body);
    RequestHeader::decode(&mut b, api.request_header_version(version))
        .map_err(|e| e.to_string())?;
    macro_rules! any {
        ($($k:ident => $t:ty),* $(,)?) => {
            match api {
                $(ApiKey::$k => <$t>::decode(&mut b, version).map(drop),)*
                _ => return Err("not served".into()),
            }
        };
    }
    any!(
        Produce => m::ProduceRequest,
        Fetch => m::FetchRequest,
        ListOffsets => m::ListOffsetsRequest,
        DeleteRecords => m::DeleteRecordsRequest,
        Metadata => m::MetadataRequest,
        OffsetCommit => m::OffsetCommitRequest,
        OffsetFetch => m::OffsetFetchRequest,
        FindCoordinator => m::FindCoordinatorRequest,
        JoinGroup => m::JoinGroupRequest,
        Heartbeat => m::HeartbeatRequest,
        LeaveGroup => m::LeaveGroupRequest,
        SyncGroup => m::SyncGroupRequest,
        DescribeGroups => m::DescribeGroupsRequest,
        ListGroups => m::ListGroupsRequest,
        ApiVersions => m::ApiVersionsRequest,
        CreateTopics => m::CreateTopicsRequest,
        DeleteTopics => m::DeleteTopicsRequest,
        CreatePartitions => m::CreatePartitionsRequest,
        DescribeConfigs => m::DescribeConfigsRequest,
        DeleteGroups => m::DeleteGroupsRequest,
        DescribeCluster => m::DescribeClusterRequest,
        InitProducerId => m::InitProducerIdRequest,
        AlterConfigs => m::AlterConfigsRequest,
        IncrementalAlterConfigs => m::IncrementalAlterConfigsRequest,
        AddPartitionsToTxn => m::AddPartitionsToTxnRequest,
        AddOffsetsToTxn => m::AddOffsetsToTxnRequest,
        EndTxn => m::EndTxnRequest,
        TxnOffsetCommit => m::TxnOffsetCommitRequest,
        WriteTxnMarkers => m::WriteTxnMarkersRequest,
    )
    .map_err(|e| e.to_string())
}

/// A Kafka consumer's assignment (the ConsumerProtocol bytes the group's
/// leader sends in SyncGroup) as topics and partitions, for describing
/// Kafka members alongside native ones. `None`: not that protocol.
pub fn consumer_assignment(bytes: &[u8]) -> Option<crate::groups::Assignment> {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    let mut b = Bytes::copy_from_slice(bytes);
    let version = i16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
    bytes::Buf::advance(&mut b, 2);
    let a = guarded(|| ConsumerProtocolAssignment::decode(&mut b, version)).ok()?;
    let mut out = crate::groups::Assignment::new();
    for tp in a.assigned_partitions {
        let ps = out.entry(tp.topic.as_str().to_string()).or_default();
        ps.extend(tp.partitions.iter().filter(|&&p| p >= 0).map(|&p| p as u32));
        ps.sort_unstable();
    }
    Some(out)
}

pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::MetadataRequest;

    #[test]
    fn every_advertised_version_is_within_the_codecs_range() {
        for &(key, min, max) in SUPPORTED {
            let r = key.valid_versions();
            assert!(r.min <= min && max <= r.max, "{key:?} {min}..={max} vs {r}");
        }
    }

    #[test]
    fn a_hostile_array_count_is_an_error_not_an_allocation() {
        // Metadata v1: topics array claiming 2^31-1 entries in 4 bytes.
        let mut b = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(decode::<MetadataRequest>(&mut b, 1).is_err());
        // Flexible (v9): compact array length as an unsigned varint.
        let mut b = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode::<MetadataRequest>(&mut b, 9).is_err());
    }

    #[test]
    fn truncated_requests_are_errors() {
        assert!(peek_header(&[0, 3, 0]).is_none());
        // Metadata v4: a null topic list, then the auto-create flag missing.
        let mut b = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]);
        assert!(decode::<MetadataRequest>(&mut b, 4).is_err());
    }

    /// Random and mutated requests of every served API and version: the
    /// decoders return errors, never panic (the fuzz target `kafka_request`
    /// runs the same function under libFuzzer).
    #[test]
    fn random_and_mutated_requests_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for &(key, min, max) in SUPPORTED {
            for version in min..=max {
                for _ in 0..300 {
                    let len = (next() % 200) as usize;
                    let mut body = vec![0u8; 8 + len];
                    body[..2].copy_from_slice(&(key as i16).to_be_bytes());
                    body[2..4].copy_from_slice(&version.to_be_bytes());
                    for b in &mut body[8..] {
                        // Mostly small values, so lengths and counts vary
                        // between plausible, null (-1) and huge.
                        *b = match next() % 4 {
                            0 => 0,
                            1 => 0xff,
                            2 => (next() % 8) as u8,
                            _ => next() as u8,
                        };
                    }
                    let _ = decode_any(&body);
                }
            }
        }
    }

    #[test]
    fn a_consumer_protocol_assignment_reads_as_topics_and_partitions() {
        // Version 0; one topic "t" with partitions 2 and 0; null user data.
        let mut b = vec![
            0, 0, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0,
        ];
        b.extend_from_slice(&(-1i32).to_be_bytes());
        let a = consumer_assignment(&b).unwrap();
        assert_eq!(a["t"], vec![0, 2]);
        assert!(consumer_assignment(&[0]).is_none());
    }

    #[test]
    fn frames_carry_their_length_and_correlation_id() {
        let f = minimal_error(7, code::UNSUPPORTED_VERSION);
        assert_eq!(f, vec![0, 0, 0, 6, 0, 0, 0, 7, 0, 35]);
        let resp = kafka_protocol::messages::HeartbeatResponse::default();
        let f = frame(ApiKey::Heartbeat, 4, 9, &resp);
        assert_eq!(
            u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
            f.len() - 4
        );
        assert_eq!(&f[4..8], &9i32.to_be_bytes());
        assert_eq!(f[8], 0, "flexible header: no tagged fields");
    }
}
