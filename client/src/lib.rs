//! Async client for Levee's native protocol, on tokio. It owns talking to
//! brokers from the outside: connections, metadata, producing, consuming,
//! consumer groups and admin requests. It must not depend on the broker
//! (`levee-server`) nor hold command-line code (the `levee` commands are in
//! the cli crate); it uses the engine only for the batch format.
//!
//! - [`Client`]: a bootstrap connection for admin and group requests and
//!   one pipelined connection per partition leader for produce, fetch and
//!   offset lookups, routed by a metadata cache that follows leader changes.
//! - [`Producer`]: per-partition batching, compression, Kafka's murmur2
//!   partitioner, bounded buffering (backpressure), retries, per-message
//!   delivery reports; idempotence, and transactions with
//!   `ProducerConfig::transactional_id` (`init_transactions`,
//!   `begin_transaction`, `send_offsets_to_transaction`,
//!   `commit_transaction`, `abort_transaction`, as Kafka's clients).
//! - [`Consumer`]: assigned partitions, long-poll fetch, CRC validation,
//!   decompression, position tracking.
//! - [`GroupConsumer`]: a member of a consumer group: partitions assigned by
//!   the broker, committed positions, heartbeats and rebalances handled in
//!   the background; the group admin requests are on [`Client`].
//! - [`remote`]: the client from glommio or any other executor (it runs
//!   on a tokio runtime of its own).

pub mod client;
pub mod codec;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod group;
pub mod producer;
pub mod remote;
pub mod txn;

pub use client::{
    AbortedTxn, Client, ClientConfig, ClusterMetadata, ClusterStatus, FetchRequestPartition,
    FetchedPartition, InFlightProduce, OffsetSpec, PartitionInfo, ProduceOutcome,
    ProducedPartition, TopicChanges, TopicInfo, TopicSettings, NO_LEADER,
};
pub use codec::{murmur2, partition_for_key};
pub use consumer::{ConsumedRecord, Consumer, ConsumerConfig, StartPosition};
pub use error::{ClientError, Result};
pub use group::{
    lag, Assignment, ConsumerGroupMetadata, GroupConsumer, GroupConsumerConfig, GroupInfo,
    GroupMemberInfo, GroupOffset, GroupSummary, JoinGroupRequest, JoinedGroup, OffsetCommit,
    OffsetReset,
};
/// The record-batch format (the engine's), for callers that build or split
/// batches themselves, such as the load generator's `--direct-batches`.
pub use levee_engine::batch;
pub use levee_engine::{Compression, FsyncPolicy, Record};
pub use levee_schemas::proto::ErrorCode;
pub use levee_schemas::proto::NodeStatus;
pub use producer::{Acks, DeliveryFuture, DeliveryReport, Producer, ProducerConfig};
pub use txn::{TransactionInfo, TxnCoordinator};
