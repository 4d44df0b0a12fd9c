//! The leader side of replication that runs on its own: the ISR manager.
//! (Follower fetches reach the leader as ordinary fetches with a replica
//! id: `Partition::read` records the follower's progress.)

use crate::shard::Shard;
use levee_coordinator::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

impl Shard {
    /// Every 250 ms, for each partition it leads: proposes the ISR change
    /// the replication state asks for (followers that lag leave, followers
    /// that caught up join) to the coordinator quorum.
    pub async fn run_isr_manager(self: Rc<Self>) {
        let Some(view) = self.cluster.clone() else {
            return;
        };
        let lag = Duration::from_millis(self.cfg.replica_lag_time_max_ms);
        while !self.shutdown.is_set() {
            glommio::timer::sleep(Duration::from_millis(250)).await;
            for p in self.all_partitions() {
                let Some((isr, epoch)) = p.repl.borrow_mut().isr_proposal(Instant::now(), lag)
                else {
                    continue;
                };
                info!(topic = %p.topic, partition = p.partition, ?isr, epoch, "proposing an ISR change");
                let cmd = Command::UpdateIsr {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    isr,
                    epoch,
                };
                let addrs = view.addrs();
                let res = glommio::executor()
                    .spawn_blocking(move || {
                        levee_coordinator::client::propose(&addrs, cmd, Duration::from_secs(2))
                    })
                    .await;
                if let Err(e) = &res {
                    warn!(topic = %p.topic, partition = p.partition, error = %e, "ISR change refused");
                }
                p.repl.borrow_mut().proposal_done(res.is_ok());
                p.recompute_hw();
            }
        }
    }
}
