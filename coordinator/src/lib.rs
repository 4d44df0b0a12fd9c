//! Levee's cluster-metadata quorum. It owns the replicated cluster metadata
//! and the controller's decisions; it must not depend on the broker, the
//! engine or the client: the broker embeds it, not the other way round.
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
pub mod state;
pub mod storage;
pub mod wire;

pub use config::{CoordinatorConfig, OutOfSpaceHook, PeerSpec};
pub use error::{CoordError, StartError, StorageError};
pub use node::{Coordinator, CoordinatorHandle};
pub use state::{
    check_settings, controller_actions, new_topic_id, BrokerInfo, Command, Metadata, PartitionInfo,
    TopicConfig, TopicInfo, MAX_PARTITIONS,
};
pub use wire::{Applied, PeerStatus, Role, Status};

/// Whether some process keeps accepting TCP connections on `addr` (for an
/// unspecified address, on loopback) for 2 s. glommio listeners use
/// SO_REUSEPORT, which lets a second process listening the same way bind
/// the same port and take a share of its connections; a listener checks
/// this first to refuse a port in use. A process killed just before still
/// accepts for a few milliseconds (its io_uring, which holds the listening
/// socket, is torn down after it exits), hence the retries. Port 0 never
/// counts as in use.
pub fn someone_listens(addr: std::net::SocketAddr) -> bool {
    for _ in 0..20 {
        if !accepts_now(addr) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    true
}

fn accepts_now(addr: std::net::SocketAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    if addr.port() == 0 {
        return false;
    }
    let ip = match addr.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let target = SocketAddr::new(ip, addr.port());
    match TcpStream::connect_timeout(&target, std::time::Duration::from_millis(300)) {
        // A connection to itself (the kernel picked the target port as the
        // source port) means nobody listens.
        Ok(s) => s.local_addr().ok() != Some(target),
        Err(_) => false,
    }
}
