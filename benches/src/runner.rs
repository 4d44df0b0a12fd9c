//! One run: start the consumers, then the producers, stop producing, drain,
//! and gather the figures into a [`Report`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use levee_client::{Acks, OffsetSpec, StartPosition};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::admin::Admin;
use crate::args::Protocol;
use crate::consumer::{consumer_task, ConsumerCtx, ConsumerDone};
use crate::direct::batch_producer_task;
use crate::group::{group_consumer_task, prepare_group, watch_group, LagProbe};
use crate::kafka_tasks;
use crate::payload::SplitMix;
use crate::producer::{producer_task, ProducerDone};
use crate::progress::Reporter;
use crate::report::Report;
use crate::shared::{lock, Shared, Snap, Targets};
use crate::stats::{Point, TaskHists};
use crate::summary::{self, Outcome, Verified};
use crate::verify::{Counts, Sent, Verifier};
use crate::workload::{host_cpus, BenchError, Config};

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
    announce(&cfg, run_id, partitions);
    let consumers_used = consumers_to_start(&cfg, partitions);

    // Consumers first, so that from `latest` they see every message.
    let (targets_tx, targets_rx) = watch::channel::<Targets>(None);
    let start_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let warmup = Duration::from_secs_f64(a.warmup);
    let shared = Arc::new(Shared::new(Instant::now(), start_wall, warmup, run_id));
    if let Some(g) = &a.group {
        prepare_group(&cfg, &admin, g, partitions).await?;
    }
    let mut catchup_total = None;
    if a.producers == 0 {
        let (total, ends) = catchup(&cfg, &admin, partitions).await?;
        catchup_total = Some(total);
        let _ = targets_tx.send(Some(Arc::new(ends)));
    }
    let mut consumers = start_consumers(&cfg, &shared, partitions, consumers_used, &targets_rx);
    consumers_ready(std::mem::take(&mut consumers.readies), &shared).await?;
    let (start_generation, lag_probe) = match &a.group {
        Some(g) => {
            let watch = watch_group(
                &cfg,
                &admin,
                g,
                consumers_used,
                partitions,
                &targets_rx,
                &shared,
            );
            let (generation, probe) = watch.await;
            (generation, Some(probe))
        }
        None => (None, None),
    };

    let producers = start_producers(&cfg, &shared, partitions);
    let watchers = Watchers::start(
        &cfg,
        &shared,
        &producers,
        &consumers,
        catchup_total,
        lag_probe.clone(),
    );
    spawn_stop_timer(&cfg, &shared);

    let mut fatal: Vec<String> = Vec::new();
    let sent = join_producers(producers.handles, &mut fatal).await;
    let produce_end = shared.snapshot();
    if a.producers > 0 && !consumers.handles.is_empty() {
        start_drain(&cfg, &admin, partitions, &shared, &targets_tx, &mut fatal).await;
    }
    let verified =
        join_consumers(consumers.handles, &consumers.verifiers, run_id, &mut fatal).await;
    let consume_end = shared.snapshot();
    let end_lag = match &lag_probe {
        Some(p) => end_lag(p, &shared).await,
        None => None,
    };
    let mut drain_s = 0.0;
    if a.producers > 0 && consumers_used > 0 {
        drain_s = (consume_end.at - produce_end.at).max(0.0);
    }
    let (series, warm) = watchers.stop(a.warmup, consume_end).await;
    let outcome = Outcome {
        run_id,
        start_wall_ns: start_wall,
        partitions,
        consumers_used,
        catchup_total,
        warm,
        produce_end,
        consume_end,
        drain_s,
        ack_hists: producers.hists,
        e2e_hists: consumers.hists,
        series,
        sent,
        verified,
        end_lag,
        start_generation,
        fatal,
    };
    Ok(summary::report(&cfg, &shared, outcome))
}

/// The run's first line on stderr: what it runs against, with what.
fn announce(cfg: &Config, run_id: u64, partitions: u32) {
    let a = &cfg.args;
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
}

/// How many consumer tasks to start: every one with `--group` (the broker
/// leaves the extra members idle), else at most one per partition. Says
/// so on stderr when some stay idle.
fn consumers_to_start(cfg: &Config, partitions: u32) -> usize {
    let a = &cfg.args;
    let consumers_used = if a.group.is_some() {
        a.consumers
    } else {
        a.consumers.min(partitions as usize)
    };
    if a.group.is_some() && a.consumers > partitions as usize {
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
    consumers_used
}

/// Consume-only: the records to read in total (from where the consumers
/// start up to the current end) and the end offsets, their targets.
async fn catchup(
    cfg: &Config,
    admin: &Admin,
    partitions: u32,
) -> Result<(u64, HashMap<u32, u64>), BenchError> {
    let a = &cfg.args;
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
    if let Some(g) = &a.group {
        // The group resumes from its committed offsets.
        let found = admin
            .group_offsets(g, &a.topic, partitions)
            .await
            .map_err(BenchError::Client)?;
        starts.extend(found);
    }
    let total: u64 = ends
        .iter()
        .map(|(p, e)| e.saturating_sub(starts.get(p).copied().unwrap_or(0)))
        .sum();
    eprintln!(
        "consume-only: {total} record(s) to read up to the current end of `{}`",
        a.topic
    );
    Ok((total, ends))
}

/// The consumer tasks of a run.
struct Consumers {
    handles: Vec<JoinHandle<ConsumerDone>>,
    /// Each says once its consumer has connected (and joined or been assigned).
    readies: Vec<oneshot::Receiver<Result<(), String>>>,
    /// End-to-end latencies, one per consumer.
    hists: Vec<Arc<Mutex<TaskHists>>>,
    /// One verifier per consumer, or one shared by the group's members (a
    /// partition's streams move with it between them).
    verifiers: Vec<Arc<Mutex<Verifier>>>,
}

/// Starts `count` consumers: partitions split between them, or with
/// `--group` members of the group.
fn start_consumers(
    cfg: &Arc<Config>,
    shared: &Arc<Shared>,
    partitions: u32,
    count: usize,
    targets: &watch::Receiver<Targets>,
) -> Consumers {
    let a = &cfg.args;
    let mut c = Consumers {
        handles: Vec::new(),
        readies: Vec::new(),
        hists: Vec::new(),
        verifiers: Vec::new(),
    };
    for id in 0..count {
        let parts: Vec<u32> = (0..partitions)
            .filter(|p| *p as usize % count == id)
            .collect();
        let h = Arc::new(Mutex::new(TaskHists::default()));
        c.hists.push(h.clone());
        let (rtx, rrx) = oneshot::channel();
        c.readies.push(rrx);
        let verifier = match c.verifiers.first() {
            Some(v) if a.group.is_some() => v.clone(),
            _ => {
                let v = Arc::new(Mutex::new(Verifier::new(shared.run_id)));
                c.verifiers.push(v.clone());
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
            targets: targets.clone(),
            limit: if a.producers == 0 { a.messages } else { None },
        };
        c.handles.push(match &a.group {
            Some(g) => tokio::spawn(group_consumer_task(ctx, g.clone(), rtx)),
            None if a.protocol == Protocol::Kafka => {
                tokio::spawn(kafka_tasks::consumer_task(ctx, rtx))
            }
            None => tokio::spawn(consumer_task(ctx, rtx)),
        });
    }
    c
}

/// Waits until every consumer is ready; the first that cannot start stops
/// them all and ends the run.
async fn consumers_ready(
    readies: Vec<oneshot::Receiver<Result<(), String>>>,
    shared: &Shared,
) -> Result<(), BenchError> {
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
    Ok(())
}

/// The producer tasks of a run.
struct Producers {
    handles: Vec<JoinHandle<ProducerDone>>,
    /// Acknowledgement latencies, one per producer.
    hists: Vec<Arc<Mutex<TaskHists>>>,
}

/// Starts `--producers` producers of the kind the flags ask for, each with
/// its share of `--messages`.
fn start_producers(cfg: &Arc<Config>, shared: &Arc<Shared>, partitions: u32) -> Producers {
    let a = &cfg.args;
    let mut p = Producers {
        handles: Vec::new(),
        hists: Vec::new(),
    };
    for id in 0..a.producers {
        let h = Arc::new(Mutex::new(TaskHists::default()));
        p.hists.push(h.clone());
        let quota = a.messages.map(|m| {
            let n = a.producers as u64;
            m / n + u64::from((id as u64) < m % n)
        });
        let (id, cfg, shared) = (id as u32, cfg.clone(), shared.clone());
        p.handles.push(if a.protocol == Protocol::Kafka {
            tokio::spawn(kafka_tasks::producer_task(
                id, cfg, shared, h, partitions, quota,
            ))
        } else if a.direct_batches {
            tokio::spawn(batch_producer_task(id, cfg, shared, h, partitions, quota))
        } else {
            tokio::spawn(producer_task(id, cfg, shared, h, partitions, quota))
        });
    }
    p
}

/// The tasks that watch a run from the side: the per-second reporter and
/// the snapshot of the counters at the end of the warmup.
struct Watchers {
    reporter: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    series: Arc<Mutex<Vec<Point>>>,
    warm_snap: JoinHandle<Snap>,
}

impl Watchers {
    fn start(
        cfg: &Arc<Config>,
        shared: &Arc<Shared>,
        producers: &Producers,
        consumers: &Consumers,
        catchup_total: Option<u64>,
        lag: Option<LagProbe>,
    ) -> Watchers {
        let stop = Arc::new(AtomicBool::new(false));
        let series = Arc::new(Mutex::new(Vec::new()));
        let reporter = tokio::spawn(
            Reporter {
                cfg: cfg.clone(),
                shared: shared.clone(),
                ack_hists: producers.hists.clone(),
                e2e_hists: consumers.hists.clone(),
                series: series.clone(),
                catchup_total,
                lag,
            }
            .run(stop.clone()),
        );
        let s = shared.clone();
        let warm_snap = tokio::spawn(async move {
            tokio::time::sleep_until(s.warmup_end).await;
            s.snapshot()
        });
        Watchers {
            reporter,
            stop,
            series,
            warm_snap,
        }
    }

    /// Stops the reporter; returns its time series and the counters at the
    /// end of the warmup (`end` if the run ended before it; zero without one).
    async fn stop(self, warmup_s: f64, end: Snap) -> (Vec<Point>, Snap) {
        self.stop.store(true, Relaxed);
        let _ = self.reporter.await;
        let warm = if warmup_s > 0.0 {
            // A run shorter than its warmup measures nothing.
            taken(self.warm_snap).await.unwrap_or(end)
        } else {
            self.warm_snap.abort();
            Snap::default()
        };
        let series = std::mem::take(&mut *lock(&self.series));
        (series, warm)
    }
}

/// The group's lag when the consumers have stopped.
async fn end_lag(probe: &LagProbe, shared: &Shared) -> Option<i64> {
    match probe.sample().await {
        Ok(v) => Some(v),
        Err(e) => {
            shared.note(format!("consumer lag at the end: {e}"));
            None
        }
    }
}

/// Stops producing (or, consume-only, consuming) after warmup + duration,
/// or on Ctrl-C; a second Ctrl-C stops the consumers too.
fn spawn_stop_timer(cfg: &Config, shared: &Arc<Shared>) {
    let s = shared.clone();
    let deadline = cfg
        .duration
        .map(|d| s.warmup_end + Duration::from_secs_f64(d));
    let consume_only = cfg.args.producers == 0;
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

/// Waits for every producer; returns what each sent to each partition.
/// A producer's fatal error goes to `fatal`.
async fn join_producers(
    handles: Vec<JoinHandle<ProducerDone>>,
    fatal: &mut Vec<String>,
) -> HashMap<(u32, u32), Sent> {
    let mut sent: HashMap<(u32, u32), Sent> = HashMap::new();
    for h in handles {
        match h.await {
            Ok(d) => {
                sent.extend(d.sent);
                fatal.extend(d.fatal);
            }
            Err(e) => fatal.push(format!("producer task failed: {e}")),
        }
    }
    sent
}

/// Producers are done: gives the consumers the end offsets to read up to
/// and `--drain-timeout` to get there.
async fn start_drain(
    cfg: &Config,
    admin: &Admin,
    partitions: u32,
    shared: &Arc<Shared>,
    targets: &watch::Sender<Targets>,
    fatal: &mut Vec<String>,
) {
    let a = &cfg.args;
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
            let _ = targets.send(Some(Arc::new(e)));
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

/// Waits for every consumer, then merges what their verifiers saw. A
/// consumer's fatal error goes to `fatal`.
async fn join_consumers(
    handles: Vec<JoinHandle<ConsumerDone>>,
    verifiers: &[Arc<Mutex<Verifier>>],
    run_id: u64,
    fatal: &mut Vec<String>,
) -> Verified {
    let mut verified = Verified {
        complete: true,
        counts: Counts::default(),
        own: HashMap::new(),
    };
    for h in handles {
        match h.await {
            Ok(d) => {
                verified.complete &= d.complete;
                fatal.extend(d.fatal);
            }
            Err(e) => {
                verified.complete = false;
                fatal.push(format!("consumer task failed: {e}"));
            }
        }
    }
    for v in verifiers {
        let v = std::mem::replace(&mut *lock(v), Verifier::new(run_id));
        verified.counts.add(&v.counts);
        verified.own.extend(v.own);
    }
    verified
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
