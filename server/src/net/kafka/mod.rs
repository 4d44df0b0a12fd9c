//! The Kafka API front end: one connection per Kafka client, on every
//! shard (SO_REUSEPORT, like the native listener). Frames in (a 4-byte
//! big-endian size, then the request), requests decoded with the
//! `kafka-protocol` crate and handed to the request layer (`handlers/`),
//! responses out in request order. One file per group of APIs:
//! `produce.rs`, `fetch.rs`, `metadata.rs`, `groups.rs`, `offsets.rs`,
//! `admin.rs`, `txn.rs`; `codec.rs` has the framing, versions and error codes.
//!
//! Bad input stays with its connection: an oversized or truncated frame,
//! or an undecodable request, closes that connection; an API or version
//! not served is answered with UNSUPPORTED_VERSION and the connection
//! stays open.

mod admin;
pub mod codec;
mod fetch;
mod groups;
mod metadata;
mod offsets;
mod produce;
mod producers;
mod txn;

use crate::net::conn::{read_exact_or_shutdown, Conn, Outgoing, Pending};
use crate::shard::{buffers, bump, Shard};
use bytes::Bytes;
use codec::{code, decode, decode_header, frame, minimal_error, peek_header, supported};
use glommio::channels::local_channel::LocalSender;
use glommio::net::TcpStream;
use kafka_protocol::messages::ApiKey;
use std::rc::Rc;
use std::time::Instant;
use tracing::debug;

/// What a request needs to know of its connection.
pub struct Ctx {
    pub shard: Rc<Shard>,
    pub version: i16,
    pub client_id: String,
    pub host: Rc<str>,
}

/// What processing a request produced.
pub enum Reply {
    Frame(Vec<u8>),
    /// Produce with acks=0: no response.
    Nothing,
    /// The request could not be decoded: close the connection.
    Close(String),
}

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let mut c = Conn::open(&shard, stream);
    let res = read_loop(&shard, &mut c.reader, &c.tx, &c.host).await;
    c.close(&shard, res).await;
}

async fn read_loop(
    shard: &Rc<Shard>,
    r: &mut futures_lite::io::ReadHalf<TcpStream>,
    tx: &LocalSender<Pending>,
    host: &Rc<str>,
) -> Result<(), String> {
    let max = shard.cfg.max_frame_bytes as usize;
    loop {
        let mut prefix = [0u8; 4];
        if !read_exact_or_shutdown(shard, r, &mut prefix, true).await? {
            return Ok(());
        }
        let len = i32::from_be_bytes(prefix);
        if len < 8 || len as usize > max {
            // Kafka closes the connection on a frame it will not read.
            return Err(format!(
                "a request frame of {len} bytes (the limit is max_frame_bytes = {max})"
            ));
        }
        let len = len as usize;
        let permit = shard
            .inflight
            .acquire_static_permit((len as u64).min(shard.inflight_limit))
            .await
            .map_err(|_| "shutting down".to_string())?;
        let mut body = buffers::take(len);
        read_exact_or_shutdown(shard, r, &mut body, false).await?;
        let started = Instant::now();
        let s = shard.clone();
        let host = host.clone();
        let task = glommio::spawn_local(async move {
            let mut body = buffers::shared(body);
            let is_produce = peek_header(&body).is_some_and(|h| h.0 == ApiKey::Produce as i16);
            let reply = process(&s, &mut body, host).await;
            match &reply {
                Reply::Close(_) => bump(&s.metrics.errors),
                _ => bump(&s.metrics.requests_ok),
            }
            if is_produce {
                s.metrics.produce_latency.observe(started.elapsed());
            }
            match reply {
                Reply::Frame(frame) => Some(Outgoing {
                    frame,
                    payload: Vec::new(),
                    close: false,
                }),
                Reply::Nothing => None,
                Reply::Close(why) => {
                    debug!(reason = %why, "undecodable Kafka request; closing the connection");
                    Some(Outgoing {
                        frame: Vec::new(),
                        payload: Vec::new(),
                        close: true,
                    })
                }
            }
        })
        .detach();
        if tx.send((task, Some(permit))).await.is_err() {
            return Err("writer closed".into());
        }
    }
}

/// Decodes and executes one request.
async fn process(shard: &Rc<Shard>, body: &mut Bytes, host: Rc<str>) -> Reply {
    let Some((key, version, corr)) = peek_header(body) else {
        return Reply::Close("a request shorter than its header".into());
    };
    let Ok(api) = ApiKey::try_from(key) else {
        return Reply::Frame(minimal_error(corr, code::UNSUPPORTED_VERSION));
    };
    if api == ApiKey::ApiVersions && !supported(api, version) {
        // Kafka's rule: a version it does not know gets the v0 answer with
        // UNSUPPORTED_VERSION and the list, so the client can choose.
        return Reply::Frame(admin::api_versions_unsupported(corr));
    }
    if !supported(api, version) {
        return Reply::Frame(minimal_error(corr, code::UNSUPPORTED_VERSION));
    }
    let header = match decode_header(api, version, body) {
        Ok(h) => h,
        Err(e) => return Reply::Close(format!("request header: {e}")),
    };
    let ctx = Ctx {
        shard: shard.clone(),
        version,
        client_id: header
            .client_id
            .as_ref()
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
        host,
    };
    macro_rules! serve {
        ($req:ty, $handler:expr) => {{
            match decode::<$req>(body, version) {
                Ok(req) => {
                    let resp = $handler(&ctx, req).await;
                    Reply::Frame(frame(api, version, corr, &resp))
                }
                Err(e) => Reply::Close(format!("{api:?} v{version}: {e}")),
            }
        }};
    }
    use kafka_protocol::messages as m;
    match api {
        ApiKey::ApiVersions => serve!(m::ApiVersionsRequest, admin::api_versions),
        ApiKey::Metadata => serve!(m::MetadataRequest, metadata::metadata),
        ApiKey::Produce => match decode::<m::ProduceRequest>(body, version) {
            Ok(req) if req.acks == 0 => {
                produce::produce(&ctx, req).await;
                Reply::Nothing
            }
            Ok(req) => {
                let resp = produce::produce(&ctx, req).await;
                Reply::Frame(frame(api, version, corr, &resp))
            }
            Err(e) => Reply::Close(format!("Produce v{version}: {e}")),
        },
        ApiKey::Fetch => serve!(m::FetchRequest, fetch::fetch),
        ApiKey::ListOffsets => serve!(m::ListOffsetsRequest, offsets::list_offsets),
        ApiKey::DeleteRecords => serve!(m::DeleteRecordsRequest, offsets::delete_records),
        ApiKey::OffsetCommit => serve!(m::OffsetCommitRequest, offsets::offset_commit),
        ApiKey::OffsetFetch => serve!(m::OffsetFetchRequest, offsets::offset_fetch),
        ApiKey::FindCoordinator => serve!(m::FindCoordinatorRequest, groups::find_coordinator),
        ApiKey::JoinGroup => serve!(m::JoinGroupRequest, groups::join_group),
        ApiKey::SyncGroup => serve!(m::SyncGroupRequest, groups::sync_group),
        ApiKey::Heartbeat => serve!(m::HeartbeatRequest, groups::heartbeat),
        ApiKey::LeaveGroup => serve!(m::LeaveGroupRequest, groups::leave_group),
        ApiKey::ListGroups => serve!(m::ListGroupsRequest, groups::list_groups),
        ApiKey::DescribeGroups => serve!(m::DescribeGroupsRequest, groups::describe_groups),
        ApiKey::DeleteGroups => serve!(m::DeleteGroupsRequest, groups::delete_groups),
        ApiKey::CreateTopics => serve!(m::CreateTopicsRequest, admin::create_topics),
        ApiKey::DeleteTopics => serve!(m::DeleteTopicsRequest, admin::delete_topics),
        ApiKey::CreatePartitions => {
            serve!(m::CreatePartitionsRequest, admin::create_partitions)
        }
        ApiKey::DescribeConfigs => serve!(m::DescribeConfigsRequest, admin::describe_configs),
        ApiKey::AlterConfigs => serve!(m::AlterConfigsRequest, admin::alter_configs),
        ApiKey::IncrementalAlterConfigs => serve!(
            m::IncrementalAlterConfigsRequest,
            admin::incremental_alter_configs
        ),
        ApiKey::DescribeCluster => serve!(m::DescribeClusterRequest, admin::describe_cluster),
        ApiKey::InitProducerId => serve!(m::InitProducerIdRequest, producers::init_producer_id),
        ApiKey::AddPartitionsToTxn => {
            serve!(m::AddPartitionsToTxnRequest, txn::add_partitions_to_txn)
        }
        ApiKey::AddOffsetsToTxn => serve!(m::AddOffsetsToTxnRequest, txn::add_offsets_to_txn),
        ApiKey::EndTxn => serve!(m::EndTxnRequest, txn::end_txn),
        ApiKey::TxnOffsetCommit => serve!(m::TxnOffsetCommitRequest, txn::txn_offset_commit),
        ApiKey::WriteTxnMarkers => serve!(m::WriteTxnMarkersRequest, txn::write_txn_markers),
        _ => Reply::Frame(minimal_error(corr, code::UNSUPPORTED_VERSION)),
    }
}
