//! A shard: one glommio executor pinned to one core, the only owner of its
//! partitions and consumer groups. Work for a partition or group owned by
//! another shard is a closure sent to that shard over the channel mesh
//! ([`Shard::submit_to`], in `mesh.rs`); its result comes back the same way.
//! Topic registry changes of a single node are in `topics.rs`.

pub mod buffers;
mod mesh;
mod producer_ids;
mod space;
pub(crate) mod topics;

pub use crate::shutdown::Shutdown;
pub use mesh::MeshMsg;
pub use topics::REGISTRY_SHARD;

use crate::config::{parse_fsync, ServerConfig};
use crate::error::{OpError, OpResult};
use crate::metrics::{Histogram, Sample};
use crate::partition::{Partition, ProduceLimits};
use crate::topics::TopicMeta;
use glommio::channels::channel_mesh::Senders;
use glommio::sync::Semaphore;
use levee_schemas::proto::ErrorCode;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use tracing::warn;

#[derive(Default)]
pub struct ShardMetrics {
    pub produce_latency: Histogram,
    pub fetch_latency: Histogram,
    pub connections: Cell<u64>,
    pub requests_ok: Cell<u64>,
    pub errors: Cell<u64>,
    pub forwarded: Cell<u64>,
}

pub fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

pub struct Shard {
    pub id: usize,
    pub nshards: usize,
    pub cfg: Arc<ServerConfig>,
    /// Set on a cluster node: the metadata this node follows.
    pub cluster: Option<Arc<crate::cluster::ClusterView>>,
    /// Leaders this shard runs a replica fetch stream from.
    pub fetchers: RefCell<HashSet<u64>>,
    topics: RefCell<BTreeMap<String, TopicMeta>>,
    parts: RefCell<HashMap<(String, u32), Rc<Partition>>>,
    mesh: mesh::Mesh,
    pub inflight: Rc<Semaphore>,
    pub inflight_limit: u64,
    pub metrics: ShardMetrics,
    pub shutdown: Shutdown,
    /// Serializes topic creation and deletion (shard 0).
    admin_lock: Semaphore,
    /// The consumer groups this shard coordinates.
    pub groups: Rc<crate::groups::Groups>,
    /// The transactions this shard coordinates.
    pub txns: Rc<crate::txn::Txns>,
    /// Shard 0: the producer ids left in its reserved block (next, end).
    producer_ids: Cell<Option<(i64, i64)>>,
    /// The data directory's disk-full state and space reserve, shared by
    /// every shard.
    pub space: Arc<crate::space::SpaceState>,
    /// Idle connections to other nodes' client listeners for internal
    /// requests (transaction markers and offsets), by address: at most
    /// [`crate::handlers::txn::IDLE_PEER_CONNS`] each, reused instead of a
    /// connection per request.
    pub(crate) peer_conns: RefCell<HashMap<String, Vec<crate::replication::peer::PeerConn>>>,
}

impl crate::groups::TopicLookup for Shard {
    fn partitions(&self, topic: &str) -> Option<u32> {
        self.topic(topic).map(|m| m.partitions)
    }

    fn check_partition(&self, topic: &str, partition: u32) -> Result<(), OpError> {
        Shard::check_partition(self, topic, partition)
    }
}

impl Shard {
    pub fn new(
        id: usize,
        nshards: usize,
        cfg: Arc<ServerConfig>,
        topics: BTreeMap<String, TopicMeta>,
        senders: Option<Senders<MeshMsg>>,
        cluster: Option<Arc<crate::cluster::ClusterView>>,
        space: Arc<crate::space::SpaceState>,
    ) -> Rc<Shard> {
        let limit = cfg.max_inflight_bytes_per_shard;
        Rc::new(Shard {
            id,
            nshards,
            cluster,
            fetchers: RefCell::new(HashSet::new()),
            topics: RefCell::new(topics),
            parts: RefCell::new(HashMap::new()),
            mesh: mesh::Mesh::new(senders),
            inflight: Rc::new(Semaphore::new(limit)),
            inflight_limit: limit,
            metrics: ShardMetrics::default(),
            shutdown: Shutdown::default(),
            admin_lock: Semaphore::new(1),
            groups: Rc::new(crate::groups::Groups::new(&cfg.data_dir)),
            txns: Rc::new(crate::txn::Txns::default()),
            producer_ids: Cell::new(None),
            space,
            peer_conns: RefCell::new(HashMap::new()),
            cfg,
        })
    }

    /// The shard that owns a partition.
    pub fn owner(&self, topic: &str, partition: u32) -> usize {
        crate::topics::owner_shard(topic, partition, self.nshards)
    }

    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.topics.borrow().get(name).cloned()
    }

    pub fn topic_names(&self) -> Vec<String> {
        self.topics.borrow().keys().cloned().collect()
    }

    /// Replaces the topic metadata (cluster mode: from the coordinators).
    pub fn set_topics(&self, topics: BTreeMap<String, TopicMeta>) {
        *self.topics.borrow_mut() = topics;
    }

    pub fn all_partitions(&self) -> Vec<Rc<Partition>> {
        self.parts.borrow().values().cloned().collect()
    }

    /// Checks that a partition exists in the metadata this shard holds.
    pub fn check_partition(&self, topic: &str, partition: u32) -> Result<(), OpError> {
        match self.topics.borrow().get(topic) {
            None => Err(OpError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!(
                    "topic `{topic}` does not exist (create it with `levee topic create {topic}`)"
                ),
            )),
            Some(m) if partition >= m.partitions => Err(OpError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!(
                    "topic `{topic}` has {} partitions; partition {partition} does not exist",
                    m.partitions
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// A partition this shard holds open.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Rc<Partition>, OpError> {
        if let Some(p) = self.parts.borrow().get(&(topic.to_string(), partition)) {
            return Ok(p.clone());
        }
        if self.cluster.is_some() && self.check_partition(topic, partition).is_ok() {
            // The partition exists in the cluster, but no replica of it is
            // open here (another node hosts it, or it is still opening).
            return Err(OpError::new(
                ErrorCode::NotLeader,
                format!(
                    "node {} holds no replica of partition {partition} of `{topic}` (yet); refresh metadata and send to its leader",
                    self.cfg.node_id
                ),
            ));
        }
        Err(OpError::unknown_partition(topic, partition))
    }

    /// Opens (recovering if needed) every partition of `name` this shard owns.
    pub async fn open_topic(&self, name: &str, meta: &TopicMeta) -> Result<(), OpError> {
        for p in 0..meta.partitions {
            if self.owner(name, p) == self.id {
                self.open_partition(name, p, meta).await?;
            }
        }
        Ok(())
    }

    /// The partition, opened (and recovered) on first use.
    pub async fn open_partition(
        &self,
        name: &str,
        p: u32,
        meta: &TopicMeta,
    ) -> OpResult<Rc<Partition>> {
        if let Some(part) = self.parts.borrow().get(&(name.to_string(), p)) {
            return Ok(part.clone());
        }
        let (cfg, limits) = self.topic_log_config(meta)?;
        let dir = crate::topics::partition_dir(&self.cfg.data_dir, name, p);
        let me = self.cluster.as_ref().map(|_| u64::from(self.cfg.node_id));
        let part = Partition::open(name, p, &dir, cfg, limits, me).await?;
        let upkeep = part.clone();
        let expiration = std::time::Duration::from_millis(self.cfg.producer_id_expiration_ms);
        glommio::spawn_local(async move { upkeep.run_producer_upkeep(expiration).await }).detach();
        self.parts
            .borrow_mut()
            .insert((name.to_string(), p), part.clone());
        // A single node leads every partition: it coordinates the groups
        // of the offsets topic's (a cluster's leaders do, as elected).
        if name == levee_core::OFFSETS_TOPIC && self.cluster.is_none() {
            self.groups
                .become_leader(p, meta.partitions, part.clone(), 0);
        }
        if name == levee_core::TXN_TOPIC && self.cluster.is_none() {
            self.txns.become_leader(p, part.clone(), 0);
        }
        Ok(part)
    }

    /// A topic's partitions' log configuration (the broker's defaults with
    /// the topic's settings) and backlog bound.
    pub fn topic_log_config(
        &self,
        meta: &TopicMeta,
    ) -> OpResult<(levee_engine::LogConfig, ProduceLimits)> {
        let fsync = if meta.fsync.is_empty() {
            None
        } else {
            Some(parse_fsync(&meta.fsync).map_err(|m| OpError::new(ErrorCode::InvalidConfig, m))?)
        };
        let pos = |v: i64| (v >= 0).then_some(v);
        let cfg = self.cfg.log_config(
            fsync,
            pos(meta.segment_bytes).map(|v| v as u64),
            pos(meta.retention_bytes),
            pos(meta.retention_ms),
        );
        let limits = ProduceLimits {
            max_backlog: pos(meta.max_backlog_bytes).map(|v| v as u64),
            max_message: pos(meta.max_message_bytes).map(|v| v as usize),
        };
        Ok((cfg, limits))
    }

    /// Gives this shard's open partitions of `name` the topic's new
    /// settings, and applies retention at once (a lower retention frees
    /// space now, not at the next periodic pass).
    pub async fn retune_topic(&self, name: &str, meta: &TopicMeta) -> OpResult<()> {
        let (cfg, limits) = self.topic_log_config(meta)?;
        let parts: Vec<Rc<Partition>> = self
            .parts
            .borrow()
            .iter()
            .filter(|((t, _), _)| t == name)
            .map(|(_, p)| p.clone())
            .collect();
        for p in parts {
            p.set_config(&cfg, limits)?;
            match p.log.enforce_retention().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(topic = %name, partition = p.partition, segments = n, "new retention deleted segments")
                }
                Err(e) => {
                    warn!(topic = %name, partition = p.partition, error = %e, "applying the new retention failed; the periodic pass retries")
                }
            }
        }
        Ok(())
    }

    /// Closes and forgets every partition of `name`, deleting their files.
    pub async fn drop_topic(&self, name: &str) {
        self.topics.borrow_mut().remove(name);
        if name == levee_core::OFFSETS_TOPIC {
            let mine: Vec<u32> = self
                .parts
                .borrow()
                .keys()
                .filter(|(t, _)| t == name)
                .map(|(_, p)| *p)
                .collect();
            for p in mine {
                self.groups.resign(p);
            }
        }
        if name == levee_core::TXN_TOPIC {
            let mine: Vec<u32> = self
                .parts
                .borrow()
                .keys()
                .filter(|(t, _)| t == name)
                .map(|(_, p)| *p)
                .collect();
            for p in mine {
                self.txns.resign(p);
            }
        }
        let gone: Vec<Rc<Partition>> = {
            let mut parts = self.parts.borrow_mut();
            let keys: Vec<_> = parts.keys().filter(|(t, _)| t == name).cloned().collect();
            keys.iter().filter_map(|k| parts.remove(k)).collect()
        };
        for p in gone {
            let _ = p.log.close().await;
            let dir = crate::topics::partition_dir(&self.cfg.data_dir, &p.topic, p.partition);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                warn!(dir = %dir.display(), error = %e, "removing a deleted partition's directory failed");
            }
        }
    }

    /// Closes every log cleanly (flush, indexes, clean marker).
    pub async fn close_all(&self) {
        self.groups.close_all();
        self.txns.close_all();
        for p in self.all_partitions() {
            // The producer table, so the next start need not rescan.
            if let Err(e) = p.snapshot_producers().await {
                warn!(topic = %p.topic, partition = p.partition, error = %e.message, "writing the producer-state snapshot failed");
            }
            if let Err(e) = p.log.close().await {
                warn!(topic = %p.topic, partition = p.partition, error = %e, "closing a partition log failed");
            }
        }
    }

    /// This shard's metric samples (its partitions' and its own).
    pub fn samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        for p in self.parts.borrow().values() {
            p.samples(&mut out);
        }
        let shard = format!("shard=\"{}\"", self.id);
        let m = &self.metrics;
        out.push(Sample::Histogram {
            family: "levee_produce_latency_seconds",
            labels: shard.clone(),
            h: m.produce_latency.snapshot(),
        });
        out.push(Sample::Histogram {
            family: "levee_fetch_latency_seconds",
            labels: shard.clone(),
            h: m.fetch_latency.snapshot(),
        });
        let used = self.inflight_limit - self.inflight.available().min(self.inflight_limit);
        let busy = glommio::executor().executor_stats().total_runtime();
        let ok = format!("{shard},outcome=\"ok\"");
        let err = format!("{shard},outcome=\"error\"");
        for (family, labels, value) in [
            ("levee_shard_inflight_bytes", &shard, used as f64),
            (
                "levee_shard_inflight_limit_bytes",
                &shard,
                self.inflight_limit as f64,
            ),
            ("levee_shard_busy_seconds_total", &shard, busy.as_secs_f64()),
            (
                "levee_shard_connections",
                &shard,
                m.connections.get() as f64,
            ),
            (
                "levee_shard_requests_total",
                &ok,
                m.requests_ok.get() as f64,
            ),
            ("levee_shard_requests_total", &err, m.errors.get() as f64),
            ("levee_shard_errors_total", &shard, m.errors.get() as f64),
            (
                "levee_shard_forwarded_total",
                &shard,
                m.forwarded.get() as f64,
            ),
            (
                "levee_transactions_open",
                &shard,
                self.txns.open_count() as f64,
            ),
            (
                "levee_transaction_oldest_open_age_seconds",
                &shard,
                self.txns.oldest_open_age_ms(crate::txn::now_ms()) as f64 / 1000.0,
            ),
        ] {
            out.push(Sample::Value {
                family,
                labels: labels.clone(),
                value,
            });
        }
        out
    }
}
