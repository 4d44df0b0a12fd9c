//! Transactions (KIP-98), routed to the transactional id's coordinator:
//! the shard that owns its partition of `__transaction_state`, on the
//! node that leads it (another node answers NOT_COORDINATOR; the topic is
//! created on first use). The two-phase commit: EndTxn writes
//! PrepareCommit (or PrepareAbort) to the transaction log, then a marker
//! to every partition of the transaction (and, on commit, the
//! transaction's group offsets), then CompleteCommit (CompleteAbort). A
//! coordinator that takes over a transaction found in a Prepare state
//! finishes it; the driver ([`run_driver`]) also aborts transactions past
//! their timeout and forgets idle transactional ids.

use crate::error::{OpError, OpResult};
use crate::groups::OffsetCommit;
use crate::partition::txns::Marker;
use crate::replication::peer::PeerConn;
use crate::shard::{Shard, REGISTRY_SHARD};
use crate::topics::TopicMeta;
use crate::txn::state::{self, EndOutcome, InitOutcome, TxnMeta, TxnOffset, TxnState};
use crate::txn::{now_ms, txn_error, TxnHome};
use levee_core::{group_partition, TXN_TOPIC};
use levee_schemas::proto::{self, ErrorCode, Request, Response};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How long a marker write may wait for its replication.
const MARKER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an internal request to another node may take beyond its own
/// write (connecting, queueing).
const WRITE_WAIT: Duration = Duration::from_secs(10);
/// How long EndTxn (and InitProducerId aborting an old transaction) waits
/// for the markers before answering (the transaction completes anyway).
const SETTLE_WAIT: Duration = Duration::from_secs(20);

/// A transaction as listed and described.
#[derive(Debug, Clone)]
pub struct TxnSummary {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    pub state: &'static str,
    pub timeout_ms: i64,
    /// How long the open transaction has been open, ms (0 if none is).
    pub age_ms: i64,
    pub partitions: Vec<(String, u32)>,
    pub groups: Vec<String>,
}

fn summary(id: &str, m: &TxnMeta, now: i64) -> TxnSummary {
    let open = m.state == TxnState::Ongoing || m.state.is_prepare();
    TxnSummary {
        transactional_id: id.to_string(),
        producer_id: m.producer_id,
        epoch: m.epoch,
        state: m.state.name(),
        timeout_ms: m.timeout_ms,
        age_ms: if open {
            now.saturating_sub(m.started_ms)
        } else {
            0
        },
        partitions: m.partitions.iter().cloned().collect(),
        groups: m.offsets.keys().cloned().collect(),
    }
}

/// The transaction-state topic's settings: every write synced, small
/// segments (a snapshot makes older ones unneeded), replicated to
/// min(3, brokers).
fn txn_topic_meta(shard: &Shard) -> TopicMeta {
    let (partitions, rf) = match shard.cluster.as_ref() {
        Some(_) => (
            shard.cfg.transaction_partitions.unwrap_or(16),
            super::internal_topic_replication(shard),
        ),
        None => (shard.cfg.transaction_partitions.unwrap_or(1), 1),
    };
    let mut meta = TopicMeta::new(partitions.max(1), rf);
    meta.fsync = "always".into();
    meta.segment_bytes = 1 << 20;
    meta
}

/// Creates the transaction-state topic if it does not exist yet.
pub async fn ensure_txn_topic(shard: &Rc<Shard>) -> OpResult<()> {
    if shard.topic(TXN_TOPIC).is_some() {
        return Ok(());
    }
    let meta = txn_topic_meta(shard);
    match super::topics::create(shard, TXN_TOPIC.to_string(), meta).await {
        Ok(()) => {
            info!(topic = TXN_TOPIC, "created the transaction state topic");
            Ok(())
        }
        Err(e) if e.code == ErrorCode::TopicAlreadyExists => Ok(()),
        Err(e) => Err(OpError::new(
            ErrorCode::CoordinatorUnavailable,
            format!(
                "creating the transaction state topic {TXN_TOPIC} failed: {}; retry (an internal topic keeps min(3, brokers) copies, so it is created once that many brokers are live)",
                e.message
            ),
        )),
    }
}

fn validate_id(id: &str) -> OpResult<()> {
    if id.is_empty() || id.len() > 4096 {
        return Err(OpError::new(
            ErrorCode::InvalidRequest,
            "a transactional id must be 1 to 4096 bytes",
        ));
    }
    Ok(())
}

/// Where `id` is coordinated: (its partition of `__transaction_state`,
/// the node that leads it), from the metadata this node holds.
pub fn coordinator(shard: &Shard, id: &str) -> OpResult<(u32, u32)> {
    let unavailable = |m: String| OpError::new(ErrorCode::CoordinatorUnavailable, m);
    let Some(meta) = shard.topic(TXN_TOPIC) else {
        return Err(unavailable(format!(
            "the transaction state topic {TXN_TOPIC} does not exist yet; retry"
        )));
    };
    let index = group_partition(id, meta.partitions);
    let node = match shard.cluster.as_ref() {
        None => shard.cfg.node_id,
        Some(v) => v
            .metadata()
            .and_then(|md| {
                md.partition(TXN_TOPIC, index)
                    .and_then(|p| p.leader)
                    .filter(|l| md.is_alive(*l))
            })
            .map(|l| l as u32)
            .ok_or_else(|| {
                unavailable(format!(
                    "partition {index} of {TXN_TOPIC}, which holds transactional id `{id}`, has no leader now; retry"
                ))
            })?,
    };
    Ok((index, node))
}

/// The id's partition and the shard that owns it, if this node
/// coordinates it (else NOT_COORDINATOR, naming the one that does).
async fn route(shard: &Rc<Shard>, id: &str) -> OpResult<(u32, usize)> {
    validate_id(id)?;
    ensure_txn_topic(shard).await?;
    let until = Instant::now() + Duration::from_secs(5);
    let (index, node) = loop {
        match coordinator(shard, id) {
            Err(e) if e.code == ErrorCode::CoordinatorUnavailable && Instant::now() < until => {
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            other => break other?,
        }
    };
    let me = shard.cfg.node_id;
    if node != me {
        return Err(OpError::new(
            ErrorCode::NotLeader,
            format!("node {me} does not coordinate transactional id `{id}`; node {node} does"),
        ));
    }
    Ok((index, shard.owner(TXN_TOPIC, index)))
}

/// Refuses a new transaction past `max_open_transactions` on this shard.
fn check_open_limit(s: &Shard, current: Option<&TxnMeta>) -> OpResult<()> {
    let opening = current.is_none_or(|m| m.state != TxnState::Ongoing);
    let max = s.cfg.max_open_transactions;
    if opening && s.txns.open_count() >= max {
        return Err(OpError::new(
            ErrorCode::InvalidRequest,
            format!(
                "this coordinator has {max} transactions open (max_open_transactions); retry later"
            ),
        ));
    }
    Ok(())
}

/// InitProducerId with a transactional id: the id's producer id and a new
/// epoch (fencing the previous producer). An open transaction of the old
/// epoch is aborted first.
pub async fn init_producer_id(
    shard: &Rc<Shard>,
    id: String,
    timeout_ms: i32,
    expected: Option<(i64, i16)>,
) -> OpResult<(i64, i16)> {
    let max = shard.cfg.transaction_max_timeout_ms;
    if timeout_ms <= 0 || timeout_ms as u64 > max {
        return Err(OpError::new(
            ErrorCode::InvalidTransactionTimeout,
            format!("transaction.timeout.ms {timeout_ms} is not within 1..={max} (the broker's transaction_max_timeout_ms)"),
        ));
    }
    let (index, owner) = route(shard, &id).await?;
    shard
        .submit_to(owner, move |s| async move {
            let home = s.txns.ready(index).await?;
            for _ in 0..3 {
                let fresh = if state::needs_new_pid(home.get(&id).as_ref()) {
                    s.submit_to(REGISTRY_SHARD, |r| async move { r.next_producer_id().await })
                        .await?
                } else {
                    -1
                };
                let mut abort_first = false;
                let next = home
                    .update(&id, |cur| {
                        if fresh < 0 && state::needs_new_pid(cur) {
                            return Err(txn_error(state::TxnError::ConcurrentTransactions, &id));
                        }
                        match state::init(cur, i64::from(timeout_ms), now_ms(), expected, fresh) {
                            Ok(InitOutcome::Ready(m)) => Ok(Some(m)),
                            Ok(InitOutcome::AbortFirst(m)) => {
                                abort_first = true;
                                Ok(Some(m))
                            }
                            Err(e) => Err(txn_error(e, &id)),
                        }
                    })
                    .await?;
                let Some(next) = next else {
                    continue;
                };
                if !abort_first {
                    return Ok((next.producer_id, next.epoch));
                }
                info!(transactional_id = %id, epoch = next.epoch, "a new producer fences the old one: aborting its open transaction");
                spawn_completion(&s, &home, &id);
                settle(&home, &id, SETTLE_WAIT).await?;
            }
            Err(txn_error(state::TxnError::ConcurrentTransactions, &id))
        })
        .await
}

/// AddPartitionsToTxn: per-partition results.
pub async fn add_partitions(
    shard: &Rc<Shard>,
    id: String,
    pid: i64,
    epoch: i16,
    parts: Vec<(String, u32)>,
) -> OpResult<Vec<((String, u32), OpResult<()>)>> {
    super::await_topics(shard, parts.iter().map(|(t, _)| t.as_str())).await;
    // Partitions that do not exist fail alone; the others are added.
    let mut results = Vec::with_capacity(parts.len());
    let mut good = Vec::with_capacity(parts.len());
    for (t, p) in parts {
        match shard.check_partition(&t, p) {
            Ok(()) if !levee_core::is_internal_topic(&t) => good.push((t, p)),
            Ok(()) => results.push((
                (t.clone(), p),
                Err(OpError::new(
                    ErrorCode::InvalidTopicName,
                    format!("`{t}` is internal; a transaction cannot write to it"),
                )),
            )),
            Err(e) => results.push(((t, p), Err(e))),
        }
    }
    if !results.is_empty() {
        // Kafka fails the whole request when a partition is bad.
        for tp in good.drain(..) {
            results.push((
                tp,
                Err(OpError::new(
                    ErrorCode::InvalidRequest,
                    "another partition of the request was refused (OPERATION_NOT_ATTEMPTED)",
                )),
            ));
        }
        return Ok(results);
    }
    let (index, owner) = route(shard, &id).await?;
    let added = good.clone();
    shard
        .submit_to(owner, move |s| async move {
            let home = s.txns.ready(index).await?;
            let max = s.cfg.max_partitions_per_transaction;
            home.update(&id, |cur| {
                let m = known(cur, pid, &id)?;
                check_open_limit(&s, cur)?;
                state::add_partitions(m, pid, epoch, &added, now_ms(), max)
                    .map_err(|e| txn_error(e, &id))
            })
            .await
            .map(|_| ())
        })
        .await?;
    Ok(good.into_iter().map(|tp| (tp, Ok(()))).collect())
}

/// AddOffsetsToTxn: the group's offsets are committed with the transaction.
pub async fn add_offsets(
    shard: &Rc<Shard>,
    id: String,
    pid: i64,
    epoch: i16,
    group: String,
) -> OpResult<()> {
    crate::groups::validate_group_name(&group)?;
    let (index, owner) = route(shard, &id).await?;
    shard
        .submit_to(owner, move |s| async move {
            let home = s.txns.ready(index).await?;
            home.update(&id, |cur| {
                let m = known(cur, pid, &id)?;
                check_open_limit(&s, cur)?;
                let max = s.cfg.max_partitions_per_transaction;
                state::add_offsets(m, pid, epoch, &group, now_ms(), max)
                    .map_err(|e| txn_error(e, &id))
            })
            .await
            .map(|_| ())
        })
        .await
}

/// TxnOffsetCommit, on the group's coordinator: checks the member (when
/// it says who it is), then hands the offsets to the transaction's
/// coordinator, which keeps them (durably) until the transaction ends:
/// committed to the group on commit, dropped on abort.
#[allow(clippy::too_many_arguments)]
pub async fn txn_offset_commit(
    shard: &Rc<Shard>,
    id: String,
    group: String,
    pid: i64,
    epoch: i16,
    member_id: String,
    generation: i32,
    offsets: Vec<OffsetCommit>,
) -> OpResult<Vec<(String, u32, OpResult<()>)>> {
    let (gindex, gowner) = super::groups::route(shard, &group).await?;
    let group_name = group.clone();
    let g = group.clone();
    shard
        .submit_to(gowner, move |s| async move {
            s.groups.ready(gindex).await?;
            if !member_id.is_empty() && generation >= 0 {
                s.groups.check_member(&g, gindex, &member_id, generation)?;
            }
            Ok(())
        })
        .await?;
    let mut results = Vec::with_capacity(offsets.len());
    let mut good = Vec::with_capacity(offsets.len());
    for o in offsets {
        match shard.check_partition(&o.topic, o.partition) {
            Ok(()) => good.push((
                (o.topic, o.partition),
                (o.offset, o.leader_epoch, o.metadata),
            )),
            Err(e) => results.push((o.topic, o.partition, Err(e))),
        }
    }
    // The transaction's coordinator keeps them: here, or another node.
    ensure_txn_topic(shard).await?;
    let (_, node) = coordinator(shard, &id)?;
    if node == shard.cfg.node_id {
        add_txn_offsets(shard, id, group, pid, epoch, good.clone()).await?;
    } else {
        let offsets = good
            .iter()
            .map(|((t, p), (o, _, md))| proto::CommittedOffset {
                topic: t.clone(),
                partition: *p,
                offset: *o,
                metadata: Some(md.clone()),
                commit_timestamp_ms: 0,
            })
            .collect();
        let req = Request::AddTxnOffsets(Box::new(proto::AddTxnOffsets {
            transactional_id: id,
            group,
            producer_id: pid,
            producer_epoch: epoch,
            offsets: Some(offsets),
            leader_epochs: Some(good.iter().map(|(_, (_, e, _))| *e).collect()),
        }));
        call_node(shard, node, req, WRITE_WAIT).await?;
    }
    // Until the transaction completes, OffsetFetch with require_stable
    // answers UNSTABLE_OFFSET_COMMIT for these partitions (KIP-447). The
    // mark is stored with the group before the request is answered, so
    // the client's EndTxn always comes after it, and a coordinator that
    // takes over the group keeps it.
    let parts: Vec<(String, u32)> = good.iter().map(|(tp, _)| tp.clone()).collect();
    let until_ms = now_ms() + shard.cfg.transaction_max_timeout_ms as i64;
    let g = group_name;
    shard
        .submit_to(gowner, move |s| async move {
            s.groups.mark_txn_pending(&g, gindex, parts, until_ms).await
        })
        .await?;
    results.extend(good.into_iter().map(|((t, p), _)| (t, p, Ok(()))));
    Ok(results)
}

/// Adds offsets of `group` to the open transaction of `id`, at its
/// coordinator (this node; else NOT_COORDINATOR).
pub async fn add_txn_offsets(
    shard: &Rc<Shard>,
    id: String,
    group: String,
    pid: i64,
    epoch: i16,
    offsets: Vec<TxnOffset>,
) -> OpResult<()> {
    let (index, owner) = route(shard, &id).await?;
    shard
        .submit_to(owner, move |s| async move {
            let home = s.txns.ready(index).await?;
            let max = s.cfg.max_partitions_per_transaction;
            home.update(&id, |cur| {
                let m = known(cur, pid, &id)?;
                state::txn_offsets(m, pid, epoch, &group, &offsets, max)
                    .map(Some)
                    .map_err(|e| txn_error(e, &id))
            })
            .await
            .map(|_| ())
        })
        .await
}

/// Idle connections kept per node and shard for internal requests.
pub const IDLE_PEER_CONNS: usize = 4;

/// Sends an internal request to node `node` (its client listener) and
/// waits for its GroupResult.
async fn call_node(shard: &Shard, node: u32, req: Request, wait: Duration) -> OpResult<()> {
    let unavailable = |m: String| OpError::new(ErrorCode::CoordinatorUnavailable, m);
    let addr = shard
        .cluster
        .as_ref()
        .and_then(|v| v.metadata())
        .and_then(|md| {
            md.brokers
                .get(&u64::from(node))
                .map(|b| b.client_addr.clone())
        })
        .ok_or_else(|| unavailable(format!("node {node} has no address in the metadata")))?;
    let me = u64::from(shard.cfg.node_id);
    // An idle connection of an earlier request, if any; one the peer has
    // closed since fails, and the request goes again on a new one (the
    // requests sent this way are safe to repeat: the coordinator retries
    // them anyway).
    let idle = shard
        .peer_conns
        .borrow_mut()
        .get_mut(&addr)
        .and_then(Vec::pop);
    let reply = match idle {
        Some(mut conn) => match conn.call(req.clone(), wait).await {
            Ok(r) => Some((conn, r)),
            Err(e) => {
                debug!(node, addr = %addr, error = %e, "an idle connection to a node failed; connecting again");
                None
            }
        },
        None => None,
    };
    let (conn, (h, _, _)) = match reply {
        Some(r) => r,
        None => {
            let mut conn = PeerConn::connect(&addr, me, shard.cfg.max_frame_bytes as usize)
                .await
                .map_err(|e| unavailable(format!("connecting to node {node} ({addr}): {e}")))?;
            let r = conn.call(req, wait).await.map_err(|e| {
                unavailable(format!("a request to node {node} ({addr}) failed: {e}"))
            })?;
            (conn, r)
        }
    };
    {
        let mut pool = shard.peer_conns.borrow_mut();
        let idle = pool.entry(addr).or_default();
        if idle.len() < IDLE_PEER_CONNS {
            idle.push(conn);
        }
    }
    if h.error != ErrorCode::None {
        return Err(OpError::new(h.error, h.message.unwrap_or_default()));
    }
    match h.response {
        Some(Response::GroupResult(r)) if r.error == ErrorCode::None => Ok(()),
        Some(Response::GroupResult(r)) => Err(OpError::new(r.error, r.message.unwrap_or_default())),
        _ => Err(OpError::new(
            ErrorCode::Unknown,
            format!("node {node} answered an internal transaction request with something else than a GroupResult"),
        )),
    }
}

/// EndTxn: commits or aborts the open transaction; answers once the
/// markers are written (or after [`SETTLE_WAIT`]: the decision is
/// durable, the coordinator finishes it).
pub async fn end_txn(
    shard: &Rc<Shard>,
    id: String,
    pid: i64,
    epoch: i16,
    commit: bool,
) -> OpResult<()> {
    let (index, owner) = route(shard, &id).await?;
    shard
        .submit_to(owner, move |s| async move {
            let home = s.txns.ready(index).await?;
            let mut done = false;
            home.update(&id, |cur| {
                let m = known(cur, pid, &id)?;
                match state::end(m, pid, epoch, commit, now_ms()) {
                    Ok(EndOutcome::Prepare(next)) => Ok(Some(next)),
                    Ok(EndOutcome::AlreadyDone) => {
                        done = true;
                        Ok(None)
                    }
                    Err(e) => Err(txn_error(e, &id)),
                }
            })
            .await?;
            if !done {
                spawn_completion(&s, &home, &id);
                if let Err(e) = settle(&home, &id, SETTLE_WAIT).await {
                    // Prepared: it completes (here or on the next coordinator).
                    warn!(transactional_id = %id, error = %e.message, "the transaction's markers are not all written yet; answering anyway, they will be");
                }
            }
            Ok(())
        })
        .await
}

/// Waits until `id` is no longer completing (bounded by `wait`).
async fn settle(home: &Rc<TxnHome>, id: &str, wait: Duration) -> OpResult<()> {
    let deadline = Instant::now() + wait;
    loop {
        let listen = home.changed.listen();
        home.check()?;
        if home.get(id).is_none_or(|m| !m.state.is_prepare()) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(txn_error(state::TxnError::ConcurrentTransactions, id));
        }
        futures_lite::future::or(listen, glommio::timer::sleep(left)).await;
    }
}

/// Starts writing the markers of `id` (in a Prepare state) unless that
/// is under way; retried with backoff until done or this node stops
/// coordinating it. Runs on the home's shard.
pub fn spawn_completion(s: &Rc<Shard>, home: &Rc<TxnHome>, id: &str) {
    if !home.start_completing(id) {
        return;
    }
    let (s, home, id) = (s.clone(), home.clone(), id.to_string());
    glommio::spawn_local(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            if home.gone.get() || s.shutdown.is_set() {
                break;
            }
            let Some(m) = home.get(&id).filter(|m| m.state.is_prepare()) else {
                break;
            };
            match finish(&s, &home, &id, &m).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(transactional_id = %id, error = %e.message, "completing a transaction failed; retrying");
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        home.done_completing(&id);
    })
    .detach();
}

/// Writes the markers (and, on commit, the group offsets), then the
/// completed state.
async fn finish(s: &Rc<Shard>, home: &Rc<TxnHome>, id: &str, m: &TxnMeta) -> OpResult<()> {
    let commit = m.state == TxnState::PrepareCommit;
    let marker = Marker {
        commit,
        coordinator_epoch: home.coordinator_epoch(),
    };
    let tasks: Vec<_> = m
        .partitions
        .iter()
        .map(|(t, p)| {
            glommio::spawn_local(write_marker(
                s.clone(),
                t.clone(),
                *p,
                m.producer_id,
                m.epoch,
                marker,
            ))
        })
        .collect();
    let mut first_err = None;
    for t in tasks {
        if let Err(e) = t.await {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    for (group, offs) in &m.offsets {
        if offs.is_empty() {
            continue;
        }
        let offsets = offs
            .iter()
            .map(|((t, p), (o, e, md))| OffsetCommit {
                topic: t.clone(),
                partition: *p,
                offset: *o,
                metadata: md.clone(),
                leader_epoch: *e,
            })
            .collect();
        // On abort nothing is committed; the group forgets they were pending.
        group_offsets(s, group.clone(), offsets, !commit).await?;
    }
    let want = (m.producer_id, m.epoch, m.state);
    home.update(id, |cur| match cur {
        Some(c) if (c.producer_id, c.epoch, c.state) == want => Ok(state::complete(c, now_ms())),
        _ => Ok(None),
    })
    .await?;
    Ok(())
}

/// Commits a committed transaction's offsets to the group (or, `abort`,
/// only clears their pending mark), at its coordinator (this node or
/// another).
async fn group_offsets(
    s: &Rc<Shard>,
    group: String,
    offsets: Vec<OffsetCommit>,
    abort: bool,
) -> OpResult<()> {
    super::groups::ensure_offsets_topic(s).await?;
    let (_, node) = super::groups::coordinator(s, &group)?;
    if node == s.cfg.node_id {
        if abort {
            let parts = offsets
                .into_iter()
                .map(|o| (o.topic, o.partition))
                .collect();
            return super::groups::abort_txn_offsets(s, group, parts).await;
        }
        return super::groups::commit_txn_offsets(s, group, offsets).await;
    }
    let leader_epochs = offsets.iter().map(|o| o.leader_epoch).collect();
    let offsets = offsets
        .into_iter()
        .map(|o| proto::CommittedOffset {
            topic: o.topic,
            partition: o.partition,
            offset: o.offset,
            metadata: Some(o.metadata),
            commit_timestamp_ms: 0,
        })
        .collect();
    let req = Request::CommitTxnOffsets(Box::new(proto::CommitTxnOffsets {
        group,
        offsets: Some(offsets),
        leader_epochs: Some(leader_epochs),
        abort,
    }));
    call_node(s, node, req, WRITE_WAIT).await
}

/// Writes one marker on the partition's leader (this node or another). A
/// partition deleted since, or already past this epoch, needs none.
async fn write_marker(
    s: Rc<Shard>,
    topic: String,
    partition: u32,
    pid: i64,
    epoch: i16,
    marker: Marker,
) -> OpResult<()> {
    if let Err(e) = s.check_partition(&topic, partition) {
        if e.code == ErrorCode::UnknownTopicOrPartition {
            return Ok(());
        }
        return Err(e);
    }
    let leader = s.cluster.as_ref().map(|v| {
        v.metadata()
            .and_then(|md| md.partition(&topic, partition).and_then(|p| p.leader))
    });
    let res = match leader {
        Some(None) => Err(OpError::new(
            ErrorCode::NotLeader,
            format!("partition {partition} of `{topic}` has no leader now"),
        )),
        Some(Some(node)) if node != u64::from(s.cfg.node_id) => {
            let req = Request::WriteTxnMarker(Box::new(proto::WriteTxnMarker {
                topic,
                partition,
                producer_id: pid,
                producer_epoch: epoch,
                commit: marker.commit,
                coordinator_epoch: marker.coordinator_epoch,
            }));
            call_node(&s, node as u32, req, MARKER_TIMEOUT + WRITE_WAIT).await
        }
        _ => write_marker_here(&s, topic, partition, pid, epoch, marker).await,
    };
    match res {
        Ok(()) => {
            fault_crash_after_marker(marker.commit);
            Ok(())
        }
        Err(e) if e.code == ErrorCode::ProducerFenced => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes a marker on a partition this node leads.
pub async fn write_marker_here(
    s: &Rc<Shard>,
    topic: String,
    partition: u32,
    pid: i64,
    epoch: i16,
    marker: Marker,
) -> OpResult<()> {
    s.check_partition(&topic, partition)?;
    let owner = s.owner(&topic, partition);
    s.submit_to(owner, move |s| async move {
        s.partition(&topic, partition)?
            .write_marker(pid, epoch, marker, MARKER_TIMEOUT)
            .await
            .map(drop)
    })
    .await
}

/// A test-only fault for the coordinator-crash test: with
/// `LEVEE_FAULT_TXN_CRASH_AFTER_MARKERS=N` in the broker's environment,
/// the process aborts (as a kill -9 would stop it) once it has written N
/// commit markers, in the middle of a transaction's commit. Unset or 0:
/// never.
fn fault_crash_after_marker(commit: bool) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static AFTER: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static WRITTEN: AtomicU64 = AtomicU64::new(0);
    let after = *AFTER.get_or_init(|| {
        std::env::var("LEVEE_FAULT_TXN_CRASH_AFTER_MARKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    if after == 0 || !commit {
        return;
    }
    if WRITTEN.fetch_add(1, Ordering::SeqCst) + 1 >= after {
        warn!("fault injection: stopping the broker in the middle of a commit (LEVEE_FAULT_TXN_CRASH_AFTER_MARKERS)");
        std::process::abort();
    }
}

/// Every transactional id this node coordinates, sorted by id.
pub async fn list(shard: &Rc<Shard>) -> OpResult<Vec<TxnSummary>> {
    let tasks: Vec<_> = (0..shard.nshards)
        .map(|n| {
            glommio::spawn_local(shard.submit_to(n, |s| async move {
                let now = now_ms();
                Ok(s.txns
                    .homes()
                    .iter()
                    .flat_map(|h| h.states())
                    .map(|(id, m)| summary(&id, &m, now))
                    .collect::<Vec<_>>())
            }))
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
    Ok(all)
}

/// One transactional id, from its coordinator.
pub async fn describe(shard: &Rc<Shard>, id: String) -> OpResult<TxnSummary> {
    let (index, owner) = route(shard, &id).await?;
    shard
        .submit_to(owner, move |s| async move {
            let home = s.txns.ready(index).await?;
            home.get(&id)
                .map(|m| summary(&id, &m, now_ms()))
                .ok_or_else(|| {
                    OpError::new(
                        ErrorCode::TransactionalIdNotFound,
                        format!("transactional id `{id}` is unknown to its coordinator"),
                    )
                })
        })
        .await
}

/// Per shard, every 200 ms or when a coordinator loads: finishes
/// transactions found in a Prepare state, aborts open ones past their
/// timeout, forgets ids idle past `transactional_id_expiration_ms`, and
/// rewrites the state log when it grew.
pub async fn run_driver(shard: Rc<Shard>) {
    let expiration = shard.cfg.transactional_id_expiration_ms as i64;
    while !shard.shutdown.is_set() {
        let wake = shard.txns.work.listen();
        futures_lite::future::or(wake, glommio::timer::sleep(Duration::from_millis(200))).await;
        for home in shard.txns.homes() {
            if home.check().is_err() {
                continue;
            }
            drive_home(&shard, &home, expiration).await;
        }
    }
}

async fn drive_home(s: &Rc<Shard>, home: &Rc<TxnHome>, expiration_ms: i64) {
    let now = now_ms();
    for (id, m) in home.states() {
        if m.state.is_prepare() {
            spawn_completion(s, home, &id);
        } else if m.state == TxnState::Ongoing {
            let next = home
                .update(&id, |cur| {
                    // The same fresh id is kept: markers must carry the
                    // producer id the data was written with.
                    Ok(cur.and_then(|c| state::timed_out(c, now_ms(), c.producer_id)))
                })
                .await;
            match next {
                Ok(Some(n)) => {
                    info!(transactional_id = %id, epoch = n.epoch, timeout_ms = n.timeout_ms, "aborting a transaction past its timeout");
                    spawn_completion(s, home, &id);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(transactional_id = %id, error = %e.message, "aborting a timed-out transaction failed; retrying")
                }
            }
        } else if state::expired(&m, now, expiration_ms) {
            let res = home
                .update(&id, |cur| {
                    Ok(cur
                        .filter(|c| state::expired(c, now_ms(), expiration_ms))
                        .map(|c| TxnMeta {
                            state: TxnState::Dead,
                            ..c.clone()
                        }))
                })
                .await;
            match res {
                Ok(Some(_)) => info!(transactional_id = %id, "forgot an idle transactional id"),
                Ok(None) => {}
                Err(e) => {
                    warn!(transactional_id = %id, error = %e.message, "expiring a transactional id failed")
                }
            }
        }
    }
    if let Err(e) = home.snapshot_if_due().await {
        warn!(partition = home.index, error = %e.message, "rewriting the transaction state log failed; retried later");
    }
}

/// The transactional id's state, or INVALID_PRODUCER_ID_MAPPING for an id
/// the coordinator does not know (no InitProducerId yet, or expired).
fn known<'a>(cur: Option<&'a TxnMeta>, pid: i64, id: &str) -> OpResult<&'a TxnMeta> {
    cur.ok_or_else(|| {
        txn_error(
            state::TxnError::InvalidProducerIdMapping {
                current: -1,
                got: pid,
            },
            id,
        )
    })
}
