//! The request layer: one function per kind of request, protocol-neutral.
//! A protocol front end (`net/`) decodes its own messages, calls these,
//! and encodes the results; these route the work to the shard that owns
//! each partition or group ([`crate::shard::Shard::submit_to`]) and wait
//! for it. Adding a request type: a function here (or in a new file here),
//! then its decoding and encoding in each front end that offers it.

pub mod cluster;
pub mod fetch;
pub mod groups;
pub mod metadata;
pub mod offsets;
pub mod produce;
pub mod producers;
pub mod topics;
pub mod txn;

use crate::error::OpResult;
use crate::shard::Shard;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Replicas of each partition of an internal topic (`__consumer_offsets`,
/// `__transaction_state`): 1 on a single node, else min(3, brokers that
/// have joined the cluster), alive or not, as Kafka's
/// `offsets.topic.replication.factor` does. Counting only live brokers
/// would make the topic of a cluster first used with a node down keep
/// fewer copies for good; instead its creation waits (the coordinator is
/// unavailable, a retriable error) until that many brokers are live.
pub fn internal_topic_replication(shard: &Shard) -> u16 {
    shard
        .cluster
        .as_ref()
        .and_then(|v| v.metadata())
        .map_or(1, |md| md.brokers.len().clamp(1, 3) as u16)
}

/// Runs one job per partition of a request, concurrently, and returns
/// their outputs in the order given (a job that could not start is its
/// error). A lone job, the usual case, is awaited in place: a task of its
/// own would only add a spawn, a wake-up and a poll to every request.
pub(crate) async fn run_in_order<T, F>(jobs: Vec<OpResult<F>>) -> Vec<OpResult<T>>
where
    T: 'static,
    F: Future<Output = OpResult<T>> + 'static,
{
    let mut out = Vec::with_capacity(jobs.len());
    if jobs.len() == 1 {
        for job in jobs {
            out.push(match job {
                Ok(f) => f.await,
                Err(e) => Err(e),
            });
        }
        return out;
    }
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|j| j.map(glommio::spawn_local))
        .collect();
    for t in tasks {
        out.push(match t {
            Ok(t) => t.await,
            Err(e) => Err(e),
        });
    }
    out
}

/// Cluster mode: a topic unknown here may just have been created, and this
/// node's metadata may lag the coordinators by a poll; wait briefly for it
/// before answering "unknown topic".
pub async fn await_topics<'a>(shard: &Rc<Shard>, topics: impl Iterator<Item = &'a str>) {
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
