//! The native protocol's requests, decoded, handed to the request layer
//! (`handlers/`), and its results encoded as the protocol's responses.

use crate::error::{OpError, OpResult};
use crate::groups::state::{Join, Subscription};
use crate::groups::{Assignment, JoinReply, OffsetCommit};
use crate::handlers::{self, fetch::FetchPartition, fetch::FetchRequest};
use crate::shard::Shard;
use crate::topics::TopicMeta;
use levee_schemas::payload_slice;
use levee_schemas::proto::{self, ErrorCode, Request, Response};
use std::rc::Rc;
use std::time::Duration;

/// A response body and its payload chunks (fetched batches).
pub type Processed = (Response, Vec<Vec<u8>>);

fn err_fields(res: Result<(), OpError>) -> (ErrorCode, Option<String>) {
    match res {
        Ok(()) => (ErrorCode::None, None),
        Err(e) => (e.code, Some(e.message)),
    }
}

fn to_tp(a: &Assignment) -> Vec<proto::TopicPartitions> {
    a.iter()
        .map(|(t, ps)| proto::TopicPartitions {
            topic: t.clone(),
            partitions: Some(ps.clone()),
        })
        .collect()
}

fn committed(o: crate::groups::CommittedOffset) -> proto::CommittedOffset {
    proto::CommittedOffset {
        topic: o.topic,
        partition: o.partition,
        offset: o.committed.offset,
        metadata: Some(o.committed.metadata),
        commit_timestamp_ms: o.committed.timestamp_ms,
    }
}

/// Executes one request; the result is the response body and its payload.
pub async fn process(
    shard: &Rc<Shard>,
    req: Request,
    payload: &bytes::Bytes,
    peer: &str,
) -> Result<Processed, OpError> {
    let none = Vec::new;
    let resp = match req {
        Request::Hello(_) => Response::HelloResponse(Box::new(proto::HelloResponse {
            version: levee_schemas::PROTOCOL_VERSION,
            server: Some(format!("levee {}", env!("CARGO_PKG_VERSION"))),
            node_id: shard.cfg.node_id,
            max_frame_bytes: shard.cfg.max_frame_bytes,
            max_batch_bytes: u32::try_from(shard.cfg.log.max_batch_bytes).unwrap_or(u32::MAX),
        })),
        Request::CreateTopic(c) => {
            let meta = topic_meta(shard, c.config.map(|b| *b));
            let res = handlers::topics::create(shard, c.name.clone(), meta).await;
            topic_result(c.name, res)
        }
        Request::DeleteTopic(d) => {
            let res = handlers::topics::delete(shard, d.name.clone()).await;
            topic_result(d.name, res)
        }
        Request::AddPartitions(a) => {
            let assignment = a
                .assignment
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.nodes.unwrap_or_default())
                .collect();
            let res = handlers::topics::add_partitions(
                shard,
                a.name.clone(),
                a.count,
                assignment,
                a.validate_only,
            )
            .await;
            topic_result(a.name, res)
        }
        Request::InitProducerId(r) => {
            let existing = (r.producer_id >= 0 && r.producer_epoch >= 0)
                .then_some((r.producer_id, r.producer_epoch));
            let txn = r.transactional_id.filter(|t| !t.is_empty());
            let res = match txn {
                Some(id) => {
                    handlers::txn::init_producer_id(shard, id, r.transaction_timeout_ms, existing)
                        .await
                }
                None => handlers::producers::init_producer_id(shard, existing).await,
            };
            let (error, message, producer_id, producer_epoch) = match res {
                Ok((pid, epoch)) => (ErrorCode::None, None, pid, epoch),
                Err(e) => (e.code, Some(e.message), -1, -1),
            };
            Response::ProducerIdResponse(Box::new(proto::ProducerIdResponse {
                error,
                message,
                producer_id,
                producer_epoch,
            }))
        }
        Request::WriteTxnMarker(w) => {
            let marker = crate::partition::txns::Marker {
                commit: w.commit,
                coordinator_epoch: w.coordinator_epoch,
            };
            let res = handlers::txn::write_marker_here(
                shard,
                w.topic,
                w.partition,
                w.producer_id,
                w.producer_epoch,
                marker,
            )
            .await;
            group_result(None, res)
        }
        Request::CommitTxnOffsets(c) => {
            let epochs = c.leader_epochs.unwrap_or_default();
            let offsets: Vec<OffsetCommit> = c
                .offsets
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, o)| OffsetCommit {
                    topic: o.topic,
                    partition: o.partition,
                    offset: o.offset,
                    metadata: o.metadata.unwrap_or_default(),
                    leader_epoch: epochs.get(i).copied().unwrap_or(-1),
                })
                .collect();
            let res = if c.abort {
                let parts = offsets
                    .into_iter()
                    .map(|o| (o.topic, o.partition))
                    .collect();
                handlers::groups::abort_txn_offsets(shard, c.group.clone(), parts).await
            } else {
                handlers::groups::commit_txn_offsets(shard, c.group.clone(), offsets).await
            };
            group_result(Some(c.group), res)
        }
        Request::AddTxnOffsets(a) => {
            let epochs = a.leader_epochs.unwrap_or_default();
            let offsets = a
                .offsets
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, o)| {
                    let e = epochs.get(i).copied().unwrap_or(-1);
                    (
                        (o.topic, o.partition),
                        (o.offset, e, o.metadata.unwrap_or_default()),
                    )
                })
                .collect();
            let res = handlers::txn::add_txn_offsets(
                shard,
                a.transactional_id,
                a.group.clone(),
                a.producer_id,
                a.producer_epoch,
                offsets,
            )
            .await;
            group_result(Some(a.group), res)
        }
        Request::ListTransactions(l) => {
            let wanted = l.transactional_id.filter(|t| !t.is_empty());
            let transactions = handlers::txn::list(shard)
                .await?
                .into_iter()
                .filter(|t| wanted.as_ref().is_none_or(|w| *w == t.transactional_id))
                .map(transaction_info)
                .collect();
            Response::ListTransactionsResponse(Box::new(proto::ListTransactionsResponse {
                transactions: Some(transactions),
            }))
        }
        Request::FindTxnCoordinator(f) => find_txn_coordinator(shard, &f.transactional_id).await,
        Request::AddPartitionsToTxn(a) => {
            let parts = a
                .partitions
                .unwrap_or_default()
                .into_iter()
                .flat_map(|tp| {
                    let topic = tp.topic;
                    tp.partitions
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |p| (topic.clone(), p))
                })
                .collect();
            let res = handlers::txn::add_partitions(
                shard,
                a.transactional_id,
                a.producer_id,
                a.producer_epoch,
                parts,
            )
            .await
            .map(|per| {
                per.into_iter()
                    .filter_map(|((t, p), r)| r.err().map(|e| (t, p, e)))
                    .collect()
            });
            txn_response(res)
        }
        Request::AddOffsetsToTxn(a) => {
            let res = handlers::txn::add_offsets(
                shard,
                a.transactional_id,
                a.producer_id,
                a.producer_epoch,
                a.group,
            )
            .await
            .map(|()| Vec::new());
            txn_response(res)
        }
        Request::TxnOffsetCommit(c) => {
            let epochs = c.leader_epochs.unwrap_or_default();
            let offsets: Vec<OffsetCommit> = c
                .offsets
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, o)| OffsetCommit {
                    topic: o.topic,
                    partition: o.partition,
                    offset: o.offset,
                    metadata: o.metadata.unwrap_or_default(),
                    leader_epoch: epochs.get(i).copied().unwrap_or(-1),
                })
                .collect();
            let res = handlers::txn::txn_offset_commit(
                shard,
                c.transactional_id,
                c.group,
                c.producer_id,
                c.producer_epoch,
                c.member_id.unwrap_or_default(),
                c.generation,
                offsets,
            )
            .await
            .map(|per| {
                per.into_iter()
                    .filter_map(|(t, p, r)| r.err().map(|e| (t, p, e)))
                    .collect()
            });
            txn_response(res)
        }
        Request::EndTxn(e) => {
            let res = handlers::txn::end_txn(
                shard,
                e.transactional_id,
                e.producer_id,
                e.producer_epoch,
                e.commit,
            )
            .await
            .map(|()| Vec::new());
            txn_response(res)
        }
        Request::AlterTopic(a) => {
            let changes = a
                .configs
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.name, c.value))
                .collect();
            let res =
                handlers::topics::alter(shard, a.name.clone(), changes, false, a.validate_only)
                    .await
                    .map(drop);
            topic_result(a.name, res)
        }
        Request::ListTopics(_) => {
            Response::ListTopicsResponse(Box::new(proto::ListTopicsResponse {
                names: Some(
                    handlers::topics::list(shard)
                        .into_iter()
                        .filter(|n| !levee_core::is_internal_topic(n))
                        .collect(),
                ),
            }))
        }
        Request::DescribeTopic(d) => {
            Response::TopicDescription(Box::new(describe(shard, &d.name).await))
        }
        Request::Metadata(m) => {
            let names = match m.topics {
                Some(t) if !t.is_empty() => t,
                _ => handlers::topics::list(shard),
            };
            let mut topics = Vec::with_capacity(names.len());
            for n in names {
                topics.push(describe(shard, &n).await);
            }
            let brokers = handlers::metadata::brokers(shard)
                .into_iter()
                .map(|b| proto::Broker {
                    node_id: b.node_id,
                    host: Some(b.host),
                    port: b.port,
                })
                .collect();
            Response::MetadataResponse(Box::new(proto::MetadataResponse {
                brokers: Some(brokers),
                topics: Some(topics),
            }))
        }
        Request::Produce(p) => produce(shard, *p, payload).await?,
        Request::Fetch(f) => return Ok(fetch(shard, *f).await),
        Request::OffsetForLeaderEpoch(o) => {
            let res = handlers::offsets::epoch_end(shard, o.topic, o.partition, o.epoch).await;
            let mut r = proto::EpochEndOffset {
                error: ErrorCode::None,
                message: None,
                epoch: -1,
                end_offset: -1,
            };
            match res {
                Ok((e, end)) => (r.epoch, r.end_offset) = (e, end),
                Err(e) => (r.error, r.message) = (e.code, Some(e.message)),
            }
            Response::EpochEndOffset(Box::new(r))
        }
        Request::ClusterStatus(_) => {
            Response::ClusterStatusResponse(Box::new(handlers::cluster::status(shard).await?))
        }
        Request::ListGroups(_) => {
            let groups = handlers::groups::list(shard)
                .await?
                .into_iter()
                .map(|(group, state, members, _)| proto::GroupSummary {
                    group: Some(group),
                    state: Some(state.into()),
                    members: members as u32,
                })
                .collect();
            Response::ListGroupsResponse(Box::new(proto::ListGroupsResponse {
                groups: Some(groups),
            }))
        }
        Request::ListOffsets(l) => {
            let wanted = l
                .partitions
                .unwrap_or_default()
                .into_iter()
                .map(|lp| (lp.topic, lp.partition, lp.spec))
                .collect();
            let found = handlers::offsets::list_offsets(shard, wanted, false).await;
            offsets_response(
                found
                    .into_iter()
                    .map(|(t, p, r)| (t, p, r.map(|(offset, _)| offset)))
                    .collect(),
            )
        }
        Request::DeleteRecords(d) => {
            let timeout = Duration::from_millis(u64::from(d.timeout_ms));
            let wanted = d
                .partitions
                .unwrap_or_default()
                .into_iter()
                .map(|dp| (dp.topic, dp.partition, dp.offset))
                .collect();
            offsets_response(handlers::offsets::delete_records(shard, wanted, timeout).await)
        }
        req @ (Request::JoinGroup(_)
        | Request::Heartbeat(_)
        | Request::LeaveGroup(_)
        | Request::CommitOffsets(_)
        | Request::FetchOffsets(_)
        | Request::DescribeGroup(_)
        | Request::DeleteGroup(_)) => group_request(shard, req, peer).await,
    };
    Ok((resp, none()))
}

/// Per-partition offsets (ListOffsets, and DeleteRecords' new log starts)
/// as a ListOffsetsResponse.
fn offsets_response(results: Vec<(String, u32, OpResult<i64>)>) -> Response {
    let out = results
        .into_iter()
        .map(|(topic, partition, res)| {
            let (offset, r) = match res {
                Ok(o) => (o, Ok(())),
                Err(e) => (-1, Err(e)),
            };
            let (error, message) = err_fields(r);
            proto::ListOffsetsPartitionResponse {
                topic: Some(topic),
                partition,
                error,
                message,
                offset,
            }
        })
        .collect();
    Response::ListOffsetsResponse(Box::new(proto::ListOffsetsResponse {
        partitions: Some(out),
    }))
}

/// The topic settings a CreateTopic asks for, with the broker's defaults.
fn topic_meta(shard: &Shard, cfg: Option<proto::TopicConfig>) -> TopicMeta {
    let d = &shard.cfg.log;
    TopicMeta {
        partitions: cfg
            .as_ref()
            .map(|c| c.partitions)
            .filter(|&p| p > 0)
            .unwrap_or(d.default_partitions),
        replication_factor: cfg.as_ref().map_or(1, |c| c.replication_factor.max(1)),
        retention_bytes: cfg.as_ref().map_or(-1, |c| c.retention_bytes),
        retention_ms: cfg.as_ref().map_or(-1, |c| c.retention_ms),
        fsync: cfg
            .as_ref()
            .and_then(|c| c.fsync.clone())
            .unwrap_or_default(),
        max_backlog_bytes: cfg.as_ref().map_or(-1, |c| c.max_backlog_bytes),
        segment_bytes: cfg.as_ref().map_or(-1, |c| c.segment_bytes),
        max_message_bytes: cfg.as_ref().map_or(-1, |c| c.max_message_bytes),
        id: String::new(),
    }
}

fn topic_result(name: String, res: Result<(), OpError>) -> Response {
    let (error, message) = err_fields(res);
    Response::TopicResult(Box::new(proto::TopicResult {
        name: Some(name),
        error,
        message,
    }))
}

async fn describe(shard: &Rc<Shard>, name: &str) -> proto::TopicDescription {
    let d = match handlers::topics::describe(shard, name).await {
        Ok(d) => d,
        Err(e) => {
            return proto::TopicDescription {
                name: Some(name.to_string()),
                error: e.code,
                message: Some(e.message),
                config: None,
                partitions: None,
                id: None,
            }
        }
    };
    let m = &d.meta;
    let id = crate::topics::topic_uuid(&d.name, m).to_string();
    proto::TopicDescription {
        id: Some(id),
        name: Some(d.name),
        error: ErrorCode::None,
        message: None,
        config: Some(Box::new(proto::TopicConfig {
            partitions: m.partitions,
            replication_factor: m.replication_factor,
            retention_bytes: m.retention_bytes,
            retention_ms: m.retention_ms,
            fsync: Some(m.fsync.clone()),
            max_backlog_bytes: m.max_backlog_bytes,
            segment_bytes: m.segment_bytes,
            max_message_bytes: m.max_message_bytes,
        })),
        partitions: Some(
            d.partitions
                .into_iter()
                .map(|p| proto::PartitionInfo {
                    partition: p.partition,
                    leader: p.leader.unwrap_or(u32::MAX),
                    shard: p.shard,
                    log_start_offset: p.state.log_start,
                    log_end_offset: p.state.log_end,
                    high_watermark: p.state.high_watermark,
                    size_bytes: p.state.size_bytes,
                    leader_epoch: p.leader_epoch,
                    replicas: Some(p.replicas),
                    isr: Some(p.isr),
                })
                .collect(),
        ),
    }
}

async fn produce(
    shard: &Rc<Shard>,
    p: proto::Produce,
    payload: &bytes::Bytes,
) -> Result<Response, OpError> {
    let timeout = Duration::from_millis(u64::from(p.timeout_ms.max(1)));
    if !(-1..=1).contains(&p.acks) {
        return Err(OpError::new(
            ErrorCode::InvalidRequest,
            format!("acks must be 0, 1 or -1 (all), not {}", p.acks),
        ));
    }
    let parts = p
        .partitions
        .unwrap_or_default()
        .into_iter()
        .map(|pp| handlers::produce::ProducePartition {
            data: payload_slice(payload, pp.payload_offset, pp.payload_len)
                .map(|slice| payload.slice_ref(slice))
                .map_err(|e| OpError::new(ErrorCode::InvalidRequest, e.to_string())),
            topic: pp.topic,
            partition: pp.partition,
        })
        .collect();
    let req = handlers::produce::ProduceRequest {
        partitions: parts,
        backing: payload.len(),
    };
    let out = handlers::produce::produce(shard, p.acks, timeout, req)
        .await
        .into_iter()
        .map(|(topic, partition, res)| {
            let mut r = proto::ProducePartitionResponse {
                topic: Some(topic),
                partition,
                error: ErrorCode::None,
                message: None,
                base_offset: 0,
                last_offset: 0,
                log_start_offset: 0,
            };
            match res {
                Ok(p) => {
                    (r.base_offset, r.last_offset, r.log_start_offset) =
                        (p.base, p.last, p.log_start)
                }
                Err(e) => (r.error, r.message) = (e.code, Some(e.message)),
            }
            r
        })
        .collect();
    Ok(Response::ProduceResponse(Box::new(
        proto::ProduceResponse {
            partitions: Some(out),
        },
    )))
}

async fn fetch(shard: &Rc<Shard>, f: proto::Fetch) -> Processed {
    let parts = f.partitions.unwrap_or_default();
    // The response must fit in one frame with room for its header.
    let frame_room = (shard.cfg.max_frame_bytes as usize)
        .saturating_sub(64 << 10)
        .max(1);
    let req = FetchRequest {
        max_wait: Duration::from_millis(u64::from(f.max_wait_ms)),
        min_bytes: f.min_bytes as usize,
        max_bytes: (f.max_bytes as usize).min(frame_room),
        replica: (f.replica_id >= 0).then_some(f.replica_id as u64),
        read_committed: f.isolation_level == 1,
        partitions: parts
            .iter()
            .map(|fp| FetchPartition {
                topic: fp.topic.clone(),
                partition: fp.partition,
                offset: fp.offset,
                max_bytes: fp.max_bytes as usize,
                leader_epoch: fp.leader_epoch,
                log_start: fp.log_start_offset,
            })
            .collect(),
    };
    let results = handlers::fetch::fetch(shard, req).await;
    let mut out = Vec::with_capacity(parts.len());
    let mut payload = Vec::new();
    let mut offset = 0usize;
    for (fp, res) in parts.into_iter().zip(results) {
        let mut r = proto::FetchPartitionResponse {
            topic: Some(fp.topic),
            partition: fp.partition,
            error: ErrorCode::None,
            message: None,
            high_watermark: 0,
            log_start_offset: 0,
            payload_offset: offset as u32,
            payload_len: 0,
            last_stable_offset: 0,
            aborted: None,
        };
        match res {
            Ok(read) => {
                r.high_watermark = read.state.high_watermark;
                r.log_start_offset = read.state.log_start;
                r.last_stable_offset = read.state.last_stable;
                if f.isolation_level == 1 {
                    r.aborted = Some(
                        read.aborted
                            .iter()
                            .map(|a| proto::AbortedTxn {
                                producer_id: a.producer_id,
                                first_offset: a.first_offset,
                                last_offset: a.last_offset,
                            })
                            .collect(),
                    );
                }
                if !read.data.is_empty() {
                    r.payload_len = read.data.len() as u32;
                    offset += read.data.len();
                    payload.push(read.data);
                }
            }
            Err(e) => (r.error, r.message) = (e.code, Some(e.message)),
        }
        out.push(r);
    }
    (
        Response::FetchResponse(Box::new(proto::FetchResponse {
            partitions: Some(out),
        })),
        payload,
    )
}

/// Consumer-group requests. Errors travel inside each request's own
/// response type, as the schema says (the header's error is for
/// undecodable requests).
async fn group_request(shard: &Rc<Shard>, req: Request, peer: &str) -> Response {
    let group_result = |group: String, res: Result<(), OpError>| {
        let (error, message) = err_fields(res);
        Response::GroupResult(Box::new(proto::GroupResult {
            group: Some(group),
            error,
            message,
        }))
    };
    let offsets_response =
        |group: String,
         res: Result<(Vec<proto::CommittedOffset>, Vec<proto::PartitionError>), OpError>| {
            let (offsets, failed, r) = match res {
                Ok((o, f)) => (Some(o), Some(f), Ok(())),
                Err(e) => (None, None, Err(e)),
            };
            let (error, message) = err_fields(r);
            Response::OffsetsResponse(Box::new(proto::OffsetsResponse {
                group: Some(group),
                error,
                message,
                offsets,
                failed,
            }))
        };
    match req {
        Request::JoinGroup(j) => join(shard, *j, peer).await,
        Request::Heartbeat(h) => {
            let res =
                handlers::groups::heartbeat(shard, h.group.clone(), h.member_id, h.generation)
                    .await;
            group_result(h.group, res)
        }
        Request::LeaveGroup(l) => {
            let res = handlers::groups::leave(shard, l.group.clone(), l.member_id).await;
            group_result(l.group, res)
        }
        Request::DeleteGroup(d) => {
            let res = handlers::groups::delete(shard, d.group.clone()).await;
            group_result(d.group, res)
        }
        Request::CommitOffsets(c) => {
            let offsets = c
                .offsets
                .unwrap_or_default()
                .into_iter()
                .map(|o| OffsetCommit {
                    topic: o.topic,
                    partition: o.partition,
                    offset: o.offset,
                    metadata: o.metadata.unwrap_or_default(),
                    leader_epoch: -1,
                })
                .collect();
            let member = c.member_id.unwrap_or_default();
            let res =
                handlers::groups::commit(shard, c.group.clone(), member, c.generation, offsets)
                    .await
                    .map(|results| {
                        let failed = results
                            .into_iter()
                            .filter_map(|(topic, partition, r)| {
                                r.err().map(|e| proto::PartitionError {
                                    topic: Some(topic),
                                    partition,
                                    error: e.code,
                                    message: Some(e.message),
                                })
                            })
                            .collect();
                        (Vec::new(), failed)
                    });
            let mut resp = offsets_response(c.group, res);
            // A successful commit carries no offsets (as before).
            if let Response::OffsetsResponse(r) = &mut resp {
                if r.error == ErrorCode::None {
                    r.offsets = None;
                }
            }
            resp
        }
        Request::FetchOffsets(f) => {
            let wanted = f.partitions.map(|tps| {
                tps.into_iter()
                    .map(|tp| (tp.topic, tp.partitions.unwrap_or_default()))
                    .collect()
            });
            let res = handlers::groups::fetch_offsets(shard, f.group.clone(), wanted)
                .await
                .map(|o| (o.into_iter().map(committed).collect(), Vec::new()));
            let mut resp = offsets_response(f.group, res);
            if let Response::OffsetsResponse(r) = &mut resp {
                r.failed = None;
            }
            resp
        }
        Request::DescribeGroup(d) => {
            let res = handlers::groups::describe(shard, d.group.clone()).await;
            Response::GroupDescription(Box::new(match res {
                Ok(g) => proto::GroupDescription {
                    group: Some(g.group),
                    error: ErrorCode::None,
                    message: None,
                    state: Some(g.state.into()),
                    generation: g.generation,
                    strategy: Some(g.protocol),
                    members: Some(
                        g.members
                            .into_iter()
                            .map(|m| proto::GroupMember {
                                member_id: Some(m.member_id),
                                client_id: Some(m.client_id),
                                host: Some(m.host),
                                assignment: Some(to_tp(&if m.kafka_assignment.is_empty() {
                                    m.assignment
                                } else {
                                    crate::net::kafka::codec::consumer_assignment(
                                        &m.kafka_assignment,
                                    )
                                    .unwrap_or_default()
                                })),
                            })
                            .collect(),
                    ),
                    offsets: Some(g.offsets.into_iter().map(committed).collect()),
                },
                Err(e) => proto::GroupDescription {
                    group: Some(d.group),
                    error: e.code,
                    message: Some(e.message),
                    state: None,
                    generation: -1,
                    strategy: None,
                    members: None,
                    offsets: None,
                },
            }))
        }
        _ => group_result(
            String::new(),
            Err(OpError::new(
                ErrorCode::InvalidRequest,
                "not a consumer-group request",
            )),
        ),
    }
}

async fn join(shard: &Rc<Shard>, j: proto::JoinGroup, peer: &str) -> Response {
    let clamp = |ms: u32| Duration::from_millis(u64::from(ms.clamp(1000, 300_000)));
    let join = Join {
        member_id: j.member_id.unwrap_or_default(),
        fresh_id: String::new(),
        require_known_id: false,
        client_id: j.client_id.unwrap_or_default(),
        host: peer.to_string(),
        session_timeout: clamp(j.session_timeout_ms),
        rebalance_timeout: clamp(j.rebalance_timeout_ms),
        subscription: Subscription::Native {
            topics: j.topics.unwrap_or_default(),
            strategy: j.strategy,
        },
    };
    let res = handlers::groups::join(shard, j.group, join).await;
    Response::JoinGroupResponse(Box::new(match res {
        Ok(JoinReply::Joined(r)) => proto::JoinGroupResponse {
            error: ErrorCode::None,
            message: None,
            generation: r.generation,
            member_id: Some(r.member_id),
            strategy: Some(r.protocol),
            assignment: Some(to_tp(&r.assignment)),
            heartbeat_interval_ms: r.heartbeat_interval.as_millis() as u32,
        },
        Ok(JoinReply::MemberIdRequired(id)) => proto::JoinGroupResponse {
            error: ErrorCode::MemberIdRequired,
            message: Some("join again with this member id".into()),
            generation: -1,
            member_id: Some(id),
            strategy: None,
            assignment: None,
            heartbeat_interval_ms: 0,
        },
        Err(e) => proto::JoinGroupResponse {
            error: e.code,
            message: Some(e.message),
            generation: -1,
            member_id: None,
            strategy: None,
            assignment: None,
            heartbeat_interval_ms: 0,
        },
    }))
}

/// A transaction as the native protocol lists it.
fn transaction_info(t: handlers::txn::TxnSummary) -> proto::TransactionInfo {
    let mut by_topic: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for (topic, p) in t.partitions {
        by_topic.entry(topic).or_default().push(p);
    }
    proto::TransactionInfo {
        transactional_id: Some(t.transactional_id),
        producer_id: t.producer_id,
        epoch: t.epoch,
        state: Some(t.state.to_string()),
        timeout_ms: t.timeout_ms,
        age_ms: t.age_ms,
        partitions: Some(
            by_topic
                .into_iter()
                .map(|(topic, partitions)| proto::TopicPartitions {
                    topic,
                    partitions: Some(partitions),
                })
                .collect(),
        ),
        groups: Some(t.groups),
    }
}

/// An internal request's outcome.
/// Where a transactional id is coordinated (creating the transaction
/// state topic on first use): the node and its native address.
async fn find_txn_coordinator(shard: &Rc<Shard>, id: &str) -> Response {
    let found = match handlers::txn::ensure_txn_topic(shard).await {
        Ok(()) => handlers::txn::coordinator(shard, id),
        Err(e) => Err(e),
    };
    let mut r = proto::TxnCoordinatorResponse {
        error: ErrorCode::None,
        message: None,
        node_id: 0,
        host: None,
        port: 0,
    };
    match found {
        Ok((_, node)) => {
            match handlers::metadata::brokers(shard)
                .into_iter()
                .find(|b| b.node_id == node)
            {
                Some(b) => (r.node_id, r.host, r.port) = (node, Some(b.host), b.port),
                None => {
                    r.error = ErrorCode::CoordinatorUnavailable;
                    r.message = Some(format!(
                        "node {node} coordinates transactional id `{id}` but has no address in the metadata yet; retry"
                    ));
                }
            }
        }
        Err(e) => (r.error, r.message) = (e.code, Some(e.message)),
    }
    Response::TxnCoordinatorResponse(Box::new(r))
}

/// A transactional producer's request answered: a whole-request error, or
/// the partitions that failed alone.
fn txn_response(res: crate::error::OpResult<Vec<(String, u32, OpError)>>) -> Response {
    let (error, message, failed) = match res {
        Ok(failed) => (
            ErrorCode::None,
            None,
            failed
                .into_iter()
                .map(|(t, p, e)| proto::PartitionError {
                    topic: Some(t),
                    partition: p,
                    error: e.code,
                    message: Some(e.message),
                })
                .collect(),
        ),
        Err(e) => (e.code, Some(e.message), Vec::new()),
    };
    Response::TxnResponse(Box::new(proto::TxnResponse {
        error,
        message,
        failed: Some(failed),
    }))
}

fn group_result(group: Option<String>, res: crate::error::OpResult<()>) -> Response {
    let (error, message) = match res {
        Ok(()) => (ErrorCode::None, None),
        Err(e) => (e.code, Some(e.message)),
    };
    Response::GroupResult(Box::new(proto::GroupResult {
        group,
        error,
        message,
    }))
}
