//! Kafka's Produce: each partition's RecordBatch v2 bytes go to the
//! request layer as they arrived; the broker validates and stores them.

use super::codec::{code, kafka_error, str_bytes};
use super::Ctx;
use crate::error::OpError;
use crate::handlers::{self, produce::ProducePartition};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use std::time::Duration;

/// Byte of a record batch that holds its magic (format version).
const MAGIC_AT: usize = 16;

/// Checks the records of one partition before they reach the log: present,
/// and in the v2 format (magic 0 and 1 are Kafka's pre-0.11 formats).
fn records(r: Option<bytes::Bytes>) -> Result<bytes::Bytes, (i16, String)> {
    let Some(r) = r.filter(|r| !r.is_empty()) else {
        return Err((code::CORRUPT_MESSAGE, "no record batch".into()));
    };
    // Every batch's magic, walking the length fields (the log checks the
    // rest); a bad length is left for the log to call corrupt.
    let mut pos = 0usize;
    while let Some(&m) = r.get(pos + MAGIC_AT) {
        if m < 2 {
            return Err((
                code::UNSUPPORTED_FOR_MESSAGE_FORMAT,
                format!("record batches of magic {m} are not supported; Levee stores RecordBatch v2 (Kafka 0.11 and later clients)"),
            ));
        }
        let Some(len) = r.get(pos + 8..pos + 12) else {
            break;
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        if len <= 0 {
            break;
        }
        pos += len as usize + 12;
    }
    Ok(r)
}

pub async fn produce(ctx: &Ctx, req: ProduceRequest) -> ProduceResponse {
    let acks = req.acks;
    let mut out = ProduceResponse::default();
    let fail_all = |out: &mut ProduceResponse, req: &ProduceRequest, err: i16, msg: &str| {
        for t in &req.topic_data {
            let mut tr = TopicProduceResponse::default();
            tr.name = t.name.clone();
            for p in &t.partition_data {
                let mut pr = PartitionProduceResponse::default();
                pr.index = p.index;
                pr.error_code = err;
                pr.base_offset = -1;
                pr.log_append_time_ms = -1;
                pr.error_message = Some(str_bytes(msg));
                tr.partition_responses.push(pr);
            }
            out.responses.push(tr);
        }
    };
    if !matches!(acks, -1..=1) {
        fail_all(&mut out, &req, 21, "acks must be 0, 1 or -1 (all)"); // INVALID_REQUIRED_ACKS
        return out;
    }
    let rf = super::metadata::default_replication(ctx);
    super::metadata::auto_create(
        &ctx.shard,
        req.topic_data.iter().map(|t| t.name.as_str().to_string()),
        rf,
    )
    .await;
    let timeout = Duration::from_millis(req.timeout_ms.max(1) as u64);
    let mut parts = Vec::new();
    let mut early: Vec<(String, i32, i16, String)> = Vec::new();
    for t in &req.topic_data {
        for p in &t.partition_data {
            let topic = t.name.as_str().to_string();
            if p.index < 0 {
                early.push((
                    topic,
                    p.index,
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    "negative partition".into(),
                ));
                continue;
            }
            let data = records(p.records.clone());
            match data {
                Ok(d) => parts.push(ProducePartition {
                    topic,
                    partition: p.index as u32,
                    data: Ok(d),
                }),
                Err((c, m)) => early.push((topic, p.index, c, m)),
            }
        }
    }
    let backing = parts
        .iter()
        .map(|p| p.data.as_ref().map_or(0, |d| d.len()))
        .sum();
    let req = handlers::produce::ProduceRequest {
        partitions: parts,
        backing,
    };
    let results = handlers::produce::produce(&ctx.shard, acks as i8, timeout, req).await;
    let mut add = |topic: String, index: i32, pr: PartitionProduceResponse| {
        match out.responses.iter_mut().find(|r| r.name.as_str() == topic) {
            Some(tr) => tr.partition_responses.push(pr),
            None => {
                let mut tr = TopicProduceResponse::default();
                tr.name = TopicName(str_bytes(topic));
                tr.partition_responses.push(pr);
                out.responses.push(tr);
            }
        }
        let _ = index;
    };
    for (topic, partition, res) in results {
        let mut pr = PartitionProduceResponse::default();
        pr.index = partition as i32;
        pr.log_append_time_ms = -1;
        match res {
            Ok(p) => {
                pr.base_offset = p.base as i64;
                pr.log_start_offset = p.log_start as i64;
            }
            Err(e) => {
                pr.base_offset = -1;
                pr.error_code = produce_error(&e);
                pr.error_message = Some(str_bytes(e.message));
            }
        }
        add(topic, partition as i32, pr);
    }
    for (topic, index, err, msg) in early {
        let mut pr = PartitionProduceResponse::default();
        pr.index = index;
        pr.base_offset = -1;
        pr.log_append_time_ms = -1;
        pr.error_code = err;
        pr.error_message = Some(str_bytes(msg));
        add(topic, index, pr);
    }
    out
}

fn produce_error(e: &OpError) -> i16 {
    kafka_error(e.code, false)
}
