//! Latency histograms (every message recorded, fixed memory), their
//! percentile summaries, and the per-second time series.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded exactly (µs): one hour. Longer ones saturate.
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Records a latency of `us` microseconds (clamped to the histogram's range).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_US));
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Minimum.
    pub min_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p99_9_ms: f64,
    /// 99.99th percentile.
    pub p99_99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Summarises a histogram of microseconds.
pub fn summarize(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    LatencySummary {
        count: h.len(),
        mean_ms: h.mean() / 1000.0,
        min_ms: ms(h.min()),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p99_9_ms: ms(h.value_at_quantile(0.999)),
        p99_99_ms: ms(h.value_at_quantile(0.9999)),
        max_ms: ms(h.max()),
    }
}

impl LatencySummary {
    /// One line: `p50 1.234  p90 ...  max ...  (n=...)`, in ms.
    pub fn line(&self) -> String {
        if self.count == 0 {
            return "no samples".to_string();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  (mean {}, n={})",
            fmt_ms(self.p50_ms),
            fmt_ms(self.p90_ms),
            fmt_ms(self.p99_ms),
            fmt_ms(self.p99_9_ms),
            fmt_ms(self.p99_99_ms),
            fmt_ms(self.max_ms),
            fmt_ms(self.mean_ms),
            self.count
        )
    }
}

/// Formats milliseconds with 3 significant-ish digits and a unit.
pub fn fmt_ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.3} ms")
    }
}

/// Formats a byte count with a binary unit.
pub fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v.abs() >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// A task's latency histograms: the measured total (after warmup) and the
/// current second's (taken by the reporter).
#[derive(Debug, Clone)]
pub struct TaskHists {
    /// Every measured value.
    pub total: Histogram<u64>,
    /// Values since the reporter last took them.
    pub interval: Histogram<u64>,
}

impl Default for TaskHists {
    fn default() -> Self {
        TaskHists {
            total: new_histogram(),
            interval: new_histogram(),
        }
    }
}

impl TaskHists {
    /// Records `us`; into the total too when `measured`.
    pub fn record(&mut self, us: u64, measured: bool) {
        record(&mut self.interval, us);
        if measured {
            record(&mut self.total, us);
        }
    }
}

/// Which part of the run a second belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Before `--warmup` elapsed.
    Warmup,
    /// Producing (or consuming, when consume-only) and measured.
    Measure,
    /// Producers stopped; consumers reading the rest.
    Drain,
}

/// One second of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the start, at the end of this interval.
    pub t_s: f64,
    /// Phase at the end of the interval.
    pub phase: Phase,
    /// Acknowledged produce throughput.
    pub produce_mb_s: f64,
    /// Acknowledged messages per second.
    pub produce_msgs_s: f64,
    /// Consume throughput.
    pub consume_mb_s: f64,
    /// Consumed messages per second.
    pub consume_msgs_s: f64,
    /// Median acknowledgement latency of the messages acknowledged in this interval.
    pub ack_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub ack_p99_ms: Option<f64>,
    /// Median end-to-end latency of the messages received in this interval.
    pub e2e_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub e2e_p99_ms: Option<f64>,
    /// Messages acknowledged and not yet consumed (or left to read, consume-only).
    pub backlog_msgs: i64,
    /// The same in bytes.
    pub backlog_bytes: i64,
    /// Broker resident memory.
    pub rss_bytes: Option<u64>,
    /// Consumer lag of the group (`--group`): the sum over partitions of
    /// the end offset minus the group's committed offset; `None` outside
    /// group mode or when it could not be read this second.
    pub lag_msgs: Option<i64>,
    /// The newest group generation the consumers had seen (`--group`).
    pub generation: Option<i32>,
}

/// Quantile of a histogram in ms, `None` if empty.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| ms(h.value_at_quantile(q)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_distribution() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            record(&mut h, v * 10); // 10 µs .. 100 ms
        }
        let s = summarize(&h);
        assert_eq!(s.count, 10_000);
        let near = |a: f64, b: f64| (a - b).abs() <= b * 0.002 + 0.001;
        assert!(near(s.p50_ms, 50.0), "{}", s.p50_ms);
        assert!(near(s.p90_ms, 90.0), "{}", s.p90_ms);
        assert!(near(s.p99_ms, 99.0), "{}", s.p99_ms);
        assert!(near(s.p99_9_ms, 99.9), "{}", s.p99_9_ms);
        assert!(near(s.p99_99_ms, 99.99), "{}", s.p99_99_ms);
        assert!(near(s.max_ms, 100.0), "{}", s.max_ms);
        assert!(near(s.min_ms, 0.01), "{}", s.min_ms);
        assert!(near(s.mean_ms, 50.005), "{}", s.mean_ms);
        assert!(s.line().contains("p99.99"));
    }

    #[test]
    fn empty_and_out_of_range() {
        let h = new_histogram();
        assert_eq!(summarize(&h), LatencySummary::default());
        assert_eq!(summarize(&h).line(), "no samples");
        assert_eq!(quantile_ms(&h, 0.5), None);
        let mut h = new_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_US);
    }

    #[test]
    fn task_hists_exclude_warmup_from_total() {
        let mut t = TaskHists::default();
        t.record(100, false);
        t.record(200, true);
        assert_eq!(t.interval.len(), 2);
        assert_eq!(t.total.len(), 1);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_ms(0.1234), "0.123 ms");
        assert_eq!(fmt_ms(12.34), "12.3 ms");
        assert_eq!(fmt_ms(1234.0), "1.23 s");
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_bytes(1536.0), "1.5 KiB");
        assert_eq!(fmt_bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
    }
}
