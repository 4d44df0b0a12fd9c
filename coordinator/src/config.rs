//! Coordinator configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

/// One coordinator of the quorum, written `id@host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub id: u64,
    pub addr: SocketAddr,
}

impl PeerSpec {
    /// Parses `id@host:port` (the host must be an IP address or resolvable).
    pub fn parse(s: &str) -> Result<PeerSpec, String> {
        let (id, addr) = s
            .trim()
            .split_once('@')
            .ok_or_else(|| format!("coordinator `{s}` must be written id@host:port"))?;
        let id: u64 = id
            .parse()
            .map_err(|_| format!("coordinator `{s}`: `{id}` is not a node id"))?;
        if id == 0 {
            return Err(format!(
                "coordinator `{s}`: node id 0 is reserved by Raft; use ids from 1"
            ));
        }
        use std::net::ToSocketAddrs;
        let addr = addr
            .to_socket_addrs()
            .map_err(|e| format!("coordinator `{s}`: bad address: {e}"))?
            .next()
            .ok_or_else(|| format!("coordinator `{s}`: address resolves to nothing"))?;
        Ok(PeerSpec { id, addr })
    }

    /// Parses a comma-separated list of `id@host:port`.
    pub fn parse_list(s: &str) -> Result<Vec<PeerSpec>, String> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(PeerSpec::parse)
            .collect()
    }
}

impl std::fmt::Display for PeerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}

/// Everything a coordinator needs. `coordinators` lists every member of the
/// quorum, this node included (its entry gives the listen address).
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// This node's id (>= 1; Raft reserves 0).
    pub node_id: u64,
    /// All coordinators, this one included: 1, 3 or 5 entries.
    pub coordinators: Vec<PeerSpec>,
    /// Override of the listen address (default: this node's entry in
    /// `coordinators`). Useful to listen on 0.0.0.0.
    pub listen: Option<SocketAddr>,
    /// The node's data directory; the coordinator keeps its files in
    /// `<data_dir>/coordinator/`.
    pub data_dir: PathBuf,
    /// Raft tick interval (default 100 ms).
    pub tick_ms: u64,
    /// Election timeout in ticks (default 10 = 1 s; randomised up to 2x).
    pub election_ticks: usize,
    /// Leader heartbeat in ticks (default 2 = 200 ms).
    pub heartbeat_ticks: usize,
    /// A broker whose last heartbeat is older than this is declared down
    /// by the leader's controller (default 6000 ms).
    pub broker_lease_ms: u64,
    /// How long `propose` waits for a commit before failing with
    /// `NoQuorum` or `Timeout` (default 5000 ms).
    pub propose_timeout_ms: u64,
    /// Snapshot the state machine and compact the log once this many
    /// entries follow the last snapshot (default 1000).
    pub snapshot_entries: u64,
    /// Messages queued per peer before new ones are dropped (default 1024).
    pub peer_queue: usize,
    /// Called when a write of the coordinator's log finds the disk full,
    /// before it is tried again: the broker reports its disk full and
    /// gives up its space reserve (returns the bytes freed).
    pub on_out_of_space: Option<OutOfSpaceHook>,
}

/// See [`CoordinatorConfig::on_out_of_space`].
#[derive(Clone)]
pub struct OutOfSpaceHook(pub std::sync::Arc<dyn Fn(&str) -> u64 + Send + Sync>);

impl std::fmt::Debug for OutOfSpaceHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutOfSpaceHook")
    }
}

impl CoordinatorConfig {
    /// A configuration with every timing at its default.
    pub fn new(node_id: u64, coordinators: Vec<PeerSpec>, data_dir: PathBuf) -> Self {
        CoordinatorConfig {
            node_id,
            coordinators,
            listen: None,
            data_dir,
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            broker_lease_ms: 6000,
            propose_timeout_ms: 5000,
            snapshot_entries: 1000,
            peer_queue: 1024,
            on_out_of_space: None,
        }
    }

    /// Checks the configuration; returns a clear message on error.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.coordinators.len();
        if ![1, 3, 5].contains(&n) {
            return Err(format!(
                "a cluster has 1, 3 or 5 coordinators, {n} are configured"
            ));
        }
        let mut ids: Vec<u64> = self.coordinators.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != n {
            return Err("coordinator ids must be unique".into());
        }
        if ids.contains(&0) {
            return Err("coordinator id 0 is reserved; use ids from 1".into());
        }
        if !ids.contains(&self.node_id) {
            return Err(format!(
                "node {} is not in the coordinator list {}",
                self.node_id,
                self.coordinators
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        if self.tick_ms == 0 || self.heartbeat_ticks == 0 {
            return Err("tick_ms and heartbeat_ticks must be positive".into());
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err("election_ticks must be larger than heartbeat_ticks".into());
        }
        if self.peer_queue == 0 || self.snapshot_entries == 0 {
            return Err("peer_queue and snapshot_entries must be positive".into());
        }
        Ok(())
    }

    /// The address this node listens on.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.or_else(|| {
            self.coordinators
                .iter()
                .find(|p| p.id == self.node_id)
                .map(|p| p.addr)
        })
    }

    /// Ids of all voters, sorted.
    pub fn voter_ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.coordinators.iter().map(|p| p.id).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_peers() {
        let l = PeerSpec::parse_list("1@127.0.0.1:7170, 2@127.0.0.1:7171").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].id, 2);
        assert!(PeerSpec::parse("x@127.0.0.1:1").is_err());
        assert!(PeerSpec::parse("127.0.0.1:1").is_err());
        assert!(PeerSpec::parse("0@127.0.0.1:1").is_err());
    }

    #[test]
    fn validate() {
        let l = PeerSpec::parse_list("1@127.0.0.1:7170,2@127.0.0.1:7171").unwrap();
        assert!(CoordinatorConfig::new(1, l, "/tmp".into())
            .validate()
            .is_err());
        let l = PeerSpec::parse_list("1@127.0.0.1:7170").unwrap();
        assert!(CoordinatorConfig::new(1, l.clone(), "/tmp".into())
            .validate()
            .is_ok());
        assert!(CoordinatorConfig::new(2, l, "/tmp".into())
            .validate()
            .is_err());
    }
}
