//! The progress line printed every second, and the time series it records.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::group::LagProbe;
use crate::rate;
use crate::shared::{lock, Shared, Snap};
use crate::stats::{self, fmt_bytes, quantile_ms, Phase, Point, TaskHists};
use crate::workload::Config;

/// The per-second reporter's state.
pub(crate) struct Reporter {
    pub(crate) cfg: Arc<Config>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) ack_hists: Vec<Arc<Mutex<TaskHists>>>,
    pub(crate) e2e_hists: Vec<Arc<Mutex<TaskHists>>>,
    pub(crate) series: Arc<Mutex<Vec<Point>>>,
    /// Consume-only: records to read in total (backlog = this minus consumed).
    pub(crate) catchup_total: Option<u64>,
    /// With `--group`: samples the group's lag.
    pub(crate) lag: Option<LagProbe>,
}

impl Reporter {
    fn take_interval(hs: &[Arc<Mutex<TaskHists>>]) -> hdrhistogram::Histogram<u64> {
        let mut merged = stats::new_histogram();
        for h in hs {
            let mut g = lock(h);
            // Same bounds everywhere, so adding cannot fail.
            let _ = merged.add(&g.interval);
            g.interval.reset();
        }
        merged
    }

    pub(crate) fn backlog(&self) -> (i64, i64) {
        let s = &self.shared;
        let consumed = s.consumed_msgs.load(Relaxed);
        match self.catchup_total {
            Some(total) => {
                let msgs = total.saturating_sub(consumed) as i64;
                let avg = if consumed > 0 {
                    s.consumed_bytes.load(Relaxed) as f64 / consumed as f64
                } else {
                    self.cfg.args.message_size as f64
                };
                (msgs, (msgs as f64 * avg) as i64)
            }
            // A consumer may read a message before its producer has seen
            // the acknowledgement: never report a negative backlog.
            None => (
                (s.acked_msgs.load(Relaxed) as i64 - s.own_msgs.load(Relaxed) as i64).max(0),
                (s.acked_bytes.load(Relaxed) as i64 - s.own_bytes.load(Relaxed) as i64).max(0),
            ),
        }
    }

    pub(crate) async fn run(self, stop: Arc<AtomicBool>) {
        let start = self.shared.start;
        let mut tick =
            tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Snap::default();
        let mut rss_warned = false;
        loop {
            tick.tick().await;
            if stop.load(Relaxed) {
                break;
            }
            let now = self.shared.snapshot();
            let dt = (now.at - last.at).max(1e-3);
            let ack = Self::take_interval(&self.ack_hists);
            let e2e = Self::take_interval(&self.e2e_hists);
            let (backlog_msgs, backlog_bytes) = self.backlog();
            let rss = match &self.cfg.memory {
                Some(m) => m.sample().await,
                None => None,
            };
            if rss.is_none() && !rss_warned {
                if let Some(m) = &self.cfg.memory {
                    eprintln!("note: cannot read broker memory from {}", m.describe());
                }
                rss_warned = true;
            }
            let lag = match &self.lag {
                Some(probe) => match probe.sample().await {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.shared.note(format!("consumer lag: {e}"));
                        None
                    }
                },
                None => None,
            };
            let generation = if self.lag.is_some() {
                self.shared.newest_generation()
            } else {
                None
            };
            let phase = if self.shared.draining.load(Relaxed) {
                Phase::Drain
            } else if Instant::now() < self.shared.warmup_end {
                Phase::Warmup
            } else {
                Phase::Measure
            };
            let p = Point {
                t_s: (now.at * 1000.0).round() / 1000.0,
                phase,
                produce_mb_s: (now.acked_bytes - last.acked_bytes) as f64 / dt / rate::MB,
                produce_msgs_s: (now.acked_msgs - last.acked_msgs) as f64 / dt,
                consume_mb_s: (now.consumed_bytes - last.consumed_bytes) as f64 / dt / rate::MB,
                consume_msgs_s: (now.consumed_msgs - last.consumed_msgs) as f64 / dt,
                ack_p50_ms: quantile_ms(&ack, 0.5),
                ack_p99_ms: quantile_ms(&ack, 0.99),
                e2e_p50_ms: quantile_ms(&e2e, 0.5),
                e2e_p99_ms: quantile_ms(&e2e, 0.99),
                backlog_msgs,
                backlog_bytes,
                rss_bytes: rss,
                lag_msgs: lag,
                generation,
            };
            if !self.cfg.args.quiet {
                eprintln!(
                    "[{:>5.0}s {:<7}] produce {:>8.2} MB/s {:>9.0} msg/s | consume {:>8.2} MB/s {:>9.0} msg/s | ack p99 {:>9} | backlog {:>9} msgs {:>10} | rss {}{}",
                    now.at,
                    format!("{phase:?}").to_lowercase(),
                    p.produce_mb_s,
                    p.produce_msgs_s,
                    p.consume_mb_s,
                    p.consume_msgs_s,
                    p.ack_p99_ms.map_or("-".to_string(), stats::fmt_ms),
                    backlog_msgs,
                    fmt_bytes(backlog_bytes as f64),
                    rss.map_or("-".to_string(), |b| fmt_bytes(b as f64)),
                    match (&self.lag, lag) {
                        (None, _) => String::new(),
                        (Some(_), l) => format!(
                            " | lag {} gen {}",
                            l.map_or("-".to_string(), |v| v.to_string()),
                            generation.map_or("-".to_string(), |g| g.to_string())
                        ),
                    },
                );
            }
            lock(&self.series).push(p);
            last = now;
        }
    }
}
