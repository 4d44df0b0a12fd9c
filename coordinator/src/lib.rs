//! Levee's cluster-metadata quorum.
//!
//! A Raft group (TiKV's `raft` crate) of 1, 3 or 5 coordinators, each run
//! on a glommio executor (the broker's "coordinator shard"). It replicates
//! the cluster [`Metadata`] — brokers, topics, partition placement, leaders,
//! epochs and ISRs — and its leader runs the controller that moves
//! partition leadership off brokers whose lease expired.
//!
//! - [`Coordinator::start`] spawns a coordinator on the current executor
//!   and returns a [`CoordinatorHandle`];
//! - [`client`] is a blocking client for non-coordinator nodes and the CLI;
//! - [`storage`] documents the on-disk format, [`wire`] the wire format.

pub mod client;
pub mod config;
pub mod error;
mod node;
mod notify;
pub mod state;
pub mod storage;
pub mod wire;

pub use config::{CoordinatorConfig, PeerSpec};
pub use error::{CoordError, StartError, StorageError};
pub use node::{Coordinator, CoordinatorHandle};
pub use state::{
    controller_actions, BrokerInfo, Command, Metadata, PartitionInfo, TopicConfig, TopicInfo,
};
pub use wire::{Applied, PeerStatus, Role, Status};
