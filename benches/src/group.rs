//! `--group`: consumers as members of a consumer group, the group's
//! starting offsets, its progress and lag, and rebalances.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use levee_client::{
    Client, ClientError, ConsumedRecord, GroupConsumer, GroupConsumerConfig, OffsetReset,
    OffsetSpec,
};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::admin::Admin;
use crate::args::Protocol;
use crate::connect::{client_config, kafka_connect};
use crate::consumer::{account, consumer_fetch_config, pace, ConsumerCtx, ConsumerDone};
use crate::kafka_group::{KafkaMember, KafkaMemberError};
use crate::rate::Pacer;
use crate::shared::{lock, Shared, Targets};
use crate::verify::Owner;
use crate::workload::{BenchError, Config};

/// A member of the group, over the protocol the bench speaks.
enum Member {
    Native(Box<GroupConsumer>),
    Kafka(Box<KafkaMember>),
}

/// What went wrong in a member's poll or commit.
enum MemberError {
    /// A batch failed its checks.
    Corrupt(String),
    /// Worth trying again (a rebalance, a moved leader or coordinator).
    Retry(String),
    /// A commit refused: the member joins again.
    Fenced,
    Fatal(String),
}

impl From<ClientError> for MemberError {
    fn from(e: ClientError) -> MemberError {
        match e {
            e @ (ClientError::Checksum { .. } | ClientError::MalformedBatch { .. }) => {
                MemberError::Corrupt(e.to_string())
            }
            e if e.needs_rejoin() => MemberError::Fenced,
            e if e.is_retriable() => MemberError::Retry(e.to_string()),
            e => MemberError::Fatal(e.to_string()),
        }
    }
}

impl From<KafkaMemberError> for MemberError {
    fn from(e: KafkaMemberError) -> MemberError {
        match e {
            KafkaMemberError::Corrupt(m) => MemberError::Corrupt(m),
            KafkaMemberError::Retry(m) => MemberError::Retry(m),
            KafkaMemberError::Fenced => MemberError::Fenced,
            KafkaMemberError::Fatal(m) => MemberError::Fatal(m),
        }
    }
}

impl Member {
    fn generation(&self) -> i32 {
        match self {
            Member::Native(gc) => gc.generation(),
            Member::Kafka(m) => m.generation(),
        }
    }

    /// Whether every partition assigned to it is at or past its target.
    fn reached(&self, topic: &str, targets: &HashMap<u32, u64>) -> bool {
        match self {
            Member::Native(gc) => gc.assignment().get(topic).is_none_or(|ps| {
                ps.iter().all(|p| {
                    let target = targets.get(p).copied().unwrap_or(0);
                    gc.position(topic, *p).unwrap_or(0) >= target
                })
            }),
            Member::Kafka(m) => m.reached(targets),
        }
    }

    async fn poll(&mut self) -> Result<Vec<ConsumedRecord>, MemberError> {
        match self {
            // A rejoin the broker asks for is a retry here: the next poll
            // joins again.
            Member::Native(gc) => gc.poll().await.map_err(|e| match MemberError::from(e) {
                MemberError::Fenced => MemberError::Retry("joining the group again".into()),
                other => other,
            }),
            Member::Kafka(m) => Ok(m.poll().await?),
        }
    }

    async fn commit(&mut self) -> Result<(), MemberError> {
        match self {
            Member::Native(gc) => Ok(gc.commit().await?),
            Member::Kafka(m) => Ok(m.commit().await?),
        }
    }

    async fn close(self) -> Result<(), String> {
        match self {
            Member::Native(gc) => gc.close().await.map_err(|e| e.to_string()),
            Member::Kafka(m) => m.close().await,
        }
    }
}

/// Commits a group member's positions; a refusal (rebalance, fencing) is
/// counted, not fatal: the next poll joins again and the next owner reads
/// the uncommitted records again. Returns whether the commit went through.
async fn group_commit(gc: &mut Member, shared: &Shared, id: usize, dirty: bool) -> bool {
    let started = Instant::now();
    match gc.commit().await {
        Ok(()) => {
            if dirty {
                shared.commits.fetch_add(1, Relaxed);
                crate::stats::record(
                    &mut lock(&shared.commit_latency),
                    started.elapsed().as_micros() as u64,
                );
            }
            true
        }
        Err(MemberError::Fenced) => {
            shared.commits_refused.fetch_add(1, Relaxed);
            false
        }
        Err(MemberError::Retry(e) | MemberError::Fatal(e) | MemberError::Corrupt(e)) => {
            shared.note(format!("consumer {id}: commit failed: {e}"));
            false
        }
    }
}

/// A member of consumer group `group`: the broker assigns its partitions;
/// it verifies each polled batch, then commits (after each batch, or every
/// `--commit-interval-ms`). It stops when the whole group has committed up
/// to the targets (see [`watch_group_progress`]).
pub(crate) async fn group_consumer_task(
    ctx: ConsumerCtx,
    group: String,
    ready: oneshot::Sender<Result<(), String>>,
) -> ConsumerDone {
    let ConsumerCtx {
        id,
        cfg,
        shared,
        hists,
        verifier,
        partitions: _,
        targets,
        limit,
    } = ctx;
    let a = &cfg.args;
    let mut done = ConsumerDone {
        complete: false,
        fatal: None,
    };
    let mut gc = match join_member(&cfg, id, &group).await {
        Ok(gc) => gc,
        Err(e) => {
            let _ = ready.send(Err(e));
            return done;
        }
    };
    shared.saw_generation(gc.generation());
    let _ = ready.send(Ok(()));
    let share = 1.0 / a.consumers.max(1) as f64;
    let mut pacer = Pacer::new(
        cfg.consume_shape.scaled(share),
        0.05,
        f64::from(a.fetch_partition_bytes),
    );
    let commit_every = a.commit_interval_ms.map(Duration::from_millis);
    let mut last_commit = Instant::now();
    // Records polled since the last commit that went through.
    let mut dirty = false;
    let mut retries = 0u32;
    let mut churn_seen = 0u64;
    loop {
        if shared.stop_consuming.load(Relaxed) {
            break;
        }
        let turn = shared.churn_turn.load(Relaxed);
        if turn != churn_seen {
            churn_seen = turn;
            if (turn % a.consumers.max(1) as u64) as usize == id {
                // Leave as a crashed member would: without committing.
                if let Err(e) = gc.close().await {
                    shared.note(format!("consumer {id}: leaving group `{group}`: {e}"));
                }
                shared.churns.fetch_add(1, Relaxed);
                dirty = false;
                gc = match join_member(&cfg, id, &group).await {
                    Ok(gc) => gc,
                    Err(e) => {
                        done.fatal = Some(e);
                        return done;
                    }
                };
                shared.saw_generation(gc.generation());
            }
        }
        if shared.group_done.load(Relaxed) {
            done.complete = true;
            break;
        }
        if limit.is_some_and(|l| shared.consumed_msgs.load(Relaxed) >= l) {
            done.complete = true;
            break;
        }
        let records = match gc.poll().await {
            Ok(r) => {
                retries = 0;
                r
            }
            Err(MemberError::Corrupt(e)) => {
                lock(&verifier).counts.corrupt_batches += 1;
                shared.note(format!("consumer {id}: {e}"));
                break;
            }
            // A rejoin that failed is tried again by the next poll.
            Err(MemberError::Retry(e)) if retries < 50 => {
                retries += 1;
                shared.note(format!("consumer {id}: retrying: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(MemberError::Fenced) if retries < 50 => {
                retries += 1;
                continue;
            }
            Err(MemberError::Retry(e) | MemberError::Fatal(e)) => {
                done.fatal = Some(format!("consumer {id}: {e}"));
                break;
            }
            Err(MemberError::Fenced) => {
                done.fatal = Some(format!(
                    "consumer {id}: fenced from the group again and again"
                ));
                break;
            }
        };
        let generation = gc.generation();
        shared.saw_generation(generation);
        let mut bytes = 0;
        if !records.is_empty() {
            let owner = Owner {
                consumer: id,
                generation,
            };
            bytes = account(&records, Some(owner), &verifier, &hists, &shared);
            dirty = true;
        }
        let due = match commit_every {
            None => true,
            Some(every) => {
                last_commit.elapsed() >= every
                    || targets
                        .borrow()
                        .as_ref()
                        .is_some_and(|t| gc.reached(&a.topic, t))
            }
        };
        if due {
            if group_commit(&mut gc, &shared, id, dirty).await {
                dirty = false;
            }
            last_commit = Instant::now();
        }
        pace(&mut pacer, &shared, bytes).await;
    }
    if dirty {
        group_commit(&mut gc, &shared, id, dirty).await;
    }
    if let Err(e) = gc.close().await {
        shared.note(format!("consumer {id}: leaving group `{group}`: {e}"));
    }
    done
}

/// With `--group`, once every member has joined: waits for the group to
/// settle in one generation (keeping its formation out of the
/// measurement), then starts what follows it during the run: the check
/// that it has committed up to the targets and `--churn-interval`'s forced
/// leaves. Returns the generation it settled in and a probe of its lag.
pub(crate) async fn watch_group(
    cfg: &Config,
    admin: &Admin,
    group: &str,
    members: usize,
    partitions: u32,
    targets: &watch::Receiver<Targets>,
    shared: &Arc<Shared>,
) -> (Option<i32>, LagProbe) {
    let a = &cfg.args;
    let start_generation = match wait_for_group(admin, group, members).await {
        Some(Some(gen)) => {
            eprintln!("group `{group}`: {members} member(s) stable in generation {gen}");
            Some(gen)
        }
        Some(None) => {
            eprintln!("group `{group}`: {members} member(s) stable");
            None
        }
        None => {
            shared.note(format!(
                "group `{group}` was not stable with {members} member(s) after 15 s; starting anyway"
            ));
            None
        }
    };
    let lag_probe = LagProbe {
        admin: admin.clone(),
        group: group.to_string(),
        topic: a.topic.clone(),
        partitions,
    };
    if let Some(every) = a.churn_interval {
        tokio::spawn(churn(shared.clone(), Duration::from_secs_f64(every)));
    }
    tokio::spawn(watch_group_progress(
        admin.clone(),
        group.to_string(),
        a.topic.clone(),
        partitions,
        targets.clone(),
        shared.clone(),
    ));
    (start_generation, lag_probe)
}

/// `--churn-interval`: every `every`, the next consumer's turn to leave the
/// group and join again, until producers stop.
async fn churn(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tick.tick().await;
        if shared.stop_producing.load(Relaxed) {
            return;
        }
        shared.churn_turn.fetch_add(1, Relaxed);
    }
}

/// Connects and joins the group as consumer `id` (auto-commit off).
async fn join_member(cfg: &Config, id: usize, group: &str) -> Result<Member, String> {
    let a = &cfg.args;
    if a.protocol == Protocol::Kafka {
        let client = kafka_connect(cfg).await?;
        let partitions = client.ensure_topic(&a.topic, a.partitions, -1).await?;
        return KafkaMember::join(
            client,
            group,
            &a.topic,
            partitions,
            cfg.reset() != OffsetReset::Latest,
            a.fetch_partition_bytes,
        )
        .await
        .map(|m| Member::Kafka(Box::new(m)))
        .map_err(|e| format!("consumer {id}: {e}"));
    }
    let client = Client::connect(client_config(cfg, format!("levee-bench-c{id}")))
        .await
        .map_err(|e| format!("consumer {id}: {e}"))?;
    let config = GroupConsumerConfig {
        auto_commit: None,
        reset: cfg.reset(),
        fetch: consumer_fetch_config(a),
        ..GroupConsumerConfig::new(group, [a.topic.clone()])
    };
    GroupConsumer::join(client, config)
        .await
        .map(|gc| Member::Native(Box::new(gc)))
        .map_err(|e| format!("consumer {id}: join group `{group}`: {e}"))
}

/// With `--group`: once the targets are known, checks the group's committed
/// offsets until every partition's reaches its target, then sets
/// `group_done` (the members stop). Commits follow verification, so every
/// message below the targets has been checked by then.
async fn watch_group_progress(
    admin: Admin,
    group: String,
    topic: String,
    partitions: u32,
    mut targets: watch::Receiver<Targets>,
    shared: Arc<Shared>,
) {
    let t = loop {
        if shared.stop_consuming.load(Relaxed) {
            return;
        }
        let current = targets.borrow_and_update().clone();
        if let Some(t) = current {
            break t;
        }
        tokio::select! {
            r = targets.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    };
    while !shared.stop_consuming.load(Relaxed) {
        match admin.group_offsets(&group, &topic, partitions).await {
            Ok(committed) => {
                if group_targets_reached(&committed, &t, partitions) {
                    shared.group_done.store(true, Relaxed);
                    return;
                }
            }
            Err(e) => shared.note(format!("fetch the group's offsets: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether every partition's committed offset (none: 0) is at its target.
fn group_targets_reached(
    committed: &HashMap<u32, u64>,
    targets: &HashMap<u32, u64>,
    partitions: u32,
) -> bool {
    (0..partitions)
        .all(|p| committed.get(&p).copied().unwrap_or(0) >= targets.get(&p).copied().unwrap_or(0))
}

/// Samples a group's lag: end offsets (high watermarks) minus committed
/// offsets, summed over the topic's partitions.
#[derive(Clone)]
pub(crate) struct LagProbe {
    pub(crate) admin: Admin,
    pub(crate) group: String,
    pub(crate) topic: String,
    pub(crate) partitions: u32,
}

impl LagProbe {
    pub(crate) async fn sample(&self) -> Result<i64, String> {
        let fut = self
            .admin
            .group_lag(&self.group, &self.topic, self.partitions);
        match tokio::time::timeout(Duration::from_millis(800), fut).await {
            Ok(r) => r,
            Err(_) => Err("lag sample timed out".into()),
        }
    }
}

/// With `--from latest`, commits the current end offsets for the partitions
/// the group has no offset for, before any member joins: members then start
/// exactly there even if a partition moves between them (during the group's
/// formation) before its first commit, when a later `latest` lookup would
/// skip what was produced in between.
pub(crate) async fn prepare_group(
    cfg: &Config,
    admin: &Admin,
    group: &str,
    partitions: u32,
) -> Result<(), BenchError> {
    let topic = &cfg.args.topic;
    let existing = admin
        .group_offsets(group, topic, partitions)
        .await
        .map_err(BenchError::Client)?;
    if !existing.is_empty() {
        eprintln!(
            "note: group `{group}` has committed offsets for {} of {partitions} partition(s) of `{topic}`: its members resume from them",
            existing.len()
        );
    }
    if cfg.reset() != OffsetReset::Latest {
        return Ok(());
    }
    let ends = admin
        .end_offsets(topic, partitions, OffsetSpec::Latest)
        .await?;
    let mut commits: Vec<(u32, u64)> = ends
        .iter()
        .filter(|(p, _)| !existing.contains_key(p))
        .map(|(p, o)| (*p, *o))
        .collect();
    if commits.is_empty() {
        return Ok(());
    }
    commits.sort();
    match admin.commit_group_offsets(group, topic, &commits).await {
        Ok(true) => {
            eprintln!(
                "group `{group}`: committed the end offsets of {} partition(s) so that members start there (--from latest)",
                commits.len()
            );
            Ok(())
        }
        Ok(false) => {
            eprintln!(
                "note: group `{group}` already has members: partitions without a committed offset start at the end of the log when first read"
            );
            Ok(())
        }
        Err(e) => Err(BenchError::Client(format!(
            "commit starting offsets of group `{group}`: {e}"
        ))),
    }
}

/// Waits (up to 15 s) until the group is stable with at least `members`
/// members; returns its generation then.
/// (Over the Kafka API the generation is not known: `Some(None)`.)
async fn wait_for_group(admin: &Admin, group: &str, members: usize) -> Option<Option<i32>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok((state, n, generation)) = admin.group_state(group).await {
            if state == "Stable" && n >= members {
                return Some((generation >= 0).then_some(generation));
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Generation changes after the group formed (in `start`): the generations
/// seen past it. Without a known start, every change after the first seen.
pub(crate) fn count_rebalances(seen: &BTreeSet<i32>, start: Option<i32>) -> u64 {
    match start {
        Some(s) => seen.range(s.saturating_add(1)..).count() as u64,
        None => seen.len().saturating_sub(1) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebalances_count_generations_after_the_group_formed() {
        let seen: BTreeSet<i32> = [1, 2, 3, 5].into_iter().collect();
        assert_eq!(count_rebalances(&seen, Some(2)), 2);
        assert_eq!(count_rebalances(&seen, Some(5)), 0);
        assert_eq!(count_rebalances(&seen, None), 3);
        assert_eq!(count_rebalances(&BTreeSet::new(), None), 0);
        assert_eq!(count_rebalances(&seen, Some(i32::MAX)), 0);
    }

    #[test]
    fn group_done_when_every_committed_offset_reaches_its_target() {
        let targets: HashMap<u32, u64> = [(0, 10), (1, 0), (2, 5)].into_iter().collect();
        let mut committed: HashMap<u32, u64> = [(0, 10), (2, 4)].into_iter().collect();
        assert!(!group_targets_reached(&committed, &targets, 3));
        committed.insert(2, 6);
        // Partition 1 has nothing to read: no commit needed.
        assert!(group_targets_reached(&committed, &targets, 3));
        // A partition with a target but no commit is not done.
        assert!(!group_targets_reached(
            &committed,
            &[(3, 1)].into_iter().collect(),
            4
        ));
    }
}
