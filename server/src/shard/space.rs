//! A full disk, on the shards: shard 0's periodic check of the data
//! directory (`crate::space`), and reopening the logs a full disk stopped
//! once space is back.

use super::Shard;
use std::rc::Rc;
use tracing::{info, warn};

impl Shard {
    /// Shard 0, until shutdown: every second, checks free space (re-creating
    /// the space reserve, clearing the disk-full state), and while the disk
    /// is not full has every shard reopen the logs a full disk stopped.
    pub async fn run_space_monitor(self: Rc<Self>) {
        let mut warned = false;
        while !self.shutdown.is_set() {
            glommio::timer::sleep(crate::space::CHECK_INTERVAL).await;
            let space = self.space.clone();
            let check = glommio::executor()
                .spawn_blocking(move || space.check())
                .await;
            let free = match check {
                Ok(c) => {
                    warned = false;
                    if c.cleared {
                        info!(
                            free_bytes = c.free,
                            "disk space is back: reopening logs stopped by the full disk"
                        );
                    }
                    c.free
                }
                Err(e) => {
                    if !warned {
                        warn!(dir = %self.cfg.data_dir.display(), error = %e, "checking the data directory's free space failed");
                    }
                    warned = true;
                    continue;
                }
            };
            if !self.space.is_full() && free >= self.space.resume_bytes() {
                self.recover_full_disk_everywhere().await;
            }
        }
    }

    /// Has every shard reopen its logs stopped by a full disk.
    async fn recover_full_disk_everywhere(self: &Rc<Self>) {
        let tasks: Vec<_> = (0..self.nshards)
            .map(|s| {
                glommio::spawn_local(self.submit_to(s, |shard| async move {
                    Ok(shard.recover_full_disk().await)
                }))
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Reopens this shard's logs (partitions, the groups' offsets topic's
    /// included) that a full disk stopped, cut to what reached the disk.
    /// Returns how many were reopened.
    ///
    /// A replicated log may lose batches it had already reported to its
    /// leader (and so counted towards the high watermark), or, leading,
    /// batches its followers copied: it must not lead or count in an ISR
    /// until it has caught up again. So the node first registers anew (as
    /// after a restart: the coordinators take it out of every ISR and move
    /// the partitions it leads to in-sync replicas), and only once that
    /// registration is in its log is reopened and reconciled with the
    /// leader's like any follower's. A partition still led here after 10 s
    /// (it was the only in-sync replica) is reopened as it is.
    pub async fn recover_full_disk(&self) -> usize {
        let mut n = 0;
        for p in self.all_partitions() {
            if !p.log.is_stopped_by_full_disk() {
                p.full_disk_rejoin.set(None);
                continue;
            }
            if p.is_clustered() {
                let Some(view) = self.cluster.as_ref() else {
                    continue;
                };
                match p.full_disk_rejoin.get() {
                    None => {
                        let inc = view.reincarnate();
                        info!(topic = %p.topic, partition = p.partition, "a replica stopped by the full disk waits to be out of the ISR before its log is reopened");
                        p.full_disk_rejoin
                            .set(Some((inc, std::time::Instant::now())));
                        continue;
                    }
                    Some((inc, since)) => {
                        let out = view.incarnation() == inc
                            && view.metadata().is_some_and(|md| view.registered_in(&md));
                        let led = p.role() == crate::replication::state::Role::Leader;
                        if !out || (led && since.elapsed() < std::time::Duration::from_secs(10)) {
                            continue;
                        }
                    }
                }
            }
            match p.recover_from_full_disk().await {
                Ok(true) => {
                    n += 1;
                    p.full_disk_rejoin.set(None);
                    if p.is_clustered() {
                        p.repl.borrow_mut().needs_reconcile = true;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(topic = %p.topic, partition = p.partition, error = %e.message, "reopening a partition stopped by the full disk failed; retrying later")
                }
            }
        }
        n
    }
}
