//! The follower side of replication: one fetch stream per (this shard,
//! leader node), long-polled and batched over every partition the shard
//! follows from that leader. A partition that just became a follower first
//! reconciles with its leader (KIP-101: truncate what the leader does not
//! have); then the stream appends the leader's stored batches as they are
//! (offsets and epochs kept, CRCs checked) and follows the leader's high
//! watermark.

use crate::partition::Partition;
use crate::replication::peer::PeerConn;
use crate::replication::state::{truncation_point, Role};
use crate::shard::Shard;
use levee_engine::batch::split_batches;
use levee_engine::LogError;
use levee_schemas::proto::{
    ErrorCode, Fetch, FetchPartition, OffsetForLeaderEpoch, Request, Response,
};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

impl Shard {
    /// Starts the fetch stream from `leader` unless it runs already.
    pub(crate) fn ensure_fetcher(self: &Rc<Self>, leader: u64) {
        if !self.fetchers.borrow_mut().insert(leader) {
            return;
        }
        let shard = self.clone();
        glommio::spawn_local(async move {
            shard.run_fetcher(leader).await;
            shard.fetchers.borrow_mut().remove(&leader);
        })
        .detach();
    }

    fn followed_from(&self, leader: u64) -> Vec<Rc<Partition>> {
        self.all_partitions()
            .into_iter()
            .filter(|p| {
                let r = p.repl.borrow();
                r.role == Role::Follower && r.leader == Some(leader)
            })
            .collect()
    }

    /// One fetch stream: copies every partition this shard follows from
    /// `leader`, until there is none left or the shard stops.
    async fn run_fetcher(self: &Rc<Self>, leader: u64) {
        let me = u64::from(self.cfg.node_id);
        let mut conn: Option<PeerConn> = None;
        let mut idle_since = Instant::now();
        while !self.shutdown.is_set() {
            let parts = self.followed_from(leader);
            if parts.is_empty() {
                if idle_since.elapsed() > Duration::from_secs(5) {
                    return;
                }
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
            idle_since = Instant::now();
            if conn.is_none() {
                let addr = self
                    .cluster
                    .as_ref()
                    .and_then(|v| v.metadata())
                    .and_then(|md| md.brokers.get(&leader).map(|b| b.client_addr.clone()));
                let Some(addr) = addr else {
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                match PeerConn::connect(&addr, me, self.cfg.max_frame_bytes as usize).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        debug!(leader, %addr, error = %e, "cannot connect to the leader");
                        glommio::timer::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else {
                continue;
            };
            match self.fetch_round(c, &parts, me).await {
                Ok(true) => {}
                Ok(false) => glommio::timer::sleep(Duration::from_millis(50)).await,
                Err(e) => {
                    debug!(leader, error = %e, "replica fetch failed; reconnecting");
                    conn = None;
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Reconciles partitions that need it, then fetches once for all of
    /// them. `Ok(false)`: nothing useful happened (back off a little).
    async fn fetch_round(
        &self,
        c: &mut PeerConn,
        parts: &[Rc<Partition>],
        me: u64,
    ) -> Result<bool, String> {
        let mut ready = Vec::with_capacity(parts.len());
        for p in parts {
            if p.repl.borrow().needs_reconcile {
                if !reconcile(c, p).await? {
                    continue;
                }
                p.repl.borrow_mut().needs_reconcile = false;
            }
            ready.push(p.clone());
        }
        if ready.is_empty() {
            return Ok(false);
        }
        // The leader and epoch each partition is fetched in: a response
        // that comes back after either changed (a leader paused while it
        // answered, say) is from a log that may since have been truncated,
        // and is not appended.
        let fetched_in: Vec<(u64, Option<u64>)> = ready
            .iter()
            .map(|p| {
                let r = p.repl.borrow();
                (r.epoch, r.leader)
            })
            .collect();
        let req = Request::Fetch(Box::new(Fetch {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 8 << 20,
            partitions: Some(
                ready
                    .iter()
                    .map(|p| FetchPartition {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        offset: p.log.log_end_offset(),
                        max_bytes: 1 << 20,
                        leader_epoch: p.repl.borrow().epoch as i64,
                        log_start_offset: p.log.log_start_offset() as i64,
                    })
                    .collect(),
            ),
            replica_id: me as i64,
            isolation_level: 0,
        }));
        let (h, body, start) = c.call(req, Duration::from_secs(5)).await?;
        // The batches are appended as shared slices of the response: their
        // one copy is into the segment's DMA chunk.
        let body = crate::shard::buffers::shared(body);
        let payload = &body[start..];
        let Some(Response::FetchResponse(r)) = h.response else {
            return Err(format!(
                "replica fetch refused: {:?} {}",
                h.error,
                h.message.unwrap_or_default()
            ));
        };
        let mut useful = false;
        let mut full = false;
        for ((fp, p), asked) in r
            .partitions
            .unwrap_or_default()
            .into_iter()
            .zip(&ready)
            .zip(&fetched_in)
        {
            if fp.error != ErrorCode::None {
                debug!(topic = %p.topic, partition = p.partition, error = ?fp.error, message = ?fp.message, "replica fetch error");
                if fp.error == ErrorCode::OffsetOutOfRange {
                    p.repl.borrow_mut().needs_reconcile = true;
                }
                continue;
            }
            useful = true;
            let data = levee_schemas::payload_slice(payload, fp.payload_offset, fp.payload_len)
                .map_err(|e| e.to_string())?;
            let mut last = None;
            // Appends of this response and their producer-table records
            // go together: a produce request (should this replica become
            // leader meanwhile) checks the table only before or after them,
            // and a new leader's epoch starts after them.
            let order = p.append_order().await;
            for b in split_batches(data) {
                // The role, leader or epoch may have changed while the
                // fetch was out.
                if !still_fetched_in(p, *asked) {
                    debug!(topic = %p.topic, partition = p.partition, "a replica fetch answered after the leader changed: dropped");
                    break;
                }
                let mut res = p.log.append_replica(body.slice_ref(b)).await;
                if let Err(LogError::NotContiguous { expected, got }) = res {
                    if got > expected && last.is_none() {
                        // The leader's log starts after ours ends (retention
                        // removed the rest): restart ours there.
                        info!(topic = %p.topic, partition = p.partition, from = expected, to = got, "replica is behind the leader's log start; restarting it there");
                        p.producers_truncated(0);
                        res = match p.log.reset_to(got).await {
                            Ok(()) => p.log.append_replica(body.slice_ref(b)).await,
                            Err(e) => Err(e),
                        };
                    }
                }
                match res {
                    Ok(info) => {
                        p.note_replicated(b);
                        last = Some(info.last_offset);
                    }
                    Err(LogError::NotContiguous { .. }) => {
                        p.repl.borrow_mut().needs_reconcile = true;
                        break;
                    }
                    Err(e) => {
                        if e.is_no_space() {
                            // Reported as the broker's full disk; the fetch
                            // backs off until space is freed.
                            self.space.note_full(&format!(
                                "replica of partition {} of `{}`",
                                p.partition, p.topic
                            ));
                            full = true;
                            debug!(topic = %p.topic, partition = p.partition, error = %e, "appending a replicated batch failed: the disk is full");
                        } else {
                            warn!(topic = %p.topic, partition = p.partition, error = %e, "appending a replicated batch failed");
                        }
                        p.repl.borrow_mut().needs_reconcile = true;
                        break;
                    }
                }
            }
            drop(order);
            if let Some(last) = last {
                // Report only durable data under fsync=always.
                if let Err(e) = p.log.wait_durable(last).await {
                    warn!(topic = %p.topic, partition = p.partition, error = %e, "flushing replicated batches failed");
                }
                p.appended.notify();
            }
            if !still_fetched_in(p, *asked) {
                // Neither its high watermark nor its log start is ours to
                // follow any more.
                continue;
            }
            let end = p.log.log_end_offset();
            if p.repl.borrow_mut().follow_hw(fp.high_watermark, end) {
                p.hw_changed.notify();
            }
            // Follow the leader's log start (Kafka's followers do): an
            // internal topic's leader drops what a snapshot made unneeded
            // (whole segments); a user topic's moves with DeleteRecords or
            // the leader's retention, and is recorded here too, so a
            // follower that becomes leader answers from the same start.
            if fp.log_start_offset > p.log.log_start_offset() {
                let upto = fp.log_start_offset.min(p.high_watermark());
                let res = if levee_core::is_internal_topic(&p.topic) {
                    p.log
                        .delete_before(upto)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                } else {
                    p.advance_log_start(upto)
                        .await
                        .map(drop)
                        .map_err(|e| e.message)
                };
                if let Err(e) = res {
                    warn!(topic = %p.topic, partition = p.partition, error = %e, "following the leader's log start failed");
                }
            }
        }
        if full {
            glommio::timer::sleep(Duration::from_millis(250)).await;
        }
        Ok(useful)
    }
}

/// Whether `p` still follows the leader, in the epoch, a fetch was made in.
fn still_fetched_in(p: &Partition, asked: (u64, Option<u64>)) -> bool {
    let r = p.repl.borrow();
    r.role == Role::Follower && (r.epoch, r.leader) == asked
}

/// Follower: asks the leader where our latest epoch ends and truncates
/// anything we hold past it. `Ok(false)`: try again later.
async fn reconcile(c: &mut PeerConn, p: &Partition) -> Result<bool, String> {
    let Some(epoch) = p.log.latest_epoch() else {
        return Ok(true);
    };
    let req = Request::OffsetForLeaderEpoch(Box::new(OffsetForLeaderEpoch {
        topic: p.topic.clone(),
        partition: p.partition,
        epoch: i64::from(epoch),
    }));
    let (h, _, _) = c.call(req, Duration::from_secs(5)).await?;
    let r = match h.response {
        Some(Response::EpochEndOffset(r)) if r.error == ErrorCode::None => r,
        Some(Response::EpochEndOffset(r)) => {
            debug!(topic = %p.topic, partition = p.partition, error = ?r.error, message = ?r.message, "epoch lookup refused");
            return Ok(false);
        }
        _ => return Err(format!("epoch lookup failed: {:?}", h.message)),
    };
    let end = p.log.log_end_offset();
    let cut = truncation_point(epoch, r.epoch, r.end_offset, end, |e| {
        p.log.end_offset_for_epoch(e).1
    });
    if let Some(cut) = cut {
        info!(
            topic = %p.topic,
            partition = p.partition,
            from = end,
            to = cut,
            "truncating a suffix the leader does not have"
        );
        let _order = p.append_order().await;
        if p.role() != Role::Follower {
            // Became leader meanwhile: its log is the reference now.
            return Ok(false);
        }
        p.log.truncate_to(cut).await.map_err(|e| e.to_string())?;
        p.repl.borrow_mut().truncated(cut);
        p.producers_truncated(cut);
    }
    Ok(true)
}
