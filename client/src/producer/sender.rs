//! The producer's task: takes requests from the [`Accumulator`], encodes
//! their batches, queues them on the partition leaders' connections (one
//! request at a time, so requests reach each connection in order), and
//! applies each answer when it comes.

use std::sync::Arc;

use bytes::Bytes;
use levee_engine::Compression;

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

/// Encodes the batches not sent before. A batch whose compressed form
/// would pass its uncompressed bound (incompressible records) goes
/// uncompressed, so that no batch passes `batch_size`.
fn encode(b: &mut Batch, compression: Compression) -> std::result::Result<(), String> {
    if b.bytes.is_some() {
        return Ok(());
    }
    let records = std::mem::take(&mut b.records);
    let mut bytes = build_batch(&records, compression)?;
    if bytes.len() > b.size_bound() && compression != Compression::None {
        bytes = build_batch(&records, Compression::None)?;
    }
    debug_assert!(bytes.len() <= b.size_bound(), "the size bound holds");
    b.bytes = Some(Bytes::from(bytes));
    Ok(())
}

/// Queues one request on its leaders' connections, then waits for its
/// answer in the background.
async fn dispatch(shared: &Arc<Shared>, client: &Client, mut entries: Vec<Entry>) {
    let compression = shared.config.compression;
    let mut unencodable = Vec::new();
    for e in &mut entries {
        for b in &mut e.batches {
            if let Err(why) = encode(b, compression) {
                unencodable.push(why);
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
    tokio::spawn(async move {
        let outcomes = wait(entries, first).await;
        complete(&shared, outcomes);
    });
}

/// Waits for one request's answer: each partition's outcome.
async fn wait(entries: Vec<Entry>, first: Result<InFlightProduce>) -> Vec<(Entry, EntryOutcome)> {
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
                ProduceOutcome::Answered(r) => match r.result() {
                    Ok((base, _)) => EntryOutcome::Delivered(Some(base)),
                    Err(e) if e.is_retriable() => EntryOutcome::Retry(e),
                    Err(e) => EntryOutcome::Fail(e),
                },
                ProduceOutcome::Failed(e) if e.is_retriable() => EntryOutcome::Retry(e),
                ProduceOutcome::Failed(e) => EntryOutcome::Fail(e),
            };
            (e, outcome)
        })
        .collect()
}

fn complete(shared: &Shared, outcomes: Vec<(Entry, EntryOutcome)>) {
    let (released, retried) = shared.lock().completed(&shared.config, outcomes);
    shared.buffer.add_permits(released);
    if retried > 0 {
        shared
            .retried
            .fetch_add(retried, std::sync::atomic::Ordering::Relaxed);
    }
    shared.wake.notify_one();
}
