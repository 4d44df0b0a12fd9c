//! The end-of-run report: text summary, JSON, and a self-contained HTML page
//! with inline SVG charts.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{fmt_bytes, LatencySummary, Phase, Point};
use crate::verify::{Counts, Loss};

/// A throughput figure over the measured window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Throughput {
    /// Messages in the window.
    pub messages: u64,
    /// Payload bytes in the window.
    pub bytes: u64,
    /// Length of the window.
    pub window_s: f64,
    /// MB/s (1 MB = 10^6 bytes).
    pub mb_s: f64,
    /// Messages per second.
    pub msgs_s: f64,
}

impl Throughput {
    /// The rate of `messages`/`bytes` over `window_s`.
    pub fn new(messages: u64, bytes: u64, window_s: f64) -> Throughput {
        let w = if window_s > 0.0 { window_s } else { f64::NAN };
        let rate = |v: u64| {
            let r = v as f64 / w;
            if r.is_finite() {
                r
            } else {
                0.0
            }
        };
        Throughput {
            messages,
            bytes,
            window_s,
            mb_s: rate(bytes) / 1e6,
            msgs_s: rate(messages),
        }
    }
}

/// Backlog extremes over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BacklogSummary {
    /// Largest backlog in messages.
    pub max_msgs: i64,
    /// Largest backlog in bytes.
    pub max_bytes: i64,
    /// When it was largest (s since start).
    pub max_at_s: f64,
    /// Backlog at the end.
    pub end_msgs: i64,
    /// Backlog at the end in bytes.
    pub end_bytes: i64,
}

/// Consumer-group figures (`--group`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupReport {
    /// The group's name.
    pub group: String,
    /// When consumers committed: "after each batch" or "every N ms".
    pub commit: String,
    /// Largest lag sampled (messages).
    pub max_lag_msgs: Option<i64>,
    /// When it was largest (s since start).
    pub max_lag_at_s: f64,
    /// Lag after the consumers stopped (messages).
    pub end_lag_msgs: Option<i64>,
    /// Generation when the group had formed, before producing started.
    pub start_generation: Option<i32>,
    /// Newest generation the consumers saw.
    pub end_generation: Option<i32>,
    /// Generation changes the consumers saw after the group had formed.
    pub rebalances: u64,
    /// Offset commits sent.
    pub commits: u64,
    /// Commits refused because the group was rebalancing or the member
    /// was fenced (its records are redelivered to the next owner).
    pub commits_refused: u64,
    /// Members made to leave and rejoin (`--churn-interval`).
    pub forced_leaves: u64,
    /// Latency of the commits that carried new offsets.
    pub commit_latency: Option<crate::stats::LatencySummary>,
    /// Those commits per second over the run.
    pub commits_per_s: f64,
}

/// Broker memory over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MemorySummary {
    /// Where it was read: the admin endpoint or /proc/PID/statm.
    pub source: String,
    /// First sample.
    pub start_bytes: Option<u64>,
    /// Largest sample.
    pub max_bytes: Option<u64>,
    /// Last sample.
    pub end_bytes: Option<u64>,
}

/// The verification outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verification {
    /// Whether messages were read back and checked (there were consumers).
    pub checked: bool,
    /// Whether the loss check ran to completion (consumers reached the end).
    pub complete: bool,
    /// Per-record counters.
    pub counts: Counts,
    /// Produce requests (batches) sent again after a retriable failure.
    /// A retried batch may land after later ones of its partition, so
    /// reordering is a failure only when nothing was retried or failed.
    pub retried_batches: u64,
    /// Acknowledged messages never received.
    pub loss: Loss,
    /// Human-readable reasons for failure; empty when OK.
    pub failures: Vec<String>,
}

/// Everything `levee bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The options of the run.
    pub params: serde_json::Value,
    /// Random id embedded in this run's messages.
    pub run_id: String,
    /// Start time, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Tokio worker threads of the load generator.
    pub client_threads: usize,
    /// CPUs of the machine (shared with the broker when it runs here).
    pub host_cpus: usize,
    /// The topic's partition count.
    pub partitions: u32,
    /// Warmup length (excluded from the figures).
    pub warmup_s: f64,
    /// Seconds from the start until producers stopped.
    pub produce_end_s: f64,
    /// Seconds from the start until consumers stopped.
    pub consume_end_s: f64,
    /// Time consumers spent catching up after producers stopped.
    pub drain_s: f64,
    /// Acknowledged produce throughput after warmup.
    pub produce: Throughput,
    /// Messages whose delivery failed.
    pub produce_failed: u64,
    /// Consume throughput after warmup.
    pub consume: Throughput,
    /// send() call → delivery future resolved, messages sent after warmup.
    pub ack_latency: LatencySummary,
    /// Send timestamp in the payload → consumer receive, messages sent after warmup.
    pub e2e_latency: LatencySummary,
    /// Backlog extremes.
    pub backlog: BacklogSummary,
    /// Consumer-group figures (`--group`), `None` without a group.
    pub group: Option<GroupReport>,
    /// Broker memory.
    pub memory: MemorySummary,
    /// Message checks.
    pub verification: Verification,
    /// Errors that did not stop the run (first of each kind).
    pub errors: Vec<String>,
    /// One point per second.
    pub timeseries: Vec<Point>,
}

fn opt_num<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "n/a".to_string(), |n| n.to_string())
}

fn opt_bytes(v: Option<u64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |b| fmt_bytes(b as f64))
}

impl Report {
    /// The human-readable summary printed at the end.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "== levee bench summary (run {}) ==", self.run_id);
        let _ = writeln!(
            s,
            "client: {} tokio worker threads on a {}-CPU host (the broker competes for the same CPUs when local)",
            self.client_threads, self.host_cpus
        );
        let _ = writeln!(
            s,
            "windows: warmup {:.1} s excluded; produce measured {:.1} s; consume measured {:.1} s; drain {:.1} s",
            self.warmup_s, self.produce.window_s, self.consume.window_s, self.drain_s
        );
        let _ = writeln!(
            s,
            "produce: {:>9.2} MB/s {:>11.0} msg/s  ({} msgs, {} acknowledged after warmup; {} failed)",
            self.produce.mb_s,
            self.produce.msgs_s,
            self.produce.messages,
            fmt_bytes(self.produce.bytes as f64),
            self.produce_failed
        );
        let _ = writeln!(
            s,
            "consume: {:>9.2} MB/s {:>11.0} msg/s  ({} msgs, {} read after warmup)",
            self.consume.mb_s,
            self.consume.msgs_s,
            self.consume.messages,
            fmt_bytes(self.consume.bytes as f64)
        );
        let _ = writeln!(s, "ack latency: {}", self.ack_latency.line());
        let _ = writeln!(s, "e2e latency: {}", self.e2e_latency.line());
        let _ = writeln!(
            s,
            "backlog: max {} msgs ({}) at {:.0} s; end {} msgs ({})",
            self.backlog.max_msgs,
            fmt_bytes(self.backlog.max_bytes as f64),
            self.backlog.max_at_s,
            self.backlog.end_msgs,
            fmt_bytes(self.backlog.end_bytes as f64)
        );
        if let Some(g) = &self.group {
            let _ = writeln!(
                s,
                "consumer lag (group `{}`, commit {}): max {}; end {}",
                g.group,
                g.commit,
                g.max_lag_msgs
                    .map_or("not sampled".to_string(), |m| format!(
                        "{m} msgs at {:.0} s",
                        g.max_lag_at_s
                    )),
                g.end_lag_msgs
                    .map_or("not sampled".to_string(), |m| format!("{m} msgs")),
            );
            let _ = writeln!(
                s,
                "group: {} rebalance(s) after it formed (generation {} → {}{}); {} commits, {} refused; {} partition handover(s), {} message(s) redelivered after rebalance",
                g.rebalances,
                opt_num(g.start_generation),
                opt_num(g.end_generation),
                if g.forced_leaves > 0 {
                    format!("; {} forced leave(s)", g.forced_leaves)
                } else {
                    String::new()
                },
                g.commits,
                g.commits_refused,
                self.verification.counts.handovers,
                self.verification.counts.redelivered,
            );
            if let Some(l) = &g.commit_latency {
                let _ = writeln!(
                    s,
                    "group commits: {:.1}/s; latency p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
                    g.commits_per_s, l.p50_ms, l.p99_ms, l.p99_9_ms, l.max_ms
                );
            }
        }
        let _ = writeln!(
            s,
            "broker RSS ({}): start {}, max {}, end {}",
            self.memory.source,
            opt_bytes(self.memory.start_bytes),
            opt_bytes(self.memory.max_bytes),
            opt_bytes(self.memory.end_bytes)
        );
        let v = &self.verification;
        let c = &v.counts;
        if v.checked {
            let _ = writeln!(
                s,
                "verification: {} records read ({} of this run, {} of earlier runs, {} not bench messages): {} lost, {} duplicates, {} redelivered after rebalance, {} corrupt, {} corrupt batches, {} wrong partition, {} reordered; {} batches retried{}",
                c.records,
                c.own,
                c.earlier_runs,
                c.not_bench,
                v.loss.lost,
                c.duplicates,
                c.redelivered,
                c.corrupt,
                c.corrupt_batches,
                c.wrong_partition,
                c.reordered,
                v.retried_batches,
                if v.complete { "" } else { " (loss check incomplete: consumers did not reach the end)" }
            );
            if c.earlier_runs > 0 {
                let _ = writeln!(
                    s,
                    "  earlier runs (informational): {} gaps, {} duplicates",
                    c.earlier_gaps, c.earlier_duplicates
                );
            }
            if !v.loss.lost_samples.is_empty() {
                let _ = writeln!(
                    s,
                    "  lost (producer, partition, seq), first ones: {:?}",
                    v.loss.lost_samples
                );
            }
        } else {
            let _ = writeln!(s, "verification: skipped (no consumers)");
        }
        for e in &self.errors {
            let _ = writeln!(s, "note: {e}");
        }
        if v.failures.is_empty() {
            let _ = writeln!(s, "result: OK");
        } else {
            let _ = writeln!(s, "result: FAILED: {}", v.failures.join("; "));
        }
        s
    }

    /// The JSON document.
    pub fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    /// The HTML page.
    pub fn html(&self) -> String {
        let mut h = String::new();
        h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
        let _ = writeln!(h, "<title>levee bench {}</title>", esc(&self.run_id));
        h.push_str(
            "<style>body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}\
             table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}\
             th{background:#f3f3f3}h2{margin-top:28px}.ok{color:#080;font-weight:bold}.bad{color:#b00;font-weight:bold}\
             svg{background:#fff;border:1px solid #ddd;margin:6px 0}</style></head><body>\n",
        );
        let _ = writeln!(h, "<h1>levee bench — run {}</h1>", esc(&self.run_id));
        if self.verification.failures.is_empty() {
            h.push_str("<p class=\"ok\">result: OK</p>\n");
        } else {
            let _ = writeln!(
                h,
                "<p class=\"bad\">result: FAILED: {}</p>",
                esc(&self.verification.failures.join("; "))
            );
        }
        h.push_str("<h2>Parameters</h2>\n<table>\n");
        if let serde_json::Value::Object(m) = &self.params {
            for (k, v) in m {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "—".to_string(),
                    other => other.to_string(),
                };
                let _ = writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
            }
        }
        let _ = writeln!(
            h,
            "<tr><th>client threads</th><td>{} (host CPUs: {}; a local broker competes for them)</td></tr>",
            self.client_threads, self.host_cpus
        );
        let _ = writeln!(
            h,
            "<tr><th>topic partitions</th><td>{}</td></tr>",
            self.partitions
        );
        h.push_str("</table>\n<h2>Summary</h2>\n<pre>");
        h.push_str(&esc(&self.text()));
        h.push_str("</pre>\n");

        h.push_str("<h2>Latency percentiles (ms)</h2>\n<table><tr><th></th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>p99.99</th><th>max</th><th>mean</th></tr>\n");
        for (name, l) in [
            ("produce ack", &self.ack_latency),
            ("end to end", &self.e2e_latency),
        ] {
            let _ = writeln!(
                h,
                "<tr><th>{name}</th><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
                l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.p99_9_ms, l.p99_99_ms, l.max_ms, l.mean_ms
            );
        }
        h.push_str("</table>\n");

        let ts = &self.timeseries;
        let x: Vec<f64> = ts.iter().map(|p| p.t_s).collect();
        let marks = self.marks();
        h.push_str("<h2>Throughput</h2>\n");
        h.push_str(&line_chart(
            "MB/s",
            &x,
            &[
                (
                    "produce",
                    "#1f77b4",
                    ts.iter().map(|p| Some(p.produce_mb_s)).collect(),
                ),
                (
                    "consume",
                    "#ff7f0e",
                    ts.iter().map(|p| Some(p.consume_mb_s)).collect(),
                ),
            ],
            false,
            &marks,
        ));
        h.push_str("<h2>Latency per second</h2>\n");
        h.push_str(&line_chart(
            "ms (log)",
            &x,
            &[
                (
                    "ack p50",
                    "#2ca02c",
                    ts.iter().map(|p| p.ack_p50_ms).collect(),
                ),
                (
                    "ack p99",
                    "#d62728",
                    ts.iter().map(|p| p.ack_p99_ms).collect(),
                ),
                (
                    "e2e p50",
                    "#9467bd",
                    ts.iter().map(|p| p.e2e_p50_ms).collect(),
                ),
                (
                    "e2e p99",
                    "#8c564b",
                    ts.iter().map(|p| p.e2e_p99_ms).collect(),
                ),
            ],
            true,
            &marks,
        ));
        h.push_str("<h2>Backlog (acknowledged, not yet consumed)</h2>\n");
        h.push_str(&line_chart(
            "MiB",
            &x,
            &[(
                "backlog",
                "#17becf",
                ts.iter()
                    .map(|p| Some(p.backlog_bytes as f64 / 1048576.0))
                    .collect(),
            )],
            false,
            &marks,
        ));
        h.push_str("<h2>Consumer lag</h2>\n");
        match &self.group {
            Some(g) => {
                let _ = writeln!(
                    h,
                    "<p>Group <code>{}</code>: end offset minus committed offset, summed over partitions, sampled every second. Dashed lines: end of warmup, producers stopped, and rebalances (generation changes; hover for the label).</p>",
                    esc(&g.group)
                );
                let mut lag_marks = marks.clone();
                let mut last_gen = g.start_generation;
                for p in ts {
                    if let Some(gen) = p.generation {
                        if last_gen.is_some_and(|l| gen > l) {
                            lag_marks.push((p.t_s, "rebalance"));
                        }
                        last_gen = Some(last_gen.map_or(gen, |l| l.max(gen)));
                    }
                }
                h.push_str(&line_chart(
                    "messages",
                    &x,
                    &[(
                        "lag",
                        "#e377c2",
                        ts.iter().map(|p| p.lag_msgs.map(|v| v as f64)).collect(),
                    )],
                    false,
                    &lag_marks,
                ));
            }
            None => h.push_str(
                "<p>Not measured: consumer lag needs consumers in a group (<code>--group G</code>), \
                 which commit offsets. Without one, the backlog chart above shows what was \
                 acknowledged and not yet consumed.</p>\n",
            ),
        }
        h.push_str("<h2>Broker resident memory</h2>\n");
        h.push_str(&line_chart(
            "MiB",
            &x,
            &[(
                "RSS",
                "#7f7f7f",
                ts.iter()
                    .map(|p| p.rss_bytes.map(|b| b as f64 / 1048576.0))
                    .collect(),
            )],
            false,
            &marks,
        ));
        h.push_str("<p>Dashed lines: end of warmup, producers stopped. 1 MB = 10<sup>6</sup> bytes.</p>\n</body></html>\n");
        h
    }

    fn marks(&self) -> Vec<(f64, &'static str)> {
        let mut m = Vec::new();
        if self.warmup_s > 0.0 {
            m.push((self.warmup_s, "warmup end"));
        }
        if self.timeseries.iter().any(|p| p.phase == Phase::Drain) {
            m.push((self.produce_end_s, "producers stopped"));
        }
        m
    }
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A "nice" step for about `n` ticks over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{}", (v * 10.0).round() / 10.0)
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

type Series<'a> = (&'a str, &'a str, Vec<Option<f64>>);

/// An SVG line chart. `None` values break the line; with `log_y`,
/// non-positive values are skipped.
pub fn line_chart(
    y_label: &str,
    x: &[f64],
    series: &[Series<'_>],
    log_y: bool,
    marks: &[(f64, &str)],
) -> String {
    const W: f64 = 960.0;
    const H: f64 = 280.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 30.0;
    const B: f64 = 40.0;
    let pw = W - L - R;
    let ph = H - T - B;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    let vals: Vec<f64> = series
        .iter()
        .flat_map(|s| s.2.iter().flatten().copied())
        .filter(|v| v.is_finite() && (!log_y || *v > 0.0))
        .collect();
    if x.is_empty() || vals.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text></svg>",
            W / 2.0,
            H / 2.0
        );
        return svg;
    }
    let x0 = 0.0f64.min(x.iter().copied().fold(f64::INFINITY, f64::min));
    let x1 = x
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(x0 + 1.0);
    let (ymin, ymax) = if log_y {
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)),
        )
    } else {
        let hi = vals.iter().copied().fold(0.0, f64::max);
        let step = nice_step(if hi > 0.0 { hi } else { 1.0 }, 5.0);
        (0.0, ((hi / step).ceil().max(1.0)) * step)
    };
    let sx = |v: f64| L + (v - x0) / (x1 - x0) * pw;
    let sy = |v: f64| {
        let f = if log_y {
            (v.log10() - ymin.log10()) / (ymax.log10() - ymin.log10())
        } else {
            (v - ymin) / (ymax - ymin)
        };
        T + ph - f * ph
    };
    // Grid and y ticks.
    let mut ticks = Vec::new();
    if log_y {
        let mut t = ymin;
        while t <= ymax * 1.0001 {
            ticks.push(t);
            t *= 10.0;
        }
    } else {
        let step = nice_step(ymax - ymin, 5.0);
        let mut t = ymin;
        while t <= ymax + step * 0.001 {
            ticks.push(t);
            t += step;
        }
    }
    for t in ticks {
        let y = sy(t);
        let _ = write!(
            svg,
            "<line x1=\"{L}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            L + pw,
            L - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let xstep = nice_step(x1 - x0, 10.0);
    let mut t = (x0 / xstep).ceil() * xstep;
    while t <= x1 + 1e-9 {
        let xx = sx(t);
        let _ = write!(
            svg,
            "<line x1=\"{xx:.1}\" y1=\"{T}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"#f4f4f4\"/><text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            T + ph,
            T + ph + 15.0,
            fmt_tick(t)
        );
        t += xstep;
    }
    let _ = write!(
        svg,
        "<rect x=\"{L}\" y=\"{T}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">seconds</text>\
         <text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">{}</text>",
        L + pw / 2.0,
        H - 6.0,
        T + ph / 2.0,
        T + ph / 2.0,
        esc(y_label)
    );
    for (mx, label) in marks {
        if *mx >= x0 && *mx <= x1 {
            let xx = sx(*mx);
            let _ = write!(
                svg,
                "<line x1=\"{xx:.1}\" y1=\"{T}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"#555\" stroke-dasharray=\"4 3\"><title>{}</title></line>",
                T + ph,
                esc(label)
            );
        }
    }
    // Lines.
    for (name, color, ys) in series {
        let mut d = String::new();
        let mut pen_down = false;
        for (xv, yv) in x.iter().zip(ys.iter()) {
            match yv {
                Some(v) if v.is_finite() && (!log_y || *v > 0.0) => {
                    let _ = write!(
                        d,
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        sx(*xv),
                        sy(*v)
                    );
                    pen_down = true;
                }
                _ => pen_down = false,
            }
        }
        if !d.is_empty() {
            let _ = write!(
                svg,
                "<path d=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.6\"><title>{}</title></path>",
                d.trim_end(),
                esc(name)
            );
        }
    }
    // Legend.
    let mut lx = L + 8.0;
    for (name, color, _) in series {
        let _ = write!(
            svg,
            "<rect x=\"{lx:.1}\" y=\"10\" width=\"12\" height=\"4\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"16\">{}</text>",
            lx + 16.0,
            esc(name)
        );
        lx += 24.0 + 7.0 * name.len() as f64;
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let ts: Vec<Point> = (1..=5)
            .map(|i| Point {
                t_s: i as f64,
                phase: if i <= 1 {
                    Phase::Warmup
                } else if i <= 4 {
                    Phase::Measure
                } else {
                    Phase::Drain
                },
                produce_mb_s: 100.0 + i as f64,
                produce_msgs_s: 1000.0,
                consume_mb_s: 99.0,
                consume_msgs_s: 990.0,
                ack_p50_ms: Some(1.5),
                ack_p99_ms: Some(7.25),
                e2e_p50_ms: if i == 3 { None } else { Some(2.0) },
                e2e_p99_ms: Some(9.0),
                backlog_msgs: 10 * i,
                backlog_bytes: 10240 * i,
                rss_bytes: Some(200 << 20),
                lag_msgs: None,
                generation: None,
            })
            .collect();
        Report {
            params: serde_json::json!({"topic": "bench<&>", "producers": 2, "rate": null}),
            run_id: "00ab".into(),
            started_unix_ms: 1,
            client_threads: 2,
            host_cpus: 2,
            partitions: 4,
            warmup_s: 1.0,
            produce_end_s: 4.0,
            consume_end_s: 5.0,
            drain_s: 1.0,
            produce: Throughput::new(3000, 303_000_000, 3.0),
            produce_failed: 0,
            consume: Throughput::new(2990, 297_000_000, 4.0),
            ack_latency: LatencySummary {
                count: 3000,
                p99_ms: 7.25,
                ..LatencySummary::default()
            },
            e2e_latency: LatencySummary::default(),
            backlog: BacklogSummary {
                max_msgs: 50,
                ..BacklogSummary::default()
            },
            group: None,
            memory: MemorySummary {
                source: "admin".into(),
                start_bytes: Some(1),
                max_bytes: Some(200 << 20),
                end_bytes: None,
            },
            verification: Verification {
                checked: true,
                complete: true,
                ..Verification::default()
            },
            errors: vec![],
            timeseries: ts,
        }
    }

    #[test]
    fn throughput_math() {
        let t = Throughput::new(3000, 303_000_000, 3.0);
        assert_eq!(t.mb_s, 101.0);
        assert_eq!(t.msgs_s, 1000.0);
        let z = Throughput::new(5, 5, 0.0);
        assert_eq!((z.mb_s, z.msgs_s), (0.0, 0.0));
    }

    #[test]
    fn json_is_well_formed_and_complete() {
        let r = sample();
        let s = r.json().unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["produce"]["mb_s"], 101.0);
        assert_eq!(v["ack_latency"]["p99_ms"], 7.25);
        assert_eq!(v["timeseries"].as_array().unwrap().len(), 5);
        assert_eq!(v["timeseries"][2]["e2e_p50_ms"], serde_json::Value::Null);
        assert_eq!(v["timeseries"][0]["phase"], "warmup");
        assert_eq!(v["timeseries"][4]["backlog_bytes"], 51200);
        assert_eq!(v["params"]["topic"], "bench<&>");
        assert_eq!(v["verification"]["loss"]["lost"], 0);
        assert_eq!(v["memory"]["max_bytes"], 200 << 20);
    }

    #[test]
    fn html_is_self_contained_and_has_the_figures() {
        let r = sample();
        let h = r.html();
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert!(h.trim_end().ends_with("</html>"));
        assert_eq!(h.matches("<svg").count(), 4);
        assert_eq!(h.matches("<svg").count(), h.matches("</svg>").count());
        assert!(!h.contains("<script"));
        assert!(
            !h.contains("http://")
                || h.matches("http://").count()
                    == h.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
        );
        assert!(
            h.contains("bench&lt;&amp;&gt;"),
            "parameters are printed, escaped"
        );
        assert!(!h.contains("bench<&>"));
        assert!(h.contains("101.00 MB/s"));
        assert!(h.contains("7.250"));
        assert!(h.contains("result: OK"));
        // Balanced tags of the main structures.
        for tag in ["table", "pre", "h2", "path", "p"] {
            let open =
                h.matches(&format!("<{tag}>")).count() + h.matches(&format!("<{tag} ")).count();
            let close = h.matches(&format!("</{tag}>")).count();
            assert_eq!(open, close, "{tag}");
        }
    }

    /// A group run: lag sampled every second (one second missing), a
    /// rebalance at 3 s.
    fn sample_group() -> Report {
        let mut r = sample();
        for (i, p) in r.timeseries.iter_mut().enumerate() {
            p.lag_msgs = if i == 1 {
                None
            } else {
                Some([40, 0, 75, 30, 0][i])
            };
            p.generation = Some(if i < 2 { 2 } else { 3 });
        }
        r.group = Some(GroupReport {
            group: "bench<g>".into(),
            commit: "after each batch".into(),
            max_lag_msgs: Some(75),
            max_lag_at_s: 3.0,
            end_lag_msgs: Some(0),
            start_generation: Some(2),
            end_generation: Some(3),
            rebalances: 1,
            commits: 12,
            commits_refused: 1,
            forced_leaves: 0,
            commit_latency: None,
            commits_per_s: 0.0,
        });
        r.verification.counts.redelivered = 7;
        r.verification.counts.handovers = 2;
        r
    }

    #[test]
    fn json_has_the_lag_series_and_group_figures() {
        let v: serde_json::Value = serde_json::from_str(&sample_group().json().unwrap()).unwrap();
        let ts = v["timeseries"].as_array().unwrap();
        let lag: Vec<serde_json::Value> = ts.iter().map(|p| p["lag_msgs"].clone()).collect();
        assert_eq!(
            lag,
            vec![
                serde_json::json!(40),
                serde_json::Value::Null,
                serde_json::json!(75),
                serde_json::json!(30),
                serde_json::json!(0)
            ]
        );
        assert_eq!(ts[2]["generation"], 3);
        assert_eq!(v["group"]["max_lag_msgs"], 75);
        assert_eq!(v["group"]["end_lag_msgs"], 0);
        assert_eq!(v["group"]["rebalances"], 1);
        assert_eq!(v["verification"]["counts"]["redelivered"], 7);
        // Without a group: the field is there, null, and so is every lag.
        let v: serde_json::Value = serde_json::from_str(&sample().json().unwrap()).unwrap();
        assert_eq!(v["group"], serde_json::Value::Null);
        assert_eq!(v["timeseries"][0]["lag_msgs"], serde_json::Value::Null);
    }

    #[test]
    fn html_has_a_consumer_lag_chart_in_group_mode() {
        let h = sample_group().html();
        assert!(h.contains("<h2>Consumer lag</h2>"));
        assert_eq!(h.matches("<svg").count(), 5);
        let lag_chart = &h[h.find("<h2>Consumer lag</h2>").unwrap()..];
        let lag_chart = &lag_chart[..lag_chart.find("</svg>").unwrap()];
        assert!(lag_chart.contains("bench&lt;g&gt;"), "group name, escaped");
        assert!(lag_chart.contains("<title>lag</title>"));
        // The missing second breaks the line: two segments.
        let start = lag_chart.find("<path d=\"").unwrap() + 9;
        let d = &lag_chart[start..start + lag_chart[start..].find('"').unwrap()];
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert!(lag_chart.contains("<title>rebalance</title>"));
        let t = sample_group().text();
        assert!(t.contains("consumer lag (group `bench<g>`, commit after each batch): max 75 msgs at 3 s; end 0 msgs"), "{t}");
        assert!(
            t.contains("1 rebalance(s) after it formed (generation 2 → 3)"),
            "{t}"
        );
        assert!(t.contains("7 redelivered after rebalance"), "{t}");
        // Without a group the chart is left out, with a note.
        let h = sample().html();
        assert!(h.contains("<h2>Consumer lag</h2>"));
        assert!(h.contains("Not measured"));
        assert_eq!(h.matches("<svg").count(), 4);
        assert!(!sample().text().contains("consumer lag"));
        let mut r = sample_group();
        if let Some(g) = r.group.as_mut() {
            g.max_lag_msgs = None;
            g.end_lag_msgs = None;
        }
        assert!(r.text().contains("max not sampled; end not sampled"));
    }

    #[test]
    fn text_summary() {
        let mut r = sample();
        let t = r.text();
        assert!(t.contains("produce:    101.00 MB/s"));
        assert!(t.contains("result: OK"));
        r.verification.failures.push("3 lost".into());
        assert!(r.text().contains("result: FAILED: 3 lost"));
        assert!(r.html().contains("result: FAILED: 3 lost"));
    }

    #[test]
    fn chart_edge_cases() {
        assert!(line_chart("x", &[], &[], false, &[]).contains("no data"));
        let c = line_chart(
            "ms",
            &[1.0, 2.0],
            &[("a", "#000", vec![Some(0.0), Some(-1.0)])],
            true,
            &[],
        );
        assert!(c.contains("no data"));
        let c = line_chart(
            "ms",
            &[1.0, 2.0, 3.0],
            &[("a", "#000", vec![Some(0.5), Some(50.0), None])],
            true,
            &[(2.0, "m")],
        );
        assert!(c.contains("<path d=\"M"));
        assert!(c.contains("stroke-dasharray"));
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(fmt_tick(0.25), "0.25");
    }
}
