//! Topic metadata: names, partition counts and per-topic settings, kept in
//! `<data_dir>/topics.toml` and written atomically (temp file, fsync,
//! rename, fsync of the directory). Shard 0 writes it; every shard holds a
//! copy, updated by messages from shard 0.

use crate::error::OpError;
use levee_schemas::proto::ErrorCode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const TOPICS_FILE: &str = "topics.toml";

/// One topic's settings (`-1` / empty: the broker default): the same type
/// the coordinators replicate on a cluster.
pub use levee_coordinator::TopicConfig as TopicMeta;

#[derive(Debug, Default, Serialize, Deserialize)]
struct TopicsFile {
    #[serde(default)]
    topics: BTreeMap<String, TopicMeta>,
}

pub fn load(data_dir: &Path) -> Result<BTreeMap<String, TopicMeta>, String> {
    let path = data_dir.join(TOPICS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str::<TopicsFile>(&text)
            .map(|f| f.topics)
            .map_err(|e| format!("{} is damaged: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

pub fn store(data_dir: &Path, topics: &BTreeMap<String, TopicMeta>) -> std::io::Result<()> {
    let text = toml::to_string(&TopicsFile {
        topics: topics.clone(),
    })
    .map_err(std::io::Error::other)?;
    let tmp = data_dir.join(format!("{TOPICS_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, data_dir.join(TOPICS_FILE))?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// Kafka's topic name rules (the one copy is in `levee-core`).
pub use levee_core::validate_topic_name as validate_name;

/// Checks a topic about to be created: its name, partition count,
/// replication factor (above 1 only on a cluster), fsync policy and
/// segment size. The one rule for a single node and a cluster.
pub fn check_new_topic(name: &str, meta: &TopicMeta, cluster: bool) -> Result<(), OpError> {
    let invalid = |m: String| OpError::new(ErrorCode::InvalidConfig, m);
    validate_name(name).map_err(|m| OpError::new(ErrorCode::InvalidTopicName, m))?;
    if meta.partitions == 0 || meta.partitions > MAX_PARTITIONS {
        return Err(invalid(format!(
            "partitions must be 1 to {MAX_PARTITIONS}, not {}",
            meta.partitions
        )));
    }
    if !cluster && meta.replication_factor != 1 {
        return Err(invalid(format!(
            "replication factor {} needs a cluster; a single node supports 1",
            meta.replication_factor
        )));
    }
    if !meta.fsync.is_empty() {
        crate::config::parse_fsync(&meta.fsync).map_err(invalid)?;
    }
    if meta.segment_bytes >= 0 && !(4096..=(u32::MAX as i64)).contains(&meta.segment_bytes) {
        return Err(invalid(
            "segment_bytes must be between 4096 and 4 GiB".to_string(),
        ));
    }
    check_max_message_bytes(meta.max_message_bytes)?;
    Ok(())
}

/// A topic's `max.message.bytes`: -1 (the broker default), or a size that
/// holds at least a batch header and fits in a request.
pub fn check_max_message_bytes(v: i64) -> Result<(), OpError> {
    let min = levee_engine::batch::HEADER_LEN as i64;
    if v >= 0 && !(min..=i64::from(i32::MAX)).contains(&v) {
        return Err(OpError::new(
            ErrorCode::InvalidConfig,
            format!(
                "max.message.bytes must be between {min} (a record batch's header) and {}, not {v}",
                i32::MAX
            ),
        ));
    }
    Ok(())
}

/// A change of one topic setting, by its Kafka config name: a value sets
/// it, `None` puts it back to the broker default.
pub type ConfigChange = (String, Option<String>);

/// The topic settings a topic's configs can change, by Kafka name
/// (`cleanup.policy`, `compression.type` and `message.timestamp.type`
/// take one value each).
pub const ALTERABLE_CONFIGS: &[&str] = &[
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "max.message.bytes",
    "levee.fsync",
    "levee.max.backlog.bytes",
    "cleanup.policy",
    "compression.type",
    "message.timestamp.type",
];

/// Sets one topic config by its Kafka name (what CreateTopics, AlterConfigs
/// and a native AlterTopic take); `None` puts it back to the broker default.
pub fn set_config(meta: &mut TopicMeta, name: &str, value: Option<&str>) -> Result<(), OpError> {
    let invalid = |m: String| OpError::new(ErrorCode::InvalidConfig, m);
    let int = |v: &str| {
        v.trim()
            .parse::<i64>()
            .map_err(|_| invalid(format!("config `{name}` must be an integer, not `{v}`")))
    };
    match (name, value) {
        ("retention.ms", v) => meta.retention_ms = v.map_or(Ok(-1), int)?,
        ("retention.bytes", v) => meta.retention_bytes = v.map_or(Ok(-1), int)?,
        ("segment.bytes", v) => meta.segment_bytes = v.map_or(Ok(-1), int)?,
        ("max.message.bytes", v) => {
            let v = v.map_or(Ok(-1), int)?;
            check_max_message_bytes(v)?;
            meta.max_message_bytes = v;
        }
        ("levee.fsync", v) => meta.fsync = v.unwrap_or_default().trim().to_string(),
        ("levee.max.backlog.bytes", v) => meta.max_backlog_bytes = v.map_or(Ok(-1), int)?,
        ("cleanup.policy", None | Some("delete")) => {}
        // Levee stores batches as the producer compressed them.
        ("compression.type", None | Some("producer")) => {}
        ("compression.type", Some(v)) => {
            return Err(invalid(format!(
                "compression.type `{v}` is not supported; Levee stores batches as producers compress them (`producer`)"
            )))
        }
        // Records keep the producer's timestamps (Kafka Streams asks for
        // this on the topics it creates).
        ("message.timestamp.type", None | Some("CreateTime")) => {}
        ("message.timestamp.type", Some(v)) => {
            return Err(invalid(format!(
                "message.timestamp.type `{v}` is not supported; Levee keeps the producer's timestamps (`CreateTime`)"
            )))
        }
        ("cleanup.policy", Some(v)) => {
            return Err(invalid(format!(
                "cleanup.policy `{v}` is not supported; Levee deletes by retention (`delete`)"
            )))
        }
        (other, _) => {
            return Err(invalid(format!(
                "topic config `{other}` is not supported; Levee takes {}",
                ALTERABLE_CONFIGS.join(", ")
            )))
        }
    }
    Ok(())
}

/// The settings `changes` make of a topic's `current` ones, checked.
/// `replace` (Kafka's AlterConfigs): every setting `changes` does not name
/// goes back to the broker default. Partitions, replication factor and id
/// never change here.
pub fn altered(
    name: &str,
    current: &TopicMeta,
    changes: &[ConfigChange],
    replace: bool,
) -> Result<TopicMeta, OpError> {
    let mut meta = current.clone();
    if replace {
        for c in ALTERABLE_CONFIGS {
            set_config(&mut meta, c, None)?;
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (k, v) in changes {
        if !seen.insert(k.as_str()) {
            return Err(OpError::new(
                ErrorCode::InvalidConfig,
                format!("config `{k}` is given more than once"),
            ));
        }
        set_config(&mut meta, k, v.as_deref())?;
    }
    levee_coordinator::check_settings(name, &meta)
        .map_err(|m| OpError::new(ErrorCode::InvalidConfig, m))?;
    Ok(meta)
}

/// Checks growing a topic of `current` partitions to `count`, with
/// `assignment` (one replica list per new partition, or empty) on a node
/// whose brokers are `brokers` and topic replication factor is `rf`.
pub fn check_add_partitions(
    name: &str,
    current: u32,
    count: u32,
    rf: u16,
    assignment: &[Vec<u32>],
    brokers: &[u32],
) -> Result<(), OpError> {
    let invalid = |m: String| OpError::new(ErrorCode::InvalidPartitions, m);
    if count <= current {
        return Err(invalid(format!(
            "topic `{name}` has {current} partitions; the new count must be greater, not {count} (partitions cannot be removed)"
        )));
    }
    if count > MAX_PARTITIONS {
        return Err(invalid(format!(
            "topic `{name}`: at most {MAX_PARTITIONS} partitions, not {count}"
        )));
    }
    if assignment.is_empty() {
        return Ok(());
    }
    if assignment.len() as u64 != u64::from(count - current) {
        return Err(OpError::new(
            ErrorCode::InvalidReplicaAssignment,
            format!(
                "topic `{name}`: growing {current} to {count} partitions needs {} replica lists, {} were given",
                count - current,
                assignment.len()
            ),
        ));
    }
    check_replica_lists(name, rf, assignment, brokers)
}

/// Each replica list names `rf` distinct brokers among `brokers`.
pub fn check_replica_lists(
    name: &str,
    rf: u16,
    assignment: &[Vec<u32>],
    brokers: &[u32],
) -> Result<(), OpError> {
    let bad = |m: String| OpError::new(ErrorCode::InvalidReplicaAssignment, m);
    for r in assignment {
        let mut s = r.clone();
        s.sort_unstable();
        s.dedup();
        if s.len() != r.len() || r.len() != usize::from(rf) {
            return Err(bad(format!(
                "topic `{name}`: replica list {r:?} must name {rf} distinct brokers"
            )));
        }
        if let Some(x) = r.iter().find(|x| !brokers.contains(x)) {
            return Err(bad(format!(
                "topic `{name}`: broker {x} in replica list {r:?} is not known"
            )));
        }
    }
    Ok(())
}

/// A topic's id as a UUID: the one it was given at creation, or, for a
/// topic created before ids existed, one derived from its name (stable,
/// but the same if such a topic is deleted and created again).
pub fn topic_uuid(name: &str, meta: &TopicMeta) -> uuid::Uuid {
    if let Ok(u) = uuid::Uuid::parse_str(&meta.id) {
        return u;
    }
    let mut h: u128 = 0;
    for seed in 1..=4u32 {
        let c = crc32c::crc32c_append(seed, name.as_bytes());
        h = (h << 32) | u128::from(c);
    }
    // Never the nil id nor Kafka's reserved metadata topic id (…0001).
    uuid::Uuid::from_u128(h | (1 << 127))
}

/// The most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = levee_coordinator::MAX_PARTITIONS;

/// Directory of one partition's log, as Kafka lays them out.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

/// The shard that owns a partition: a stable hash of the topic, plus the
/// partition number, so a topic's partitions are spread over every shard.
pub fn owner_shard(topic: &str, partition: u32, nshards: usize) -> usize {
    let h = crc32c::crc32c(topic.as_bytes()) as u64;
    ((h + u64::from(partition)) % nshards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_of_a_topic_spread_over_shards() {
        let owners: Vec<usize> = (0..4).map(|p| owner_shard("t", p, 2)).collect();
        assert_eq!(owners.iter().filter(|&&o| o == 0).count(), 2);
        assert_eq!(owner_shard("t", 3, 2), owner_shard("t", 3, 2));
    }

    #[test]
    fn altering_sets_resets_and_refuses_settings_by_their_kafka_names() {
        let mut cur = TopicMeta::new(3, 1);
        cur.id = "id".into();
        cur.retention_ms = 1000;
        cur.fsync = "never".into();
        let ch = |k: &str, v: Option<&str>| (k.to_string(), v.map(str::to_string));
        let m = altered(
            "t",
            &cur,
            &[
                ch("retention.bytes", Some("4096")),
                ch("levee.fsync", None),
                ch("segment.bytes", Some(" 65536")),
                ch("cleanup.policy", Some("delete")),
                ch("max.message.bytes", Some("10000")),
                ch("message.timestamp.type", Some("CreateTime")),
            ],
            false,
        )
        .unwrap();
        assert_eq!(
            (
                m.retention_bytes,
                m.retention_ms,
                m.fsync.as_str(),
                m.segment_bytes,
                m.max_message_bytes
            ),
            (4096, 1000, "", 65536, 10000)
        );
        assert_eq!((m.partitions, m.id.as_str()), (3, "id"));
        // AlterConfigs replaces: what is not named goes back to the default.
        let m = altered(
            "t",
            &cur,
            &[ch("levee.max.backlog.bytes", Some("10"))],
            true,
        )
        .unwrap();
        assert_eq!(
            (m.retention_ms, m.fsync.as_str(), m.max_backlog_bytes),
            (-1, "", 10)
        );
        for bad in [
            vec![ch("retention.ms", Some("soon"))],
            vec![ch("retention.ms", Some("-7"))],
            vec![ch("segment.bytes", Some("100"))],
            vec![ch("levee.fsync", Some("sometimes"))],
            vec![ch("cleanup.policy", Some("compact"))],
            vec![ch("compression.type", Some("zstd"))],
            vec![ch("min.insync.replicas", Some("2"))],
            vec![ch("max.message.bytes", Some("60"))],
            vec![ch("max.message.bytes", Some("big"))],
            vec![ch("message.timestamp.type", Some("LogAppendTime"))],
            vec![ch("retention.ms", Some("1")), ch("retention.ms", Some("2"))],
        ] {
            let e = altered("t", &cur, &bad, false).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfig, "{bad:?}: {}", e.message);
        }
    }

    #[test]
    fn store_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = BTreeMap::new();
        m.insert(
            "a".to_string(),
            TopicMeta {
                partitions: 3,
                replication_factor: 1,
                retention_bytes: -1,
                retention_ms: 1000,
                fsync: "never".into(),
                max_backlog_bytes: -1,
                segment_bytes: -1,
                max_message_bytes: 10_000,
                id: "0b9f5a3c-7f1e-4c2a-9d1e-3a5b7c9d1e2f".into(),
            },
        );
        store(dir.path(), &m).unwrap();
        assert_eq!(load(dir.path()).unwrap(), m);
    }
}
