//! Framing and the client RPC.
//!
//! Every frame on a coordinator connection is `len:u32 LE | payload`, with
//! `payload = tag:u8 | body` and `len = payload.len()` (at most
//! [`MAX_FRAME`]):
//!
//! - tag 1: a Raft `eraftpb::Message`, protobuf-encoded (raft 0.7's
//!   `protobuf-codec`). Coordinator-to-coordinator connections carry only
//!   these, one way: each node dials every peer and sends its own messages
//!   on that connection.
//! - tag 2: a client [`Request`], JSON. Answered with one tag-3 frame on the
//!   same connection, in order.
//! - tag 3: a [`Response`], JSON.
//!
//! Any other tag, a zero or oversized length, or a body that does not
//! decode closes the connection.

use crate::error::CoordError;
use crate::state::{Command, Metadata, TopicConfig};
use serde::{Deserialize, Serialize};

pub const MAX_FRAME: usize = 64 << 20;
pub const TAG_RAFT: u8 = 1;
pub const TAG_REQUEST: u8 = 2;
pub const TAG_RESPONSE: u8 = 3;

/// Builds one frame.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
    out.push(tag);
    out.extend_from_slice(body);
    out
}

/// Checks a frame length read from the wire.
pub fn check_len(len: u32) -> Option<usize> {
    let len = len as usize;
    (1..=MAX_FRAME).contains(&len).then_some(len)
}

/// Requests a non-coordinator node or the CLI sends to a coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The coordinator's [`Status`]. Any coordinator answers.
    Status,
    /// Its applied [`Metadata`] (possibly slightly behind the leader's).
    Metadata,
    /// Commits a command (forwarded to the leader through Raft when sent to
    /// a follower).
    Propose { command: Command },
    /// Creates a topic, placed as `assignment` says (one replica list per
    /// partition) or, when it is empty, by the leader. Leader only.
    CreateTopic {
        name: String,
        config: TopicConfig,
        #[serde(default)]
        assignment: Vec<Vec<u64>>,
    },
    /// Grows a topic to `count` partitions. `assignment` (one replica list
    /// per new partition) places them; empty: the leader places them.
    /// Leader only.
    AddPartitions {
        name: String,
        count: u32,
        #[serde(default)]
        assignment: Vec<Vec<u64>>,
    },
    /// A broker's liveness heartbeat. Leader only.
    Heartbeat { node_id: u64 },
    /// Long poll: answers with the metadata as soon as its version exceeds
    /// `after`, or after `wait_ms` with whatever it is then.
    WatchMetadata { after: u64, wait_ms: u64 },
}

/// A committed command's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Raft index of the entry.
    pub index: u64,
    /// Metadata version after applying it.
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Status(Status),
    Metadata(Metadata),
    Applied(Applied),
    HeartbeatOk,
    Error(CoordError),
}

/// Raft role of a coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    PreCandidate,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
        })
    }
}

/// One peer as seen from this coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub id: u64,
    pub addr: String,
    /// Our outgoing connection to it is up.
    pub connected: bool,
    /// Milliseconds since we last received a Raft message from it.
    pub last_heard_ms: Option<u64>,
}

/// What `levee coordinator status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node_id: u64,
    pub addr: String,
    pub role: Role,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub metadata_version: u64,
    /// Coordinators this one can reach, itself included.
    pub reachable: usize,
    /// All coordinators, itself included.
    pub total: usize,
    pub peers: Vec<PeerStatus>,
}

impl Status {
    /// Human-readable form, in the style of `zkServer.sh status`.
    pub fn render(&self) -> String {
        let mut s = format!("Mode: {}\n", self.role);
        s += &format!("Node: {} ({})\n", self.node_id, self.addr);
        s += &format!("Term: {}\n", self.term);
        s += &format!(
            "Leader: {}\n",
            self.leader_id
                .map(|l| l.to_string())
                .unwrap_or_else(|| "none".into())
        );
        s += &format!(
            "Commit index: {}  Applied index: {}  Metadata version: {}\n",
            self.commit_index, self.applied_index, self.metadata_version
        );
        s += &format!(
            "Coordinators reachable: {} of {} ({})\n",
            self.reachable,
            self.total,
            if self.reachable * 2 > self.total {
                "quorum"
            } else {
                "NO QUORUM"
            }
        );
        for p in &self.peers {
            s += &format!(
                "  peer {} {}: {}{}\n",
                p.id,
                p.addr,
                if p.connected {
                    "connected"
                } else {
                    "disconnected"
                },
                p.last_heard_ms
                    .map(|ms| format!(", heard {ms} ms ago"))
                    .unwrap_or_default()
            );
        }
        s
    }
}
