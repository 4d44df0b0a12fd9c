//! Kafka's ApiVersions, CreateTopics, DeleteTopics, CreatePartitions,
//! DescribeConfigs, AlterConfigs, IncrementalAlterConfigs and
//! DescribeCluster.

use super::codec::{code, kafka_error, str_bytes, SUPPORTED};
use super::metadata::{cluster_id, coordinator_node, default_replication, kafka_brokers};
use super::Ctx;
use crate::error::OpError;
use crate::handlers;
use crate::topics::TopicMeta;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::*;
use levee_schemas::proto::ErrorCode;

fn versions() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|&(k, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = k as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect()
}

pub async fn api_versions(_ctx: &Ctx, _req: ApiVersionsRequest) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.api_keys = versions();
    r
}

/// ApiVersions at a version this broker does not know: the v0 answer.
pub fn api_versions_unsupported(correlation_id: i32) -> Vec<u8> {
    let mut r = ApiVersionsResponse::default();
    r.error_code = code::UNSUPPORTED_VERSION;
    r.api_keys = versions();
    super::codec::frame(ApiKey::ApiVersions, 0, correlation_id, &r)
}

/// A CreatableTopic's manual replica assignment (Kafka's rules: it replaces
/// num_partitions and replication_factor, which must then be -1, and
/// names partitions 0..n-1, each with the same number of replicas), as
/// one replica list per partition. Empty: none given.
fn manual_assignment(t: &CreatableTopic) -> Result<Vec<Vec<u32>>, OpError> {
    if t.assignments.is_empty() {
        return Ok(Vec::new());
    }
    if t.num_partitions != -1 || t.replication_factor != -1 {
        return Err(OpError::new(
            ErrorCode::InvalidRequest,
            "both num_partitions or replication_factor and a replica assignment were given; give one or the other",
        ));
    }
    let bad = |m: String| OpError::new(ErrorCode::InvalidReplicaAssignment, m);
    let mut parts: Vec<(i32, Vec<u32>)> = t
        .assignments
        .iter()
        .map(|a| {
            (
                a.partition_index,
                a.broker_ids.iter().map(|b| b.0 as u32).collect(),
            )
        })
        .collect();
    parts.sort_by_key(|(p, _)| *p);
    if parts.iter().enumerate().any(|(i, (p, _))| *p != i as i32) {
        return Err(bad(
            "the assignment must name partitions 0 to n-1, each once".to_string(),
        ));
    }
    let rf = parts[0].1.len();
    if rf == 0 || parts.iter().any(|(_, r)| r.len() != rf) {
        return Err(bad(
            "every partition of the assignment needs the same, non-zero number of replicas"
                .to_string(),
        ));
    }
    Ok(parts.into_iter().map(|(_, r)| r).collect())
}

/// The settings a Kafka CreatableTopic asks for, with the broker's
/// defaults, and its manual assignment (empty: none).
fn topic_meta(ctx: &Ctx, t: &CreatableTopic) -> Result<(TopicMeta, Vec<Vec<u32>>), OpError> {
    let assignment = manual_assignment(t)?;
    let (partitions, rf) = match assignment.first() {
        Some(r) => (assignment.len() as i32, r.len() as i16),
        None => (t.num_partitions, t.replication_factor),
    };
    let mut meta = TopicMeta::new(
        if partitions > 0 {
            partitions as u32
        } else {
            ctx.shard.cfg.log.default_partitions
        },
        if rf > 0 {
            rf as u16
        } else {
            default_replication(ctx)
        },
    );
    for c in &t.configs {
        // A null value leaves the broker default.
        if let Some(v) = &c.value {
            crate::topics::set_config(&mut meta, c.name.as_str(), Some(v.as_str()))?;
        }
    }
    Ok((meta, assignment))
}

pub async fn create_topics(ctx: &Ctx, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut out = CreateTopicsResponse::default();
    for t in req.topics {
        let mut r = CreatableTopicResult::default();
        r.name = t.name.clone();
        let res = match topic_meta(ctx, &t) {
            Ok((meta, assignment)) => {
                r.num_partitions = meta.partitions as i32;
                r.replication_factor = meta.replication_factor as i16;
                if req.validate_only {
                    crate::topics::check_new_topic(
                        t.name.as_str(),
                        &meta,
                        ctx.shard.cluster.is_some(),
                    )
                } else {
                    handlers::topics::create_placed(
                        &ctx.shard,
                        t.name.as_str().to_string(),
                        meta,
                        assignment,
                    )
                    .await
                }
            }
            Err(e) => Err(e),
        };
        if res.is_ok() && !req.validate_only {
            if let Some(meta) = ctx.shard.topic(t.name.as_str()) {
                r.topic_id = crate::topics::topic_uuid(t.name.as_str(), &meta);
            }
        }
        if let Err(e) = res {
            r.error_code = match e.code {
                ErrorCode::InvalidConfig if e.message.contains("partitions") => {
                    code::INVALID_PARTITIONS
                }
                ErrorCode::InvalidConfig if e.message.contains("replication factor") => {
                    code::INVALID_REPLICATION_FACTOR
                }
                c => kafka_error(c, false),
            };
            r.error_message = Some(str_bytes(e.message));
            r.num_partitions = -1;
            r.replication_factor = -1;
        }
        out.topics.push(r);
    }
    out
}

pub async fn delete_topics(ctx: &Ctx, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    // By name (v0-5, and v6 with a name) or by topic id (v6).
    let mut wanted: Vec<(Option<TopicName>, uuid::Uuid)> = req
        .topic_names
        .into_iter()
        .map(|n| (Some(n), uuid::Uuid::nil()))
        .collect();
    wanted.extend(req.topics.into_iter().map(|t| (t.name, t.topic_id)));
    let mut out = DeleteTopicsResponse::default();
    for (name, id) in wanted {
        let mut r = DeletableTopicResult::default();
        let name = match name {
            Some(n) => Some(n.as_str().to_string()),
            None => super::metadata::topic_by_id(&ctx.shard, id),
        };
        let res = match &name {
            Some(n) => {
                r.name = Some(TopicName(str_bytes(n.clone())));
                if let Some(meta) = ctx.shard.topic(n) {
                    r.topic_id = crate::topics::topic_uuid(n, &meta);
                }
                handlers::topics::delete(&ctx.shard, n.clone())
                    .await
                    .map_err(|e| (kafka_error(e.code, false), e.message))
            }
            None => {
                r.topic_id = id;
                Err((code::UNKNOWN_TOPIC_ID, format!("no topic has the id {id}")))
            }
        };
        if let Err((code, message)) = res {
            r.error_code = code;
            r.error_message = Some(str_bytes(message));
        }
        out.responses.push(r);
    }
    out
}

/// Grows topics (CreatePartitions v0-3), each on its own: one topic's
/// refusal does not stop the others.
pub async fn create_partitions(
    ctx: &Ctx,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut out = CreatePartitionsResponse::default();
    let mut seen = std::collections::HashSet::new();
    let dups: std::collections::HashSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.as_str().to_string()))
        .map(|t| t.name.as_str().to_string())
        .collect();
    for t in req.topics {
        let mut r = CreatePartitionsTopicResult::default();
        r.name = t.name.clone();
        let name = t.name.as_str().to_string();
        let res = if dups.contains(&name) {
            Err(OpError::new(
                ErrorCode::InvalidRequest,
                format!("topic `{name}` appears more than once in the request"),
            ))
        } else if t.count <= 0 {
            Err(OpError::new(
                ErrorCode::InvalidPartitions,
                format!("the partition count must be positive, not {}", t.count),
            ))
        } else {
            let assignment = t
                .assignments
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.broker_ids.into_iter().map(|b| b.0 as u32).collect())
                .collect();
            handlers::topics::add_partitions(
                &ctx.shard,
                name,
                t.count as u32,
                assignment,
                req.validate_only,
            )
            .await
        };
        if let Err(e) = res {
            r.error_code = kafka_error(e.code, false);
            r.error_message = Some(str_bytes(e.message));
        }
        out.results.push(r);
    }
    out
}

/// Kafka's resource types in DescribeConfigs.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Config sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

fn entry(name: &str, value: String, source: i8) -> DescribeConfigsResourceResult {
    let mut c = DescribeConfigsResourceResult::default();
    c.name = str_bytes(name);
    c.value = Some(str_bytes(value));
    c.read_only = true;
    c.config_source = source;
    c
}

/// The topic settings (alterable with AlterConfigs) and broker settings
/// (read-only) Levee has.
pub async fn describe_configs(ctx: &Ctx, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let mut out = DescribeConfigsResponse::default();
    let cfg = &ctx.shard.cfg;
    for res in req.resources {
        let mut r = DescribeConfigsResult::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let wanted = |n: &str| {
            res.configuration_keys
                .as_ref()
                .is_none_or(|k| k.is_empty() || k.iter().any(|x| x.as_str() == n))
        };
        let mut all = Vec::new();
        match res.resource_type {
            RESOURCE_TOPIC => match ctx.shard.topic(res.resource_name.as_str()) {
                Some(m) => {
                    let or = |v: i64, d: i64| {
                        if v >= 0 {
                            (v, SOURCE_TOPIC)
                        } else {
                            (d, SOURCE_DEFAULT)
                        }
                    };
                    let (ret_ms, s1) = or(m.retention_ms, cfg.log.retention_ms);
                    let (ret_b, s2) = or(m.retention_bytes, cfg.log.retention_bytes);
                    let (seg, s3) = or(m.segment_bytes, cfg.log.segment_bytes as i64);
                    all.push(entry("retention.ms", ret_ms.to_string(), s1));
                    all.push(entry("retention.bytes", ret_b.to_string(), s2));
                    all.push(entry("segment.bytes", seg.to_string(), s3));
                    all.push(entry("cleanup.policy", "delete".into(), SOURCE_DEFAULT));
                    let (max_msg, s6) = or(m.max_message_bytes, cfg.log.max_batch_bytes as i64);
                    all.push(entry("max.message.bytes", max_msg.to_string(), s6));
                    let (fsync, s4) = if m.fsync.is_empty() {
                        (cfg.log.fsync.clone(), SOURCE_DEFAULT)
                    } else {
                        (m.fsync.clone(), SOURCE_TOPIC)
                    };
                    all.push(entry("levee.fsync", fsync, s4));
                    let (backlog, s5) = or(m.max_backlog_bytes, -1);
                    all.push(entry("levee.max.backlog.bytes", backlog.to_string(), s5));
                    all.push(entry("compression.type", "producer".into(), SOURCE_DEFAULT));
                    all.push(entry(
                        "message.timestamp.type",
                        "CreateTime".into(),
                        SOURCE_DEFAULT,
                    ));
                    // These change with AlterConfigs; broker configs do not.
                    for c in &mut all {
                        c.read_only = !crate::topics::ALTERABLE_CONFIGS.contains(&c.name.as_str());
                    }
                }
                None => {
                    r.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                    r.error_message = Some(str_bytes(format!(
                        "topic `{}` does not exist",
                        res.resource_name.as_str()
                    )));
                }
            },
            RESOURCE_BROKER => {
                all.push(entry("broker.id", cfg.node_id.to_string(), SOURCE_DEFAULT));
                all.push(entry(
                    "num.partitions",
                    cfg.log.default_partitions.to_string(),
                    SOURCE_DEFAULT,
                ));
                all.push(entry(
                    "auto.create.topics.enable",
                    cfg.auto_create_topics.to_string(),
                    SOURCE_DEFAULT,
                ));
                all.push(entry(
                    "message.max.bytes",
                    cfg.log.max_batch_bytes.to_string(),
                    SOURCE_DEFAULT,
                ));
                all.push(entry(
                    "log.retention.ms",
                    cfg.log.retention_ms.to_string(),
                    SOURCE_DEFAULT,
                ));
                all.push(entry(
                    "log.segment.bytes",
                    cfg.log.segment_bytes.to_string(),
                    SOURCE_DEFAULT,
                ));
            }
            other => {
                r.error_code = code::INVALID_REQUEST;
                r.error_message = Some(str_bytes(format!(
                    "resource type {other} has no configs here (topics: 2, brokers: 4)"
                )));
            }
        }
        r.configs = all
            .into_iter()
            .filter(|c| wanted(c.name.as_str()))
            .collect();
        out.results.push(r);
    }
    out
}

/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Alters one resource of an AlterConfigs (`replace`) or
/// IncrementalAlterConfigs request: its error code and message (NONE and
/// `None` when it was altered, or would be under `validate_only`).
async fn alter_resource(
    ctx: &Ctx,
    resource_type: i8,
    name: &str,
    changes: Result<Vec<crate::topics::ConfigChange>, OpError>,
    replace: bool,
    validate_only: bool,
    duplicate: bool,
) -> (i16, Option<String>) {
    if duplicate {
        return (
            code::INVALID_REQUEST,
            Some(format!(
                "resource `{name}` of type {resource_type} appears more than once in the request"
            )),
        );
    }
    let res = match resource_type {
        RESOURCE_TOPIC => match changes {
            Ok(changes) => handlers::topics::alter(
                &ctx.shard,
                name.to_string(),
                changes,
                replace,
                validate_only,
            )
            .await
            .map(drop),
            Err(e) => Err(e),
        },
        RESOURCE_BROKER => {
            return (
                code::INVALID_REQUEST,
                Some("broker configs cannot be changed while the broker runs: set them in its configuration file (levee.example.toml lists them) and restart it; topic configs (resource type 2) can be altered".to_string()),
            )
        }
        other => {
            return (
                code::INVALID_REQUEST,
                Some(format!(
                    "resource type {other} has no configs to alter here (topics: 2)"
                )),
            )
        }
    };
    match res {
        Ok(()) => (code::NONE, None),
        Err(e) => (kafka_error(e.code, false), Some(e.message)),
    }
}

/// The (type, name) pairs named more than once.
fn duplicates<'a>(
    resources: impl Iterator<Item = (i8, &'a str)>,
) -> std::collections::HashSet<(i8, String)> {
    let mut seen = std::collections::HashSet::new();
    resources
        .filter(|&(t, n)| !seen.insert((t, n.to_string())))
        .map(|(t, n)| (t, n.to_string()))
        .collect()
}

/// AlterConfigs (v0-2): each topic's configs are replaced by those given
/// (the others go back to the broker defaults), as in Kafka.
pub async fn alter_configs(ctx: &Ctx, req: AlterConfigsRequest) -> AlterConfigsResponse {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
    let dups = duplicates(
        req.resources
            .iter()
            .map(|r| (r.resource_type, r.resource_name.as_str())),
    );
    let mut out = AlterConfigsResponse::default();
    for r in req.resources {
        let name = r.resource_name.as_str().to_string();
        let changes = Ok(r
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.as_str().to_string(),
                    c.value.as_ref().map(|v| v.as_str().to_string()),
                )
            })
            .collect());
        let dup = dups.contains(&(r.resource_type, name.clone()));
        let (error_code, message) = alter_resource(
            ctx,
            r.resource_type,
            &name,
            changes,
            true,
            req.validate_only,
            dup,
        )
        .await;
        let mut resp = AlterConfigsResourceResponse::default();
        resp.error_code = error_code;
        resp.error_message = message.map(str_bytes);
        resp.resource_type = r.resource_type;
        resp.resource_name = r.resource_name;
        out.responses.push(resp);
    }
    out
}

/// IncrementalAlterConfigs (v0-1): SET and DELETE (back to the broker
/// default) of topic configs; APPEND and SUBTRACT are for list configs,
/// which Levee's topics do not have.
pub async fn incremental_alter_configs(
    ctx: &Ctx,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
    let dups = duplicates(
        req.resources
            .iter()
            .map(|r| (r.resource_type, r.resource_name.as_str())),
    );
    let mut out = IncrementalAlterConfigsResponse::default();
    for r in req.resources {
        let name = r.resource_name.as_str().to_string();
        let changes = r
            .configs
            .iter()
            .map(|c| {
                let key = c.name.as_str().to_string();
                let invalid = |m: String| OpError::new(ErrorCode::InvalidConfig, m);
                match (c.config_operation, &c.value) {
                    (OP_SET, Some(v)) => Ok((key, Some(v.as_str().to_string()))),
                    (OP_SET, None) => Err(invalid(format!(
                        "SET of config `{key}` needs a value (DELETE puts it back to the default)"
                    ))),
                    (OP_DELETE, _) => Ok((key, None)),
                    (OP_APPEND | OP_SUBTRACT, _) => Err(invalid(format!(
                        "APPEND and SUBTRACT are for list configs; `{key}` takes one value (use SET)"
                    ))),
                    (op, _) => Err(invalid(format!(
                        "unknown config operation {op} for `{key}` (0 SET, 1 DELETE)"
                    ))),
                }
            })
            .collect::<Result<Vec<_>, OpError>>();
        let dup = dups.contains(&(r.resource_type, name.clone()));
        let (error_code, message) = alter_resource(
            ctx,
            r.resource_type,
            &name,
            changes,
            false,
            req.validate_only,
            dup,
        )
        .await;
        let mut resp = AlterConfigsResourceResponse::default();
        resp.error_code = error_code;
        resp.error_message = message.map(str_bytes);
        resp.resource_type = r.resource_type;
        resp.resource_name = r.resource_name;
        out.responses.push(resp);
    }
    out
}

pub async fn describe_cluster(ctx: &Ctx, req: DescribeClusterRequest) -> DescribeClusterResponse {
    let mut out = DescribeClusterResponse::default();
    out.cluster_authorized_operations = super::metadata::authorized(
        req.include_cluster_authorized_operations,
        super::metadata::CLUSTER_OPERATIONS,
    );
    out.cluster_id = str_bytes(cluster_id(&ctx.shard));
    out.controller_id = BrokerId(coordinator_node(&ctx.shard));
    out.brokers = kafka_brokers(&ctx.shard)
        .into_iter()
        .map(|(id, host, port)| {
            let mut b = DescribeClusterBroker::default();
            b.broker_id = BrokerId(id);
            b.host = str_bytes(host);
            b.port = port;
            b
        })
        .collect();
    out
}
