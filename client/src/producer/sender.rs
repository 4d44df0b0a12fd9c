//! The producer's task: takes requests from the [`Accumulator`], encodes
//! their batches, queues them on the partition leaders' connections (one
//! request at a time, so requests reach each connection in order), and
//! applies each answer when it comes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use levee_engine::Compression;
use levee_schemas::proto::ErrorCode;

use super::accumulator::{Batch, Entry, EntryOutcome, Next};
use super::Shared;
use crate::client::{Client, InFlightProduce, ProduceOutcome};
use crate::codec::build_batch;
use crate::error::{ClientError, Result};

/// Fails what is queued if the task stops for any reason (its runtime shut
/// down, a panic), so that no delivery future waits forever.
struct Guard(Arc<Shared>);

impl Drop for Guard {
    fn drop(&mut self) {
        let released = self.0.lock().fail_all();
        self.0.buffer.add_permits(released);
    }
}

pub(super) async fn run(shared: Arc<Shared>, client: Client) {
    let _guard = Guard(shared.clone());
    loop {
        let next = {
            let mut st = shared.lock();
            st.next_request(&shared.config, shared.max_request_bytes, |t, p| {
                client.cached_route(t, p)
            })
        };
        match next {
            Next::Send(entries) => dispatch(&shared, &client, entries).await,
            Next::Wait(until) => {
                let notified = shared.wake.notified();
                match until {
                    Some(at) => {
                        let _ = tokio::time::timeout_at(at, notified).await;
                    }
                    None => notified.await,
                }
            }
            Next::Done => return,
        }
    }
}

/// An idempotent producer's identity and numbering (KIP-98): its producer
/// id and epoch, and per partition the sequence of its next record. A batch
/// is numbered when it is first sent (batches of a partition are sent in
/// order) and keeps its number when sent again, so the broker recognizes a
/// batch it already wrote. When a batch fails for good its partition's
/// numbers have a gap: the producer takes the next epoch (numbering from 0
/// again) before sending more; batches sent again after that are numbered
/// anew.
#[derive(Debug, Default)]
pub(crate) struct Idempotence {
    pub id: Option<(i64, i16)>,
    next_seq: HashMap<(String, u32), i32>,
    /// A batch failed for good: the next dispatch starts a new epoch.
    pub reset: bool,
}

impl Idempotence {
    /// A new producer id or epoch: sequences start from 0 again.
    pub fn restart(&mut self) {
        self.next_seq.clear();
        self.reset = false;
    }

    /// The sequence for `count` records of a partition, advancing it.
    fn take(&mut self, topic: &str, partition: u32, count: u32) -> i32 {
        let next = self
            .next_seq
            .entry((topic.to_string(), partition))
            .or_insert(0);
        let seq = *next;
        // Kafka's sequences wrap at i32::MAX.
        *next = ((i64::from(seq) + i64::from(count)) % (i64::from(i32::MAX) + 1)) as i32;
        seq
    }
}

/// Encodes the batches not sent before. A batch whose compressed form
/// would pass its uncompressed bound (incompressible records) goes
/// uncompressed, so that no batch passes `batch_size`. An idempotent
/// producer's batch is numbered here, once per producer epoch.
fn encode(
    b: &mut Batch,
    compression: Compression,
    topic: &str,
    partition: u32,
    idem: Option<&mut Idempotence>,
    transactional: bool,
) -> std::result::Result<(), String> {
    let identity = idem.as_ref().and_then(|i| i.id);
    if b.bytes.is_some() && b.stamp == identity {
        return Ok(());
    }
    let mut bytes = match b.bytes.take() {
        // Numbered under an earlier epoch: numbered again (one copy).
        Some(old) => old.to_vec(),
        None => {
            let records = std::mem::take(&mut b.records);
            let mut bytes = build_batch(&records, compression)?;
            if bytes.len() > b.size_bound() && compression != Compression::None {
                bytes = build_batch(&records, Compression::None)?;
            }
            debug_assert!(bytes.len() <= b.size_bound(), "the size bound holds");
            bytes
        }
    };
    if let (Some(idem), Some((pid, epoch))) = (idem, identity) {
        if transactional {
            levee_engine::batch::set_transactional(&mut bytes);
        }
        let seq = idem.take(topic, partition, b.count);
        levee_engine::batch::set_producer(&mut bytes, pid, epoch, seq);
    }
    b.stamp = identity;
    b.bytes = Some(Bytes::from(bytes));
    Ok(())
}

/// An idempotent producer's id, taken (or its next epoch, after a batch
/// failed for good) before a request is numbered.
async fn identity(shared: &Shared, client: &Client) -> Result<()> {
    let Some(idem) = shared.idempotence.as_ref() else {
        return Ok(());
    };
    let (current, reset) = {
        let i = super::lock_idem(idem);
        (i.id, i.reset)
    };
    if shared.txn.is_some() {
        // A transactional producer's id comes from init_transactions.
        return match current {
            Some(_) => Ok(()),
            None => Err(ClientError::InvalidTxnState(
                "call init_transactions first".into(),
            )),
        };
    }
    if current.is_some() && !reset {
        return Ok(());
    }
    let next = client
        .init_producer_id(if reset { current } else { None })
        .await?;
    let mut i = super::lock_idem(idem);
    tracing::debug!(
        producer_id = next.0,
        epoch = next.1,
        "idempotent producer identity"
    );
    i.id = Some(next);
    i.next_seq.clear();
    i.reset = false;
    Ok(())
}

/// Queues one request on its leaders' connections, then waits for its
/// answer in the background.
/// A transactional producer's partitions are added to the transaction at
/// its coordinator before their first batch is sent. Fails (the batches
/// fail with it) when the transaction cannot take them: aborting, failed
/// or fenced; a failure to add them makes the transaction abortable.
async fn add_to_txn(shared: &Shared, client: &Client, entries: &[Entry]) -> Result<()> {
    let Some(t) = shared.txn.as_ref() else {
        return Ok(());
    };
    let keys: Vec<(String, u32)> = entries
        .iter()
        .map(|e| (e.topic.clone(), e.partition))
        .collect();
    let todo = {
        let st = t.lock();
        st.can_dispatch()?;
        st.to_add(&keys)
    };
    if todo.is_empty() {
        return Ok(());
    }
    let id = shared
        .idempotence
        .as_ref()
        .and_then(|i| super::lock_idem(i).id)
        .ok_or_else(|| ClientError::InvalidTxnState("call init_transactions first".into()))?;
    let deadline = std::time::Instant::now() + shared.config.transaction_call_timeout;
    let res = client
        .add_partitions_to_txn(&t.coordinator, id, &todo, deadline)
        .await;
    let mut st = t.lock();
    match res {
        Ok(failed) => {
            let good: Vec<(String, u32)> = todo
                .iter()
                .filter(|tp| !failed.iter().any(|(t, p, _)| (t, *p) == (&tp.0, tp.1)))
                .cloned()
                .collect();
            st.added(good);
            match failed.into_iter().next() {
                None => Ok(()),
                Some((_, _, e)) => Err(st.fail(e)),
            }
        }
        Err(e) => Err(st.fail(e)),
    }
}

async fn dispatch(shared: &Arc<Shared>, client: &Client, mut entries: Vec<Entry>) {
    let compression = shared.config.compression;
    if let Err(e) = add_to_txn(shared, client, &entries).await {
        let outcomes = entries
            .into_iter()
            .map(|en| (en, EntryOutcome::Fail(e.clone())))
            .collect();
        complete(shared, outcomes);
        return;
    }
    if let Err(e) = identity(shared, client).await {
        // No producer id yet: nothing is sent; the batches wait for a retry.
        let outcomes = entries
            .into_iter()
            .map(|en| {
                let o = if e.is_retriable() || matches!(e, ClientError::Connect { .. }) {
                    EntryOutcome::Retry(e.clone())
                } else {
                    EntryOutcome::Fail(e.clone())
                };
                (en, o)
            })
            .collect();
        complete(shared, outcomes);
        return;
    }
    let mut unencodable = Vec::new();
    {
        let mut idem = shared.idempotence.as_ref().map(super::lock_idem);
        let transactional = shared.txn.is_some();
        for e in &mut entries {
            for b in &mut e.batches {
                if let Err(why) = encode(
                    b,
                    compression,
                    &e.topic,
                    e.partition,
                    idem.as_deref_mut(),
                    transactional,
                ) {
                    unencodable.push(why);
                }
            }
        }
    }
    if let Some(why) = unencodable.into_iter().next() {
        // Only a codec failure gets here; nothing of this request is sent.
        let outcomes = entries
            .into_iter()
            .map(|e| {
                (
                    e,
                    EntryOutcome::Fail(ClientError::InvalidArgument(why.clone())),
                )
            })
            .collect();
        complete(shared, outcomes);
        return;
    }
    let payload: Vec<(String, u32, Vec<Bytes>)> = entries
        .iter()
        .map(|e| {
            let chunks = e.batches.iter().filter_map(|b| b.bytes.clone()).collect();
            (e.topic.clone(), e.partition, chunks)
        })
        .collect();
    let first = client
        .start_produce_chunks(
            shared.config.acks.to_wire(),
            shared.config.produce_timeout,
            payload,
        )
        .await;
    let nodes = match &first {
        Ok(f) => f.leaders(),
        Err(_) => vec![None; entries.len()],
    };
    let keys: Vec<(String, u32)> = entries
        .iter()
        .map(|e| (e.topic.clone(), e.partition))
        .collect();
    shared.lock().sent(&keys, nodes);
    let shared = shared.clone();
    // A transactional producer's epoch changes only by its own
    // init_transactions: an epoch refusal means it was fenced.
    let idempotent = shared.idempotence.is_some() && shared.txn.is_none();
    tokio::spawn(async move {
        let outcomes = wait(entries, first, idempotent).await;
        complete(&shared, outcomes);
    });
}

/// Waits for one request's answer: each partition's outcome.
/// An idempotent producer sends a batch again after a sequence or epoch
/// refusal: an earlier batch it waits behind was not written yet, or the
/// producer moved to a new epoch since the batch was numbered (it is
/// numbered again); a lasting gap fails the batch at its delivery timeout,
/// which starts a new epoch.
fn retry_idempotent(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::OutOfOrderSequence | ErrorCode::InvalidProducerEpoch)
    )
}

/// What a partition's answer means for its batches. A partition the
/// broker does not know (yet: a node that just restarted and has not
/// applied the metadata, a topic being created) is retried after a
/// metadata refresh, as Kafka's clients do, until the delivery timeout:
/// failing the batch would, for an idempotent producer, start a new epoch
/// and renumber batches whose earlier attempts may have been written. A
/// storage error (the leader's disk is full or failing) is retried the same
/// way, as Kafka's clients retry KAFKA_STORAGE_ERROR: space may be freed,
/// or leadership move to a replica whose disk works.
fn answered(res: Result<(u64, u64)>, idempotent: bool) -> EntryOutcome {
    match res {
        Ok((base, _)) => EntryOutcome::Delivered(Some(base)),
        Err(e) if e.is_retriable() => EntryOutcome::Retry(e),
        Err(e)
            if matches!(
                e.code(),
                Some(ErrorCode::UnknownTopicOrPartition | ErrorCode::StorageError)
            ) =>
        {
            EntryOutcome::Retry(e)
        }
        Err(e) if idempotent && retry_idempotent(&e) => EntryOutcome::Retry(e),
        Err(e) => EntryOutcome::Fail(e),
    }
}

async fn wait(
    entries: Vec<Entry>,
    first: Result<InFlightProduce>,
    idempotent: bool,
) -> Vec<(Entry, EntryOutcome)> {
    let answers = match first {
        Ok(f) => f.wait_each().await,
        Err(e) => vec![ProduceOutcome::Failed(e); entries.len()],
    };
    entries
        .into_iter()
        .zip(answers)
        .map(|(e, a)| {
            let outcome = match a {
                ProduceOutcome::Written => EntryOutcome::Delivered(None),
                ProduceOutcome::Answered(r) => answered(r.result(), idempotent),
                ProduceOutcome::Failed(e) if e.is_retriable() => EntryOutcome::Retry(e),
                ProduceOutcome::Failed(e) => EntryOutcome::Fail(e),
            };
            (e, outcome)
        })
        .collect()
}

fn complete(shared: &Shared, outcomes: Vec<(Entry, EntryOutcome)>) {
    // A record that fails makes a transaction abortable (or, fenced, the
    // producer fatal).
    let failure = shared.txn.as_ref().and_then(|_| {
        outcomes.iter().find_map(|(_, o)| match o {
            EntryOutcome::Fail(e) => Some(e.clone()),
            _ => None,
        })
    });
    // The transaction's state is updated before the deliveries resolve
    // (and with them a flush that commit or abort waits for): held across
    // `completed`, so that the commit or abort sees the failure and the
    // epoch bump, and a failure never lands in the next transaction.
    // Only a batch that was numbered (sent at least once) leaves a gap in
    // its partition's sequence when it fails; records an abort dropped
    // before sending them do not.
    let numbered = shared.txn.is_some()
        && outcomes.iter().any(|(en, o)| {
            !matches!(o, EntryOutcome::Delivered(_)) && en.batches.iter().any(|b| b.stamp.is_some())
        });
    let mut txn = shared.txn.as_ref().map(|t| t.lock());
    if let (Some(st), Some(e)) = (txn.as_mut(), failure) {
        st.fail(e);
    }
    let (released, retried, gave_up) = shared.lock().completed(&shared.config, outcomes);
    if let Some(st) = txn.as_mut() {
        if gave_up && numbered {
            st.bump_epoch = true;
        }
    } else if gave_up {
        if let Some(idem) = shared.idempotence.as_ref() {
            super::lock_idem(idem).reset = true;
        }
    }
    drop(txn);
    shared.buffer.add_permits(released);
    if retried > 0 {
        shared
            .retried
            .fetch_add(retried, std::sync::atomic::Ordering::Relaxed);
    }
    shared.wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientError;

    #[test]
    fn an_unknown_partition_and_a_storage_error_are_retried_and_a_bad_request_fails() {
        let unknown =
            ClientError::from_code(ErrorCode::UnknownTopicOrPartition, None, "t", Some(0));
        assert!(matches!(
            answered(Err(unknown), true),
            EntryOutcome::Retry(_)
        ));
        let full = ClientError::from_code(
            ErrorCode::StorageError,
            Some("the broker's disk is full".to_string()),
            "t",
            Some(0),
        );
        assert!(matches!(answered(Err(full), true), EntryOutcome::Retry(_)));
        let bad = ClientError::from_code(ErrorCode::InvalidRequest, None, "t", Some(0));
        assert!(matches!(answered(Err(bad), true), EntryOutcome::Fail(_)));
        assert!(matches!(
            answered(Ok((7, 9)), true),
            EntryOutcome::Delivered(Some(7))
        ));
    }
}
