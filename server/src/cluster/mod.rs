//! Cluster membership and the metadata every shard follows.
//!
//! A plain thread (blocking client; off the data path) registers this node
//! with the coordinator quorum, heartbeats its leader, and polls the
//! coordinators for metadata. The newest metadata is published in a
//! [`ClusterView`]; each shard watches its version and applies changes to
//! the partitions it owns (see `replication/`).

pub mod admin;
mod metadata;

use levee_coordinator::{Command, Metadata};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The cluster as this node last learned it, shared by the shards.
pub struct ClusterView {
    pub node_id: u64,
    /// (coordinator id, address).
    pub coordinators: Vec<(u64, String)>,
    pub lease_ms: u64,
    /// This process's incarnation, registered with the coordinators: a new
    /// one on every start, so they see a restart even within the lease,
    /// and a new one when a full disk cost a replica what it had (see
    /// [`ClusterView::reincarnate`]).
    incarnation: AtomicU64,
    md: Mutex<Option<Arc<Metadata>>>,
    /// Metadata version + 1 (0: none yet).
    version: AtomicU64,
}

impl ClusterView {
    pub fn new(node_id: u64, coordinators: Vec<(u64, String)>, lease_ms: u64) -> Arc<Self> {
        Arc::new(ClusterView {
            node_id,
            coordinators,
            lease_ms,
            incarnation: AtomicU64::new(new_incarnation()),
            md: Mutex::new(None),
            version: AtomicU64::new(0),
        })
    }

    pub fn addrs(&self) -> Vec<String> {
        self.coordinators.iter().map(|(_, a)| a.clone()).collect()
    }

    /// Whether `md` holds this process's registration. Until it does,
    /// the metadata still describes the previous incarnation of this node
    /// (a leadership it held before a crash, say), and no replica acts on it.
    pub fn registered_in(&self, md: &Metadata) -> bool {
        md.brokers
            .get(&self.node_id)
            .is_some_and(|b| b.incarnation == self.incarnation())
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::Acquire)
    }

    /// Registers this node anew, as a restart would: the coordinators take
    /// it out of every ISR and move the partitions it leads, and its
    /// replicas act on no metadata until the new registration is in. For
    /// replicas whose logs a full disk cut below what they had reported
    /// (they must not be elected before they have caught up again). A
    /// registration already pending is kept. Returns the incarnation to
    /// wait for.
    pub fn reincarnate(&self) -> u64 {
        let cur = self.incarnation();
        let registered = self.metadata().is_some_and(|md| self.registered_in(&md));
        if !registered {
            return cur;
        }
        let next = new_incarnation().max(cur + 1);
        match self
            .incarnation
            .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                info!(
                    node_id = self.node_id,
                    "registering anew: the coordinators take this node out of the ISRs while its replicas recover"
                );
                next
            }
            Err(now) => now,
        }
    }

    /// 0 until the first metadata arrives, then its version + 1.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn metadata(&self) -> Option<Arc<Metadata>> {
        self.md.lock().ok().and_then(|m| m.clone())
    }

    /// Keeps `md` if it is newer than what is held.
    pub fn publish(&self, md: Metadata) -> bool {
        let Ok(mut guard) = self.md.lock() else {
            return false;
        };
        if guard.as_ref().is_some_and(|old| old.version >= md.version) {
            return false;
        }
        let v = md.version + 1;
        *guard = Some(Arc::new(md));
        self.version.store(v, Ordering::Release);
        true
    }
}

/// A value that differs between two starts of this process: the start
/// time in nanoseconds mixed with the process id (never 0, which brokers
/// that predate incarnations register with).
fn new_incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 40)).max(1)
}

/// Heartbeats every coordinator: the leader renews the lease, the others
/// record it, so a newly elected leader knows who was alive. Succeeds if
/// the leader answered.
fn heartbeat_all(
    addrs: &[String],
    node_id: u64,
    timeout: Duration,
) -> Result<(), levee_coordinator::CoordError> {
    use levee_coordinator::wire::{Request, Response};
    let each = (timeout / addrs.len().max(1) as u32).max(Duration::from_millis(100));
    let mut last = None;
    for addr in addrs {
        match levee_coordinator::client::request(addr, &Request::Heartbeat { node_id }, each) {
            Ok(Response::HeartbeatOk) => {
                // The rest are best effort; keep them from delaying us.
                for other in addrs.iter().filter(|a| *a != addr) {
                    let _ = levee_coordinator::client::request(
                        other,
                        &Request::Heartbeat { node_id },
                        Duration::from_millis(100),
                    );
                }
                return Ok(());
            }
            Ok(other) => {
                last = Some(levee_coordinator::CoordError::Protocol(format!(
                    "expected heartbeat ok, got {other:?}"
                )))
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(levee_coordinator::CoordError::NoQuorum {
        reachable: 0,
        total: addrs.len(),
    }))
}

/// Registers this broker with the coordinator quorum and heartbeats its
/// leader every `heartbeat` on one thread, and polls metadata about every
/// 100 ms on another (so a coordinator that hangs cannot delay heartbeats
/// past the lease), until `stop`.
pub fn start_membership(
    view: Arc<ClusterView>,
    client_addr: String,
    kafka_addr: String,
    shards: usize,
    heartbeat: Duration,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<(), String>>, String> {
    // One long-polling watcher per coordinator: a change reaches this node
    // as soon as any coordinator has applied it.
    let mut pollers = Vec::new();
    for (id, addr) in view.coordinators.clone() {
        let (view, stop) = (view.clone(), stop.clone());
        let h = std::thread::Builder::new()
            .name(format!("metadata-{id}"))
            .spawn(move || {
                let mut after = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    match levee_coordinator::client::watch_metadata(
                        &addr,
                        after,
                        Duration::from_millis(500),
                    ) {
                        Ok(md) => {
                            after = md.version;
                            view.publish(md);
                        }
                        Err(_) => {
                            // Down or hung: try again soon, from scratch.
                            after = 0;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start a metadata thread: {e}"))?;
        pollers.push(h);
    }
    std::thread::Builder::new()
        .name("membership".into())
        .spawn(move || {
            let addrs = view.addrs();
            // Below the lease, so one slow round still renews it in time.
            let timeout = Duration::from_millis(view.lease_ms / 2).max(Duration::from_millis(200));
            let node_id = view.node_id;
            // The incarnation last registered (0: none yet).
            let mut registered_as = 0;
            let mut last_warn = Instant::now() - Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let incarnation = view.incarnation();
                let registered = registered_as == incarnation;
                let r = if registered {
                    heartbeat_all(&addrs, node_id, timeout)
                } else {
                    levee_coordinator::client::propose(
                        &addrs,
                        Command::RegisterBroker {
                            node_id,
                            client_addr: client_addr.clone(),
                            kafka_addr: kafka_addr.clone(),
                            shards: shards as u32,
                            incarnation,
                        },
                        timeout,
                    )
                    .map(|_| ())
                };
                match r {
                    Ok(()) if !registered => {
                        info!(node_id, "registered with the coordinator quorum");
                        registered_as = incarnation;
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if last_warn.elapsed() > Duration::from_secs(10) {
                            warn!(error = %e, "cannot reach the coordinator quorum; metadata changes wait for it");
                            last_warn = Instant::now();
                        }
                    }
                }
                let next = started + heartbeat;
                while Instant::now() < next && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            for p in pollers {
                let _ = p.join();
            }
            Ok(())
        })
        .map_err(|e| format!("cannot start the membership thread: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_coordinator::BrokerInfo;

    fn md_with(node: u64, incarnation: u64, version: u64) -> Metadata {
        let mut md = Metadata {
            version,
            ..Default::default()
        };
        md.brokers.insert(
            node,
            BrokerInfo {
                node_id: node,
                client_addr: "127.0.0.1:1".into(),
                kafka_addr: String::new(),
                shards: 1,
                alive: true,
                incarnation,
            },
        );
        md
    }

    #[test]
    fn reincarnating_waits_for_the_pending_registration() {
        let v = ClusterView::new(1, vec![(1, "127.0.0.1:2".into())], 1000);
        let first = v.incarnation();
        // Not registered yet: nothing to replace.
        assert_eq!(v.reincarnate(), first);
        assert!(v.publish(md_with(1, first, 1)));
        assert!(v.registered_in(&v.metadata().unwrap()));
        // Registered: a new incarnation, and the metadata no longer counts
        // as this process's until it is registered in turn.
        let second = v.reincarnate();
        assert_ne!(second, first);
        assert_eq!(v.incarnation(), second);
        assert!(!v.registered_in(&v.metadata().unwrap()));
        // Asked again before that: the pending one is kept.
        assert_eq!(v.reincarnate(), second);
        assert!(v.publish(md_with(1, second, 2)));
        assert!(v.registered_in(&v.metadata().unwrap()));
    }
}
