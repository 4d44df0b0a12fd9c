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
//! decode closes the connection. Oversized depends on the tag (see
//! [`max_payload`]): a Raft message may be up to [`MAX_FRAME`] (snapshots),
//! a client request at most [`MAX_REQUEST_FRAME`]. The length is checked
//! against the tag before the body is read, and a body is read (and its
//! buffer grown) [`READ_CHUNK`] bytes at a time as it arrives, so a peer
//! that declares a large frame and sends little costs little memory.

use crate::error::CoordError;
use crate::state::{Command, Metadata, TopicConfig};
use serde::{Deserialize, Serialize};

pub const MAX_FRAME: usize = 64 << 20;
/// Largest payload of a client request frame (tag 2): requests are small
/// JSON documents; only Raft messages (snapshots) need [`MAX_FRAME`].
pub const MAX_REQUEST_FRAME: usize = 4 << 20;
/// A frame's body is read and its buffer grown at most this much at a time.
pub const READ_CHUNK: usize = 64 << 10;
const _: () = assert!(MAX_REQUEST_FRAME < MAX_FRAME && READ_CHUNK <= MAX_REQUEST_FRAME);
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

/// The largest payload (tag included) a frame with `tag` may declare, or
/// `None` for an unknown tag.
pub fn max_payload(tag: u8) -> Option<usize> {
    match tag {
        TAG_RAFT | TAG_RESPONSE => Some(MAX_FRAME),
        TAG_REQUEST => Some(MAX_REQUEST_FRAME),
        _ => None,
    }
}

/// Makes room in `buf` for the next read of a body that ends at `end`
/// bytes, and returns how many bytes that read may take. The buffer grows
/// only once it is full, by a chunk or by doubling (amortised), never past
/// `end`: its capacity stays within one chunk or twice what arrived.
fn grow_for_next_read(buf: &mut Vec<u8>, end: usize) -> usize {
    let have = buf.len();
    if buf.capacity() == have {
        let target = (have + READ_CHUNK).max(have * 2).min(end);
        buf.reserve_exact(target - have);
    }
    let step = (buf.capacity() - have).min(READ_CHUNK).min(end - have);
    buf.resize(have + step, 0);
    step
}

/// Appends the next `len` bytes of `r` to `buf`, growing it only as bytes
/// arrive (by a chunk at a time, or by doubling once it is large), so its
/// capacity stays within one chunk or twice what arrived. On an error,
/// `buf` holds what was read; an early end of stream is `UnexpectedEof`.
pub fn read_chunked<R: std::io::Read>(
    r: &mut R,
    len: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let end = buf.len() + len;
    while buf.len() < end {
        let have = buf.len();
        let step = grow_for_next_read(buf, end);
        let got = loop {
            match r.read(&mut buf[have..have + step]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match got {
            Ok(0) => {
                buf.truncate(have);
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            Ok(n) => buf.truncate(have + n),
            Err(e) => {
                buf.truncate(have);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// [`read_chunked`] for an async reader.
pub async fn read_chunked_async<R: futures_lite::AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    use futures_lite::AsyncReadExt;
    let end = buf.len() + len;
    while buf.len() < end {
        let have = buf.len();
        let step = grow_for_next_read(buf, end);
        let got = loop {
            match r.read(&mut buf[have..have + step]).await {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match got {
            Ok(0) => {
                buf.truncate(have);
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            Ok(n) => buf.truncate(have + n),
            Err(e) => {
                buf.truncate(have);
                return Err(e);
            }
        }
    }
    Ok(())
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
    /// TCP connections this coordinator accepted since it started (peers'
    /// and clients'). Clients keep connections open between requests, so
    /// this grows slowly; a fast-growing count means connection churn.
    #[serde(default)]
    pub connections_accepted: u64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// 10 bytes of a frame body that declares 64 MiB, then end of stream.
    fn short_body() -> Vec<u8> {
        (0u8..10).collect()
    }

    #[test]
    fn a_large_declared_body_that_stops_early_costs_one_chunk() {
        let mut buf = Vec::new();
        let err = read_chunked(&mut Cursor::new(short_body()), MAX_FRAME, &mut buf)
            .expect_err("the stream ends early");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(buf, short_body());
        assert!(
            buf.capacity() <= READ_CHUNK,
            "capacity {} for 10 bytes received",
            buf.capacity()
        );

        let mut buf = Vec::new();
        let mut r = futures_lite::io::Cursor::new(short_body());
        let err = futures_lite::future::block_on(read_chunked_async(&mut r, MAX_FRAME, &mut buf))
            .expect_err("the stream ends early");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(buf, short_body());
        assert!(buf.capacity() <= READ_CHUNK);
    }

    /// Hands out at most 1000 bytes per read, like a socket would.
    struct Trickle(Cursor<Vec<u8>>);

    impl std::io::Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = out.len().min(1000);
            self.0.read(&mut out[..n])
        }
    }

    #[test]
    fn chunked_reads_return_exactly_the_body_and_grow_with_it() {
        let len = 3 * READ_CHUNK + 12_345;
        let data: Vec<u8> = (0..len + 7).map(|i| (i % 251) as u8).collect();
        let mut r = Trickle(Cursor::new(data.clone()));
        let mut buf = Vec::new();
        read_chunked(&mut r, len, &mut buf).unwrap();
        assert_eq!(buf, data[..len]);
        assert!(buf.capacity() <= 2 * len);
        // What follows the body is left unread.
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut rest).unwrap();
        assert_eq!(rest, data[len..]);

        let mut r = futures_lite::io::Cursor::new(data.clone());
        let mut buf = Vec::new();
        futures_lite::future::block_on(read_chunked_async(&mut r, len, &mut buf)).unwrap();
        assert_eq!(buf, data[..len]);

        let mut buf = Vec::new();
        read_chunked(&mut Cursor::new(Vec::new()), 0, &mut buf).unwrap();
        assert!(buf.is_empty());
    }

    #[test]
    fn request_frames_are_capped_below_raft_frames() {
        assert_eq!(max_payload(TAG_RAFT), Some(MAX_FRAME));
        assert_eq!(max_payload(TAG_RESPONSE), Some(MAX_FRAME));
        assert_eq!(max_payload(TAG_REQUEST), Some(MAX_REQUEST_FRAME));
        assert_eq!(max_payload(0), None);
        assert_eq!(max_payload(9), None);
    }
}
