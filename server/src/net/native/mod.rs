//! One client connection on the native protocol: frames in, requests
//! dispatched (to this shard or the owning shard), responses out in request
//! order. Reading stops while the shard's in-flight byte window is full, so
//! producers feel TCP backpressure instead of the broker buffering.

use crate::shard::{bump, Op, OpError, OpOk, PartitionState, Shard};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::StaticPermit;
use levee_schemas::proto::{self, ErrorCode, Request, Response, ResponseHeader};
use levee_schemas::{decode_request, encode_frame, frame_len, payload_slice, FrameError};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::debug;

/// A response ready to write: header frame bytes and payload chunks.
struct Outgoing {
    frame: Vec<u8>,
    payload: Vec<Vec<u8>>,
}

type Pending = (
    glommio::task::JoinHandle<Option<Outgoing>>,
    Option<StaticPermit>,
);

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    bump(&shard.metrics.connections);
    let (mut reader, writer) = futures_lite::io::split(stream);
    let depth = shard.cfg.max_inflight_requests_per_connection;
    let (tx, rx) = glommio::channels::local_channel::new_bounded::<Pending>(depth);
    let writer_task = glommio::spawn_local(write_loop(rx, writer));
    let peer_host: Rc<str> = peer
        .rsplit_once(':')
        .map_or(peer.as_str(), |(h, _)| h)
        .into();
    if let Err(e) = read_loop(&shard, &mut reader, &tx, &peer_host).await {
        debug!(%peer, reason = %e, "closing connection");
    }
    drop(tx);
    let _ = writer_task.await;
    let c = &shard.metrics.connections;
    c.set(c.get().saturating_sub(1));
}

async fn write_loop(
    rx: glommio::channels::local_channel::LocalReceiver<Pending>,
    mut w: futures_lite::io::WriteHalf<TcpStream>,
) {
    while let Some((task, permit)) = rx.recv().await {
        let out = task.await.flatten();
        if let Some(out) = out {
            let mut ok = w.write_all(&out.frame).await.is_ok();
            for chunk in &out.payload {
                ok = ok && w.write_all(chunk).await.is_ok();
            }
            ok = ok && w.flush().await.is_ok();
            if !ok {
                drop(permit);
                // The peer is gone: drain what is queued so permits return.
                while let Some((t, p)) = rx.recv().await {
                    let _ = t.await;
                    drop(p);
                }
                return;
            }
        }
        drop(permit);
    }
    let _ = w.flush().await;
    let _ = w.close().await;
}

async fn read_exact_or_shutdown(
    shard: &Shard,
    r: &mut futures_lite::io::ReadHalf<TcpStream>,
    buf: &mut [u8],
    idle: bool,
) -> Result<bool, String> {
    if idle {
        // Between requests a shutdown ends the connection.
        let shutdown = shard.shutdown_event.listen();
        if shard.shutting_down.get() {
            return Ok(false);
        }
        let read = async { Some(r.read_exact(buf).await) };
        let stop = async {
            shutdown.await;
            None
        };
        match futures_lite::future::or(read, stop).await {
            None => Ok(false),
            Some(Ok(())) => Ok(true),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Some(Err(e)) => Err(e.to_string()),
        }
    } else {
        r.read_exact(buf)
            .await
            .map(|_| true)
            .map_err(|e| e.to_string())
    }
}

async fn read_loop(
    shard: &Rc<Shard>,
    r: &mut futures_lite::io::ReadHalf<TcpStream>,
    tx: &glommio::channels::local_channel::LocalSender<Pending>,
    peer: &Rc<str>,
) -> Result<(), String> {
    let max = shard.cfg.max_frame_bytes as usize;
    let mut hello_done = false;
    loop {
        let mut prefix = [0u8; 4];
        if !read_exact_or_shutdown(shard, r, &mut prefix, true).await? {
            return Ok(());
        }
        let len = match frame_len(prefix, max) {
            Ok(len) => len,
            Err(e) => {
                // Answer with the request's correlation id if the header is
                // readable, then close: the rest of the frame is not read.
                let corr = read_correlation_id(r, &e).await;
                let frame = error_frame(corr, e.code(), &format!("{e}; the connection is closed"));
                send_ready(tx, frame, None).await;
                return Err(e.to_string());
            }
        };
        let permit = shard
            .inflight
            .acquire_static_permit((len as u64).min(shard.inflight_limit))
            .await
            .map_err(|_| "shutting down".to_string())?;
        let mut body = shard.take_buffer(len);
        if let Err(e) = read_exact_or_shutdown(shard, r, &mut body, false).await {
            shard.return_buffer(body);
            return Err(e);
        }
        let started = Instant::now();
        let (header, payload_at) = match decode_request(&body) {
            Ok((h, payload)) => {
                let at = body.len() - payload.len();
                (h, at)
            }
            Err(e) => {
                bump(&shard.metrics.errors);
                let frame = error_frame(0, e.code(), &format!("undecodable request: {e}"));
                shard.return_buffer(body);
                send_ready(tx, frame, Some(permit)).await;
                continue;
            }
        };
        let corr = header.correlation_id;
        if !hello_done {
            let Request::Hello(h) = &header.request else {
                let frame = error_frame(
                    corr,
                    ErrorCode::UnsupportedVersion,
                    "the first request on a connection must be Hello",
                );
                send_ready(tx, frame, Some(permit)).await;
                return Err("no hello".into());
            };
            if h.min_version > levee_schemas::PROTOCOL_VERSION
                || h.max_version < levee_schemas::PROTOCOL_VERSION
            {
                let frame = error_frame(
                    corr,
                    ErrorCode::UnsupportedVersion,
                    &format!(
                        "client speaks versions {}..={}, this broker speaks {}",
                        h.min_version,
                        h.max_version,
                        levee_schemas::PROTOCOL_VERSION
                    ),
                );
                send_ready(tx, frame, Some(permit)).await;
                return Err("version mismatch".into());
            }
            hello_done = true;
        }
        if shard.shutting_down.get() {
            let frame = error_frame(corr, ErrorCode::ShuttingDown, "the broker is shutting down");
            send_ready(tx, frame, Some(permit)).await;
            return Ok(());
        }
        let s = shard.clone();
        let peer = peer.clone();
        let task = glommio::spawn_local(async move {
            let no_reply = matches!(&header.request, Request::Produce(p) if p.acks == 0);
            let is_produce = matches!(&header.request, Request::Produce(_));
            let payload = &body[payload_at..];
            let res = process(&s, header.request, payload, &peer).await;
            s.return_buffer(body);
            let elapsed = started.elapsed();
            match &res {
                Ok(_) => bump(&s.metrics.requests_ok),
                Err(_) => bump(&s.metrics.errors),
            }
            if is_produce {
                s.metrics.produce_latency.observe(elapsed);
            } else if matches!(&res, Ok((Response::FetchResponse(_), _))) {
                s.metrics.fetch_latency.observe(elapsed);
            }
            if no_reply {
                return None;
            }
            Some(match res {
                Ok((response, payload)) => {
                    let header = ResponseHeader {
                        correlation_id: corr,
                        error: ErrorCode::None,
                        message: None,
                        response: Some(response),
                    };
                    let total: usize = payload.iter().map(Vec::len).sum();
                    let mut frame = Vec::with_capacity(256);
                    encode_frame(
                        &mut levee_schemas::planus::Builder::new(),
                        &header,
                        total,
                        &mut frame,
                    );
                    Outgoing { frame, payload }
                }
                Err(e) => Outgoing {
                    frame: error_frame(corr, e.code, &e.message),
                    payload: Vec::new(),
                },
            })
        })
        .detach();
        if tx.send((task, Some(permit))).await.is_err() {
            return Err("writer closed".into());
        }
    }
}

async fn send_ready(
    tx: &glommio::channels::local_channel::LocalSender<Pending>,
    frame: Vec<u8>,
    permit: Option<StaticPermit>,
) {
    let task = glommio::spawn_local(async move {
        Some(Outgoing {
            frame,
            payload: Vec::new(),
        })
    })
    .detach();
    let _ = tx.send((task, permit)).await;
}

/// After an oversized frame prefix, reads just the header to find the
/// correlation id (0 if it cannot be read).
async fn read_correlation_id(r: &mut futures_lite::io::ReadHalf<TcpStream>, e: &FrameError) -> u64 {
    if !matches!(e, FrameError::TooLarge { .. }) {
        return 0;
    }
    let read = async {
        let mut hl = [0u8; 4];
        r.read_exact(&mut hl).await.ok()?;
        let hl = u32::from_le_bytes(hl) as usize;
        if hl > 64 << 10 {
            return None;
        }
        let mut h = vec![0u8; hl];
        r.read_exact(&mut h).await.ok()?;
        use levee_schemas::planus::ReadAsRoot;
        proto::RequestHeaderRef::read_as_root(&h)
            .ok()?
            .correlation_id()
            .ok()
    };
    let timeout = async {
        glommio::timer::sleep(Duration::from_millis(500)).await;
        None
    };
    futures_lite::future::or(read, timeout).await.unwrap_or(0)
}

pub fn error_frame(corr: u64, code: ErrorCode, message: &str) -> Vec<u8> {
    let header = ResponseHeader {
        correlation_id: corr,
        error: code,
        message: Some(message.to_string()),
        response: None,
    };
    let mut frame = Vec::with_capacity(128 + message.len());
    encode_frame(
        &mut levee_schemas::planus::Builder::new(),
        &header,
        0,
        &mut frame,
    );
    frame
}

type Processed = (Response, Vec<Vec<u8>>);

/// Executes one request; the result is the response body and its payload.
async fn process(
    shard: &Rc<Shard>,
    req: Request,
    payload: &[u8],
    peer: &str,
) -> Result<Processed, OpError> {
    let none = Vec::new;
    match req {
        Request::Hello(_) => Ok((
            Response::HelloResponse(Box::new(proto::HelloResponse {
                version: levee_schemas::PROTOCOL_VERSION,
                server: Some(format!("levee {}", env!("CARGO_PKG_VERSION"))),
                node_id: shard.cfg.node_id,
                max_frame_bytes: shard.cfg.max_frame_bytes,
            })),
            none(),
        )),
        Request::CreateTopic(c) => {
            let d = &shard.cfg.log;
            let cfg = c.config.map(|b| *b);
            let meta = crate::topics::TopicMeta {
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
            };
            let name = c.name;
            if let Some(view) = shard.cluster.clone() {
                let res = crate::cluster::admin::create_topic(shard, &view, &name, meta).await;
                return Ok((topic_result(name, res), none()));
            }
            let res = shard
                .call(
                    0,
                    Op::CreateTopic {
                        name: name.clone(),
                        meta,
                    },
                )
                .await;
            Ok((topic_result(name, res), none()))
        }
        Request::DeleteTopic(d) => {
            let name = d.name;
            if let Some(view) = shard.cluster.clone() {
                let res = crate::cluster::admin::delete_topic(shard, &view, &name).await;
                return Ok((topic_result(name, res), none()));
            }
            let res = shard.call(0, Op::DeleteTopic { name: name.clone() }).await;
            Ok((topic_result(name, res), none()))
        }
        Request::ListTopics(_) => Ok((
            Response::ListTopicsResponse(Box::new(proto::ListTopicsResponse {
                names: Some(shard.topic_names()),
            })),
            none(),
        )),
        Request::DescribeTopic(d) => Ok((
            Response::TopicDescription(Box::new(describe(shard, &d.name).await)),
            none(),
        )),
        Request::Metadata(m) => {
            let names = match m.topics {
                Some(t) if !t.is_empty() => t,
                _ => shard.topic_names(),
            };
            let mut topics = Vec::with_capacity(names.len());
            for n in names {
                topics.push(describe(shard, &n).await);
            }
            let (host, port) = match shard.cfg.listen_addr() {
                Ok(a) => (a.ip().to_string(), a.port()),
                Err(_) => (String::new(), 0),
            };
            let mut brokers = vec![proto::Broker {
                node_id: shard.cfg.node_id,
                host: Some(host),
                port,
            }];
            if let Some(md) = shard.cluster.as_ref().and_then(|v| v.metadata()) {
                brokers = md
                    .brokers
                    .values()
                    .filter(|b| b.alive)
                    .filter_map(|b| {
                        let a: std::net::SocketAddr = b.client_addr.parse().ok()?;
                        Some(proto::Broker {
                            node_id: b.node_id as u32,
                            host: Some(a.ip().to_string()),
                            port: a.port(),
                        })
                    })
                    .collect();
            }
            Ok((
                Response::MetadataResponse(Box::new(proto::MetadataResponse {
                    brokers: Some(brokers),
                    topics: Some(topics),
                })),
                none(),
            ))
        }
        Request::Produce(p) => {
            let timeout = Duration::from_millis(u64::from(p.timeout_ms.max(1)));
            let acks = p.acks;
            if !(-1..=1).contains(&acks) {
                return Err(OpError::new(
                    ErrorCode::InvalidRequest,
                    format!("acks must be 0, 1 or -1 (all), not {acks}"),
                ));
            }
            let parts = p.partitions.unwrap_or_default();
            await_topics(shard, parts.iter().map(|pp| pp.topic.as_str())).await;
            let mut tasks = Vec::with_capacity(parts.len());
            for pp in parts {
                let check = shard
                    .check_partition(&pp.topic, pp.partition)
                    .and_then(|_| {
                        payload_slice(payload, pp.payload_offset, pp.payload_len)
                            .map_err(|e| OpError::new(ErrorCode::InvalidRequest, e.to_string()))
                    });
                let task = match check {
                    Ok(data) => {
                        let op = Op::Produce {
                            topic: pp.topic.clone(),
                            partition: pp.partition,
                            acks,
                            timeout,
                            data: data.to_vec(),
                        };
                        Some(glommio::spawn_local(
                            shard.call(shard.owner(&pp.topic, pp.partition), op),
                        ))
                    }
                    Err(e) => {
                        tasks.push((pp, None, Some(e)));
                        continue;
                    }
                };
                tasks.push((pp, task, None));
            }
            let mut out = Vec::with_capacity(tasks.len());
            for (pp, task, err) in tasks {
                let res = match (task, err) {
                    (Some(t), _) => t.await,
                    (None, Some(e)) => Err(e),
                    (None, None) => Err(OpError::new(ErrorCode::Unknown, "no result")),
                };
                let mut r = proto::ProducePartitionResponse {
                    topic: Some(pp.topic),
                    partition: pp.partition,
                    error: ErrorCode::None,
                    message: None,
                    base_offset: 0,
                    last_offset: 0,
                    log_start_offset: 0,
                };
                match res {
                    Ok(OpOk::Produced {
                        base,
                        last,
                        log_start,
                    }) => {
                        r.base_offset = base;
                        r.last_offset = last;
                        r.log_start_offset = log_start;
                    }
                    Ok(_) => set_err(&mut r.error, &mut r.message, unexpected()),
                    Err(e) => set_err(&mut r.error, &mut r.message, e),
                }
                out.push(r);
            }
            Ok((
                Response::ProduceResponse(Box::new(proto::ProduceResponse {
                    partitions: Some(out),
                })),
                none(),
            ))
        }
        Request::Fetch(f) => fetch(shard, *f).await,
        Request::OffsetForLeaderEpoch(o) => {
            let res = shard
                .call(
                    shard.owner(&o.topic, o.partition),
                    Op::EpochEnd {
                        topic: o.topic.clone(),
                        partition: o.partition,
                        epoch: o.epoch,
                    },
                )
                .await;
            let mut r = proto::EpochEndOffset {
                error: ErrorCode::None,
                message: None,
                epoch: -1,
                end_offset: -1,
            };
            match res {
                Ok(OpOk::EpochEnd(e, end)) => {
                    r.epoch = e;
                    r.end_offset = end;
                }
                Ok(_) => set_err(&mut r.error, &mut r.message, unexpected()),
                Err(e) => set_err(&mut r.error, &mut r.message, e),
            }
            Ok((Response::EpochEndOffset(Box::new(r)), none()))
        }
        Request::ClusterStatus(_) => match shard.cluster.clone() {
            Some(view) => Ok((
                Response::ClusterStatusResponse(Box::new(
                    crate::cluster::admin::cluster_status(&view).await,
                )),
                none(),
            )),
            None => Err(OpError::new(
                ErrorCode::InvalidRequest,
                "this broker is not part of a cluster (it runs without --coordinators)",
            )),
        },
        Request::JoinGroup(_)
        | Request::Heartbeat(_)
        | Request::LeaveGroup(_)
        | Request::CommitOffsets(_)
        | Request::FetchOffsets(_)
        | Request::DescribeGroup(_)
        | Request::DeleteGroup(_) => {
            let group = match &req {
                Request::JoinGroup(r) => r.group.clone(),
                Request::Heartbeat(r) => r.group.clone(),
                Request::LeaveGroup(r) => r.group.clone(),
                Request::CommitOffsets(r) => r.group.clone(),
                Request::FetchOffsets(r) => r.group.clone(),
                Request::DescribeGroup(r) => r.group.clone(),
                Request::DeleteGroup(r) => r.group.clone(),
                _ => String::new(),
            };
            crate::groups::validate_group_name(&group)?;
            // Errors travel inside the request's own response type, as the
            // schema says (the header's error is for undecodable requests).
            let wrap = group_error_wrapper(&req);
            let op = Op::Group {
                req,
                host: peer.to_string(),
            };
            match shard.call(shard.group_owner(&group), op).await {
                Ok(OpOk::Response(r)) => Ok((r, none())),
                Ok(_) => Err(unexpected()),
                Err(e) => Ok((wrap(group, e), none())),
            }
        }
        Request::ListGroups(_) => {
            let tasks: Vec<_> = (0..shard.nshards)
                .map(|s| glommio::spawn_local(shard.call(s, Op::ListGroups)))
                .collect();
            let mut groups = Vec::new();
            for t in tasks {
                if let OpOk::Groups(g) = t.await? {
                    groups.extend(g);
                }
            }
            groups.sort_by(|a, b| a.group.cmp(&b.group));
            Ok((
                Response::ListGroupsResponse(Box::new(proto::ListGroupsResponse {
                    groups: Some(groups),
                })),
                none(),
            ))
        }
        Request::ListOffsets(l) => {
            let mut out = Vec::new();
            let lps = l.partitions.unwrap_or_default();
            await_topics(shard, lps.iter().map(|lp| lp.topic.as_str())).await;
            for lp in lps {
                let res = match shard.check_partition(&lp.topic, lp.partition) {
                    Ok(()) => {
                        let op = Op::ListOffsets {
                            topic: lp.topic.clone(),
                            partition: lp.partition,
                            spec: lp.spec,
                        };
                        shard.call(shard.owner(&lp.topic, lp.partition), op).await
                    }
                    Err(e) => Err(e),
                };
                let mut r = proto::ListOffsetsPartitionResponse {
                    topic: Some(lp.topic),
                    partition: lp.partition,
                    error: ErrorCode::None,
                    message: None,
                    offset: -1,
                };
                match res {
                    Ok(OpOk::Offset(o)) => r.offset = o,
                    Ok(_) => set_err(&mut r.error, &mut r.message, unexpected()),
                    Err(e) => set_err(&mut r.error, &mut r.message, e),
                }
                out.push(r);
            }
            Ok((
                Response::ListOffsetsResponse(Box::new(proto::ListOffsetsResponse {
                    partitions: Some(out),
                })),
                none(),
            ))
        }
    }
}

/// How a group request's failure is carried in its response type.
fn group_error_wrapper(req: &Request) -> fn(String, OpError) -> Response {
    match req {
        Request::JoinGroup(_) => |_, e| {
            Response::JoinGroupResponse(Box::new(proto::JoinGroupResponse {
                error: e.code,
                message: Some(e.message),
                generation: -1,
                member_id: None,
                strategy: None,
                assignment: None,
                heartbeat_interval_ms: 0,
            }))
        },
        Request::CommitOffsets(_) | Request::FetchOffsets(_) => |g, e| {
            Response::OffsetsResponse(Box::new(proto::OffsetsResponse {
                group: Some(g),
                error: e.code,
                message: Some(e.message),
                offsets: None,
                failed: None,
            }))
        },
        Request::DescribeGroup(_) => |g, e| {
            Response::GroupDescription(Box::new(proto::GroupDescription {
                group: Some(g),
                error: e.code,
                message: Some(e.message),
                state: None,
                generation: -1,
                strategy: None,
                members: None,
                offsets: None,
            }))
        },
        _ => |g, e| {
            Response::GroupResult(Box::new(proto::GroupResult {
                group: Some(g),
                error: e.code,
                message: Some(e.message),
            }))
        },
    }
}

fn unexpected() -> OpError {
    OpError::new(ErrorCode::Unknown, "unexpected reply from the owning shard")
}

fn set_err(code: &mut ErrorCode, message: &mut Option<String>, e: OpError) {
    *code = e.code;
    *message = Some(e.message);
}

fn topic_result(name: String, res: Result<OpOk, OpError>) -> Response {
    let (error, message) = match res {
        Ok(_) => (ErrorCode::None, None),
        Err(e) => (e.code, Some(e.message)),
    };
    Response::TopicResult(Box::new(proto::TopicResult {
        name: Some(name),
        error,
        message,
    }))
}

async fn describe(shard: &Rc<Shard>, name: &str) -> proto::TopicDescription {
    let Some(meta) = shard.topic(name) else {
        let e = OpError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("topic `{name}` does not exist"),
        );
        return proto::TopicDescription {
            name: Some(name.to_string()),
            error: e.code,
            message: Some(e.message),
            config: None,
            partitions: None,
        };
    };
    let cluster_md = shard.cluster.as_ref().and_then(|v| v.metadata());
    let placement = cluster_md
        .as_ref()
        .and_then(|md| md.topics.get(name).cloned());
    let me = u64::from(shard.cfg.node_id);
    let tasks: Vec<_> = (0..meta.partitions)
        .map(|p| {
            let op = Op::Info {
                topic: name.to_string(),
                partition: p,
            };
            let local = placement.as_ref().is_none_or(|t| {
                t.partitions
                    .get(p as usize)
                    .is_some_and(|pi| pi.replicas.contains(&me))
            });
            (
                p,
                local.then(|| glommio::spawn_local(shard.call(shard.owner(name, p), op))),
            )
        })
        .collect();
    let mut parts = Vec::with_capacity(tasks.len());
    for (p, t) in tasks {
        let st = match t {
            Some(t) => match t.await {
                Ok(OpOk::Info(st)) => st,
                _ => PartitionState::default(),
            },
            None => PartitionState::default(),
        };
        let pi = placement
            .as_ref()
            .and_then(|t| t.partitions.get(p as usize).cloned());
        let ids = |v: &[u64]| v.iter().map(|&x| x as u32).collect::<Vec<u32>>();
        parts.push(proto::PartitionInfo {
            partition: p,
            leader: match &pi {
                Some(pi) => pi.leader.map_or(u32::MAX, |l| l as u32),
                None => shard.cfg.node_id,
            },
            shard: shard.owner(name, p) as u32,
            log_start_offset: st.log_start,
            log_end_offset: st.log_end,
            high_watermark: st.high_watermark,
            size_bytes: st.size_bytes,
            leader_epoch: pi.as_ref().map_or(0, |pi| pi.leader_epoch),
            replicas: Some(
                pi.as_ref()
                    .map_or(vec![shard.cfg.node_id], |pi| ids(&pi.replicas)),
            ),
            isr: Some(
                pi.as_ref()
                    .map_or(vec![shard.cfg.node_id], |pi| ids(&pi.isr)),
            ),
        });
    }
    proto::TopicDescription {
        name: Some(name.to_string()),
        error: ErrorCode::None,
        message: None,
        config: Some(Box::new(proto::TopicConfig {
            partitions: meta.partitions,
            replication_factor: meta.replication_factor,
            retention_bytes: meta.retention_bytes,
            retention_ms: meta.retention_ms,
            fsync: Some(if meta.fsync.is_empty() {
                shard.cfg.log.fsync.clone()
            } else {
                meta.fsync.clone()
            }),
            max_backlog_bytes: meta.max_backlog_bytes,
            segment_bytes: meta.segment_bytes,
        })),
        partitions: Some(parts),
    }
}

/// Cluster mode: a topic unknown here may just have been created and this
/// node's metadata may lag the coordinators by a poll; wait briefly for it
/// before answering "unknown topic".
async fn await_topics<'a>(shard: &Rc<Shard>, topics: impl Iterator<Item = &'a str>) {
    if shard.cluster.is_none() {
        return;
    };
    let missing: Vec<&str> = topics.filter(|t| shard.topic(t).is_none()).collect();
    if missing.is_empty() {
        return;
    }
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until && missing.iter().any(|t| shard.topic(t).is_none()) {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// Long-polling fetch: read every partition; if fewer than `min_bytes` came
/// back, wait until any of them gets data (or `max_wait_ms`), then read again.
async fn fetch(shard: &Rc<Shard>, f: proto::Fetch) -> Result<Processed, OpError> {
    let parts = f.partitions.unwrap_or_default();
    await_topics(shard, parts.iter().map(|fp| fp.topic.as_str())).await;
    let max_total = (f.max_bytes as usize).min(shard.cfg.max_frame_bytes as usize - (64 << 10));
    let deadline = Instant::now() + Duration::from_millis(u64::from(f.max_wait_ms));
    loop {
        let tasks: Vec<_> = parts
            .iter()
            .map(|fp| {
                let check = shard.check_partition(&fp.topic, fp.partition);
                let op = Op::Read {
                    topic: fp.topic.clone(),
                    partition: fp.partition,
                    offset: fp.offset,
                    max_bytes: (fp.max_bytes as usize).clamp(1, max_total.max(1)),
                    replica: (f.replica_id >= 0).then_some((f.replica_id as u64, fp.leader_epoch)),
                };
                let owner = shard.owner(&fp.topic, fp.partition);
                check.map(|_| glommio::spawn_local(shard.call(owner, op)))
            })
            .collect();
        let mut results = Vec::with_capacity(parts.len());
        for t in tasks {
            results.push(match t {
                Ok(t) => t.await,
                Err(e) => Err(e),
            });
        }
        let total: usize = results
            .iter()
            .map(|r| match r {
                Ok(OpOk::Read { data, .. }) => data.len(),
                _ => 0,
            })
            .sum();
        let any_err = results.iter().any(Result::is_err);
        let now = Instant::now();
        if total >= f.min_bytes as usize || any_err || now >= deadline || parts.is_empty() {
            return Ok(fetch_response(&parts, results, max_total));
        }
        // Wait for any partition to get new data.
        let wait = deadline - now;
        let mut waits: Vec<_> = parts
            .iter()
            .map(|fp| {
                let op = Op::WaitData {
                    topic: fp.topic.clone(),
                    partition: fp.partition,
                    offset: fp.offset,
                    wait,
                    replica: f.replica_id >= 0,
                };
                shard.call(shard.owner(&fp.topic, fp.partition), op)
            })
            .collect();
        futures_lite::future::poll_fn(|cx| {
            for w in waits.iter_mut() {
                if w.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(());
                }
            }
            std::task::Poll::Pending
        })
        .await;
    }
}

fn fetch_response(
    parts: &[proto::FetchPartition],
    results: Vec<Result<OpOk, OpError>>,
    max_total: usize,
) -> Processed {
    let mut out = Vec::with_capacity(parts.len());
    let mut payload = Vec::new();
    let mut offset = 0usize;
    for (fp, res) in parts.iter().zip(results) {
        let mut r = proto::FetchPartitionResponse {
            topic: Some(fp.topic.clone()),
            partition: fp.partition,
            error: ErrorCode::None,
            message: None,
            high_watermark: 0,
            log_start_offset: 0,
            payload_offset: offset as u32,
            payload_len: 0,
        };
        match res {
            Ok(OpOk::Read { data, state }) => {
                r.high_watermark = state.high_watermark;
                r.log_start_offset = state.log_start;
                // The request's max_bytes bounds the whole response; the
                // first non-empty partition is always included.
                if !data.is_empty() && (offset == 0 || offset + data.len() <= max_total) {
                    r.payload_len = data.len() as u32;
                    offset += data.len();
                    payload.push(data);
                }
            }
            Ok(_) => set_err(&mut r.error, &mut r.message, unexpected()),
            Err(e) => set_err(&mut r.error, &mut r.message, e),
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
