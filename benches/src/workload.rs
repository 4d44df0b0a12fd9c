//! The workload a run generates: the flags checked and turned into
//! [`Config`] (rates, duration, where consumers start, memory source).

use levee_client::{Acks, ClientError, FsyncPolicy, OffsetReset, StartPosition};

use crate::args::{BenchArgs, Keys, Protocol};
use crate::memory::MemorySource;
use crate::payload;
use crate::rate::{self, RateShape};

/// What made the run stop early or fail to start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Client(String),
}

pub(crate) fn usage(s: impl Into<String>) -> BenchError {
    BenchError::Usage(s.into())
}

pub(crate) fn client_err(what: &str, e: &ClientError) -> BenchError {
    BenchError::Client(format!("{what}: {e}"))
}

/// Validated settings.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) args: BenchArgs,
    pub(crate) duration: Option<f64>,
    pub(crate) produce_shape: RateShape,
    pub(crate) consume_shape: RateShape,
    pub(crate) from: StartPosition,
    pub(crate) threads: usize,
    pub(crate) memory: Option<MemorySource>,
}

pub(crate) fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    pub(crate) fn new(mut args: BenchArgs) -> Result<Config, BenchError> {
        if args.protocol == Protocol::Kafka && args.bootstrap == ["127.0.0.1:9192"] {
            // The native default; Kafka brokers listen on 9092.
            args.bootstrap = vec!["127.0.0.1:9092".into()];
        }
        if args.producers == 0 && args.consumers == 0 {
            return Err(usage(
                "--producers and --consumers are both 0: nothing to do",
            ));
        }
        if args.bootstrap.iter().all(|b| b.trim().is_empty()) {
            return Err(usage("--bootstrap is empty"));
        }
        if args.partitions == 0 {
            return Err(usage("--partitions must be at least 1"));
        }
        if args.direct_batches && !matches!(args.keys, Keys::None) {
            return Err(usage("--direct-batches needs --keys none"));
        }
        if args.protocol == Protocol::Kafka && args.producers > 0 && !args.direct_batches {
            // The bench has no Kafka client library: it builds the batches.
            if !matches!(args.keys, Keys::None) {
                return Err(usage(
                    "--protocol kafka produces the bench's own batches (as --direct-batches), which need --keys none",
                ));
            }
            args.direct_batches = true;
        }
        if args.message_size < payload::HEADER_LEN {
            return Err(usage(format!(
                "--message-size must be at least {} bytes (the verification header)",
                payload::HEADER_LEN
            )));
        }
        if args.message_size > 64 << 20 {
            return Err(usage("--message-size must be at most 64 MiB"));
        }
        if args.batch_size == 0 {
            return Err(usage("--batch-size must be at least 1"));
        }
        if args.messages == Some(0) {
            return Err(usage("--messages must be at least 1"));
        }
        if args.duration == Some(0.0) {
            return Err(usage("--duration must be above 0"));
        }
        if args.client_threads == Some(0) {
            return Err(usage("--client-threads must be at least 1"));
        }
        if args.topic.is_empty() {
            return Err(usage("--topic is empty"));
        }
        if let Some(g) = &args.group {
            if g.trim().is_empty() {
                return Err(usage("--group is empty"));
            }
            if args.consumers == 0 {
                return Err(usage("--group needs consumers (--consumers 1 or more)"));
            }
        }
        if args.churn_interval.is_some_and(|s| s < 0.1) {
            return Err(usage("--churn-interval must be at least 0.1 s"));
        }
        if args.commit_interval_ms == Some(0) {
            return Err(usage(
                "--commit-interval-ms must be at least 1 (leave it out to commit after each batch)",
            ));
        }
        if args.producers == 0 && (args.rate.is_some() || args.burst.is_some()) {
            return Err(usage("--rate/--burst need producers"));
        }
        if let Some(f) = &args.topic_fsync {
            FsyncPolicy::check_setting(f).map_err(|e| usage(format!("--topic-fsync: {e}")))?;
        }
        let duration = match (args.duration, args.messages, args.producers) {
            (Some(d), _, _) => Some(d),
            (None, None, p) if p > 0 => Some(30.0),
            _ => None,
        };
        let produce_shape = match (args.rate, args.burst) {
            (Some(r), _) => RateShape::Fixed(r),
            (None, Some(b)) => b,
            (None, None) => RateShape::Unlimited,
        };
        let consume_shape = args
            .consume_rate
            .map_or(RateShape::Unlimited, RateShape::Fixed);
        let from = args.from.unwrap_or(if args.producers > 0 {
            StartPosition::Latest
        } else {
            StartPosition::Earliest
        });
        let memory = match (args.broker_pid, args.admin.trim()) {
            (Some(pid), _) => Some(MemorySource::Pid(pid)),
            (None, "") => None,
            (None, a) => Some(MemorySource::Admin(a.to_string())),
        };
        Ok(Config {
            threads: args.client_threads.unwrap_or_else(host_cpus),
            duration,
            produce_shape,
            consume_shape,
            from,
            memory,
            args,
        })
    }

    /// When group consumers commit, in words.
    pub(crate) fn commit_policy(&self) -> String {
        match self.args.commit_interval_ms {
            Some(ms) => format!("every {ms} ms"),
            None => "after each batch".to_string(),
        }
    }

    /// The group's reset policy: `--from`.
    pub(crate) fn reset(&self) -> OffsetReset {
        match self.from {
            StartPosition::Earliest => OffsetReset::Earliest,
            _ => OffsetReset::Latest,
        }
    }

    pub(crate) fn params(&self) -> serde_json::Value {
        let a = &self.args;
        let rate = match self.produce_shape {
            RateShape::Unlimited => "unlimited".to_string(),
            RateShape::Fixed(r) => format!("{} MB/s", r / rate::MB),
            RateShape::Burst {
                base,
                peak,
                peak_secs,
                period_secs,
            } => format!(
                "burst: {} MB/s, {} MB/s for the last {} s of every {} s",
                base / rate::MB,
                peak / rate::MB,
                peak_secs,
                period_secs
            ),
        };
        serde_json::json!({
            "protocol": match a.protocol { Protocol::Native => "native", Protocol::Kafka => "kafka" },
            "bootstrap": a.bootstrap.join(","),
            "memory_source": self.memory.as_ref().map(MemorySource::describe),
            "producers": a.producers,
            "consumers": a.consumers,
            "topic": a.topic,
            "partitions_requested": a.partitions,
            "topic_fsync": a.topic_fsync,
            "message_size": a.message_size,
            "batch_size": a.batch_size,
            "linger_ms": a.linger_ms,
            "acks": match a.acks { Acks::None => "0", Acks::Leader => "1", Acks::All => "all" },
            "keys": match a.keys {
                Keys::None => "none".to_string(),
                Keys::Random => "random".to_string(),
                Keys::Distinct(n) => format!("{n}-distinct"),
            },
            "compression": format!("{:?}", a.compression).to_lowercase(),
            "duration_s": self.duration,
            "messages": a.messages,
            "warmup_s": a.warmup,
            "produce_rate": rate,
            "consume_rate": self.args.consume_rate.map_or("unlimited".to_string(), |r| format!("{} MB/s", r / rate::MB)),
            "from": match self.from { StartPosition::Earliest => "earliest", _ => "latest" },
            "drain_timeout_s": a.drain_timeout,
            "group": a.group,
            "commit": a.group.as_ref().map(|_| self.commit_policy()),
            "churn_interval_s": a.churn_interval,
            "max_in_flight": a.max_in_flight,
            "buffer_bytes": a.buffer_bytes,
            "fetch_partition_bytes": a.fetch_partition_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use levee_client::Compression;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(v: &[&str]) -> Result<BenchArgs, clap::Error> {
        let mut all = vec!["bench"];
        all.extend_from_slice(v);
        Cli::try_parse_from(all).map(|c| c.args)
    }

    #[test]
    fn parses_flags() {
        let a = parse(&[
            "--producers",
            "2",
            "--consumers",
            "3",
            "--bootstrap",
            "a:1,b:2",
            "--acks",
            "all",
            "--keys",
            "100-distinct",
            "--compression",
            "zstd",
            "--rate",
            "50",
            "--message-size",
            "512",
            "--warmup",
            "2.5",
            "--topic-fsync",
            "never",
        ])
        .unwrap();
        assert_eq!(a.bootstrap, vec!["a:1", "b:2"]);
        assert_eq!(a.acks, Acks::All);
        assert_eq!(a.keys, Keys::Distinct(100));
        assert_eq!(a.compression, Compression::Zstd);
        assert_eq!(a.rate, Some(50.0 * rate::MB));
        let c = Config::new(a).unwrap();
        assert_eq!(c.duration, Some(30.0));
        assert_eq!(c.from, StartPosition::Latest);
        assert_eq!(c.produce_shape, RateShape::Fixed(50e6));
        assert!(parse(&["--rate", "5", "--burst", "1:2:1:2"]).is_err());
        assert!(parse(&["--keys", "zero"]).is_err());
        assert!(parse(&["--acks", "2"]).is_err());
        assert_eq!(parse(&["--keys", "7"]).unwrap().keys, Keys::Distinct(7));
        assert_eq!(parse(&["--keys", "random"]).unwrap().keys, Keys::Random);
    }

    #[test]
    fn validates_combinations() {
        let bad = |v: &[&str]| Config::new(parse(v).unwrap()).is_err();
        assert!(bad(&["--producers", "0", "--consumers", "0"]));
        assert!(bad(&["--message-size", "10"]));
        assert!(bad(&["--partitions", "0"]));
        assert!(bad(&["--messages", "0"]));
        assert!(bad(&["--topic-fsync", "sometimes"]));
        assert!(bad(&["--producers", "0", "--rate", "5"]));
        let c = Config::new(parse(&["--producers", "0"]).unwrap()).unwrap();
        assert_eq!(c.from, StartPosition::Earliest);
        assert_eq!(c.duration, None);
        let c = Config::new(parse(&["--messages", "10"]).unwrap()).unwrap();
        assert_eq!(c.duration, None);
        let c = Config::new(parse(&["--broker-pid", "5"]).unwrap()).unwrap();
        assert_eq!(c.memory, Some(MemorySource::Pid(5)));
        let c = Config::new(parse(&["--admin", ""]).unwrap()).unwrap();
        assert_eq!(c.memory, None);
        assert!(c.params().get("produce_rate").is_some());
    }

    #[test]
    fn group_flags() {
        let c = Config::new(parse(&["--group", "g1"]).unwrap()).unwrap();
        assert_eq!(c.args.group.as_deref(), Some("g1"));
        assert_eq!(c.reset(), OffsetReset::Latest);
        assert_eq!(c.params()["group"], "g1");
        assert_eq!(c.params()["commit"], "after each batch");
        let c = Config::new(
            parse(&[
                "--group",
                "g1",
                "--commit-interval-ms",
                "250",
                "--from",
                "earliest",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.commit_policy(), "every 250 ms");
        assert_eq!(c.reset(), OffsetReset::Earliest);
        let c = Config::new(parse(&[]).unwrap()).unwrap();
        assert_eq!(c.params()["group"], serde_json::Value::Null);
        assert_eq!(c.params()["commit"], serde_json::Value::Null);
        // --commit-interval-ms needs --group.
        assert!(parse(&["--commit-interval-ms", "100"]).is_err());
        let bad = |v: &[&str]| Config::new(parse(v).unwrap()).is_err();
        assert!(bad(&["--group", ""]));
        assert!(bad(&["--group", "g", "--consumers", "0"]));
        assert!(bad(&["--group", "g", "--commit-interval-ms", "0"]));
        assert!(bad(&["--group", "g", "--churn-interval", "0.01"]));
        assert!(parse(&["--churn-interval", "5"]).is_err());
        let c = Config::new(parse(&["--group", "g", "--churn-interval", "2.5"]).unwrap()).unwrap();
        assert_eq!(c.params()["churn_interval_s"], 2.5);
    }
}
