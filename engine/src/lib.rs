//! Levee's storage engine: record batches, direct-I/O segment files, sparse
//! offset and time indexes, group-commit durability, retention and crash
//! recovery. One [`Log`] per partition, owned by one shard (glommio executor).
//!
//! The on-disk and wire formats are documented in `engine/FORMAT.md`.

pub mod batch;
pub mod config;
pub mod error;
mod event;
pub mod index;
mod log;
mod probe;

pub use batch::{BatchHeader, Compression, Record, RecordView};
pub use config::{FsyncPolicy, LogConfig};
pub use error::{BatchError, LogError, Result};
pub use log::{AppendInfo, Log, LogStats, ReadOutcome};
pub use probe::prepare_io_device;
