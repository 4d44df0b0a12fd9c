//! `levee bench`: a load generator for a running Levee broker. This crate
//! owns the workload (what is sent, how fast), the producer and consumer
//! tasks, end-to-end verification of every message, and the report. It
//! talks to a broker only from outside, over the wire (`levee-client`, or
//! its own small Kafka client in [`kafka`]): it must not depend on the
//! broker's crates (server, engine), and nothing in the broker may depend
//! on it; the `levee` binary is what puts the two side by side.
//!
//! Producers and consumers are tokio tasks, each with its own client
//! connection. Every message carries (run id, producer, partition,
//! sequence number, send time) and a CRC32C of the rest (see [`payload`]);
//! consumers verify every one of them. Acknowledgement and end-to-end
//! latencies go into HdrHistograms (every message, no sampling). A progress
//! line is printed each second; at the end a summary, and optionally JSON
//! (`--json`) and a self-contained HTML page with charts (`--report`).
//!
//! Consumers either split the partitions between them (the default) or, with
//! `--group G`, join consumer group G: the broker assigns the partitions,
//! each consumer commits what it has verified, and the group's lag (end
//! offsets minus committed offsets) is sampled every second. One verifier,
//! shared by the group's consumers, follows partitions across rebalances:
//! a message read again after its partition changed hands is counted as
//! redelivered (the group delivers at least once), a message the same
//! consumer reads twice in one generation as a duplicate.
//!
//! Exit codes: 0 success, 1 verification failures (lost, duplicated or
//! corrupt messages, failed deliveries), 2 usage or connection errors.
//!
//! Where things are: the flags in `args`, checked into the run's settings in
//! `workload`; [`run`] and `runner` drive one run (consumers, then
//! producers, stop, drain); the tasks are in `producer`, `direct`
//! (`--direct-batches`), `consumer`, `group` and `kafka_tasks`, sharing the
//! counters in `shared`; the per-second line in `progress`; the figures and
//! verdict in `summary`, rendered by [`report`]; message contents in
//! [`payload`], checked by [`verify`].

pub mod memory;
pub mod payload;
pub mod rate;
pub mod report;
pub mod stats;
pub mod verify;

pub mod kafka;
mod kafka_group;
mod kafka_tasks;

mod admin;
mod args;
mod connect;
mod consumer;
mod direct;
mod group;
mod producer;
mod progress;
mod runner;
mod shared;
mod summary;
mod workload;

use std::process::ExitCode;
use std::time::Duration;

pub use args::{BenchArgs, Keys, Protocol};
use runner::bench;
use workload::Config;

/// Runs `levee bench` and returns its exit code.
pub fn run(args: BenchArgs) -> ExitCode {
    let cfg = match Config::new(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads)
        .thread_name("levee-bench")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = rt.block_on(bench(cfg.clone()));
    // Producers dropped at the end may still hold background tasks.
    rt.shutdown_timeout(Duration::from_secs(1));
    let (report, fatal) = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{}", report.text().trim_end());
    let mut write_error = None;
    if let Some(path) = &cfg.args.json {
        let res = report
            .json()
            .map_err(|e| e.to_string())
            .and_then(|s| std::fs::write(path, s).map_err(|e| e.to_string()));
        match res {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => write_error = Some(format!("cannot write {}: {e}", path.display())),
        }
    }
    if let Some(path) = &cfg.args.report {
        match std::fs::write(path, report.html()) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => write_error = Some(format!("cannot write {}: {e}", path.display())),
        }
    }
    if let Some(e) = fatal {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if let Some(e) = write_error {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if !report.verification.failures.is_empty() {
        eprintln!(
            "error: verification failed: {}",
            report.verification.failures.join("; ")
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
