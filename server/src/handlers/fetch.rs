//! Fetch: read partitions from their owning shards, long-polling up to
//! `max_wait` for `min_bytes`, and keep the response within `max_bytes`.

use crate::error::OpResult;
use crate::partition::{FetchSent, ReadOut, Reader};
use crate::shard::Shard;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// One partition to read.
#[derive(Debug, Clone)]
pub struct FetchPartition {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub max_bytes: usize,
    /// The leader epoch a follower knows (-1: none given).
    pub leader_epoch: i64,
    /// A follower's log start (-1: not given).
    pub log_start: i64,
}

#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub max_wait: Duration,
    pub min_bytes: usize,
    /// Bound on the whole response (the first non-empty partition is
    /// always included, whatever its size).
    pub max_bytes: usize,
    /// A follower's node id, for replica fetches.
    pub replica: Option<u64>,
    /// Consumers: read only below the last stable offset (Kafka's
    /// isolation level read_committed), with the aborted transactions.
    pub read_committed: bool,
    pub partitions: Vec<FetchPartition>,
}

/// Reads every partition; if fewer than `min_bytes` came back (and no
/// partition failed), waits until any of them gets data or `max_wait`
/// passes, then reads again. Results are in request order; a partition
/// past the response's `max_bytes` comes back with no data.
pub async fn fetch(shard: &Rc<Shard>, req: FetchRequest) -> Vec<OpResult<ReadOut>> {
    super::await_topics(shard, req.partitions.iter().map(|p| p.topic.as_str())).await;
    let max_total = req.max_bytes.max(1);
    let deadline = Instant::now() + req.max_wait;
    loop {
        let mut results = read_all(shard, &req, max_total).await;
        let total: usize = results
            .iter()
            .map(|r| r.as_ref().map_or(0, |o| o.data.len()))
            .sum();
        let any_err = results.iter().any(Result::is_err);
        let now = Instant::now();
        if total >= req.min_bytes || any_err || now >= deadline || req.partitions.is_empty() {
            keep_within(&mut results, max_total);
            if req.replica.is_none() {
                note_sent(shard, &req, &results);
            }
            return results;
        }
        wait_any(shard, &req, deadline - now).await;
    }
}

async fn read_all(
    shard: &Rc<Shard>,
    req: &FetchRequest,
    max_total: usize,
) -> Vec<OpResult<ReadOut>> {
    let jobs: Vec<_> = req
        .partitions
        .iter()
        .map(|fp| {
            let reader = reader_of(req, fp);
            let (topic, p, offset) = (fp.topic.clone(), fp.partition, fp.offset);
            let max = fp.max_bytes.clamp(1, max_total);
            shard.check_partition(&fp.topic, fp.partition).map(|_| {
                shard.submit_to(shard.owner(&fp.topic, fp.partition), move |s| async move {
                    s.partition(&topic, p)?.read(offset, max, reader).await
                })
            })
        })
        .collect();
    super::run_in_order(jobs).await
}

/// Who reads `fp`: a follower, or a consumer at the request's isolation.
fn reader_of(req: &FetchRequest, fp: &FetchPartition) -> Reader {
    match req.replica {
        Some(node) => Reader::Replica {
            node,
            epoch: fp.leader_epoch,
            log_start: fp.log_start,
        },
        None if req.read_committed => Reader::Committed,
        None => Reader::Consumer,
    }
}

/// Accounts what the response carries (bytes out, records out, consumed
/// backlog) on each partition's shard, once: not what a long poll read and
/// read again, nor a partition `keep_within` emptied.
fn note_sent(shard: &Rc<Shard>, req: &FetchRequest, results: &[OpResult<ReadOut>]) {
    for (fp, r) in req.partitions.iter().zip(results) {
        let Ok(out) = r else { continue };
        let sent = FetchSent::of(&out.data);
        let owner = shard.owner(&fp.topic, fp.partition);
        if owner == shard.id {
            // This shard's own partition: no task, no hop.
            if let Ok(part) = shard.partition(&fp.topic, fp.partition) {
                part.note_fetch(fp.offset, &sent);
            }
            continue;
        }
        let (topic, p, offset) = (fp.topic.clone(), fp.partition, fp.offset);
        glommio::spawn_local(shard.submit_to(owner, move |s| async move {
            s.partition(&topic, p)?.note_fetch(offset, &sent);
            Ok(())
        }))
        .detach();
    }
}

/// Waits until any partition gets data (or `wait` passes).
async fn wait_any(shard: &Rc<Shard>, req: &FetchRequest, wait: Duration) {
    let mut waits: Vec<Pin<Box<dyn Future<Output = OpResult<()>>>>> = req
        .partitions
        .iter()
        .map(|fp| {
            let (topic, p, offset) = (fp.topic.clone(), fp.partition, fp.offset);
            let reader = reader_of(req, fp);
            let f = shard.submit_to(shard.owner(&fp.topic, fp.partition), move |s| async move {
                s.partition(&topic, p)?
                    .wait_data(offset, wait, reader, &s.shutdown)
                    .await;
                Ok(())
            });
            Box::pin(f) as Pin<Box<dyn Future<Output = OpResult<()>>>>
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

/// Keeps the response within `max_total` bytes: the first non-empty
/// partition always goes; a later one only if it still fits.
fn keep_within(results: &mut [OpResult<ReadOut>], max_total: usize) {
    let mut total = 0usize;
    for r in results.iter_mut().flatten() {
        let len = r.data.len();
        if len == 0 {
            continue;
        }
        if total == 0 || total + len <= max_total {
            total += len;
        } else {
            r.data = Vec::new();
        }
    }
}
