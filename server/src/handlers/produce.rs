//! Produce: append each partition's batches on the shard that owns it.

use crate::error::OpResult;
use crate::partition::Produced;
use crate::shard::Shard;
use std::rc::Rc;
use std::time::Duration;

/// One partition's part of a produce request: whole batches end to end.
pub struct ProducePartition {
    pub topic: String,
    pub partition: u32,
    pub data: OpResult<bytes::Bytes>,
}

/// A produce request's partitions, and the size of the buffer their data
/// shares (the request), which the partitions' tail caches are charged for.
pub struct ProduceRequest {
    pub partitions: Vec<ProducePartition>,
    pub backing: usize,
}

/// Appends every partition's batches (in parallel across partitions; in
/// request order within one) and returns each partition's outcome in the
/// order given. `acks`: 0 or 1 (appended) or -1 (durable and replicated).
pub async fn produce(
    shard: &Rc<Shard>,
    acks: i8,
    timeout: Duration,
    req: ProduceRequest,
) -> Vec<(String, u32, OpResult<Produced>)> {
    let (parts, backing) = (req.partitions, req.backing);
    super::await_topics(shard, parts.iter().map(|p| p.topic.as_str())).await;
    let mut names = Vec::with_capacity(parts.len());
    let jobs: Vec<_> = parts
        .into_iter()
        .map(|pp| {
            names.push((pp.topic.clone(), pp.partition));
            append_job(shard, acks, timeout, backing, pp)
        })
        .collect();
    let results = super::run_in_order(jobs).await;
    names
        .into_iter()
        .zip(results)
        .map(|((topic, partition), res)| (topic, partition, res))
        .collect()
}

/// One partition's append, to run on the shard that owns it (or the
/// error that keeps it from starting).
fn append_job(
    shard: &Rc<Shard>,
    acks: i8,
    timeout: Duration,
    backing: usize,
    pp: ProducePartition,
) -> OpResult<impl std::future::Future<Output = OpResult<Produced>> + 'static> {
    super::topics::check_not_internal(&pp.topic, "produce to")
        .and_then(|()| shard.check_partition(&pp.topic, pp.partition))?;
    let data = pp.data?;
    let owner = shard.owner(&pp.topic, pp.partition);
    let (topic, p) = (pp.topic, pp.partition);
    Ok(shard.submit_to(owner, move |s| async move {
        let res = s
            .partition(&topic, p)?
            .produce(acks, timeout, data, backing)
            .await;
        if let Err(e) = &res {
            if e.no_space {
                s.space
                    .note_full(&format!("produce to partition {p} of `{topic}`"));
            }
        }
        res
    }))
}
