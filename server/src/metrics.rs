//! Per-shard metrics (plain cells: each shard owns its own) and their
//! rendering in the Prometheus text format. Shard 0 gathers every shard's
//! samples for `/metrics`.

use std::cell::Cell;
use std::fmt::Write;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    counts: [Cell<u64>; LATENCY_BUCKETS.len() + 1],
    sum_us: Cell<u64>,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].set(self.counts[i].get() + 1);
        self.sum_us.set(self.sum_us.get() + d.as_micros() as u64);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.counts.iter().map(Cell::get).collect(),
            sum_secs: self.sum_us.get() as f64 / 1e6,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct HistogramSnapshot {
    pub counts: Vec<u64>,
    pub sum_secs: f64,
}

/// One metric value with its labels, as a shard reports it.
#[derive(Debug, Clone)]
pub enum Sample {
    Value {
        family: &'static str,
        labels: String,
        value: f64,
    },
    Histogram {
        family: &'static str,
        labels: String,
        h: HistogramSnapshot,
    },
}

/// Name, type and help of every family, in output order.
pub const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "levee_partition_bytes_in_total",
        "counter",
        "Record batch bytes appended to a partition.",
    ),
    (
        "levee_partition_messages_in_total",
        "counter",
        "Records appended to a partition.",
    ),
    (
        "levee_partition_bytes_out_total",
        "counter",
        "Record batch bytes returned by fetches.",
    ),
    (
        "levee_partition_messages_out_total",
        "counter",
        "Records returned by fetches.",
    ),
    (
        "levee_partition_log_end_offset",
        "gauge",
        "Next offset to be assigned.",
    ),
    (
        "levee_partition_log_start_offset",
        "gauge",
        "Oldest offset still stored.",
    ),
    (
        "levee_partition_size_bytes",
        "gauge",
        "Bytes of the partition's segments.",
    ),
    (
        "levee_partition_backlog_bytes",
        "gauge",
        "Bytes produced since start-up that no consumer has fetched yet.",
    ),
    (
        "levee_produce_latency_seconds",
        "histogram",
        "Time from reading a produce request to its response.",
    ),
    (
        "levee_fetch_latency_seconds",
        "histogram",
        "Time from reading a fetch request to its response, long-poll wait included.",
    ),
    (
        "levee_shard_inflight_bytes",
        "gauge",
        "Request bytes a shard holds (flow-control window in use).",
    ),
    (
        "levee_shard_inflight_limit_bytes",
        "gauge",
        "The shard's flow-control window.",
    ),
    (
        "levee_shard_busy_seconds_total",
        "counter",
        "CPU time the shard's executor spent running tasks.",
    ),
    (
        "levee_shard_connections",
        "gauge",
        "Open client connections on the shard.",
    ),
    (
        "levee_shard_requests_total",
        "counter",
        "Requests handled by the shard, by outcome.",
    ),
    (
        "levee_shard_errors_total",
        "counter",
        "Error responses sent by the shard.",
    ),
    (
        "levee_shard_forwarded_total",
        "counter",
        "Requests forwarded to another shard.",
    ),
    (
        "levee_transactions_open",
        "gauge",
        "Transactions open or completing that the shard coordinates (Kafka transactional producers).",
    ),
    (
        "levee_transaction_oldest_open_age_seconds",
        "gauge",
        "Age of the oldest transaction open or completing that the shard coordinates (0: none); a stuck one holds read_committed consumers back until its timeout aborts it.",
    ),
    (
        "levee_process_resident_memory_bytes",
        "gauge",
        "Resident set size of the broker process.",
    ),
    (
        "levee_disk_full",
        "gauge",
        "1 while the data directory's disk is full (a write failed for lack of space and not enough was freed since): writes fail with storage errors.",
    ),
    (
        "levee_disk_free_bytes",
        "gauge",
        "Bytes the broker may still write to its data directory's filesystem, as of the last check (every second).",
    ),
    (
        "levee_space_reserve_bytes",
        "gauge",
        "Bytes of the space reserve file, given up when the disk is full so that deleting topics and lowering retention still work.",
    ),
];

/// Renders samples from every shard, grouped by family.
pub fn render(samples: &[Sample]) -> String {
    let mut out = String::with_capacity(4096 + samples.len() * 96);
    for (family, kind, help) in FAMILIES {
        let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
        for s in samples {
            match s {
                Sample::Value {
                    family: f,
                    labels,
                    value,
                } if f == family => {
                    let _ = writeln!(out, "{family}{} {value}", braces(labels));
                }
                Sample::Histogram {
                    family: f,
                    labels,
                    h,
                } if f == family => {
                    let sep = if labels.is_empty() { "" } else { "," };
                    let mut cum = 0;
                    for (i, c) in h.counts.iter().enumerate() {
                        cum += c;
                        let le = LATENCY_BUCKETS
                            .get(i)
                            .map_or("+Inf".to_string(), |b| b.to_string());
                        let _ = writeln!(out, "{family}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
                    }
                    let _ = writeln!(out, "{family}_sum{} {}", braces(labels), h.sum_secs);
                    let _ = writeln!(out, "{family}_count{} {cum}", braces(labels));
                }
                _ => {}
            }
        }
    }
    out
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

/// Resident memory of this process, from /proc.
pub fn resident_bytes() -> u64 {
    let page = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |p| p * page)
}

/// Escapes a label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let text = render(&[Sample::Histogram {
            family: "levee_produce_latency_seconds",
            labels: "shard=\"0\"".into(),
            h: h.snapshot(),
        }]);
        assert!(text.contains("levee_produce_latency_seconds_bucket{shard=\"0\",le=\"0.00005\"} 1"));
        assert!(text.contains("levee_produce_latency_seconds_bucket{shard=\"0\",le=\"0.005\"} 2"));
        assert!(text.contains("levee_produce_latency_seconds_bucket{shard=\"0\",le=\"+Inf\"} 3"));
        assert!(text.contains("levee_produce_latency_seconds_count{shard=\"0\"} 3"));
        assert!(resident_bytes() > 0);
    }
}
