//! Partition replication, on the shard that owns each replica.
//!
//! - The coordinators' metadata names each partition's replicas, its leader
//!   and leader epoch, and its in-sync replicas (ISR); every shard applies
//!   it to the replicas it owns (`cluster/metadata.rs`).
//! - The leader appends produced batches stamped with its epoch. Followers
//!   copy the stored batches from it with replica fetches (`follower.rs`):
//!   one fetch stream per (follower shard, leader node), carrying all
//!   partitions the shard follows from that node, batched and long-polled.
//!   A fetch at offset `o` tells the leader the follower holds everything
//!   below `o` (`Partition::read`).
//! - The high watermark (HW) is the lowest log end among the leader and
//!   the ISR: `acks=all` completes when the HW passes the batch, and
//!   consumers read only below it. A produce with `acks=all` needs at least
//!   `min_insync_replicas` in the ISR (default: a majority).
//! - A replica that becomes a follower first asks the leader for the end of
//!   its own latest epoch and truncates what lies past it (KIP-101), so
//!   replicas never diverge.
//! - The leader drops followers that have not caught up for
//!   `replica_lag_time_max_ms` from the ISR, and adds them back once they
//!   reach the HW, through the coordinators (`leader.rs`).
//!
//! All the decisions are made by the I/O-free [`state::ReplicaState`].

pub(crate) mod follower;
mod leader;
pub(crate) mod peer;
pub mod state;
