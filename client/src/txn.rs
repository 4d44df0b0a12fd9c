//! Transactions: the requests of a transactional producer (KIP-98's
//! FindCoordinator, InitProducerId with a transactional id,
//! AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit and EndTxn, over
//! the native protocol; [`crate::Producer`] drives them), and the
//! transactions as their coordinators list them (`levee txn
//! list|describe`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use levee_schemas::proto::{
    self, AddOffsetsToTxn, AddPartitionsToTxn, EndTxn, ErrorCode, FindTxnCoordinator,
    ListTransactions, Request, Response, TopicPartitions, TxnOffsetCommit,
};

use crate::client::{required, Client};
use crate::connection::{unexpected, Reply};
use crate::error::{ClientError, Result};
use crate::group::OffsetCommit;

/// A transactional id and the node last found coordinating it.
#[derive(Debug)]
pub struct TxnCoordinator {
    /// The transactional id.
    pub transactional_id: String,
    node: Mutex<Option<u32>>,
}

impl TxnCoordinator {
    /// A transactional id whose coordinator is not looked up yet.
    pub fn new(transactional_id: impl Into<String>) -> TxnCoordinator {
        TxnCoordinator {
            transactional_id: transactional_id.into(),
            node: Mutex::new(None),
        }
    }

    fn get(&self) -> Option<u32> {
        *self.node.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, node: Option<u32>) {
        *self.node.lock().unwrap_or_else(|p| p.into_inner()) = node;
    }
}

/// How long EndTxn and InitProducerId (which may abort an open transaction
/// first) may take beyond the request timeout: the coordinator answers
/// once the transaction's markers are written.
const TXN_SLACK: Duration = Duration::from_secs(30);

/// The error a transaction request's answer carries, wherever it carries it.
fn txn_reply_code(reply: &Reply) -> (ErrorCode, String) {
    if reply.header.error != ErrorCode::None {
        return (
            reply.header.error,
            reply.header.message.clone().unwrap_or_default(),
        );
    }
    match &reply.header.response {
        Some(Response::TxnResponse(r)) => (r.error, r.message.clone().unwrap_or_default()),
        Some(Response::ProducerIdResponse(r)) => (r.error, r.message.clone().unwrap_or_default()),
        Some(Response::TxnCoordinatorResponse(r)) => {
            (r.error, r.message.clone().unwrap_or_default())
        }
        _ => (ErrorCode::None, String::new()),
    }
}

/// Whether a code means: find the coordinator again, then retry.
fn coordinator_moved(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotLeader
            | ErrorCode::CoordinatorUnavailable
            | ErrorCode::CoordinatorLoadInProgress
            | ErrorCode::ShuttingDown
    )
}

/// A transaction error as the client's typed error.
pub(crate) fn txn_error(code: ErrorCode, message: String, id: &str) -> ClientError {
    match code {
        ErrorCode::ProducerFenced => ClientError::ProducerFenced {
            transactional_id: id.to_string(),
            message,
        },
        _ => ClientError::Server { code, message },
    }
}

/// A transactional id at its coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionInfo {
    /// The transactional id.
    pub transactional_id: String,
    /// Its producer id and epoch.
    pub producer_id: i64,
    pub epoch: i16,
    /// Empty, Ongoing, PrepareCommit, PrepareAbort, CompleteCommit or
    /// CompleteAbort.
    pub state: String,
    /// The producer's transaction timeout, ms.
    pub timeout_ms: i64,
    /// How long the open transaction has been open, ms (0: none is).
    pub age_ms: i64,
    /// The partitions of the open transaction, (topic, partition).
    pub partitions: Vec<(String, u32)>,
    /// The groups whose offsets it commits.
    pub groups: Vec<String>,
    /// The node coordinating it (the one that listed it).
    pub coordinator: u32,
}

impl Client {
    /// The node coordinating transactional id `id` (asked of the bootstrap
    /// broker, which creates the transaction state topic on first use).
    pub async fn find_txn_coordinator(&self, id: &str) -> Result<u32> {
        let req = Request::FindTxnCoordinator(Box::new(FindTxnCoordinator {
            transactional_id: id.to_string(),
        }));
        let reply = self
            .call(
                req,
                Vec::new(),
                Duration::ZERO,
                "find transaction coordinator",
            )
            .await?;
        let (code, message) = txn_reply_code(&reply);
        if code != ErrorCode::None {
            return Err(txn_error(code, message, id));
        }
        match reply.header.response {
            Some(Response::TxnCoordinatorResponse(r)) => Ok(r.node_id),
            other => Err(unexpected("TxnCoordinatorResponse", other.as_ref())),
        }
    }

    /// Sends a transaction request to the id's coordinator. A coordinator
    /// that moved or is loading (NotLeader, CoordinatorUnavailable,
    /// CoordinatorLoadInProgress, a lost connection) is looked up again,
    /// and a transaction still completing (ConcurrentTransactions) waited
    /// for, with backoff, until `deadline`; then the last error is returned.
    /// A fenced producer gets [`ClientError::ProducerFenced`].
    pub(crate) async fn txn_call(
        &self,
        coord: &TxnCoordinator,
        request: Request,
        extra: Duration,
        what: &str,
        deadline: Instant,
    ) -> Result<Reply> {
        let id = coord.transactional_id.as_str();
        let mut backoff = Duration::from_millis(20);
        loop {
            let node = match coord.get() {
                Some(n) => Ok(n),
                None => self.find_txn_coordinator(id).await,
            };
            let res = match node {
                Ok(n) => {
                    coord.set(Some(n));
                    match self.node_connection(n).await {
                        Ok(conn) => {
                            conn.call(
                                request.clone(),
                                Vec::new(),
                                self.config().request_timeout + extra,
                                what,
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let (code, message) = match &res {
                Ok(reply) => txn_reply_code(reply),
                Err(ClientError::Server { code, message }) => (*code, message.clone()),
                Err(e) if e.is_retriable() => (ErrorCode::CoordinatorUnavailable, e.to_string()),
                Err(_) => (ErrorCode::None, String::new()),
            };
            let moved = coordinator_moved(code);
            let retry = moved || code == ErrorCode::ConcurrentTransactions;
            if retry && Instant::now() + backoff < deadline {
                tracing::debug!(
                    transactional_id = id,
                    code = levee_schemas::error_name(code),
                    "transaction request retried"
                );
                if moved {
                    coord.set(None);
                    self.invalidate_metadata();
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
            let reply = res?;
            if code != ErrorCode::None {
                return Err(txn_error(code, message, id));
            }
            return Ok(reply);
        }
    }

    /// InitProducerId with a transactional id, at its coordinator: the id's
    /// producer id and a new epoch, which fences any producer with an older
    /// one (its open transaction is aborted first). `existing`: the id and
    /// epoch this producer has (to take the next epoch after an abort).
    pub async fn init_transactional_producer(
        &self,
        coord: &TxnCoordinator,
        transaction_timeout: Duration,
        existing: Option<(i64, i16)>,
        deadline: Instant,
    ) -> Result<(i64, i16)> {
        let (producer_id, producer_epoch) = existing.unwrap_or((-1, -1));
        let req = Request::InitProducerId(Box::new(proto::InitProducerId {
            producer_id,
            producer_epoch,
            transactional_id: Some(coord.transactional_id.clone()),
            transaction_timeout_ms: i32::try_from(transaction_timeout.as_millis())
                .unwrap_or(i32::MAX),
        }));
        let reply = self
            .txn_call(
                coord,
                req,
                TXN_SLACK,
                "init transactional producer id",
                deadline,
            )
            .await?;
        match reply.header.response {
            Some(Response::ProducerIdResponse(r)) => Ok((r.producer_id, r.producer_epoch)),
            other => Err(unexpected("ProducerIdResponse", other.as_ref())),
        }
    }

    /// AddPartitionsToTxn: the partitions that could not be added (with
    /// their errors); empty when all were.
    pub async fn add_partitions_to_txn(
        &self,
        coord: &TxnCoordinator,
        (producer_id, producer_epoch): (i64, i16),
        partitions: &[(String, u32)],
        deadline: Instant,
    ) -> Result<Vec<(String, u32, ClientError)>> {
        let mut by_topic: std::collections::BTreeMap<&str, Vec<u32>> = Default::default();
        for (t, p) in partitions {
            by_topic.entry(t.as_str()).or_default().push(*p);
        }
        let req = Request::AddPartitionsToTxn(Box::new(AddPartitionsToTxn {
            transactional_id: coord.transactional_id.clone(),
            producer_id,
            producer_epoch,
            partitions: Some(
                by_topic
                    .into_iter()
                    .map(|(t, ps)| TopicPartitions {
                        topic: t.to_string(),
                        partitions: Some(ps),
                    })
                    .collect(),
            ),
        }));
        let reply = self
            .txn_call(
                coord,
                req,
                Duration::ZERO,
                "add partitions to transaction",
                deadline,
            )
            .await?;
        txn_failed(reply)
    }

    /// AddOffsetsToTxn: offsets of `group` sent in this transaction are
    /// committed with it.
    pub async fn add_offsets_to_txn(
        &self,
        coord: &TxnCoordinator,
        (producer_id, producer_epoch): (i64, i16),
        group: &str,
        deadline: Instant,
    ) -> Result<()> {
        let req = Request::AddOffsetsToTxn(Box::new(AddOffsetsToTxn {
            transactional_id: coord.transactional_id.clone(),
            producer_id,
            producer_epoch,
            group: group.to_string(),
        }));
        self.txn_call(
            coord,
            req,
            Duration::ZERO,
            "add offsets to transaction",
            deadline,
        )
        .await?;
        Ok(())
    }

    /// TxnOffsetCommit, at the group's coordinator (after
    /// [`Client::add_offsets_to_txn`]): the offsets, checked against the
    /// member, are kept with the transaction and committed with it. Fails
    /// if any partition's offset was refused.
    pub async fn txn_offset_commit(
        &self,
        transactional_id: &str,
        (producer_id, producer_epoch): (i64, i16),
        group: &crate::group::ConsumerGroupMetadata,
        offsets: &[OffsetCommit],
    ) -> Result<()> {
        let req = Request::TxnOffsetCommit(Box::new(TxnOffsetCommit {
            transactional_id: transactional_id.to_string(),
            group: group.group.clone(),
            producer_id,
            producer_epoch,
            member_id: Some(group.member_id.clone()),
            generation: group.generation,
            offsets: Some(
                offsets
                    .iter()
                    .map(|o| proto::CommittedOffset {
                        topic: o.topic.clone(),
                        partition: o.partition,
                        offset: o
                            .offset
                            .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX)),
                        metadata: o.metadata.clone(),
                        commit_timestamp_ms: 0,
                    })
                    .collect(),
            ),
            leader_epochs: None,
        }));
        let reply = self
            .group_call(
                &group.group,
                req,
                Duration::ZERO,
                "commit offsets to transaction",
            )
            .await
            .map_err(|e| match e {
                ClientError::Server { code, message } => txn_error(code, message, transactional_id),
                e => e,
            })?;
        let (code, message) = txn_reply_code(&reply);
        if code != ErrorCode::None {
            return Err(txn_error(code, message, transactional_id));
        }
        match txn_failed(reply)?.into_iter().next() {
            None => Ok(()),
            Some((_, _, e)) => Err(e),
        }
    }

    /// EndTxn: commits (`commit`) or aborts the open transaction; answered
    /// once its markers are written.
    pub async fn end_txn(
        &self,
        coord: &TxnCoordinator,
        (producer_id, producer_epoch): (i64, i16),
        commit: bool,
        deadline: Instant,
    ) -> Result<()> {
        let req = Request::EndTxn(Box::new(EndTxn {
            transactional_id: coord.transactional_id.clone(),
            producer_id,
            producer_epoch,
            commit,
        }));
        let what = if commit {
            "commit transaction"
        } else {
            "abort transaction"
        };
        self.txn_call(coord, req, TXN_SLACK, what, deadline).await?;
        Ok(())
    }

    /// Every transactional id of the cluster (each node lists those it
    /// coordinates), or only `id`; sorted by id.
    pub async fn list_transactions(&self, id: Option<&str>) -> Result<Vec<TransactionInfo>> {
        let nodes = self.metadata(&[]).await?.brokers;
        let mut all = Vec::new();
        let mut answered = 0;
        let mut last_err = None;
        let single = nodes.len() <= 1;
        let targets: Vec<Option<u32>> = if single {
            vec![None]
        } else {
            nodes.iter().map(|b| Some(b.node_id)).collect()
        };
        for node in targets {
            let conn = match node {
                None => self.connection().await,
                Some(n) => self.node_connection(n).await,
            };
            let listed = match conn {
                Ok(conn) => {
                    let node = node.unwrap_or(conn.hello().node_id);
                    self.list_transactions_on(&conn, node, id).await
                }
                Err(e) => Err(e),
            };
            match listed {
                Ok(t) => {
                    answered += 1;
                    all.extend(t);
                }
                // A node that cannot be reached (down) coordinates nothing now.
                Err(e) => last_err = Some(e),
            }
        }
        if answered == 0 {
            if let Some(e) = last_err {
                return Err(e);
            }
        }
        all.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        Ok(all)
    }

    /// One transactional id; unknown: [`ClientError::Server`] with
    /// `TransactionalIdNotFound`.
    pub async fn describe_transaction(&self, id: &str) -> Result<TransactionInfo> {
        self.list_transactions(Some(id))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Server {
                code: ErrorCode::TransactionalIdNotFound,
                message: format!("no coordinator knows transactional id `{id}`"),
            })
    }

    async fn list_transactions_on(
        &self,
        conn: &crate::connection::Connection,
        node: u32,
        id: Option<&str>,
    ) -> Result<Vec<TransactionInfo>> {
        let reply = conn
            .call(
                Request::ListTransactions(Box::new(ListTransactions {
                    transactional_id: id.map(str::to_string),
                })),
                Vec::new(),
                self.config().request_timeout,
                "list transactions",
            )
            .await?;
        match reply.header.response {
            Some(Response::ListTransactionsResponse(r)) => Ok(required(r.transactions)
                .into_iter()
                .map(|t| TransactionInfo {
                    transactional_id: t.transactional_id.unwrap_or_default(),
                    producer_id: t.producer_id,
                    epoch: t.epoch,
                    state: t.state.unwrap_or_default(),
                    timeout_ms: t.timeout_ms,
                    age_ms: t.age_ms,
                    partitions: required(t.partitions)
                        .into_iter()
                        .flat_map(|tp| {
                            let topic = tp.topic;
                            required(tp.partitions)
                                .into_iter()
                                .map(move |p| (topic.clone(), p))
                        })
                        .collect(),
                    groups: required(t.groups),
                    coordinator: node,
                })
                .collect()),
            other => Err(unexpected("ListTransactionsResponse", other.as_ref())),
        }
    }
}

/// A TxnResponse's per-partition failures.
fn txn_failed(reply: Reply) -> Result<Vec<(String, u32, ClientError)>> {
    match reply.header.response {
        Some(Response::TxnResponse(r)) => Ok(required(r.failed)
            .into_iter()
            .map(|f| {
                let topic = f.topic.unwrap_or_default();
                let e = ClientError::from_code(f.error, f.message, &topic, Some(f.partition));
                (topic, f.partition, e)
            })
            .collect()),
        other => Err(unexpected("TxnResponse", other.as_ref())),
    }
}
