//! The Levee broker: thread-per-core shards on glommio, the native-protocol
//! connection handler, the admin HTTP listener, topic metadata and the
//! broker's configuration. The `levee` binary (`src/main.rs`) runs it.

pub mod admin;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod groups;
pub mod metrics;
pub mod replica;
pub mod replica_admin;
pub mod shard;
pub mod topics;
pub mod tune;
