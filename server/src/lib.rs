//! The Levee broker as a library: thread-per-core shards on glommio, the
//! protocol front ends (`net/`: native and Kafka), the protocol-neutral
//! request layer (`handlers/`), partitions, replication, consumer groups,
//! cluster glue, configuration and metrics. It owns everything a running
//! broker does and nothing else: it must not depend on the CLI, the client
//! library or the load generator. See ARCHITECTURE.md for the map.

pub mod broker;
pub mod cluster;
pub mod config;
pub mod error;
pub mod groups;
pub mod handlers;
pub mod metrics;
pub mod net;
pub mod partition;
pub mod replication;
pub mod shard;
pub mod shutdown;
pub mod space;
pub mod topics;
pub mod txn;
