//! Kafka's ListOffsets, OffsetCommit and OffsetFetch.

use super::codec::{code, kafka_error, str_bytes};
use super::groups::check_coordinator;
use super::Ctx;
use crate::groups::OffsetCommit;
use crate::handlers;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use std::collections::BTreeMap;
use std::time::Duration;

pub async fn list_offsets(ctx: &Ctx, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut wanted = Vec::new();
    let mut bad = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            let name = t.name.as_str().to_string();
            // -1 latest, -2 earliest, or a timestamp (-3, max timestamp,
            // needs v7, which is not advertised).
            if p.partition_index < 0 || p.timestamp < -2 {
                bad.push((name, p.partition_index));
            } else {
                wanted.push((name, p.partition_index as u32, p.timestamp));
            }
        }
    }
    let results =
        handlers::offsets::list_offsets(&ctx.shard, wanted, req.isolation_level == 1).await;
    let mut topics: BTreeMap<String, Vec<ListOffsetsPartitionResponse>> = BTreeMap::new();
    for (topic, partition, res) in results {
        let mut r = ListOffsetsPartitionResponse::default();
        r.partition_index = partition as i32;
        r.timestamp = -1;
        match res {
            Ok((o, ts)) => {
                r.offset = o;
                r.timestamp = ts;
                r.leader_epoch = -1;
            }
            Err(e) => {
                r.offset = -1;
                r.error_code = kafka_error(e.code, false);
            }
        }
        topics.entry(topic).or_default().push(r);
    }
    for (topic, partition) in bad {
        let mut r = ListOffsetsPartitionResponse::default();
        r.partition_index = partition;
        r.timestamp = -1;
        r.offset = -1;
        r.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
        topics.entry(topic).or_default().push(r);
    }
    let mut out = ListOffsetsResponse::default();
    out.topics = topics
        .into_iter()
        .map(|(name, partitions)| {
            let mut t = ListOffsetsTopicResponse::default();
            t.name = TopicName(str_bytes(name));
            t.partitions = partitions;
            t
        })
        .collect();
    out
}

/// DeleteRecords: each partition's leader advances its log start.
pub async fn delete_records(ctx: &Ctx, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    use kafka_protocol::messages::delete_records_response::{
        DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
    };
    let mut wanted = Vec::new();
    let mut topics: BTreeMap<String, Vec<DeleteRecordsPartitionResult>> = BTreeMap::new();
    for t in &req.topics {
        let name = t.name.as_str().to_string();
        for p in &t.partitions {
            if p.partition_index < 0 {
                let mut r = DeleteRecordsPartitionResult::default();
                r.partition_index = p.partition_index;
                r.low_watermark = -1;
                r.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                topics.entry(name.clone()).or_default().push(r);
            } else {
                wanted.push((name.clone(), p.partition_index as u32, p.offset));
            }
        }
    }
    for (topic, partition, res) in handlers::offsets::delete_records(
        &ctx.shard,
        wanted,
        Duration::from_millis(req.timeout_ms.max(0) as u64),
    )
    .await
    {
        let mut r = DeleteRecordsPartitionResult::default();
        r.partition_index = partition as i32;
        match res {
            Ok(low) => r.low_watermark = low,
            Err(e) => {
                r.low_watermark = -1;
                // An internal topic: INVALID_TOPIC_EXCEPTION, as Kafka.
                r.error_code = kafka_error(e.code, false);
            }
        }
        topics.entry(topic).or_default().push(r);
    }
    let mut out = DeleteRecordsResponse::default();
    out.topics = topics
        .into_iter()
        .map(|(name, partitions)| {
            let mut t = DeleteRecordsTopicResult::default();
            t.name = TopicName(str_bytes(name));
            t.partitions = partitions;
            t
        })
        .collect();
    out
}

pub async fn offset_commit(ctx: &Ctx, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = req.group_id.as_str().to_string();
    let offsets: Vec<OffsetCommit> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| OffsetCommit {
                topic: t.name.as_str().to_string(),
                partition: p.partition_index.max(0) as u32,
                offset: p.committed_offset,
                metadata: p
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_default(),
                leader_epoch: p.committed_leader_epoch,
            })
        })
        .collect();
    let whole = match check_coordinator(ctx, &group) {
        Err(e) => Err(e),
        Ok(()) => {
            handlers::groups::commit(
                &ctx.shard,
                group,
                req.member_id.as_str().to_string(),
                req.generation_id_or_member_epoch,
                offsets,
            )
            .await
        }
    };
    let mut out = OffsetCommitResponse::default();
    let mut per: BTreeMap<(String, u32), i16> = BTreeMap::new();
    let whole_err = match whole {
        Ok(results) => {
            for (t, p, r) in results {
                per.insert(
                    (t, p),
                    r.err().map_or(code::NONE, |e| kafka_error(e.code, false)),
                );
            }
            None
        }
        Err(e) => Some(kafka_error(e.code, true)),
    };
    for t in &req.topics {
        let mut tr = OffsetCommitResponseTopic::default();
        tr.name = t.name.clone();
        for p in &t.partitions {
            let mut pr = OffsetCommitResponsePartition::default();
            pr.partition_index = p.partition_index;
            pr.error_code = whole_err.unwrap_or_else(|| {
                if p.partition_index < 0 {
                    code::UNKNOWN_TOPIC_OR_PARTITION
                } else {
                    per.get(&(t.name.as_str().to_string(), p.partition_index as u32))
                        .copied()
                        .unwrap_or(code::NONE)
                }
            });
            tr.partitions.push(pr);
        }
        out.topics.push(tr);
    }
    out
}

/// A partition's committed offset as OffsetFetch returns it: (partition,
/// offset, metadata, error).
/// (partition, offset, metadata, error, leader epoch)
type Fetched = (i32, i64, String, i16, i32);

/// One group's committed offsets by topic, for the partitions asked (or
/// all committed ones).
async fn fetch_group(
    ctx: &Ctx,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Result<Vec<(String, Vec<Fetched>)>, i16> {
    check_coordinator(ctx, group).map_err(|e| kafka_error(e.code, true))?;
    // KIP-447: offsets a transaction sent and has not completed are
    // unstable for a consumer that asks (read_committed ones do).
    let unstable: Vec<(String, u32)> = if require_stable {
        handlers::groups::txn_pending_offsets(&ctx.shard, group.to_string())
            .await
            .map_err(|e| kafka_error(e.code, true))?
    } else {
        Vec::new()
    };
    let wanted = topics.as_ref().map(|ts| {
        ts.iter()
            .map(|(t, ps)| (t.clone(), ps.iter().map(|&p| p.max(0) as u32).collect()))
            .collect()
    });
    let committed = handlers::groups::fetch_offsets(&ctx.shard, group.to_string(), wanted)
        .await
        .map_err(|e| kafka_error(e.code, true))?;
    let mut have: BTreeMap<(String, i32), (i64, String, i32)> = committed
        .into_iter()
        .map(|c| {
            (
                (c.topic, c.partition as i32),
                (
                    c.committed.offset,
                    c.committed.metadata,
                    c.committed.leader_epoch,
                ),
            )
        })
        .collect();
    let mut out: Vec<(String, Vec<Fetched>)> = Vec::new();
    match topics {
        Some(ts) => {
            for (t, ps) in ts {
                let parts = ps
                    .iter()
                    .map(|&p| match have.remove(&(t.clone(), p)) {
                        Some((o, m, e)) => (p, o, m, code::NONE, e),
                        // No commit: offset -1, no error (Kafka's answer).
                        None => (p, -1, String::new(), code::NONE, -1),
                    })
                    .collect();
                out.push((t, parts));
            }
        }
        None => {
            for ((t, p), (o, m, e)) in have {
                match out.iter_mut().find(|(n, _)| *n == t) {
                    Some((_, v)) => v.push((p, o, m, code::NONE, e)),
                    None => out.push((t, vec![(p, o, m, code::NONE, e)])),
                }
            }
        }
    }
    for (t, parts) in &mut out {
        for f in parts.iter_mut() {
            if unstable.contains(&(t.clone(), f.0.max(0) as u32)) {
                f.3 = code::UNSTABLE_OFFSET_COMMIT;
            }
        }
    }
    Ok(out)
}

/// The response topics of one group, in the shape of OffsetFetch v8+
/// (`$topic`/`$part` = `OffsetFetchResponseTopics`/`Partitions`) or of the
/// older versions (`OffsetFetchResponseTopic`/`Partition`): the same fields.
macro_rules! topics_of {
    ($ts:expr, $topic:ident, $part:ident) => {
        $ts.into_iter()
            .map(|(name, parts)| {
                let mut t = $topic::default();
                t.name = TopicName(str_bytes(name));
                t.partitions = parts
                    .into_iter()
                    .map(|(p, o, m, e, epoch): Fetched| {
                        let mut r = $part::default();
                        r.partition_index = p;
                        r.committed_offset = o;
                        r.committed_leader_epoch = epoch;
                        r.metadata = Some(str_bytes(m));
                        r.error_code = e;
                        r
                    })
                    .collect();
                t
            })
            .collect()
    };
}

pub async fn offset_fetch(ctx: &Ctx, req: OffsetFetchRequest) -> OffsetFetchResponse {
    let mut out = OffsetFetchResponse::default();
    if ctx.version >= 8 {
        for g in &req.groups {
            let topics = g.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.as_str().to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let mut gr = OffsetFetchResponseGroup::default();
            gr.group_id = g.group_id.clone();
            match fetch_group(ctx, g.group_id.as_str(), topics, req.require_stable).await {
                Ok(ts) => {
                    gr.topics =
                        topics_of!(ts, OffsetFetchResponseTopics, OffsetFetchResponsePartitions)
                }
                Err(e) => gr.error_code = e,
            }
            out.groups.push(gr);
        }
        return out;
    }
    let topics = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.as_str().to_string(), t.partition_indexes.clone()))
            .collect()
    });
    match fetch_group(ctx, req.group_id.as_str(), topics, req.require_stable).await {
        Ok(ts) => {
            out.topics = topics_of!(ts, OffsetFetchResponseTopic, OffsetFetchResponsePartition)
        }
        Err(e) => out.error_code = e,
    }
    out
}
