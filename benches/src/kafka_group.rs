//! `--protocol kafka --group`: a member of a Kafka consumer group on the
//! classic protocol, over the bench's own Kafka client: JoinGroup and
//! SyncGroup (the leader runs the range assignor, as Kafka clients do),
//! heartbeats on a task of their own, fetches of the assigned partitions
//! from their committed offsets, and commits in the member's generation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use levee_client::ConsumedRecord;
use tokio::task::JoinHandle;

use crate::consumer::PollError;
use crate::kafka::{coordinator_moved, KafkaClient};

/// Kafka error codes that make a member join again: ILLEGAL_GENERATION,
/// UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS.
fn rejoin_code(code: i16) -> bool {
    matches!(code, 22 | 25 | 27)
}

/// The range assignor for one topic: members sorted by id, each a
/// contiguous range, the first `partitions % members` one longer.
pub(crate) fn range_assign(members: &[String], partitions: u32) -> Vec<(String, Vec<i32>)> {
    let mut ids = members.to_vec();
    ids.sort();
    let n = ids.len().max(1) as u32;
    let (each, extra) = (partitions / n, partitions % n);
    let mut next = 0u32;
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| {
            let len = each + u32::from((i as u32) < extra);
            let parts = (next..next + len).map(|p| p as i32).collect();
            next += len;
            (id, parts)
        })
        .collect()
}

/// What went wrong in a poll or a commit.
pub(crate) enum KafkaMemberError {
    /// A batch failed its checks.
    Corrupt(String),
    /// Worth trying again (the group rebalances, a leader or the
    /// coordinator moved); the next poll joins again if needed.
    Retry(String),
    /// A commit refused because the member must join again.
    Fenced,
    /// Anything else.
    Fatal(String),
}

pub(crate) struct KafkaMember {
    client: Arc<KafkaClient>,
    group: String,
    topic: String,
    partitions: u32,
    member_id: String,
    generation: i32,
    assigned: Vec<u32>,
    positions: HashMap<u32, u64>,
    committed: HashMap<u32, u64>,
    /// Set by the heartbeat task (or a refused commit): join again.
    rejoin: Arc<AtomicBool>,
    heartbeat: Option<JoinHandle<()>>,
    /// -2 earliest, -1 latest: where a partition with no commit starts.
    reset: i64,
    partition_bytes: u32,
    session_ms: i32,
}

impl KafkaMember {
    pub(crate) async fn join(
        client: Arc<KafkaClient>,
        group: &str,
        topic: &str,
        partitions: u32,
        reset_earliest: bool,
        partition_bytes: u32,
    ) -> Result<KafkaMember, String> {
        let mut m = KafkaMember {
            client,
            group: group.to_string(),
            topic: topic.to_string(),
            partitions,
            member_id: String::new(),
            generation: -1,
            assigned: Vec::new(),
            positions: HashMap::new(),
            committed: HashMap::new(),
            rejoin: Arc::new(AtomicBool::new(false)),
            heartbeat: None,
            reset: if reset_earliest { -2 } else { -1 },
            partition_bytes,
            session_ms: 10_000,
        };
        m.join_again().await?;
        Ok(m)
    }

    pub(crate) fn generation(&self) -> i32 {
        self.generation
    }

    /// Whether every assigned partition is at or past its target.
    pub(crate) fn reached(&self, targets: &HashMap<u32, u64>) -> bool {
        self.assigned.iter().all(|p| {
            self.positions.get(p).copied().unwrap_or(0) >= targets.get(p).copied().unwrap_or(0)
        })
    }

    fn stop_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }

    /// Joins (or joins again), syncs, and positions the assigned
    /// partitions at their committed offsets (else the reset policy).
    async fn join_again(&mut self) -> Result<(), String> {
        self.stop_heartbeat();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("could not join group `{}` within 60 s", self.group));
            }
            let j = self
                .client
                .join_group(&self.group, &self.member_id, &self.topic, self.session_ms)
                .await;
            let j = match j {
                Ok(j) => j,
                Err(_) => {
                    self.client.forget_coordinator(&self.group).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match j.error_code {
                0 => {}
                79 => {
                    // MEMBER_ID_REQUIRED: join again with the id handed out.
                    self.member_id = j.member_id.to_string();
                    continue;
                }
                25 => {
                    self.member_id.clear();
                    continue;
                }
                c if coordinator_moved(c) || c == 27 => {
                    self.client.forget_coordinator(&self.group).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                c => return Err(format!("joining group `{}`: Kafka error {c}", self.group)),
            }
            self.member_id = j.member_id.to_string();
            let assignments = if j.leader.as_str() == self.member_id {
                let ids: Vec<String> = j.members.iter().map(|m| m.member_id.to_string()).collect();
                range_assign(&ids, self.partitions)
            } else {
                Vec::new()
            };
            let (code, mine) = match self
                .client
                .sync_group(
                    &self.group,
                    j.generation_id,
                    &self.member_id,
                    &self.topic,
                    &assignments,
                )
                .await
            {
                Ok(r) => r,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if code != 0 {
                if code == 25 {
                    self.member_id.clear();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            self.generation = j.generation_id;
            self.assigned = mine;
            break;
        }
        self.rejoin.store(false, Relaxed);
        let committed = self
            .client
            .offset_fetch(&self.group, &self.topic, self.partitions)
            .await?;
        let mut positions = HashMap::new();
        let missing: Vec<u32> = self
            .assigned
            .iter()
            .copied()
            .filter(|p| !committed.contains_key(p))
            .collect();
        if !missing.is_empty() {
            let all = self
                .client
                .list_offsets(&self.topic, self.partitions, self.reset)
                .await?;
            for p in missing {
                positions.insert(p, all.get(&p).copied().unwrap_or(0));
            }
        }
        for p in &self.assigned {
            if let Some(o) = committed.get(p) {
                positions.insert(*p, *o);
            }
        }
        self.committed = self
            .assigned
            .iter()
            .filter_map(|p| committed.get(p).map(|o| (*p, *o)))
            .collect();
        self.positions = positions;
        let (client, group, member, generation, flag) = (
            self.client.clone(),
            self.group.clone(),
            self.member_id.clone(),
            self.generation,
            self.rejoin.clone(),
        );
        let every = Duration::from_millis((self.session_ms / 5).max(100) as u64);
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match client.heartbeat(&group, generation, &member).await {
                    Ok(0) => {}
                    Ok(c) if rejoin_code(c) => {
                        flag.store(true, Relaxed);
                        return;
                    }
                    Ok(c) if coordinator_moved(c) => client.forget_coordinator(&group).await,
                    Ok(_) | Err(_) => {}
                }
            }
        }));
        Ok(())
    }

    /// The next records of the assigned partitions (empty when none
    /// arrived within the fetch wait); joins again first if the group
    /// rebalanced.
    pub(crate) async fn poll(&mut self) -> Result<Vec<ConsumedRecord>, KafkaMemberError> {
        if self.rejoin.load(Relaxed) {
            self.join_again().await.map_err(KafkaMemberError::Retry)?;
        }
        if self.assigned.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Ok(Vec::new());
        }
        crate::kafka_tasks::fetch_records(
            &self.client,
            &self.topic,
            &self.assigned,
            &mut self.positions,
            Duration::from_millis(100),
            self.partition_bytes,
        )
        .await
        .map_err(|e| match e {
            PollError::Corrupt(m) => KafkaMemberError::Corrupt(m),
            PollError::Retriable(m) => KafkaMemberError::Retry(m),
            PollError::Fatal(m) => KafkaMemberError::Fatal(m),
        })
    }

    /// Commits the positions that moved since the last commit, in this
    /// member's generation.
    pub(crate) async fn commit(&mut self) -> Result<(), KafkaMemberError> {
        let offsets: Vec<(u32, u64)> = self
            .assigned
            .iter()
            .filter_map(|p| {
                let pos = self.positions.get(p).copied()?;
                (self.committed.get(p) != Some(&pos)).then_some((*p, pos))
            })
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        match self
            .client
            .offset_commit(
                &self.group,
                self.generation,
                &self.member_id,
                &self.topic,
                &offsets,
            )
            .await
        {
            Ok(0) => {
                self.committed.extend(offsets);
                Ok(())
            }
            Ok(c) if rejoin_code(c) => {
                self.rejoin.store(true, Relaxed);
                Err(KafkaMemberError::Fenced)
            }
            Ok(c) if coordinator_moved(c) => {
                self.client.forget_coordinator(&self.group).await;
                Err(KafkaMemberError::Retry(format!("commit: Kafka error {c}")))
            }
            Ok(c) => Err(KafkaMemberError::Fatal(format!("commit: Kafka error {c}"))),
            Err(e) => Err(KafkaMemberError::Retry(e)),
        }
    }

    /// Leaves the group (the others rebalance at once).
    pub(crate) async fn close(mut self) -> Result<(), String> {
        self.stop_heartbeat();
        match self
            .client
            .leave_group(&self.group, &self.member_id)
            .await?
        {
            0 | 25 => Ok(()),
            c => Err(format!("leaving group `{}`: Kafka error {c}", self.group)),
        }
    }
}

impl Drop for KafkaMember {
    fn drop(&mut self) {
        self.stop_heartbeat();
    }
}

#[cfg(test)]
mod tests {
    use super::range_assign;

    #[test]
    fn the_range_assignor_gives_contiguous_ranges_by_member_id() {
        let ids = vec!["c".to_string(), "a".to_string(), "b".to_string()];
        assert_eq!(
            range_assign(&ids, 7),
            vec![
                ("a".to_string(), vec![0, 1, 2]),
                ("b".to_string(), vec![3, 4]),
                ("c".to_string(), vec![5, 6]),
            ]
        );
        assert_eq!(
            range_assign(&ids[..1], 2),
            vec![("c".to_string(), vec![0, 1])]
        );
        // More members than partitions: the last ones get none.
        assert_eq!(range_assign(&ids, 1)[2], ("c".to_string(), vec![]));
    }
}
