//! Async client for Levee's native protocol, on tokio.
//!
//! - [`Client`]: one pipelined connection (reconnecting on the next call
//!   after a failure) with the admin requests and raw produce/fetch.
//! - [`Producer`]: per-partition batching, compression, Kafka's murmur2
//!   partitioner, bounded buffering (backpressure), retries, per-message
//!   delivery reports.
//! - [`Consumer`]: assigned partitions, long-poll fetch, CRC validation,
//!   decompression, position tracking.
//! - [`GroupConsumer`]: a member of a consumer group: partitions assigned by
//!   the broker, committed positions, heartbeats and rebalances handled in
//!   the background; the group admin requests are on [`Client`].
//! - `cli` (feature `cli`): the `levee topic|produce|consume|group` commands.

pub mod client;
pub mod codec;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod group;
pub mod producer;

#[cfg(feature = "cli")]
pub mod cli;

pub use client::{
    Client, ClientConfig, ClusterMetadata, FetchRequestPartition, FetchedPartition, OffsetSpec,
    PartitionInfo, ProducedPartition, TopicInfo, TopicSettings,
};
pub use codec::{murmur2, partition_for_key};
pub use consumer::{ConsumedRecord, Consumer, ConsumerConfig, StartPosition};
pub use error::{ClientError, Result};
pub use group::{
    lag, Assignment, GroupConsumer, GroupConsumerConfig, GroupInfo, GroupMemberInfo, GroupOffset,
    GroupSummary, JoinGroupRequest, JoinedGroup, OffsetCommit, OffsetReset,
};
pub use levee_engine::Compression;
pub use levee_schemas::proto::ErrorCode;
pub use producer::{Acks, DeliveryFuture, DeliveryReport, Producer, ProducerConfig};
