//! One transactional id's state at its transaction coordinator, without
//! I/O (KIP-98): each request is a function of the current state (and the
//! time, passed in) that returns the next state to write to the
//! transaction log, or an error for the client. The glue (`mod.rs`)
//! writes, applies, and writes the markers.
//!
//! ```text
//!            AddPartitions/AddOffsets              EndTxn
//!  Empty ──────────────────────────▶ Ongoing ─────────────▶ PrepareCommit ─▶ CompleteCommit
//!    ▲  CompleteCommit/CompleteAbort ───┘  │ EndTxn(abort),       PrepareAbort ─▶ CompleteAbort
//!    │                                     │ timeout, InitProducerId (epoch bumped)
//!    └── InitProducerId (epoch + 1) ───────┘
//! ```
//! A state idle longer than `transactional_id_expiration` goes (Dead: its
//! record is deleted).

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
}

impl TxnState {
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
        }
    }

    pub fn code(self) -> u8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
        }
    }

    pub fn from_code(c: u8) -> Option<TxnState> {
        Some(match c {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            _ => return None,
        })
    }

    /// Markers are being written: the transaction is ending.
    pub fn is_prepare(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// A group offset committed in a transaction: (topic, partition) →
/// (offset, leader epoch, metadata).
pub type TxnOffsets = BTreeMap<(String, u32), (i64, i32, String)>;

/// One offset of a TxnOffsetCommit: (topic, partition), (offset, leader
/// epoch, metadata).
pub type TxnOffset = ((String, u32), (i64, i32, String));

/// What the coordinator keeps of one transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: i64,
    pub state: TxnState,
    /// The partitions the open (or ending) transaction wrote to.
    pub partitions: BTreeSet<(String, u32)>,
    /// The groups whose offsets it commits, with the offsets sent so far.
    pub offsets: BTreeMap<String, TxnOffsets>,
    /// When the transaction began (Ongoing), ms.
    pub started_ms: i64,
    /// When the state last changed, ms (for expiry).
    pub updated_ms: i64,
}

/// Why a request is refused (the glue turns it into the protocol's code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnError {
    /// A newer producer with the same transactional id exists.
    ProducerFenced { current: i16, got: i16 },
    /// The epoch is newer than the coordinator's (a confused client).
    InvalidProducerEpoch { current: i16, got: i16 },
    /// The producer id is not this transactional id's.
    InvalidProducerIdMapping { current: i64, got: i64 },
    /// The request does not fit the state.
    InvalidTxnState(TxnState),
    /// The previous transaction is still completing: retry.
    ConcurrentTransactions,
    /// More partitions than a transaction may hold.
    TooManyPartitions { max: usize },
}

/// What InitProducerId leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// Write this state and answer with its producer id and epoch.
    Ready(TxnMeta),
    /// A transaction of the old epoch is open: write this (PrepareAbort at
    /// a bumped epoch, which fences the old producer), complete it; the
    /// producer is told to retry (CONCURRENT_TRANSACTIONS).
    AbortFirst(TxnMeta),
}

/// What EndTxn leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndOutcome {
    /// Write this (PrepareCommit or PrepareAbort), then the markers.
    Prepare(TxnMeta),
    /// A retry of an EndTxn already completed: answer success.
    AlreadyDone,
}

/// Whether InitProducerId needs a fresh producer id (none yet, or the
/// epoch would overflow).
pub fn needs_new_pid(current: Option<&TxnMeta>) -> bool {
    current.is_none_or(|m| m.state == TxnState::Dead || m.epoch >= i16::MAX - 1)
}

/// InitProducerId with a transactional id. `fresh_pid`: a new producer id
/// when [`needs_new_pid`] says so (else ignored). `expected`: the id and
/// epoch the producer already has (KIP-360), if it says.
pub fn init(
    current: Option<&TxnMeta>,
    timeout_ms: i64,
    now_ms: i64,
    expected: Option<(i64, i16)>,
    fresh_pid: i64,
) -> Result<InitOutcome, TxnError> {
    let Some(m) = current.filter(|m| m.state != TxnState::Dead) else {
        return Ok(InitOutcome::Ready(fresh(fresh_pid, timeout_ms, now_ms)));
    };
    if let Some((pid, epoch)) = expected {
        if pid != m.producer_id {
            return Err(TxnError::InvalidProducerIdMapping {
                current: m.producer_id,
                got: pid,
            });
        }
        if epoch != m.epoch {
            return Err(TxnError::ProducerFenced {
                current: m.epoch,
                got: epoch,
            });
        }
    }
    match m.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort => Err(TxnError::ConcurrentTransactions),
        TxnState::Ongoing => {
            let mut next = bumped(m, fresh_pid);
            next.state = TxnState::PrepareAbort;
            next.updated_ms = now_ms;
            Ok(InitOutcome::AbortFirst(next))
        }
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort | TxnState::Dead => {
            let mut next = bumped(m, fresh_pid);
            next.state = TxnState::Empty;
            next.timeout_ms = timeout_ms;
            next.partitions.clear();
            next.offsets.clear();
            next.updated_ms = now_ms;
            Ok(InitOutcome::Ready(next))
        }
    }
}

fn fresh(pid: i64, timeout_ms: i64, now_ms: i64) -> TxnMeta {
    TxnMeta {
        producer_id: pid,
        epoch: 0,
        timeout_ms,
        state: TxnState::Empty,
        partitions: BTreeSet::new(),
        offsets: BTreeMap::new(),
        started_ms: now_ms,
        updated_ms: now_ms,
    }
}

/// The same id at the next epoch, or `fresh_pid` at epoch 0 when the epoch
/// would overflow.
fn bumped(m: &TxnMeta, fresh_pid: i64) -> TxnMeta {
    let mut next = m.clone();
    if m.epoch >= i16::MAX - 1 {
        next.producer_id = fresh_pid;
        next.epoch = 0;
    } else {
        next.epoch = m.epoch + 1;
    }
    next
}

/// The producer's id and epoch against the state's.
fn check_producer(m: &TxnMeta, pid: i64, epoch: i16) -> Result<(), TxnError> {
    if m.state == TxnState::Dead || pid != m.producer_id {
        return Err(TxnError::InvalidProducerIdMapping {
            current: m.producer_id,
            got: pid,
        });
    }
    if epoch < m.epoch {
        return Err(TxnError::ProducerFenced {
            current: m.epoch,
            got: epoch,
        });
    }
    if epoch > m.epoch {
        return Err(TxnError::InvalidProducerEpoch {
            current: m.epoch,
            got: epoch,
        });
    }
    Ok(())
}

/// The state a transaction that adds to itself moves to: Ongoing (a new
/// one starts at `now_ms` from Empty or a completed one).
fn begin_or_continue(m: &TxnMeta, now_ms: i64) -> Result<TxnMeta, TxnError> {
    match m.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort => Err(TxnError::ConcurrentTransactions),
        TxnState::Ongoing => Ok(m.clone()),
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
            let mut next = m.clone();
            next.state = TxnState::Ongoing;
            next.partitions.clear();
            next.offsets.clear();
            next.started_ms = now_ms;
            next.updated_ms = now_ms;
            Ok(next)
        }
        TxnState::Dead => Err(TxnError::InvalidTxnState(m.state)),
    }
}

/// AddPartitionsToTxn: `None` when every partition is already in the
/// open transaction (nothing to write).
pub fn add_partitions(
    m: &TxnMeta,
    pid: i64,
    epoch: i16,
    parts: &[(String, u32)],
    now_ms: i64,
    max_partitions: usize,
) -> Result<Option<TxnMeta>, TxnError> {
    check_producer(m, pid, epoch)?;
    if m.state == TxnState::Ongoing && parts.iter().all(|p| m.partitions.contains(p)) {
        return Ok(None);
    }
    let mut next = begin_or_continue(m, now_ms)?;
    next.partitions.extend(parts.iter().cloned());
    if next.partitions.len() > max_partitions {
        return Err(TxnError::TooManyPartitions {
            max: max_partitions,
        });
    }
    Ok(Some(next))
}

/// AddOffsetsToTxn: the group's offsets will be committed with the
/// transaction (at most `max_groups` groups). `None`: the group is
/// already in it.
pub fn add_offsets(
    m: &TxnMeta,
    pid: i64,
    epoch: i16,
    group: &str,
    now_ms: i64,
    max_groups: usize,
) -> Result<Option<TxnMeta>, TxnError> {
    check_producer(m, pid, epoch)?;
    if m.state == TxnState::Ongoing && m.offsets.contains_key(group) {
        return Ok(None);
    }
    let mut next = begin_or_continue(m, now_ms)?;
    next.offsets.entry(group.to_string()).or_default();
    if next.offsets.len() > max_groups {
        return Err(TxnError::TooManyPartitions { max: max_groups });
    }
    Ok(Some(next))
}

/// TxnOffsetCommit: offsets of a group added to the open transaction,
/// committed to the group when the transaction commits.
pub fn txn_offsets(
    m: &TxnMeta,
    pid: i64,
    epoch: i16,
    group: &str,
    offsets: &[TxnOffset],
    max_offsets: usize,
) -> Result<TxnMeta, TxnError> {
    check_producer(m, pid, epoch)?;
    if m.state.is_prepare() {
        return Err(TxnError::ConcurrentTransactions);
    }
    if m.state != TxnState::Ongoing || !m.offsets.contains_key(group) {
        return Err(TxnError::InvalidTxnState(m.state));
    }
    let mut next = m.clone();
    let g = next.offsets.entry(group.to_string()).or_default();
    g.extend(offsets.iter().cloned());
    if g.len() > max_offsets {
        return Err(TxnError::TooManyPartitions { max: max_offsets });
    }
    Ok(next)
}

/// EndTxn: commit or abort the open transaction.
pub fn end(
    m: &TxnMeta,
    pid: i64,
    epoch: i16,
    commit: bool,
    now_ms: i64,
) -> Result<EndOutcome, TxnError> {
    check_producer(m, pid, epoch)?;
    match (m.state, commit) {
        (TxnState::Ongoing, _) => {
            let mut next = m.clone();
            next.state = if commit {
                TxnState::PrepareCommit
            } else {
                TxnState::PrepareAbort
            };
            next.updated_ms = now_ms;
            Ok(EndOutcome::Prepare(next))
        }
        (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => {
            Ok(EndOutcome::AlreadyDone)
        }
        (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
            Err(TxnError::ConcurrentTransactions)
        }
        (s, _) => Err(TxnError::InvalidTxnState(s)),
    }
}

/// Every marker is written: the transaction is complete.
pub fn complete(m: &TxnMeta, now_ms: i64) -> Option<TxnMeta> {
    let state = match m.state {
        TxnState::PrepareCommit => TxnState::CompleteCommit,
        TxnState::PrepareAbort => TxnState::CompleteAbort,
        _ => return None,
    };
    let mut next = m.clone();
    next.state = state;
    next.partitions.clear();
    next.offsets.clear();
    next.updated_ms = now_ms;
    Some(next)
}

/// An open transaction past its timeout is aborted, at a bumped epoch
/// (the producer, if alive, is fenced). `None`: not timed out.
pub fn timed_out(m: &TxnMeta, now_ms: i64, fresh_pid: i64) -> Option<TxnMeta> {
    if m.state != TxnState::Ongoing || now_ms.saturating_sub(m.started_ms) <= m.timeout_ms {
        return None;
    }
    let mut next = bumped(m, fresh_pid);
    if next.producer_id != m.producer_id {
        // Markers must carry the producer id the data was written with.
        next.producer_id = m.producer_id;
        next.epoch = m.epoch;
    }
    next.state = TxnState::PrepareAbort;
    next.updated_ms = now_ms;
    Some(next)
}

/// Whether an idle transactional id is forgotten (no open transaction,
/// unchanged for `expiration_ms`).
pub fn expired(m: &TxnMeta, now_ms: i64, expiration_ms: i64) -> bool {
    matches!(
        m.state,
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort | TxnState::Dead
    ) && now_ms.saturating_sub(m.updated_ms) >= expiration_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(o: Result<InitOutcome, TxnError>) -> TxnMeta {
        match o {
            Ok(InitOutcome::Ready(m)) => m,
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    fn p(t: &str, i: u32) -> (String, u32) {
        (t.to_string(), i)
    }

    fn ongoing() -> TxnMeta {
        let m = ready(init(None, 60_000, 0, None, 7));
        add_partitions(&m, 7, 0, &[p("a", 0)], 10, 100)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn init_gives_a_fresh_id_then_bumps_the_epoch() {
        assert!(needs_new_pid(None));
        let m = ready(init(None, 60_000, 5, None, 7));
        assert_eq!((m.producer_id, m.epoch, m.state), (7, 0, TxnState::Empty));
        assert!(!needs_new_pid(Some(&m)));
        let m2 = ready(init(Some(&m), 30_000, 6, None, 99));
        assert_eq!((m2.producer_id, m2.epoch, m2.timeout_ms), (7, 1, 30_000));
        // KIP-360: the producer says which id and epoch it has.
        assert_eq!(ready(init(Some(&m2), 1, 7, Some((7, 1)), 99)).epoch, 2);
        assert_eq!(
            init(Some(&m2), 1, 7, Some((7, 0)), 99),
            Err(TxnError::ProducerFenced { current: 1, got: 0 })
        );
        assert_eq!(
            init(Some(&m2), 1, 7, Some((8, 1)), 99),
            Err(TxnError::InvalidProducerIdMapping { current: 7, got: 8 })
        );
    }

    #[test]
    fn an_epoch_about_to_overflow_takes_a_new_producer_id() {
        let mut m = ready(init(None, 1, 0, None, 7));
        m.epoch = i16::MAX - 1;
        assert!(needs_new_pid(Some(&m)));
        let m2 = ready(init(Some(&m), 1, 0, None, 8));
        assert_eq!((m2.producer_id, m2.epoch), (8, 0));
    }

    #[test]
    fn init_during_an_open_transaction_aborts_it_at_a_new_epoch() {
        let m = ongoing();
        let InitOutcome::AbortFirst(a) = init(Some(&m), 1, 20, None, 99).unwrap() else {
            panic!("expected AbortFirst");
        };
        assert_eq!((a.state, a.epoch), (TxnState::PrepareAbort, 1));
        assert_eq!(a.partitions, m.partitions, "markers go where data went");
        // The old producer is fenced from now on.
        assert_eq!(
            add_partitions(&a, 7, 0, &[p("b", 0)], 21, 100),
            Err(TxnError::ProducerFenced { current: 1, got: 0 })
        );
        assert_eq!(
            init(Some(&a), 1, 21, None, 99),
            Err(TxnError::ConcurrentTransactions)
        );
        let done = complete(&a, 22).unwrap();
        assert_eq!(done.state, TxnState::CompleteAbort);
        assert!(done.partitions.is_empty());
        let again = ready(init(Some(&done), 1, 23, None, 99));
        assert_eq!((again.epoch, again.state), (2, TxnState::Empty));
    }

    #[test]
    fn partitions_and_offsets_open_a_transaction() {
        let m = ready(init(None, 60_000, 0, None, 7));
        let o = add_partitions(&m, 7, 0, &[p("a", 0), p("a", 1)], 10, 100)
            .unwrap()
            .unwrap();
        assert_eq!((o.state, o.started_ms), (TxnState::Ongoing, 10));
        assert_eq!(
            add_partitions(&o, 7, 0, &[p("a", 1)], 11, 100),
            Ok(None),
            "already in it"
        );
        assert_eq!(
            add_partitions(&o, 7, 0, &[p("b", 0)], 11, 2),
            Err(TxnError::TooManyPartitions { max: 2 })
        );
        let g = add_offsets(&o, 7, 0, "g", 12, 1).unwrap().unwrap();
        assert!(g.offsets.contains_key("g"));
        assert_eq!(add_offsets(&g, 7, 0, "g", 12, 1), Ok(None));
        assert_eq!(
            add_offsets(&g, 7, 0, "g2", 12, 1),
            Err(TxnError::TooManyPartitions { max: 1 })
        );
        let c = txn_offsets(&g, 7, 0, "g", &[(p("in", 0), (42, -1, String::new()))], 10).unwrap();
        assert_eq!(c.offsets["g"][&p("in", 0)].0, 42);
        assert_eq!(
            txn_offsets(&g, 7, 0, "other", &[], 10),
            Err(TxnError::InvalidTxnState(TxnState::Ongoing))
        );
        assert_eq!(
            txn_offsets(&m, 7, 0, "g", &[], 10),
            Err(TxnError::InvalidTxnState(TxnState::Empty))
        );
        // Offsets alone open a transaction too.
        let only = add_offsets(&m, 7, 0, "g", 13, 1).unwrap().unwrap();
        assert_eq!(only.state, TxnState::Ongoing);
    }

    #[test]
    fn requests_check_the_producer_id_and_epoch() {
        let m = ongoing();
        assert_eq!(
            add_partitions(&m, 8, 0, &[p("a", 0)], 0, 9),
            Err(TxnError::InvalidProducerIdMapping { current: 7, got: 8 })
        );
        assert_eq!(
            end(&m, 7, 1, true, 0),
            Err(TxnError::InvalidProducerEpoch { current: 0, got: 1 })
        );
        let mut newer = m.clone();
        newer.epoch = 3;
        assert_eq!(
            end(&newer, 7, 2, true, 0),
            Err(TxnError::ProducerFenced { current: 3, got: 2 })
        );
    }

    #[test]
    fn end_prepares_and_complete_finishes_commit_and_abort() {
        for commit in [true, false] {
            let m = ongoing();
            let EndOutcome::Prepare(pr) = end(&m, 7, 0, commit, 20).unwrap() else {
                panic!("expected Prepare");
            };
            let (prep, done) = if commit {
                (TxnState::PrepareCommit, TxnState::CompleteCommit)
            } else {
                (TxnState::PrepareAbort, TxnState::CompleteAbort)
            };
            assert_eq!(pr.state, prep);
            // A retry while markers are written, and a conflicting request.
            assert_eq!(
                end(&pr, 7, 0, commit, 21),
                Err(TxnError::ConcurrentTransactions)
            );
            assert_eq!(
                end(&pr, 7, 0, !commit, 21),
                Err(TxnError::InvalidTxnState(prep))
            );
            assert_eq!(
                add_partitions(&pr, 7, 0, &[p("z", 0)], 21, 9),
                Err(TxnError::ConcurrentTransactions)
            );
            let c = complete(&pr, 22).unwrap();
            assert_eq!(c.state, done);
            assert_eq!(complete(&c, 23), None);
            // A retry after completion is answered with success; the other
            // outcome is refused.
            assert_eq!(end(&c, 7, 0, commit, 24), Ok(EndOutcome::AlreadyDone));
            assert_eq!(
                end(&c, 7, 0, !commit, 24),
                Err(TxnError::InvalidTxnState(done))
            );
            // The next transaction starts from the completed one.
            let next = add_partitions(&c, 7, 0, &[p("b", 0)], 30, 9)
                .unwrap()
                .unwrap();
            assert_eq!(next.partitions.len(), 1);
            assert_eq!(next.started_ms, 30);
        }
        let empty = ready(init(None, 1, 0, None, 7));
        assert_eq!(
            end(&empty, 7, 0, true, 0),
            Err(TxnError::InvalidTxnState(TxnState::Empty))
        );
    }

    #[test]
    fn a_timed_out_transaction_is_aborted_at_a_bumped_epoch() {
        let mut m = ongoing();
        m.timeout_ms = 100;
        assert_eq!(timed_out(&m, 110, 99), None);
        let a = timed_out(&m, 111, 99).unwrap();
        assert_eq!(
            (a.state, a.epoch, a.producer_id),
            (TxnState::PrepareAbort, 1, 7)
        );
        assert_eq!(timed_out(&a, 10_000, 99), None, "only open ones time out");
        assert_eq!(
            end(&a, 7, 0, true, 112),
            Err(TxnError::ProducerFenced { current: 1, got: 0 })
        );
    }

    #[test]
    fn idle_ids_expire_but_open_transactions_do_not() {
        let m = ready(init(None, 1, 0, None, 7));
        assert!(!expired(&m, 99, 100));
        assert!(expired(&m, 100, 100));
        let o = ongoing();
        assert!(!expired(&o, i64::MAX, 100));
        let EndOutcome::Prepare(pr) = end(&o, 7, 0, true, 20).unwrap() else {
            panic!()
        };
        assert!(!expired(&pr, i64::MAX, 100));
        let mut dead = m.clone();
        dead.state = TxnState::Dead;
        assert!(needs_new_pid(Some(&dead)));
        assert_eq!(ready(init(Some(&dead), 1, 0, None, 9)).producer_id, 9);
    }

    #[test]
    fn state_codes_round_trip() {
        for s in [
            TxnState::Empty,
            TxnState::Ongoing,
            TxnState::PrepareCommit,
            TxnState::PrepareAbort,
            TxnState::CompleteCommit,
            TxnState::CompleteAbort,
            TxnState::Dead,
        ] {
            assert_eq!(TxnState::from_code(s.code()), Some(s));
            assert!(!s.name().is_empty());
        }
        assert_eq!(TxnState::from_code(7), None);
    }
}
