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

use crate::shard::Shard;
use std::rc::Rc;
use std::time::{Duration, Instant};

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
