//! Transactions of Kafka clients' transactional producers, as their
//! coordinators list them (`levee txn list|describe`).

use levee_schemas::proto::{ErrorCode, ListTransactions, Request, Response};

use crate::client::{required, Client};
use crate::connection::unexpected;
use crate::error::{ClientError, Result};

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
