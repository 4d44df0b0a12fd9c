//! Typed errors of the coordinator.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Errors of the on-disk Raft storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("coordinator storage I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("coordinator log {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("coordinator data in {path} belongs to {found}, but this node is configured as {configured}; refusing to start")]
    Mismatch {
        path: PathBuf,
        found: String,
        configured: String,
    },
}

impl StorageError {
    /// Whether the disk (or quota) is full: a write that can succeed once
    /// space is freed, unlike a failing disk or corrupt data.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, StorageError::Io { source, .. } if levee_core::is_out_of_space(source))
    }
}

/// Errors returned to callers of the coordinator API (local or over TCP).
///
/// This type is serialisable so the same error crosses the client RPC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CoordError {
    /// This coordinator is not the Raft leader and the operation must run
    /// on the leader. `leader_id`/`leader_addr` are hints (may be stale).
    #[error("this coordinator is not the leader (leader: {})", leader_hint(.leader_id, .leader_addr))]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    /// No majority of coordinators could be reached within the timeout.
    #[error("no coordinator quorum: {reachable} of {total} coordinators reachable; metadata changes are refused until a majority is back")]
    NoQuorum { reachable: usize, total: usize },
    /// A quorum looked reachable but the proposal did not commit in time.
    #[error("proposal not committed within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// The command committed but the state machine refused it
    /// (deterministically, on every coordinator).
    #[error("command rejected: {0}")]
    Rejected(String),
    /// The request itself is invalid (bad topic name, not enough brokers...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The coordinator is shutting down or has failed.
    #[error("coordinator stopped: {0}")]
    Stopped(String),
    /// Transport-level failure of the client RPC.
    #[error("cannot reach coordinator {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// A peer answered something this client cannot understand.
    #[error("bad response from coordinator: {0}")]
    Protocol(String),
}

fn leader_hint(id: &Option<u64>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(a)) => format!("{id}@{a}"),
        (Some(id), None) => format!("node {id}"),
        _ => "unknown".to_string(),
    }
}

/// Errors starting a coordinator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("invalid coordinator configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
}
