//! Idempotent producers: producer ids and epochs (Kafka's InitProducerId).

use crate::error::OpResult;
use crate::shard::{Shard, REGISTRY_SHARD};
use std::rc::Rc;

/// A producer id and epoch for an idempotent producer. `existing`: the id
/// and epoch a producer already has and wants bumped (KIP-360, after it
/// lost track of its sequences); it gets the next epoch, or a new id when
/// the epoch would overflow. (With a transactional id, the id's
/// coordinator answers: `handlers::txn::init_producer_id`.)
pub async fn init_producer_id(
    shard: &Rc<Shard>,
    existing: Option<(i64, i16)>,
) -> OpResult<(i64, i16)> {
    if let Some((pid, epoch)) = existing.filter(|&(pid, epoch)| pid >= 0 && epoch >= 0) {
        if epoch < i16::MAX - 1 {
            return Ok((pid, epoch + 1));
        }
    }
    let pid = shard
        .submit_to(
            REGISTRY_SHARD,
            |s| async move { s.next_producer_id().await },
        )
        .await?;
    Ok((pid, 0))
}
