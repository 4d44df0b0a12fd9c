//! Kafka's Fetch: long-polled reads of stored batches, returned as stored.
//! Fetch sessions (KIP-227) are declined the way the KIP allows: every
//! response carries session id 0, so clients keep sending full fetches;
//! an incremental fetch on a session this broker never gave out (a session
//! id, or an epoch past 0) gets FETCH_SESSION_ID_NOT_FOUND.

use super::codec::{code, kafka_error};
use super::Ctx;
use crate::handlers::{self, fetch::FetchPartition, fetch::FetchRequest as Neutral};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::*;
use std::time::Duration;

/// The leader epoch this node's metadata gives a partition (`None`: unknown).
fn leader_epoch(ctx: &Ctx, topic: &str, partition: i32) -> Option<i64> {
    let (_, placements) = handlers::topics::placement(&ctx.shard, topic).ok()?;
    placements
        .get(usize::try_from(partition).ok()?)
        .map(|p| p.leader_epoch as i64)
}

pub async fn fetch(ctx: &Ctx, req: FetchRequest) -> FetchResponse {
    let mut out = FetchResponse::default();
    // An incremental fetch (a session id, or an epoch past 0 without one)
    // names a session this broker never gave out.
    if req.session_id != 0 || req.session_epoch > 0 {
        out.error_code = code::FETCH_SESSION_ID_NOT_FOUND;
        return out;
    }
    // (topic, partition, error decided before reading)
    let mut asked: Vec<(String, i32, Option<i16>)> = Vec::new();
    let mut parts = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            let topic = t.topic.as_str().to_string();
            let early = if p.partition < 0 || p.fetch_offset < 0 {
                Some(code::OFFSET_OUT_OF_RANGE)
            } else if p.current_leader_epoch >= 0 {
                match leader_epoch(ctx, &topic, p.partition) {
                    Some(e) if i64::from(p.current_leader_epoch) < e => {
                        Some(code::FENCED_LEADER_EPOCH)
                    }
                    Some(e) if i64::from(p.current_leader_epoch) > e => {
                        Some(code::UNKNOWN_LEADER_EPOCH)
                    }
                    _ => None,
                }
            } else {
                None
            };
            if early.is_none() {
                parts.push(FetchPartition {
                    topic: topic.clone(),
                    partition: p.partition as u32,
                    offset: p.fetch_offset as u64,
                    max_bytes: p.partition_max_bytes.max(1) as usize,
                    leader_epoch: -1,
                    log_start: -1,
                });
            }
            asked.push((topic, p.partition, early));
        }
    }
    let frame_room = (ctx.shard.cfg.max_frame_bytes as usize)
        .saturating_sub(64 << 10)
        .max(1);
    let max_bytes = if ctx.version >= 3 && req.max_bytes > 0 {
        (req.max_bytes as usize).min(frame_room)
    } else {
        frame_room
    };
    let neutral = Neutral {
        max_wait: Duration::from_millis(req.max_wait_ms.max(0) as u64),
        min_bytes: req.min_bytes.max(0) as usize,
        max_bytes,
        replica: None,
        // Kafka's isolation level 1: read_committed.
        read_committed: req.isolation_level == 1,
        partitions: parts,
    };
    let mut results = handlers::fetch::fetch(&ctx.shard, neutral)
        .await
        .into_iter();
    for (topic, partition, early) in asked {
        let mut pd = PartitionData::default();
        pd.partition_index = partition;
        pd.preferred_read_replica = BrokerId(-1);
        let res = match early {
            Some(e) => Err(e),
            None => results
                .next()
                .unwrap_or_else(|| Err(crate::error::OpError::shutting_down()))
                .map_err(|e| kafka_error(e.code, false)),
        };
        match res {
            Ok(read) => {
                pd.high_watermark = read.state.high_watermark as i64;
                pd.last_stable_offset = read.state.last_stable as i64;
                if req.isolation_level == 1 {
                    pd.aborted_transactions = Some(
                        read.aborted
                            .iter()
                            .map(|a| {
                                let mut t = fetch_response::AbortedTransaction::default();
                                t.producer_id = ProducerId(a.producer_id);
                                t.first_offset = a.first_offset as i64;
                                t
                            })
                            .collect(),
                    );
                }
                pd.log_start_offset = read.state.log_start as i64;
                pd.records = Some(bytes::Bytes::from(read.data));
            }
            Err(e) => {
                pd.error_code = e;
                pd.high_watermark = -1;
                pd.last_stable_offset = -1;
                pd.log_start_offset = -1;
                pd.records = Some(bytes::Bytes::new());
            }
        }
        match out.responses.last_mut() {
            Some(tr) if tr.topic.as_str() == topic => tr.partitions.push(pd),
            _ => {
                let mut tr = FetchableTopicResponse::default();
                tr.topic = TopicName(super::codec::str_bytes(topic));
                tr.partitions.push(pd);
                out.responses.push(tr);
            }
        }
    }
    out
}
