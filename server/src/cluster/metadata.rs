//! Each shard follows the cluster metadata: it adopts the topics the
//! coordinators hold and gives every replica it owns the role the metadata
//! names (leader, follower, offline) at the metadata's leader epoch.

use crate::partition::Partition;
use crate::replication::state::{batch_epoch, Placement, Role, Transition};
use crate::shard::Shard;
use crate::topics::TopicMeta;
use levee_coordinator::Metadata;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How soon a metadata version that could not be wholly applied is
/// applied again.
const APPLY_RETRY: Duration = Duration::from_millis(500);

impl Shard {
    /// Watches the cluster view and applies each new metadata version.
    pub async fn run_metadata_watch(self: Rc<Self>) {
        let Some(view) = self.cluster.clone() else {
            return;
        };
        let mut seen = 0;
        // A version not wholly applied (a replica that could not be opened
        // or start its leader epoch: a full disk, say) is applied again
        // every RETRY until it is, not left until the next change.
        let mut retry_at: Option<Instant> = None;
        while !self.shutdown.is_set() {
            let v = view.version();
            let due = retry_at.is_some_and(|t| Instant::now() >= t);
            if v != seen || due {
                match view.metadata() {
                    // Not registered yet: this metadata may still name this
                    // node leader in an epoch it held before a restart.
                    Some(md) if !view.registered_in(&md) => {}
                    Some(md) => {
                        let whole = self.apply_metadata(&md).await;
                        seen = v;
                        retry_at = (!whole).then(|| Instant::now() + APPLY_RETRY);
                    }
                    None => seen = v,
                }
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Adopts topics and this shard's replicas' roles from the metadata.
    /// Whether every replica took its role (`false`: apply it again later).
    pub async fn apply_metadata(self: &Rc<Self>, md: &Metadata) -> bool {
        let mut whole = true;
        let me = u64::from(self.cfg.node_id);
        let topics: BTreeMap<String, TopicMeta> = md
            .topics
            .iter()
            .map(|(name, t)| (name.clone(), t.config.clone()))
            .collect();
        let gone: Vec<String> = self
            .topic_names()
            .into_iter()
            .filter(|n| !topics.contains_key(n))
            .collect();
        // Topics whose settings changed (AlterTopicConfig): their open
        // replicas are retuned below.
        let altered: Vec<String> = topics
            .iter()
            .filter(|(n, m)| {
                self.topic(n)
                    .is_some_and(|old| !crate::shard::topics::same_settings(&old, m))
            })
            .map(|(n, _)| n.clone())
            .collect();
        self.set_topics(topics.clone());
        for name in gone {
            info!(topic = %name, "topic deleted by the cluster");
            self.drop_topic(&name).await;
        }
        for (name, t) in &md.topics {
            let meta = &topics[name];
            for (i, pi) in t.partitions.iter().enumerate() {
                let p = i as u32;
                if self.owner(name, p) != self.id || !pi.replicas.contains(&me) {
                    continue;
                }
                let part = match self.open_partition(name, p, meta).await {
                    Ok(part) => part,
                    Err(e) => {
                        warn!(topic = %name, partition = p, error = %e.message, "cannot open a replica; retrying");
                        if e.no_space {
                            self.space
                                .note_full(&format!("opening partition {p} of `{name}`"));
                        }
                        whole = false;
                        continue;
                    }
                };
                let pl = Placement {
                    leader: pi.leader,
                    leader_epoch: pi.leader_epoch,
                    replicas: pi.replicas.clone(),
                    isr: pi.isr.clone(),
                };
                whole &= self.apply_placement(&part, &pl).await;
            }
        }
        for name in altered {
            if let Err(e) = self.retune_topic(&name, &topics[&name]).await {
                warn!(topic = %name, error = %e.message, "cannot apply a topic's new settings");
            } else {
                info!(topic = %name, "applied a topic's new settings");
            }
        }
        whole
    }

    /// Gives a replica the role `pl` names. `false`: it could not (its
    /// leader epoch could not be written), and keeps its old one.
    async fn apply_placement(self: &Rc<Self>, part: &Rc<Partition>, pl: &Placement) -> bool {
        // A change of role waits for appends in progress (a follower's
        // fetched batches, a produce request's), so a new leader's epoch
        // starts after them and no produce check runs against a producer
        // table a replicated append has not updated yet.
        let _order = part.append_order().await;
        let t = part.repl.borrow().classify(pl);
        match t {
            Transition::Stale => return true,
            Transition::Change(Role::Leader) => {
                // Mark where this epoch starts before accepting any write in it.
                if let Err(e) = part
                    .log
                    .assign_epoch_start(batch_epoch(pl.leader_epoch))
                    .await
                {
                    warn!(topic = %part.topic, partition = part.partition, error = %e, "cannot start the leader epoch; retrying");
                    if e.is_no_space() {
                        self.space.note_full(&format!(
                            "leader epoch of partition {} of `{}`",
                            part.partition, part.topic
                        ));
                    }
                    return false;
                }
            }
            _ => {}
        }
        let end = part.log.log_end_offset();
        part.repl
            .borrow_mut()
            .apply(pl, t, self.cfg.min_insync_replicas, end, Instant::now());
        if let Transition::Change(role) = t {
            info!(
                topic = %part.topic,
                partition = part.partition,
                epoch = pl.leader_epoch,
                leader = ?pl.leader,
                role = ?role,
                "replica role changed"
            );
            // Wake acks=all waiters and long polls so they see the change.
            part.hw_changed.notify();
            part.appended.notify();
            if let (Role::Follower, Some(l)) = (role, pl.leader) {
                self.ensure_fetcher(l);
            }
        }
        part.recompute_hw();
        // The leader of an offsets partition coordinates its groups, in
        // the epoch it leads it in (a new epoch reloads them).
        if part.topic == levee_core::OFFSETS_TOPIC {
            if part.role() == Role::Leader {
                let n = self.topic(&part.topic).map_or(1, |m| m.partitions);
                let epoch = part.repl.borrow().epoch;
                self.groups
                    .become_leader(part.partition, n, part.clone(), epoch);
            } else {
                self.groups.resign(part.partition);
            }
        }
        // Likewise the leader of a transaction-state partition coordinates
        // its transactions.
        if part.topic == levee_core::TXN_TOPIC {
            if part.role() == Role::Leader {
                let epoch = part.repl.borrow().epoch;
                self.txns.become_leader(part.partition, part.clone(), epoch);
            } else {
                self.txns.resign(part.partition);
            }
        }
        true
    }
}
