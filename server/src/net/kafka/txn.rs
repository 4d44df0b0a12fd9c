//! Kafka's transaction APIs (KIP-98): AddPartitionsToTxn, AddOffsetsToTxn,
//! EndTxn, TxnOffsetCommit and WriteTxnMarkers (InitProducerId with a
//! transactional id is in `producers.rs`). The work is in `handlers/txn.rs`.

use super::codec::{code, kafka_error};
use super::Ctx;
use crate::error::OpError;
use crate::groups::OffsetCommit;
use crate::handlers;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::*;
use levee_schemas::proto::ErrorCode;
use std::collections::BTreeMap;

/// A transaction error as Kafka's code. `fenced_since`: the first version
/// of the request that knows PRODUCER_FENCED; older ones get
/// INVALID_PRODUCER_EPOCH, as from Kafka.
pub fn txn_code(e: &OpError, version: i16, fenced_since: i16) -> i16 {
    match e.code {
        ErrorCode::ProducerFenced if version < fenced_since => code::INVALID_PRODUCER_EPOCH,
        c => kafka_error(c, true),
    }
}

pub async fn add_partitions_to_txn(
    ctx: &Ctx,
    req: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let parts: Vec<(String, u32)> = req
        .v3_and_below_topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.as_str().to_string(), (*p).max(0) as u32))
        })
        .collect();
    let res = handlers::txn::add_partitions(
        &ctx.shard,
        req.v3_and_below_transactional_id.as_str().to_string(),
        req.v3_and_below_producer_id.0,
        req.v3_and_below_producer_epoch,
        parts,
    )
    .await;
    let mut per: BTreeMap<(String, u32), i16> = BTreeMap::new();
    let whole = match res {
        Ok(results) => {
            for (tp, r) in results {
                let c = match r {
                    Ok(()) => code::NONE,
                    Err(e) if e.code == ErrorCode::InvalidRequest => 55, // OPERATION_NOT_ATTEMPTED
                    Err(e) => kafka_error(e.code, false),
                };
                per.insert(tp, c);
            }
            None
        }
        Err(e) => Some(txn_code(&e, ctx.version, 2)),
    };
    let mut out = AddPartitionsToTxnResponse::default();
    for t in &req.v3_and_below_topics {
        let mut tr = AddPartitionsToTxnTopicResult::default();
        tr.name = t.name.clone();
        for &p in &t.partitions {
            let mut pr = AddPartitionsToTxnPartitionResult::default();
            pr.partition_index = p;
            pr.partition_error_code = whole.unwrap_or_else(|| {
                per.get(&(t.name.as_str().to_string(), p.max(0) as u32))
                    .copied()
                    .unwrap_or(code::UNKNOWN_TOPIC_OR_PARTITION)
            });
            tr.results_by_partition.push(pr);
        }
        out.results_by_topic_v3_and_below.push(tr);
    }
    out
}

pub async fn add_offsets_to_txn(ctx: &Ctx, req: AddOffsetsToTxnRequest) -> AddOffsetsToTxnResponse {
    let res = handlers::txn::add_offsets(
        &ctx.shard,
        req.transactional_id.as_str().to_string(),
        req.producer_id.0,
        req.producer_epoch,
        req.group_id.as_str().to_string(),
    )
    .await;
    let mut out = AddOffsetsToTxnResponse::default();
    if let Err(e) = res {
        out.error_code = txn_code(&e, ctx.version, 2);
    }
    out
}

pub async fn end_txn(ctx: &Ctx, req: EndTxnRequest) -> EndTxnResponse {
    let res = handlers::txn::end_txn(
        &ctx.shard,
        req.transactional_id.as_str().to_string(),
        req.producer_id.0,
        req.producer_epoch,
        req.committed,
    )
    .await;
    let mut out = EndTxnResponse::default();
    out.producer_id = ProducerId(-1);
    out.producer_epoch = -1;
    if let Err(e) = res {
        out.error_code = txn_code(&e, ctx.version, 2);
    }
    out
}

pub async fn txn_offset_commit(ctx: &Ctx, req: TxnOffsetCommitRequest) -> TxnOffsetCommitResponse {
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
    let res = handlers::txn::txn_offset_commit(
        &ctx.shard,
        req.transactional_id.as_str().to_string(),
        req.group_id.as_str().to_string(),
        req.producer_id.0,
        req.producer_epoch,
        req.member_id.as_str().to_string(),
        req.generation_id,
        offsets,
    )
    .await;
    let mut per: BTreeMap<(String, u32), i16> = BTreeMap::new();
    let whole = match res {
        Ok(results) => {
            for (t, p, r) in results {
                per.insert(
                    (t, p),
                    r.err().map_or(code::NONE, |e| kafka_error(e.code, false)),
                );
            }
            None
        }
        Err(e) => Some(txn_code(&e, ctx.version, 3)),
    };
    let mut out = TxnOffsetCommitResponse::default();
    for t in &req.topics {
        let mut tr = TxnOffsetCommitResponseTopic::default();
        tr.name = t.name.clone();
        for p in &t.partitions {
            let mut pr = TxnOffsetCommitResponsePartition::default();
            pr.partition_index = p.partition_index;
            pr.error_code = whole.unwrap_or_else(|| {
                per.get(&(t.name.as_str().to_string(), p.partition_index.max(0) as u32))
                    .copied()
                    .unwrap_or(code::UNKNOWN_TOPIC_OR_PARTITION)
            });
            tr.partitions.push(pr);
        }
        out.topics.push(tr);
    }
    out
}

/// WriteTxnMarkers (Kafka's inter-broker API, and what Kafka's admin
/// `abortTransaction` / `kafka-transactions.sh abort` sends to a
/// partition's leader to end a hanging transaction): writes each marker
/// on the partitions this node leads; others get NOT_LEADER_OR_FOLLOWER,
/// internal topics INVALID_TOPIC_EXCEPTION, and a producer epoch older
/// than the partition's INVALID_PRODUCER_EPOCH (this API has no
/// PRODUCER_FENCED).
pub async fn write_txn_markers(ctx: &Ctx, req: WriteTxnMarkersRequest) -> WriteTxnMarkersResponse {
    use crate::partition::txns::Marker;
    use kafka_protocol::messages::write_txn_markers_response::{
        WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
    };
    let mut out = WriteTxnMarkersResponse::default();
    for m in &req.markers {
        let marker = Marker {
            commit: m.transaction_result,
            coordinator_epoch: m.coordinator_epoch,
        };
        let mut result = WritableTxnMarkerResult::default();
        result.producer_id = m.producer_id;
        for t in &m.topics {
            let topic = t.name.as_str().to_string();
            let mut tr = WritableTxnMarkerTopicResult::default();
            tr.name = t.name.clone();
            for &p in &t.partition_indexes {
                let res = if p < 0 {
                    Err(OpError::new(
                        ErrorCode::UnknownTopicOrPartition,
                        format!("partition {p} of `{topic}` does not exist"),
                    ))
                } else {
                    match handlers::topics::check_not_internal(&topic, "write markers to") {
                        Ok(()) => {
                            handlers::txn::write_marker_here(
                                &ctx.shard,
                                topic.clone(),
                                p as u32,
                                m.producer_id.0,
                                m.producer_epoch,
                                marker,
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    }
                };
                let mut pr = WritableTxnMarkerPartitionResult::default();
                pr.partition_index = p;
                if let Err(e) = res {
                    pr.error_code = match e.code {
                        ErrorCode::ProducerFenced => code::INVALID_PRODUCER_EPOCH,
                        c => kafka_error(c, false),
                    };
                }
                tr.partitions.push(pr);
            }
            result.topics.push(tr);
        }
        out.markers.push(result);
    }
    out
}
