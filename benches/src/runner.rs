//! One run: start the consumers, then the producers, stop producing, drain,
//! and gather the figures into a [`Report`].

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use levee_client::{Acks, Assignment, OffsetSpec, StartPosition};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::admin::Admin;
use crate::args::Protocol;
use crate::consumer::{consumer_task, ConsumerCtx};
use crate::direct::batch_producer_task;
use crate::group::{
    count_rebalances, group_consumer_task, prepare_group, wait_for_group, watch_group_progress,
    LagProbe,
};
use crate::kafka_tasks;
use crate::memory::MemorySource;
use crate::payload::SplitMix;
use crate::producer::producer_task;
use crate::progress::Reporter;
use crate::rate::RateShape;
use crate::report::{BacklogSummary, GroupReport, MemorySummary, Report, Throughput, Verification};
use crate::shared::{lock, Shared, Snap};
use crate::stats::{self, fmt_bytes, summarize, TaskHists};
use crate::verify::{self, Counts, Sent, Stream, Verifier};
use crate::workload::{client_err, host_cpus, BenchError, Config};

fn random_run_id() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut r = SplitMix(t ^ (u64::from(std::process::id()) << 32));
    r.next_u64()
}

/// Runs the benchmark; returns the report and a fatal error (exit 2) if a
/// task failed in a way that makes the figures incomplete.
pub(crate) async fn bench(cfg: Config) -> Result<(Report, Option<String>), BenchError> {
    let cfg = Arc::new(cfg);
    let a = &cfg.args;
    let admin = Admin::connect(&cfg).await?;
    let partitions = admin.ensure_topic(&cfg).await?;
    let run_id = random_run_id();
    eprintln!(
        "levee bench: run {run_id:016x}: {} producer(s), {} consumer(s), topic `{}` ({} partitions), {} B messages, acks={}, keys {}, compression {}; {} tokio worker thread(s) on a {}-CPU host (a local broker competes for the same CPUs)",
        a.producers,
        a.consumers,
        a.topic,
        partitions,
        a.message_size,
        match a.acks { Acks::None => "0", Acks::Leader => "1", Acks::All => "all" },
        cfg.params()["keys"].as_str().unwrap_or("?"),
        cfg.params()["compression"].as_str().unwrap_or("?"),
        cfg.threads,
        host_cpus()
    );
    let group = a.group.clone();
    let consumers_used = if group.is_some() {
        a.consumers
    } else {
        a.consumers.min(partitions as usize)
    };
    if group.is_some() && a.consumers > partitions as usize {
        eprintln!(
            "note: {} consumer(s) but {partitions} partition(s): the group leaves {} member(s) idle",
            a.consumers,
            a.consumers - partitions as usize
        );
    }
    if a.consumers > consumers_used {
        eprintln!(
            "note: {} consumer(s) but {partitions} partition(s): {} consumer(s) stay idle and are not started",
            a.consumers,
            a.consumers - consumers_used
        );
    }

    // Consumers first, so that from `latest` they see every message.
    let (targets_tx, targets_rx) = watch::channel::<Option<Arc<HashMap<u32, u64>>>>(None);
    let start_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let start = Instant::now();
    let warmup = Duration::from_secs_f64(a.warmup);
    let shared = Arc::new(Shared {
        start,
        warmup_end: start + warmup,
        base_ns: start_wall,
        warmup_end_ns: start_wall + warmup.as_nanos() as u64,
        run_id,
        stop_producing: AtomicBool::new(false),
        stop_consuming: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        acked_msgs: AtomicU64::new(0),
        acked_bytes: AtomicU64::new(0),
        failed_msgs: AtomicU64::new(0),
        consumed_msgs: AtomicU64::new(0),
        consumed_bytes: AtomicU64::new(0),
        own_msgs: AtomicU64::new(0),
        own_bytes: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
        group_done: AtomicBool::new(false),
        generations: Mutex::new(BTreeSet::new()),
        commits: AtomicU64::new(0),
        commits_refused: AtomicU64::new(0),
        churn_turn: AtomicU64::new(0),
        churns: AtomicU64::new(0),
    });
    if let Some(g) = &group {
        prepare_group(&cfg, admin.native()?, g, partitions).await?;
    }
    let mut catchup_total = None;
    if a.producers == 0 {
        let ends = admin
            .end_offsets(&a.topic, partitions, OffsetSpec::Latest)
            .await?;
        let mut starts = match cfg.from {
            StartPosition::Earliest => {
                admin
                    .end_offsets(&a.topic, partitions, OffsetSpec::Earliest)
                    .await?
            }
            _ => ends.clone(),
        };
        if let Some(g) = &group {
            // The group resumes from its committed offsets.
            let found = admin
                .native()?
                .fetch_offsets(g, &Assignment::new())
                .await
                .map_err(|e| client_err(&format!("fetch offsets of group `{g}`"), &e))?;
            for o in found.into_iter().filter(|o| o.topic == a.topic) {
                starts.insert(o.partition, o.offset);
            }
        }
        let total: u64 = ends
            .iter()
            .map(|(p, e)| e.saturating_sub(starts.get(p).copied().unwrap_or(0)))
            .sum();
        eprintln!(
            "consume-only: {total} record(s) to read up to the current end of `{}`",
            a.topic
        );
        catchup_total = Some(total);
        let _ = targets_tx.send(Some(Arc::new(ends)));
    }
    let mut e2e_hists = Vec::new();
    let mut consumer_handles = Vec::new();
    let mut readies = Vec::new();
    // One verifier per consumer, or one shared by the group's members (a
    // partition's streams move with it between them).
    let mut verifiers: Vec<Arc<Mutex<Verifier>>> = Vec::new();
    for id in 0..consumers_used {
        let parts: Vec<u32> = (0..partitions)
            .filter(|p| *p as usize % consumers_used == id)
            .collect();
        let h = Arc::new(Mutex::new(TaskHists::default()));
        e2e_hists.push(h.clone());
        let (rtx, rrx) = oneshot::channel();
        readies.push(rrx);
        let verifier = match verifiers.first() {
            Some(v) if group.is_some() => v.clone(),
            _ => {
                let v = Arc::new(Mutex::new(Verifier::new(run_id)));
                verifiers.push(v.clone());
                v
            }
        };
        let ctx = ConsumerCtx {
            id,
            cfg: cfg.clone(),
            shared: shared.clone(),
            hists: h,
            verifier,
            partitions: parts,
            targets: targets_rx.clone(),
            limit: if a.producers == 0 { a.messages } else { None },
        };
        consumer_handles.push(match &group {
            Some(g) => tokio::spawn(group_consumer_task(ctx, g.clone(), rtx)),
            None if a.protocol == Protocol::Kafka => {
                tokio::spawn(kafka_tasks::consumer_task(ctx, rtx))
            }
            None => tokio::spawn(consumer_task(ctx, rtx)),
        });
    }
    for r in readies {
        match r.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shared.stop_consuming.store(true, Relaxed);
                return Err(BenchError::Client(e));
            }
            Err(_) => {
                shared.stop_consuming.store(true, Relaxed);
                return Err(BenchError::Client(
                    "a consumer task ended before it was ready".into(),
                ));
            }
        }
    }
    let mut start_generation = None;
    let mut lag_probe = None;
    if let Some(g) = &group {
        // Keep the group's formation out of the measurement: wait until
        // every member is in one stable generation.
        start_generation = wait_for_group(admin.native()?, g, consumers_used).await;
        match start_generation {
            Some(gen) => eprintln!(
                "group `{g}`: {consumers_used} member(s) stable in generation {gen}"
            ),
            None => shared.note(format!(
                "group `{g}` was not stable with {consumers_used} member(s) after 15 s; starting anyway"
            )),
        }
        lag_probe = Some(LagProbe {
            client: admin.native()?.clone(),
            group: g.clone(),
            topic: a.topic.clone(),
        });
        if let Some(every) = a.churn_interval {
            let s = shared.clone();
            tokio::spawn(async move {
                let every = Duration::from_secs_f64(every);
                let mut tick = tokio::time::interval_at(Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    if s.stop_producing.load(Relaxed) {
                        return;
                    }
                    s.churn_turn.fetch_add(1, Relaxed);
                }
            });
        }
        tokio::spawn(watch_group_progress(
            admin.native()?.clone(),
            g.clone(),
            a.topic.clone(),
            partitions,
            targets_rx.clone(),
            shared.clone(),
        ));
    }

    let reporter_stop = Arc::new(AtomicBool::new(false));
    let mut ack_hists = Vec::new();
    let mut producer_handles = Vec::new();
    for id in 0..a.producers {
        let h = Arc::new(Mutex::new(TaskHists::default()));
        ack_hists.push(h.clone());
        let quota = a.messages.map(|m| {
            let n = a.producers as u64;
            m / n + u64::from((id as u64) < m % n)
        });
        producer_handles.push(if a.protocol == Protocol::Kafka {
            tokio::spawn(kafka_tasks::producer_task(
                id as u32,
                cfg.clone(),
                shared.clone(),
                h,
                partitions,
                quota,
            ))
        } else if a.direct_batches {
            tokio::spawn(batch_producer_task(
                id as u32,
                cfg.clone(),
                shared.clone(),
                h,
                partitions,
                quota,
            ))
        } else {
            tokio::spawn(producer_task(
                id as u32,
                cfg.clone(),
                shared.clone(),
                h,
                partitions,
                quota,
            ))
        });
    }
    let series = Arc::new(Mutex::new(Vec::new()));
    let reporter = tokio::spawn(
        Reporter {
            cfg: cfg.clone(),
            shared: shared.clone(),
            ack_hists: ack_hists.clone(),
            e2e_hists: e2e_hists.clone(),
            series: series.clone(),
            catchup_total,
            lag: lag_probe.clone(),
        }
        .run(reporter_stop.clone()),
    );
    // Warmup snapshot.
    let warm_snap = {
        let s = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(s.warmup_end).await;
            s.snapshot()
        })
    };
    // Stop producing (or, consume-only, consuming) after warmup + duration,
    // or on Ctrl-C; a second Ctrl-C stops the consumers too.
    {
        let s = shared.clone();
        let deadline = cfg
            .duration
            .map(|d| s.warmup_end + Duration::from_secs_f64(d));
        let consume_only = a.producers == 0;
        tokio::spawn(async move {
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = timer => {}
                r = tokio::signal::ctrl_c() => {
                    if r.is_ok() {
                        eprintln!("interrupted: stopping producers (Ctrl-C again stops consumers)");
                    }
                }
            }
            s.stop_producing.store(true, Relaxed);
            if consume_only {
                s.stop_consuming.store(true, Relaxed);
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping consumers");
                s.stop_consuming.store(true, Relaxed);
            }
        });
    }

    let mut fatal: Vec<String> = Vec::new();
    let mut sent: HashMap<(u32, u32), Sent> = HashMap::new();
    for h in producer_handles {
        match h.await {
            Ok(d) => {
                sent.extend(d.sent);
                fatal.extend(d.fatal);
            }
            Err(e) => fatal.push(format!("producer task failed: {e}")),
        }
    }
    let produce_end = shared.snapshot();
    let produce_end_s = produce_end.at;
    let mut drain_s = 0.0;
    if a.producers > 0 && !consumer_handles.is_empty() {
        shared.draining.store(true, Relaxed);
        // With acks=0 the last messages may still be on their way: wait
        // until the end offsets stop moving.
        let mut ends = None;
        for _ in 0..50 {
            let e = admin
                .end_offsets(&a.topic, partitions, OffsetSpec::Latest)
                .await;
            match e {
                Ok(e) => {
                    if a.acks != Acks::None || ends.as_ref() == Some(&e) {
                        ends = Some(e);
                        break;
                    }
                    ends = Some(e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    shared.note(format!("list offsets for the drain: {e}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        match ends {
            Some(e) => {
                let _ = targets_tx.send(Some(Arc::new(e)));
            }
            None => {
                fatal.push("cannot list the topic's end offsets to drain it".into());
                shared.stop_consuming.store(true, Relaxed);
            }
        }
        let s = shared.clone();
        let timeout = Duration::from_secs_f64(a.drain_timeout);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            s.stop_consuming.store(true, Relaxed);
        });
    }
    let mut verifier_own: HashMap<(u32, u32), Stream> = HashMap::new();
    let mut counts = Counts::default();
    let mut complete = true;
    for h in consumer_handles {
        match h.await {
            Ok(d) => {
                complete &= d.complete;
                fatal.extend(d.fatal);
            }
            Err(e) => {
                complete = false;
                fatal.push(format!("consumer task failed: {e}"));
            }
        }
    }
    for v in verifiers {
        let v = std::mem::replace(&mut *lock(&v), Verifier::new(run_id));
        counts.add(&v.counts);
        verifier_own.extend(v.own);
    }
    let consume_end = shared.snapshot();
    let end_lag = match &lag_probe {
        Some(p) => match p.sample().await {
            Ok(v) => Some(v),
            Err(e) => {
                shared.note(format!("consumer lag at the end: {e}"));
                None
            }
        },
        None => None,
    };
    if a.producers > 0 && consumers_used > 0 {
        drain_s = (consume_end.at - produce_end_s).max(0.0);
    }
    reporter_stop.store(true, Relaxed);
    let _ = reporter.await;
    let warm = if a.warmup > 0.0 {
        // A run shorter than its warmup measures nothing.
        taken(warm_snap).await.unwrap_or(consume_end)
    } else {
        warm_snap.abort();
        Snap::default()
    };

    // Figures.
    let produce = Throughput::new(
        produce_end.acked_msgs.saturating_sub(warm.acked_msgs),
        produce_end.acked_bytes.saturating_sub(warm.acked_bytes),
        (produce_end.at - a.warmup).max(0.0),
    );
    let consume = Throughput::new(
        consume_end.consumed_msgs.saturating_sub(warm.consumed_msgs),
        consume_end
            .consumed_bytes
            .saturating_sub(warm.consumed_bytes),
        if consumers_used > 0 {
            (consume_end.at - a.warmup).max(0.0)
        } else {
            0.0
        },
    );
    let merge_total = |hs: &[Arc<Mutex<TaskHists>>]| {
        let mut m = stats::new_histogram();
        for h in hs {
            let _ = m.add(&lock(h).total);
        }
        summarize(&m)
    };
    let ack_latency = merge_total(&ack_hists);
    let e2e_latency = merge_total(&e2e_hists);
    let series = std::mem::take(&mut *lock(&series));
    let mut backlog = BacklogSummary::default();
    for p in &series {
        if p.backlog_bytes > backlog.max_bytes || p.backlog_msgs > backlog.max_msgs {
            backlog.max_bytes = backlog.max_bytes.max(p.backlog_bytes);
            backlog.max_msgs = backlog.max_msgs.max(p.backlog_msgs);
            backlog.max_at_s = p.t_s;
        }
    }
    let consumed_own = shared.own_msgs.load(Relaxed);
    if catchup_total.is_some() {
        let total = catchup_total.unwrap_or(0);
        backlog.end_msgs = total.saturating_sub(consume_end.consumed_msgs) as i64;
    } else {
        backlog.end_msgs = (consume_end.acked_msgs as i64 - consumed_own as i64).max(0);
        backlog.end_bytes =
            (consume_end.acked_bytes as i64 - shared.own_bytes.load(Relaxed) as i64).max(0);
    }
    let group_report = group.as_ref().map(|g| {
        let mut r = GroupReport {
            group: g.clone(),
            commit: cfg.commit_policy(),
            end_lag_msgs: end_lag,
            start_generation,
            end_generation: shared.newest_generation(),
            rebalances: count_rebalances(&lock(&shared.generations), start_generation),
            commits: shared.commits.load(Relaxed),
            commits_refused: shared.commits_refused.load(Relaxed),
            forced_leaves: shared.churns.load(Relaxed),
            ..GroupReport::default()
        };
        for p in &series {
            if let Some(l) = p.lag_msgs {
                if r.max_lag_msgs.is_none_or(|m| l > m) {
                    r.max_lag_msgs = Some(l);
                    r.max_lag_at_s = p.t_s;
                }
            }
        }
        r
    });
    let rss: Vec<u64> = series.iter().filter_map(|p| p.rss_bytes).collect();
    let memory = MemorySummary {
        source: cfg
            .memory
            .as_ref()
            .map_or("disabled".to_string(), MemorySource::describe),
        start_bytes: rss.first().copied(),
        max_bytes: rss.iter().copied().max(),
        end_bytes: rss.last().copied(),
    };

    // Verification.
    let failed = shared.failed_msgs.load(Relaxed);
    let mut verification = Verification {
        checked: consumers_used > 0,
        complete: complete && consumers_used > 0,
        counts,
        ..Verification::default()
    };
    let mut failures = Vec::new();
    if consumers_used > 0 {
        if a.producers > 0 {
            verification.loss = verify::find_loss(&sent, &verifier_own);
        }
        let c = &verification.counts;
        let l = &verification.loss;
        if l.lost > 0 {
            failures.push(format!(
                "{} acknowledged message(s) never received{}",
                l.lost,
                if complete {
                    ""
                } else {
                    " (consumers stopped before the end: drain timeout, interruption or error)"
                }
            ));
        }
        if c.duplicates > 0 {
            failures.push(format!("{} duplicate message(s)", c.duplicates));
        }
        if c.corrupt > 0 {
            failures.push(format!("{} message(s) failed their checksum", c.corrupt));
        }
        if c.corrupt_batches > 0 {
            failures.push(format!(
                "{} batch(es) rejected as corrupt by the client",
                c.corrupt_batches
            ));
        }
        if c.wrong_partition > 0 {
            failures.push(format!(
                "{} message(s) read from another partition than the one they were sent to",
                c.wrong_partition
            ));
        }
    }
    if failed > 0 {
        failures.push(format!("{failed} message(s) failed delivery (see notes)"));
    }
    if consumers_used > 0 && !complete {
        // Whatever was not read was not verified: never an OK verdict.
        failures.push(
            "consumers did not read up to the end offsets (drain timeout, interruption or an error: see notes)"
                .to_string(),
        );
    }
    verification.failures = failures;
    let mut report = Report {
        params: cfg.params(),
        run_id: format!("{run_id:016x}"),
        started_unix_ms: start_wall / 1_000_000,
        client_threads: cfg.threads,
        host_cpus: host_cpus(),
        partitions,
        warmup_s: a.warmup,
        produce_end_s,
        consume_end_s: consume_end.at,
        drain_s,
        produce,
        produce_failed: failed,
        consume,
        ack_latency,
        e2e_latency,
        backlog,
        group: group_report,
        memory,
        verification,
        errors: lock(&shared.errors).clone(),
        timeseries: series,
    };
    if a.producers > 0 && cfg.produce_shape == RateShape::Unlimited {
        report.errors.push(format!(
            "unlimited rate: producers keep their {} buffer full, so acknowledgement and end-to-end latency include queueing in it (use --rate for latency at a given load)",
            fmt_bytes(a.buffer_bytes as f64)
        ));
    }
    let fatal = (!fatal.is_empty()).then(|| fatal.join("; "));
    Ok((report, fatal))
}

/// The warmup snapshot if it was taken (the run outlasted the warmup).
async fn taken(h: tokio::task::JoinHandle<Snap>) -> Option<Snap> {
    if h.is_finished() {
        h.await.ok()
    } else {
        h.abort();
        None
    }
}
