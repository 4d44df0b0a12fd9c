//! Broker configuration: a TOML file (`--config`) overridden by flags.
//! Every option and its default is listed in `levee.example.toml`.

use levee_core::CoreSpec;
use levee_engine::{FsyncPolicy, LogConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default native client port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9192";
/// Default Kafka API port: the one every Kafka client, tool and guide assumes.
pub const DEFAULT_KAFKA_LISTEN: &str = "127.0.0.1:9092";
/// Default admin (metrics) port.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9644";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub node_id: u32,
    pub data_dir: PathBuf,
    pub listen: String,
    /// The native address (HOST:PORT) this node registers in the cluster
    /// metadata, where clients and the other nodes reach it; empty:
    /// `listen`, which must then name a concrete host.
    pub advertise: String,
    /// The Kafka API listener, ADDR:PORT; `none` (or empty) turns it off.
    pub kafka_listen: String,
    /// The Kafka address Metadata returns for this broker (HOST:PORT);
    /// empty: `kafka_listen`, which must then name a concrete host.
    pub kafka_advertise: String,
    /// Topics named in a Kafka Metadata or Produce request that do not
    /// exist are created with the broker's defaults (as Kafka's
    /// `auto.create.topics.enable`; off by default, as in Redpanda).
    pub auto_create_topics: bool,
    /// Empty string: no admin listener.
    pub admin_listen: String,
    /// "all", a count ("2"), or a list of CPU ids ("0,2-3").
    pub cores: String,
    pub max_frame_bytes: u32,
    /// Bytes of requests a shard holds at once; past it, it stops reading
    /// from its sockets (TCP backpressure).
    pub max_inflight_bytes_per_shard: u64,
    /// Requests in flight on one connection (pipelining depth).
    pub max_inflight_requests_per_connection: usize,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_timeout_ms: u64,
    /// How long an idle shard spins before it sleeps in the kernel. Spinning
    /// cuts the latency of a cross-shard hop (about 60 us to about 14 us on
    /// the development VM) at the cost of CPU when idle. 0 disables it.
    pub idle_spin_us: u64,
    /// A consumer group with no members keeps its committed offsets this
    /// long, then is deleted.
    pub group_offsets_retention_ms: u64,
    /// Partitions of the consumer groups' topic `__consumer_offsets`, set
    /// when it is created (on first use); default 16 on a cluster, 1 on a
    /// single node.
    pub group_partitions: Option<u32>,
    /// Bytes of `<data_dir>/space.reserve`, a file allocated while space
    /// allows and deleted when a metadata write (deleting a topic,
    /// lowering its retention) finds the disk full, so that the ways to
    /// free space keep working. 0: no reserve.
    pub space_reserve_bytes: u64,
    /// The cluster's coordinators, `id@host:port,...` (1, 3 or 5). Empty: a
    /// single node without a coordinator quorum. A node whose `node_id` is
    /// listed runs a coordinator on a dedicated executor and listens on its
    /// entry's address; every node registers with the quorum and
    /// heartbeats its leader.
    pub coordinators: String,
    /// Node-to-node (coordinator/Raft) listener of a coordinator node;
    /// empty: this node's own entry in `coordinators`. Set it to bind
    /// another local address (e.g. 0.0.0.0:7170) than the one peers use.
    pub cluster_listen: String,
    /// A broker without a heartbeat for this long is declared down by the
    /// coordinator leader.
    pub broker_lease_ms: u64,
    /// How often a cluster node heartbeats the coordinator leader.
    pub heartbeat_interval_ms: u64,
    /// In-sync replicas an `acks=all` write needs; 0 means a majority of
    /// the partition's replication factor.
    pub min_insync_replicas: u16,
    /// A follower that has not caught up with its leader for this long
    /// leaves the in-sync replica set.
    pub replica_lag_time_max_ms: u64,
    /// An idempotent producer that has written nothing to a partition for
    /// this long is forgotten there (Kafka's `producer.id.expiration.ms`).
    pub producer_id_expiration_ms: u64,
    /// Partitions of the transaction coordinators' topic
    /// `__transaction_state`, set when it is created (on first use);
    /// default 16 on a cluster, 1 on a single node.
    pub transaction_partitions: Option<u32>,
    /// The longest `transaction.timeout.ms` a producer may ask for
    /// (Kafka's `transaction.max.timeout.ms`).
    pub transaction_max_timeout_ms: u64,
    /// A transactional id with no transaction for this long is forgotten
    /// (Kafka's `transactional.id.expiration.ms`).
    pub transactional_id_expiration_ms: u64,
    /// Transactions open (or completing) at once on one coordinator shard;
    /// past it a new transaction is refused.
    pub max_open_transactions: usize,
    /// Partitions (and, apart, group offsets) one transaction may write to.
    pub max_partitions_per_transaction: usize,
    pub log: LogDefaults,
}

/// Defaults for every partition log; topics override retention, fsync and
/// segment size.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogDefaults {
    pub fsync: String,
    pub segment_bytes: u64,
    pub segment_ms: u64,
    /// -1: unlimited.
    pub retention_bytes: i64,
    /// -1: unlimited.
    pub retention_ms: i64,
    pub write_chunk_bytes: usize,
    pub max_inflight_writes: usize,
    pub tail_cache_bytes: usize,
    pub index_cache_bytes: usize,
    pub read_ahead_bytes: usize,
    pub read_ahead_windows: usize,
    pub max_batch_bytes: usize,
    pub preallocate_bytes: u64,
    /// Reuse the file of the newest segment retention deletes for the
    /// log's next segment (overwrites instead of new allocations).
    pub recycle_segments: bool,
    pub retention_check_interval_ms: u64,
    /// A partition idle (no append or read) this long gives back its
    /// buffers after a flush; 0 keeps them.
    pub idle_release_ms: u64,
    pub default_partitions: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            node_id: 0,
            data_dir: PathBuf::from("./levee-data"),
            listen: DEFAULT_LISTEN.into(),
            advertise: String::new(),
            kafka_listen: DEFAULT_KAFKA_LISTEN.into(),
            kafka_advertise: String::new(),
            auto_create_topics: false,
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            cores: "all".into(),
            max_frame_bytes: levee_schemas::DEFAULT_MAX_FRAME_BYTES,
            max_inflight_bytes_per_shard: 128 << 20,
            max_inflight_requests_per_connection: 256,
            shutdown_timeout_ms: 10_000,
            idle_spin_us: 50,
            group_offsets_retention_ms: 7 * 24 * 3600 * 1000,
            group_partitions: None,
            space_reserve_bytes: 8 << 20,
            coordinators: String::new(),
            cluster_listen: String::new(),
            broker_lease_ms: 1200,
            heartbeat_interval_ms: 200,
            min_insync_replicas: 0,
            replica_lag_time_max_ms: 5000,
            producer_id_expiration_ms: 24 * 3600 * 1000,
            transaction_partitions: None,
            transaction_max_timeout_ms: 15 * 60 * 1000,
            transactional_id_expiration_ms: 7 * 24 * 3600 * 1000,
            max_open_transactions: 10_000,
            max_partitions_per_transaction: 1000,
            log: LogDefaults::default(),
        }
    }
}

impl Default for LogDefaults {
    fn default() -> Self {
        let e = LogConfig::default();
        LogDefaults {
            fsync: "always".into(),
            segment_bytes: e.segment_bytes,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            retention_ms: 7 * 24 * 3600 * 1000,
            write_chunk_bytes: e.write_chunk_bytes,
            max_inflight_writes: e.max_inflight_writes,
            tail_cache_bytes: 2 << 20,
            index_cache_bytes: 256 << 10,
            read_ahead_bytes: e.read_ahead_bytes,
            read_ahead_windows: e.read_ahead_windows,
            max_batch_bytes: e.max_batch_bytes,
            preallocate_bytes: e.preallocate_bytes,
            recycle_segments: e.recycle_segments,
            retention_check_interval_ms: 60_000,
            idle_release_ms: 10_000,
            default_partitions: 1,
        }
    }
}

/// A start-up error that names the option at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("option `{option}`: {message}")]
    Invalid {
        option: &'static str,
        message: String,
    },
}

fn invalid(option: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        message: message.into(),
    }
}

impl ServerConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|e| {
            invalid(
                "listen",
                format!("`{}` is not ADDR:PORT ({e})", self.listen),
            )
        })
    }

    /// The Kafka API listener; `None` when turned off.
    pub fn kafka_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let v = self.kafka_listen.trim();
        if v.is_empty() || v.eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        v.parse().map(Some).map_err(|e| {
            invalid(
                "kafka_listen",
                format!("`{v}` is not ADDR:PORT or `none` ({e})"),
            )
        })
    }

    /// The native address (HOST:PORT) this node registers in the cluster
    /// metadata: `advertise`, else `listen` if it names a concrete host.
    pub fn advertised(&self) -> Result<String, ConfigError> {
        let a = self.advertise.trim();
        if a.is_empty() {
            let listen: std::net::SocketAddr = self
                .listen
                .parse()
                .map_err(|_| invalid("listen", format!("`{}` is not ADDR:PORT", self.listen)))?;
            if listen.ip().is_unspecified() {
                return Err(invalid(
                    "advertise",
                    format!(
                        "listen {listen} names no host other nodes and clients can reach; set advertise (--advertise HOST:PORT)"
                    ),
                ));
            }
            return Ok(listen.to_string());
        }
        a.rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .filter(|(h, p)| !h.is_empty() && *p > 0)
            .ok_or_else(|| invalid("advertise", format!("`{a}` is not HOST:PORT")))?;
        Ok(a.to_string())
    }

    /// The (host, port) Kafka clients are told to reach this broker at;
    /// `None` without a Kafka listener.
    pub fn kafka_advertised(&self) -> Result<Option<(String, u16)>, ConfigError> {
        let Some(listen) = self.kafka_addr()? else {
            return Ok(None);
        };
        if self.kafka_advertise.trim().is_empty() {
            if listen.ip().is_unspecified() {
                return Err(invalid(
                    "kafka_advertise",
                    format!(
                        "kafka_listen {listen} names no host clients can reach; set kafka_advertise (--kafka-advertise HOST:PORT)"
                    ),
                ));
            }
            return Ok(Some((listen.ip().to_string(), listen.port())));
        }
        let a = self.kafka_advertise.trim();
        let (host, port) = a
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .filter(|(h, p)| !h.is_empty() && *p > 0)
            .ok_or_else(|| invalid("kafka_advertise", format!("`{a}` is not HOST:PORT")))?;
        Ok(Some((host.to_string(), port)))
    }

    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.admin_listen.is_empty() {
            return Ok(None);
        }
        self.admin_listen.parse().map(Some).map_err(|e| {
            invalid(
                "admin_listen",
                format!("`{}` is not ADDR:PORT ({e})", self.admin_listen),
            )
        })
    }

    pub fn cluster_listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.cluster_listen.is_empty() {
            return Ok(None);
        }
        self.cluster_listen.parse().map(Some).map_err(|e| {
            invalid(
                "cluster_listen",
                format!("`{}` is not ADDR:PORT ({e})", self.cluster_listen),
            )
        })
    }

    /// The parsed coordinator list; `None` for a single node.
    pub fn coordinator_peers(
        &self,
    ) -> Result<Option<Vec<levee_coordinator::PeerSpec>>, ConfigError> {
        if self.coordinators.trim().is_empty() {
            return Ok(None);
        }
        levee_coordinator::PeerSpec::parse_list(&self.coordinators)
            .map(Some)
            .map_err(|m| invalid("coordinators", m))
    }

    /// The CPUs to run shards on, one shard per entry.
    pub fn cpu_list(&self) -> Result<Vec<usize>, ConfigError> {
        let online = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        CoreSpec::parse(&self.cores)
            .and_then(|spec| spec.cpus(online))
            .map_err(|m| invalid("cores", m))
    }

    /// Checks everything that can be checked before start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.admin_addr()?;
        self.kafka_advertised()?;
        if !self.coordinators.trim().is_empty() {
            self.advertised()?;
        }
        self.cpu_list()?;
        if self.max_frame_bytes < 4096 {
            return Err(invalid("max_frame_bytes", "must be at least 4096"));
        }
        if (self.log.max_batch_bytes as u64) >= u64::from(self.max_frame_bytes) {
            return Err(invalid(
                "log.max_batch_bytes",
                "must be smaller than max_frame_bytes",
            ));
        }
        if self.max_inflight_bytes_per_shard < u64::from(self.max_frame_bytes) {
            return Err(invalid(
                "max_inflight_bytes_per_shard",
                "must be at least max_frame_bytes, or a large request could never be read",
            ));
        }
        if self.max_inflight_requests_per_connection == 0 {
            return Err(invalid(
                "max_inflight_requests_per_connection",
                "must be at least 1",
            ));
        }
        if self.log.default_partitions == 0 {
            return Err(invalid("log.default_partitions", "must be at least 1"));
        }
        parse_fsync(&self.log.fsync).map_err(|m| invalid("log.fsync", m))?;
        if let Some(peers) = self.coordinator_peers()? {
            if self.node_id == 0 {
                return Err(invalid(
                    "node_id",
                    "must be 1 or more in a cluster (set --node-id)",
                ));
            }
            let mut cc = levee_coordinator::CoordinatorConfig::new(
                self.node_id.into(),
                peers.clone(),
                self.data_dir.clone(),
            );
            if !peers.iter().any(|p| p.id == u64::from(self.node_id)) {
                // Not a coordinator itself: validate the list with a member's view.
                cc.node_id = peers[0].id;
            }
            cc.validate().map_err(|m| invalid("coordinators", m))?;
            self.cluster_listen_addr()?;
            if !self.cluster_listen.is_empty()
                && !peers.iter().any(|p| p.id == u64::from(self.node_id))
            {
                return Err(invalid(
                    "cluster_listen",
                    format!(
                        "node {} is not in `coordinators`, so it has no node-to-node listener",
                        self.node_id
                    ),
                ));
            }
            if self.heartbeat_interval_ms == 0
                || self.heartbeat_interval_ms * 2 > self.broker_lease_ms
            {
                return Err(invalid(
                    "heartbeat_interval_ms",
                    format!(
                        "must be between 1 and half of broker_lease_ms ({} ms)",
                        self.broker_lease_ms
                    ),
                ));
            }
        }
        self.log_config(None, None, None, None)
            .validate()
            .map_err(|e| invalid("log", e.to_string()))?;
        Ok(())
    }

    /// The log configuration for a partition, with a topic's overrides.
    pub fn log_config(
        &self,
        fsync: Option<FsyncPolicy>,
        segment_bytes: Option<u64>,
        retention_bytes: Option<i64>,
        retention_ms: Option<i64>,
    ) -> LogConfig {
        let d = &self.log;
        let pos = |v: i64| (v >= 0).then_some(v as u64);
        LogConfig {
            segment_bytes: segment_bytes.unwrap_or(d.segment_bytes),
            segment_age: (d.segment_ms > 0).then(|| Duration::from_millis(d.segment_ms)),
            retention_bytes: pos(retention_bytes.unwrap_or(d.retention_bytes)),
            retention_age: pos(retention_ms.unwrap_or(d.retention_ms)).map(Duration::from_millis),
            fsync: fsync.unwrap_or_else(|| parse_fsync(&d.fsync).unwrap_or(FsyncPolicy::Always)),
            write_chunk_bytes: d.write_chunk_bytes,
            max_inflight_writes: d.max_inflight_writes,
            tail_cache_bytes: d.tail_cache_bytes,
            index_cache_bytes: d.index_cache_bytes,
            read_ahead_bytes: d.read_ahead_bytes,
            read_ahead_windows: d.read_ahead_windows,
            max_batch_bytes: d.max_batch_bytes,
            preallocate_bytes: d.preallocate_bytes,
            recycle_segments: d.recycle_segments,
            retention_check_interval: Duration::from_millis(d.retention_check_interval_ms.max(100)),
            idle_release: (d.idle_release_ms > 0).then(|| Duration::from_millis(d.idle_release_ms)),
            ..LogConfig::default()
        }
    }
}

/// An fsync setting (`log.fsync`, a topic's `fsync`), as levee-core reads it.
pub fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    s.parse::<FsyncPolicy>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_option_is_named() {
        let e = ServerConfig::from_toml("listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        assert!(e.contains("listen_port"), "{e}");
        let e = ServerConfig::from_toml("[log]\nfsink = \"always\"\n").unwrap_err();
        assert!(e.contains("fsink"), "{e}");
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../../levee.example.toml");
        let c = ServerConfig::from_toml(text).expect("example parses");
        let d = ServerConfig::default();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_option() {
        let c = ServerConfig {
            listen: "nope".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("`listen`"));
        let mut c = ServerConfig::default();
        c.log.fsync = "sometimes".into();
        assert!(c.validate().unwrap_err().to_string().contains("log.fsync"));
    }
}
