//! Cluster membership and the metadata every shard follows.
//!
//! A plain thread (blocking client; off the data path) registers this node
//! with the coordinator quorum, heartbeats its leader, and polls the
//! coordinators for metadata. The newest metadata is published in a
//! [`ClusterView`]; each shard watches its version and applies changes to
//! the partitions it owns (see `replica.rs`).

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
    md: Mutex<Option<Arc<Metadata>>>,
    /// Metadata version + 1 (0: none yet).
    version: AtomicU64,
    /// Set by a shard that saw a sign of stale metadata; the membership
    /// thread then polls at once.
    refresh: AtomicBool,
}

impl ClusterView {
    pub fn new(node_id: u64, coordinators: Vec<(u64, String)>, lease_ms: u64) -> Arc<Self> {
        Arc::new(ClusterView {
            node_id,
            coordinators,
            lease_ms,
            md: Mutex::new(None),
            version: AtomicU64::new(0),
            refresh: AtomicBool::new(false),
        })
    }

    pub fn addrs(&self) -> Vec<String> {
        self.coordinators.iter().map(|(_, a)| a.clone()).collect()
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

    /// Asks the membership thread to poll the coordinators now.
    pub fn request_refresh(&self) {
        self.refresh.store(true, Ordering::Relaxed);
    }
}

/// Polls every coordinator for its metadata and publishes the newest.
fn poll_metadata(view: &ClusterView, timeout: Duration) -> bool {
    let mut best: Option<Metadata> = None;
    for (_, addr) in &view.coordinators {
        if let Ok(md) = levee_coordinator::client::metadata(addr, timeout) {
            if best.as_ref().is_none_or(|b| md.version > b.version) {
                best = Some(md);
            }
        }
    }
    match best {
        Some(md) => {
            view.publish(md);
            true
        }
        None => false,
    }
}

/// Registers this broker with the coordinator quorum and heartbeats its
/// leader every `heartbeat` on one thread, and polls metadata about every
/// 100 ms on another (so a coordinator that hangs cannot delay heartbeats
/// past the lease), until `stop`.
pub fn start_membership(
    view: Arc<ClusterView>,
    client_addr: String,
    shards: usize,
    heartbeat: Duration,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<(), String>>, String> {
    let poller = {
        let (view, stop) = (view.clone(), stop.clone());
        std::thread::Builder::new()
            .name("metadata".into())
            .spawn(move || {
                let timeout = Duration::from_millis(200);
                while !stop.load(Ordering::SeqCst) {
                    view.refresh.store(false, Ordering::Relaxed);
                    poll_metadata(&view, timeout);
                    let next = Instant::now() + Duration::from_millis(100);
                    while Instant::now() < next
                        && !stop.load(Ordering::SeqCst)
                        && !view.refresh.load(Ordering::Relaxed)
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
            .map_err(|e| format!("cannot start the metadata thread: {e}"))?
    };
    std::thread::Builder::new()
        .name("membership".into())
        .spawn(move || {
            let addrs = view.addrs();
            // Below the lease, so one slow round still renews it in time.
            let timeout = Duration::from_millis(view.lease_ms / 2).max(Duration::from_millis(200));
            let node_id = view.node_id;
            let mut registered = false;
            let mut last_warn = Instant::now() - Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let r = if registered {
                    levee_coordinator::client::heartbeat(&addrs, node_id, timeout)
                } else {
                    levee_coordinator::client::propose(
                        &addrs,
                        Command::RegisterBroker {
                            node_id,
                            client_addr: client_addr.clone(),
                            shards: shards as u32,
                        },
                        timeout,
                    )
                    .map(|_| ())
                };
                match r {
                    Ok(()) if !registered => {
                        info!(node_id, "registered with the coordinator quorum");
                        registered = true;
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
            let _ = poller.join();
            Ok(())
        })
        .map_err(|e| format!("cannot start the membership thread: {e}"))
}
