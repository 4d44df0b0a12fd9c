//! The Levee broker: thread-per-core shards on glommio, the native-protocol
//! connection handler, the admin HTTP listener, topic metadata and the
//! broker's configuration. The `levee` binary (`src/main.rs`) runs it.

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
pub mod topics;
pub mod tune;
