//! A transactional producer's state (KIP-98, as Kafka's clients keep it),
//! without I/O: which calls are allowed now, which partitions the
//! coordinator already has in the open transaction, and what a failure
//! means for the transaction.
//!
//! - `Uninitialized` until `init_transactions` took the id's producer id
//!   and epoch; then `Ready`; `begin_transaction` opens one
//!   (`InTransaction`, local only: the coordinator hears of it with the
//!   first partition or group added); `commit_transaction` /
//!   `abort_transaction` move through `Committing` / `Aborting` back to
//!   `Ready`.
//! - **Abortable**: a record not delivered, partitions or offsets that
//!   could not be added, a refused commit. The transaction cannot commit;
//!   sends fail with the first error; only `abort_transaction` is allowed.
//! - **Fatal**: fenced (a newer producer with the same transactional id, or
//!   the transaction timed out and was aborted at a new epoch). Every call
//!   fails with [`ClientError::ProducerFenced`].

use std::collections::BTreeSet;

use levee_schemas::proto::ErrorCode;

use crate::error::ClientError;

#[derive(Debug, Clone)]
pub(crate) enum Phase {
    Uninitialized,
    Ready,
    InTransaction,
    Committing,
    Aborting,
    Abortable(ClientError),
    Fatal(ClientError),
}

#[derive(Debug)]
pub(crate) struct TxnState {
    pub transactional_id: String,
    pub phase: Phase,
    /// Partitions the coordinator has in the open transaction.
    added: BTreeSet<(String, u32)>,
    /// Whether the coordinator has the transaction open (a partition or a
    /// group was added): only then does ending it need EndTxn.
    pub open_at_coordinator: bool,
    /// A batch failed for good in this transaction: its partition's
    /// sequence has a gap, so the next transaction starts at a new epoch.
    pub bump_epoch: bool,
}

/// Whether an error fences the producer (fatal).
pub(crate) fn is_fencing(e: &ClientError) -> bool {
    matches!(e, ClientError::ProducerFenced { .. })
        || matches!(
            e.code(),
            Some(ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch)
        )
}

impl TxnState {
    pub fn new(transactional_id: String) -> TxnState {
        TxnState {
            transactional_id,
            phase: Phase::Uninitialized,
            added: BTreeSet::new(),
            open_at_coordinator: false,
            bump_epoch: false,
        }
    }

    fn invalid(&self, what: &str) -> ClientError {
        let state = match &self.phase {
            Phase::Uninitialized => "call init_transactions first",
            Phase::Ready => "no transaction is open (call begin_transaction)",
            Phase::InTransaction => "a transaction is open",
            Phase::Committing => "the transaction is being committed",
            Phase::Aborting => "the transaction is being aborted",
            Phase::Abortable(_) | Phase::Fatal(_) => "",
        };
        ClientError::InvalidTxnState(format!(
            "transactional producer `{}`: cannot {what}: {state}",
            self.transactional_id
        ))
    }

    /// The error of a fatal or abortable state.
    fn failed(&self) -> Option<ClientError> {
        match &self.phase {
            Phase::Fatal(e) | Phase::Abortable(e) => Some(e.clone()),
            _ => None,
        }
    }

    fn fatal(&self) -> Option<ClientError> {
        match &self.phase {
            Phase::Fatal(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// `init_transactions`: allowed before the first and to retry a failed one.
    pub fn can_init(&self) -> Result<(), ClientError> {
        match &self.phase {
            Phase::Uninitialized => Ok(()),
            Phase::Fatal(e) => Err(e.clone()),
            _ => Err(self.invalid("initialize transactions again")),
        }
    }

    pub fn initialized(&mut self) {
        self.phase = Phase::Ready;
        self.added.clear();
        self.open_at_coordinator = false;
        self.bump_epoch = false;
    }

    pub fn begin(&mut self) -> Result<(), ClientError> {
        if let Some(e) = self.fatal() {
            return Err(e);
        }
        match self.phase {
            Phase::Ready => {
                self.phase = Phase::InTransaction;
                Ok(())
            }
            _ => Err(self.invalid("begin a transaction")),
        }
    }

    /// `send`: only inside an open transaction that can still commit.
    pub fn can_send(&self) -> Result<(), ClientError> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        match self.phase {
            Phase::InTransaction => Ok(()),
            _ => Err(self.invalid("send records")),
        }
    }

    /// Whether the sender may send a request now; else the error its
    /// batches fail with (an abort drops what is not sent yet).
    pub fn can_dispatch(&self) -> Result<(), ClientError> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        match self.phase {
            Phase::InTransaction | Phase::Committing => Ok(()),
            Phase::Aborting => Err(ClientError::AbortableTransaction {
                reason: "the transaction is being aborted; the record was not sent".into(),
            }),
            _ => Err(self.invalid("send records")),
        }
    }

    /// `send_offsets_to_transaction`.
    pub fn can_add_offsets(&self) -> Result<(), ClientError> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        match self.phase {
            Phase::InTransaction => Ok(()),
            _ => Err(self.invalid("send offsets to the transaction")),
        }
    }

    /// The partitions of a request not yet in the coordinator's transaction.
    pub fn to_add<'a>(
        &self,
        parts: impl IntoIterator<Item = &'a (String, u32)>,
    ) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = parts
            .into_iter()
            .filter(|tp| !self.added.contains(*tp))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Partitions the coordinator added.
    pub fn added(&mut self, parts: impl IntoIterator<Item = (String, u32)>) {
        let before = self.added.len();
        self.added.extend(parts);
        if self.added.len() > before {
            self.open_at_coordinator = true;
        }
    }

    /// A failure in the open transaction: a fencing error is fatal, any
    /// other makes it abortable (the first error is kept). During an abort
    /// (batches dropped on purpose) only fencing counts. Returns the error
    /// the failing operation reports.
    pub fn fail(&mut self, e: ClientError) -> ClientError {
        if is_fencing(&e) {
            let fenced = match e {
                ClientError::ProducerFenced { .. } => e,
                other => ClientError::ProducerFenced {
                    transactional_id: self.transactional_id.clone(),
                    message: other.to_string(),
                },
            };
            self.phase = Phase::Fatal(fenced.clone());
            return fenced;
        }
        match &self.phase {
            Phase::InTransaction | Phase::Committing => {
                let abortable = match e {
                    ClientError::AbortableTransaction { .. } => e,
                    other => ClientError::AbortableTransaction {
                        reason: other.to_string(),
                    },
                };
                self.phase = Phase::Abortable(abortable.clone());
                abortable
            }
            Phase::Abortable(first) => first.clone(),
            Phase::Fatal(f) => f.clone(),
            _ => e,
        }
    }

    /// `commit_transaction` starts (or is retried after a retriable failure).
    pub fn begin_commit(&mut self) -> Result<(), ClientError> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        match self.phase {
            Phase::InTransaction | Phase::Committing => {
                self.phase = Phase::Committing;
                Ok(())
            }
            _ => Err(self.invalid("commit")),
        }
    }

    /// `abort_transaction` starts: from an open, failed (abortable),
    /// committing (its commit failed) or aborting (retried) transaction.
    pub fn begin_abort(&mut self) -> Result<(), ClientError> {
        if let Some(e) = self.fatal() {
            return Err(e);
        }
        match self.phase {
            Phase::InTransaction | Phase::Committing | Phase::Aborting | Phase::Abortable(_) => {
                self.phase = Phase::Aborting;
                Ok(())
            }
            _ => Err(self.invalid("abort")),
        }
    }

    /// The transaction ended (committed or aborted): ready for the next.
    pub fn ended(&mut self) {
        self.phase = Phase::Ready;
        self.added.clear();
        self.open_at_coordinator = false;
        self.bump_epoch = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(t: &str, p: u32) -> (String, u32) {
        (t.to_string(), p)
    }

    fn server(code: ErrorCode) -> ClientError {
        ClientError::Server {
            code,
            message: String::new(),
        }
    }

    #[test]
    fn the_happy_path() {
        let mut s = TxnState::new("t".into());
        assert!(matches!(s.can_send(), Err(ClientError::InvalidTxnState(_))));
        assert!(s.begin().is_err(), "init first");
        s.can_init().unwrap();
        s.initialized();
        assert!(s.can_send().is_err(), "begin first");
        s.begin().unwrap();
        assert!(s.begin().is_err(), "one at a time");
        s.can_send().unwrap();
        s.can_dispatch().unwrap();
        assert_eq!(
            s.to_add(&[tp("a", 1), tp("a", 0), tp("a", 1)]),
            vec![tp("a", 0), tp("a", 1)]
        );
        assert!(!s.open_at_coordinator);
        s.added(vec![tp("a", 0)]);
        assert!(s.open_at_coordinator);
        assert_eq!(s.to_add(&[tp("a", 1), tp("a", 0)]), vec![tp("a", 1)]);
        s.begin_commit().unwrap();
        assert!(s.can_send().is_err(), "no sends while committing");
        s.can_dispatch().unwrap();
        s.ended();
        assert!(!s.open_at_coordinator);
        assert_eq!(s.to_add(&[tp("a", 0)]), vec![tp("a", 0)]);
        assert!(s.can_init().is_err(), "init once");
        s.begin().unwrap();
        s.begin_abort().unwrap();
        assert!(matches!(
            s.can_dispatch(),
            Err(ClientError::AbortableTransaction { .. })
        ));
        s.ended();
        assert!(s.begin_commit().is_err(), "nothing open");
        assert!(s.begin_abort().is_err(), "nothing open");
    }

    #[test]
    fn a_failure_makes_the_transaction_abortable() {
        let mut s = TxnState::new("t".into());
        s.initialized();
        s.begin().unwrap();
        let e = s.fail(server(ErrorCode::MessageTooLarge));
        assert!(matches!(e, ClientError::AbortableTransaction { .. }));
        // The first failure is kept.
        let again = s.fail(server(ErrorCode::CorruptBatch));
        assert_eq!(again.to_string(), e.to_string());
        assert!(s.can_send().is_err());
        assert!(s.can_dispatch().is_err());
        assert!(s.can_add_offsets().is_err());
        assert!(matches!(
            s.begin_commit(),
            Err(ClientError::AbortableTransaction { .. })
        ));
        s.begin_abort().unwrap();
        s.ended();
        s.begin().unwrap();
        s.can_send().unwrap();
    }

    #[test]
    fn a_failed_commit_can_be_aborted_or_retried() {
        let mut s = TxnState::new("t".into());
        s.initialized();
        s.begin().unwrap();
        s.begin_commit().unwrap();
        s.begin_commit().unwrap();
        s.begin_abort().unwrap();
        // Batches dropped by the abort do not change the state.
        let e = s.fail(server(ErrorCode::RequestTimedOut));
        assert!(matches!(e, ClientError::Server { .. }));
        assert!(matches!(s.phase, Phase::Aborting));
    }

    #[test]
    fn fencing_is_fatal() {
        for e in [
            server(ErrorCode::ProducerFenced),
            server(ErrorCode::InvalidProducerEpoch),
            ClientError::ProducerFenced {
                transactional_id: "t".into(),
                message: "m".into(),
            },
        ] {
            let mut s = TxnState::new("t".into());
            s.initialized();
            s.begin().unwrap();
            let f = s.fail(e);
            assert!(matches!(f, ClientError::ProducerFenced { .. }), "{f:?}");
            for r in [
                s.can_send(),
                s.can_dispatch(),
                s.begin_commit(),
                s.begin_abort(),
                s.begin(),
                s.can_init(),
            ] {
                assert!(
                    matches!(r, Err(ClientError::ProducerFenced { .. })),
                    "{r:?}"
                );
            }
            // Also outside a transaction.
            let mut s = TxnState::new("t".into());
            s.initialized();
            s.fail(server(ErrorCode::ProducerFenced));
            assert!(matches!(s.begin(), Err(ClientError::ProducerFenced { .. })));
        }
    }
}
