//! Levee's storage engine: record batches, direct-I/O segment files, sparse
//! offset and time indexes, group-commit durability, retention and crash
//! recovery. One [`Log`] per partition, owned by one shard (glommio executor).
//! It owns the bytes on disk and the batch format; it knows nothing of
//! sockets, protocols, topics or clusters, and must not depend on any Levee
//! crate but `levee-core` (the settings' vocabulary).
//!
//! Without the default `storage` feature only the batch format, its errors
//! and the configuration types are built (no glommio): the client uses that.
//!
//! The on-disk and wire formats are documented in `engine/FORMAT.md`.

pub mod batch;
pub mod config;
#[cfg(feature = "storage")]
pub mod epochs;
pub mod error;
#[cfg(feature = "storage")]
#[cfg(feature = "storage")]
pub mod fifo;
#[cfg(feature = "storage")]
pub mod index;
#[cfg(feature = "storage")]
mod log;
#[cfg(feature = "storage")]
mod probe;

pub use batch::{BatchHeader, Compression, Record, RecordView};
pub use config::{FsyncPolicy, LogConfig};
pub use error::{BatchError, LogError, Result};
#[cfg(feature = "storage")]
pub use log::{AppendInfo, Log, LogStats, ReadOutcome};
#[cfg(feature = "storage")]
pub use probe::prepare_io_device;
