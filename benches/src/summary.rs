//! A finished run's figures and verdict: throughput and latency after the
//! warmup, backlog, the group's lag and rebalances, broker memory, and what
//! verification found, gathered into a [`Report`].

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use crate::group::count_rebalances;
use crate::memory::MemorySource;
use crate::rate::RateShape;
use crate::report::{BacklogSummary, GroupReport, MemorySummary, Report, Throughput, Verification};
use crate::shared::{lock, Shared, Snap};
use crate::stats::{self, fmt_bytes, summarize, LatencySummary, Point, TaskHists};
use crate::verify::{self, Counts, Sent, Stream};
use crate::workload::{host_cpus, Config};

/// What the consumers' verifiers saw, merged.
pub(crate) struct Verified {
    /// Every consumer reached the end offsets it was asked to.
    pub(crate) complete: bool,
    pub(crate) counts: Counts,
    /// This run's streams, by (producer, partition).
    pub(crate) own: HashMap<(u32, u32), Stream>,
}

/// What a run gathered by the time its tasks stopped: the input of its report.
pub(crate) struct Outcome {
    pub(crate) run_id: u64,
    /// Unix time of the run's start, ns.
    pub(crate) start_wall_ns: u64,
    pub(crate) partitions: u32,
    pub(crate) consumers_used: usize,
    /// Consume-only: the records there were to read.
    pub(crate) catchup_total: Option<u64>,
    /// The counters at the end of the warmup (all 0 without one).
    pub(crate) warm: Snap,
    /// The counters when the last producer stopped.
    pub(crate) produce_end: Snap,
    /// The counters when the last consumer stopped.
    pub(crate) consume_end: Snap,
    pub(crate) drain_s: f64,
    pub(crate) ack_hists: Vec<Arc<Mutex<TaskHists>>>,
    pub(crate) e2e_hists: Vec<Arc<Mutex<TaskHists>>>,
    /// The per-second progress points.
    pub(crate) series: Vec<Point>,
    /// What each producer sent to each partition.
    pub(crate) sent: HashMap<(u32, u32), Sent>,
    pub(crate) verified: Verified,
    /// With `--group`: its lag when the consumers stopped.
    pub(crate) end_lag: Option<i64>,
    /// With `--group`: the generation it was stable in before producing.
    pub(crate) start_generation: Option<i32>,
    /// The tasks' fatal errors.
    pub(crate) fatal: Vec<String>,
}

/// The report of a finished run, and its fatal errors (exit 2) in one line.
pub(crate) fn report(cfg: &Config, shared: &Shared, o: Outcome) -> (Report, Option<String>) {
    let a = &cfg.args;
    let (produce, consume) = throughput(cfg, &o);
    let ack_latency = merge_total(&o.ack_hists);
    let e2e_latency = merge_total(&o.e2e_hists);
    let backlog = backlog(shared, &o);
    let group = group_report(cfg, shared, &o);
    let memory = memory(cfg, &o.series);
    let failed = shared.failed_msgs.load(Relaxed);
    let retried = shared.retried_batches.load(Relaxed);
    let verification = verification(cfg, &o, failed, retried);
    let mut report = Report {
        params: cfg.params(),
        run_id: format!("{:016x}", o.run_id),
        started_unix_ms: o.start_wall_ns / 1_000_000,
        client_threads: cfg.threads,
        host_cpus: host_cpus(),
        partitions: o.partitions,
        warmup_s: a.warmup,
        produce_end_s: o.produce_end.at,
        consume_end_s: o.consume_end.at,
        drain_s: o.drain_s,
        produce,
        produce_failed: failed,
        consume,
        ack_latency,
        e2e_latency,
        backlog,
        group,
        memory,
        verification,
        errors: lock(&shared.errors).clone(),
        timeseries: o.series,
    };
    if a.producers > 0 && cfg.produce_shape == RateShape::Unlimited {
        report.errors.push(format!(
            "unlimited rate: producers keep their {} buffer full, so acknowledgement and end-to-end latency include queueing in it (use --rate for latency at a given load)",
            fmt_bytes(a.buffer_bytes as f64)
        ));
    }
    let fatal = (!o.fatal.is_empty()).then(|| o.fatal.join("; "));
    (report, fatal)
}

/// Produce and consume throughput after the warmup.
fn throughput(cfg: &Config, o: &Outcome) -> (Throughput, Throughput) {
    let a = &cfg.args;
    let (warm, produce_end, consume_end) = (&o.warm, &o.produce_end, &o.consume_end);
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
        if o.consumers_used > 0 {
            (consume_end.at - a.warmup).max(0.0)
        } else {
            0.0
        },
    );
    (produce, consume)
}

/// The latencies of every task, after the warmup.
fn merge_total(hs: &[Arc<Mutex<TaskHists>>]) -> LatencySummary {
    let mut m = stats::new_histogram();
    for h in hs {
        let _ = m.add(&lock(h).total);
    }
    summarize(&m)
}

/// The largest backlog seen (and when), and what was left unread at the end.
fn backlog(shared: &Shared, o: &Outcome) -> BacklogSummary {
    let mut backlog = BacklogSummary::default();
    for p in &o.series {
        if p.backlog_bytes > backlog.max_bytes || p.backlog_msgs > backlog.max_msgs {
            backlog.max_bytes = backlog.max_bytes.max(p.backlog_bytes);
            backlog.max_msgs = backlog.max_msgs.max(p.backlog_msgs);
            backlog.max_at_s = p.t_s;
        }
    }
    let consume_end = &o.consume_end;
    let consumed_own = shared.own_msgs.load(Relaxed);
    if o.catchup_total.is_some() {
        let total = o.catchup_total.unwrap_or(0);
        backlog.end_msgs = total.saturating_sub(consume_end.consumed_msgs) as i64;
    } else {
        backlog.end_msgs = (consume_end.acked_msgs as i64 - consumed_own as i64).max(0);
        backlog.end_bytes =
            (consume_end.acked_bytes as i64 - shared.own_bytes.load(Relaxed) as i64).max(0);
    }
    backlog
}

/// With `--group`: its commits, rebalances and lag.
fn group_report(cfg: &Config, shared: &Shared, o: &Outcome) -> Option<GroupReport> {
    cfg.args.group.as_ref().map(|g| {
        let mut r = GroupReport {
            group: g.clone(),
            commit: cfg.commit_policy(),
            end_lag_msgs: o.end_lag,
            start_generation: o.start_generation,
            end_generation: shared.newest_generation(),
            rebalances: count_rebalances(&lock(&shared.generations), o.start_generation),
            commits: shared.commits.load(Relaxed),
            commits_refused: shared.commits_refused.load(Relaxed),
            forced_leaves: shared.churns.load(Relaxed),
            ..GroupReport::default()
        };
        let h = lock(&shared.commit_latency);
        if !h.is_empty() {
            r.commit_latency = Some(crate::stats::summarize(&h));
            let secs = shared.start.elapsed().as_secs_f64().max(1e-3);
            r.commits_per_s = r.commits as f64 / secs;
        }
        for p in &o.series {
            if let Some(l) = p.lag_msgs {
                if r.max_lag_msgs.is_none_or(|m| l > m) {
                    r.max_lag_msgs = Some(l);
                    r.max_lag_at_s = p.t_s;
                }
            }
        }
        r
    })
}

/// The broker's resident memory at the start, its largest, and at the end.
fn memory(cfg: &Config, series: &[Point]) -> MemorySummary {
    let rss: Vec<u64> = series.iter().filter_map(|p| p.rss_bytes).collect();
    MemorySummary {
        source: cfg
            .memory
            .as_ref()
            .map_or("disabled".to_string(), MemorySource::describe),
        start_bytes: rss.first().copied(),
        max_bytes: rss.iter().copied().max(),
        end_bytes: rss.last().copied(),
    }
}

/// What verification found, with one line per kind of failure; `failed`
/// messages failed delivery.
fn verification(cfg: &Config, o: &Outcome, failed: u64, retried_batches: u64) -> Verification {
    let checked = o.consumers_used > 0;
    let complete = o.verified.complete;
    let mut verification = Verification {
        checked,
        complete: complete && checked,
        counts: o.verified.counts.clone(),
        retried_batches,
        ..Verification::default()
    };
    let mut failures = Vec::new();
    if checked {
        if cfg.args.producers > 0 {
            verification.loss = verify::find_loss(&o.sent, &o.verified.own);
        }
        failures = read_failures(&verification, complete);
        if let Some(f) = reorder_failure(verification.counts.reordered, retried_batches, failed) {
            failures.push(f);
        }
    }
    if failed > 0 {
        failures.push(format!("{failed} message(s) failed delivery (see notes)"));
    }
    if checked && !complete {
        // Whatever was not read was not verified: never an OK verdict.
        failures.push(
            "consumers did not read up to the end offsets (drain timeout, interruption or an error: see notes)"
                .to_string(),
        );
    }
    verification.failures = failures;
    verification
}

/// Reordering within one producer's partition is a failure unless a
/// request was retried or failed: a producer without idempotence keeps
/// send order only as long as nothing is sent twice.
fn reorder_failure(reordered: u64, retried_batches: u64, failed: u64) -> Option<String> {
    (reordered > 0 && retried_batches == 0 && failed == 0).then(|| {
        format!(
            "{reordered} message(s) arrived out of send order within their producer's partition, with no request retried or failed"
        )
    })
}

/// The failures the consumers found: lost, duplicated, corrupt or misplaced
/// messages.
fn read_failures(v: &Verification, complete: bool) -> Vec<String> {
    let mut failures = Vec::new();
    let c = &v.counts;
    let l = &v.loss;
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
    failures
}

#[cfg(test)]
mod tests {
    use super::reorder_failure;

    #[test]
    fn reordering_fails_the_run_only_without_retries_or_failures() {
        assert!(reorder_failure(0, 0, 0).is_none());
        let f = reorder_failure(3, 0, 0).expect("reordering without retries is a failure");
        assert!(
            f.starts_with("3 message(s) arrived out of send order"),
            "{f}"
        );
        // A retried or failed request may legitimately land late.
        assert!(reorder_failure(3, 1, 0).is_none());
        assert!(reorder_failure(3, 0, 2).is_none());
    }
}
