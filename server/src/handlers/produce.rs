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
    let tasks: Vec<_> = parts
        .into_iter()
        .map(|pp| {
            let check = super::topics::check_not_internal(&pp.topic, "produce to")
                .and_then(|()| shard.check_partition(&pp.topic, pp.partition));
            let task = match (check, pp.data) {
                (Ok(()), Ok(data)) => {
                    let (topic, p) = (pp.topic.clone(), pp.partition);
                    Ok(glommio::spawn_local(shard.submit_to(
                        shard.owner(&pp.topic, pp.partition),
                        move |s| async move {
                            let res = s
                                .partition(&topic, p)?
                                .produce(acks, timeout, data, backing)
                                .await;
                            if let Err(e) = &res {
                                if e.no_space {
                                    s.space.note_full(&format!(
                                        "produce to partition {p} of `{topic}`"
                                    ));
                                }
                            }
                            res
                        },
                    )))
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            (pp.topic, pp.partition, task)
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for (topic, partition, task) in tasks {
        let res = match task {
            Ok(t) => t.await,
            Err(e) => Err(e),
        };
        out.push((topic, partition, res));
    }
    out
}
