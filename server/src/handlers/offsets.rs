//! Offset lookups: by time or position (ListOffsets), and where a leader
//! epoch ends (for followers reconciling their logs).

use crate::error::OpResult;
use crate::shard::Shard;
use std::rc::Rc;
use std::time::Duration;

/// (offset, timestamp) for `spec` in each (topic, partition): -2 the log
/// start, -1 the log end (the last stable offset for a `read_committed`
/// reader), both with timestamp -1; otherwise the first record at or after
/// that timestamp, with its timestamp ((-1, -1) if none).
pub async fn list_offsets(
    shard: &Rc<Shard>,
    wanted: Vec<(String, u32, i64)>,
    read_committed: bool,
) -> Vec<(String, u32, OpResult<(i64, i64)>)> {
    super::await_topics(shard, wanted.iter().map(|w| w.0.as_str())).await;
    let mut out = Vec::with_capacity(wanted.len());
    for (topic, partition, spec) in wanted {
        let res = match shard.check_partition(&topic, partition) {
            Ok(()) => {
                let t = topic.clone();
                shard
                    .submit_to(shard.owner(&topic, partition), move |s| async move {
                        let p = s.partition(&t, partition)?;
                        if read_committed && spec == -1 {
                            p.check_leader()?;
                            return Ok((p.last_stable_offset() as i64, -1));
                        }
                        p.list_offset(spec).await
                    })
                    .await
            }
            Err(e) => Err(e),
        };
        out.push((topic, partition, res));
    }
    out
}

/// Advances the log start of each (topic, partition) to its offset (-1:
/// the high watermark), on the shard that owns it (Kafka's DeleteRecords),
/// and waits (up to `timeout`) until every in-sync replica has. Returns
/// each partition's low watermark afterwards.
pub async fn delete_records(
    shard: &Rc<Shard>,
    wanted: Vec<(String, u32, i64)>,
    timeout: Duration,
) -> Vec<(String, u32, OpResult<i64>)> {
    super::await_topics(shard, wanted.iter().map(|w| w.0.as_str())).await;
    let mut out = Vec::with_capacity(wanted.len());
    for (topic, partition, offset) in wanted {
        let res = match super::topics::check_not_internal(&topic, "delete records of")
            .and_then(|()| shard.check_partition(&topic, partition))
        {
            Ok(()) => {
                let t = topic.clone();
                shard
                    .submit_to(shard.owner(&topic, partition), move |s| async move {
                        let p = s.partition(&t, partition)?;
                        Ok(p.delete_records(offset, timeout).await? as i64)
                    })
                    .await
            }
            Err(e) => Err(e),
        };
        out.push((topic, partition, res));
    }
    out
}

/// Leader: (the largest epoch not above `epoch`, where it ends).
pub async fn epoch_end(
    shard: &Rc<Shard>,
    topic: String,
    partition: u32,
    epoch: i64,
) -> OpResult<(i64, i64)> {
    shard
        .submit_to(shard.owner(&topic, partition), move |s| async move {
            s.partition(&topic, partition)?.epoch_end(epoch)
        })
        .await
}
