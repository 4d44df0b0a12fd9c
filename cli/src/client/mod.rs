//! The client side of the `levee` command line: `topic`, `produce`,
//! `consume`, `group`, `cluster`, `txn`, on the native client (`levee-client`).
//! One module per command; this one holds what they share: where the
//! brokers are, connecting, and the runtime the commands run on.

mod cluster;
mod consume;
mod group;
mod produce;
mod topic;
mod txn;

use std::process::ExitCode;

use clap::{Args, Subcommand};

use levee_client::{Client, ClientConfig, ClientError};

use self::cluster::ClusterArgs;
use self::consume::ConsumeArgs;
use self::group::GroupArgs;
use self::produce::ProduceArgs;
use self::topic::TopicArgs;
use self::txn::TxnArgs;

/// Client commands of the `levee` CLI.
#[derive(Debug, Clone, Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe, alter and delete topics.
    Topic(TopicArgs),
    /// Send one message per line of stdin to a topic.
    Produce(ProduceArgs),
    /// Print a topic's messages, one per line (as a member of a consumer
    /// group unless --partition or --from is given; see --group).
    Consume(ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    Group(GroupArgs),
    /// The state of a broker cluster.
    Cluster(ClusterArgs),
    /// List and describe the transactions of Kafka transactional producers.
    Txn(TxnArgs),
}

/// Where the brokers are.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Broker addresses, HOST:PORT[,HOST:PORT...], tried in order.
    #[arg(
        long,
        env = "LEVEE_BOOTSTRAP",
        default_value = "127.0.0.1:9192",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<String>,
}

/// Runs a client command on its own single-threaded tokio runtime. Errors
/// are printed as one `error: ...` line on stderr, with exit code 1.
pub fn run(cmd: ClientCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(execute(cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(args: &ConnectArgs) -> Result<Client, ClientError> {
    let mut config = ClientConfig::new(args.bootstrap.iter().map(|s| s.trim().to_string()));
    config.bootstrap.retain(|s| !s.is_empty());
    config.client_id = "levee-cli".into();
    Client::connect(config).await
}

async fn execute(cmd: ClientCommand) -> Result<(), String> {
    match cmd {
        ClientCommand::Topic(t) => topic::topic(t.command).await.or_else(quiet_broken_pipe),
        ClientCommand::Produce(p) => produce::produce(p).await,
        ClientCommand::Consume(c) => consume::consume(c).await,
        ClientCommand::Group(g) => group::group(g.command).await.or_else(quiet_broken_pipe),
        ClientCommand::Cluster(c) => cluster::cluster(c.command).await.or_else(quiet_broken_pipe),
        ClientCommand::Txn(t) => txn::txn(t.command).await.or_else(quiet_broken_pipe),
    }
}

/// A closed stdout (`| head`) ends an admin command quietly.
fn quiet_broken_pipe(e: ClientError) -> Result<(), String> {
    match &e {
        ClientError::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(e.to_string()),
    }
}

/// A closed stdout (`| head`) ends the command quietly.
fn write_result(e: std::io::Error) -> Result<(), String> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(format!("writing to stdout failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};
    use levee_client::{producer::Acks, Compression, StartPosition};

    use super::topic::TopicCommand;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    pub(super) fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
        let m = Cli::command()
            .try_get_matches_from(std::iter::once("levee").chain(args.iter().copied()))?;
        Cli::from_arg_matches(&m).map(|c| c.cmd)
    }

    #[test]
    fn command_line_contract() {
        Cli::command().debug_assert();
        let ClientCommand::Topic(TopicArgs {
            command: TopicCommand::Create(c),
        }) = parse(&[
            "topic",
            "create",
            "t",
            "--partitions",
            "3",
            "--fsync",
            "interval:100",
            "--retention-bytes",
            "1000",
            "--max-backlog-bytes",
            "5",
            "--bootstrap",
            "a:1,b:2",
        ])
        .unwrap()
        else {
            panic!("not a topic create");
        };
        assert_eq!(c.partitions, 3);
        assert_eq!(c.fsync.as_deref(), Some("interval:100"));
        assert_eq!(c.retention_bytes, Some(1000));
        assert_eq!(c.connect.bootstrap, vec!["a:1", "b:2"]);
        assert!(parse(&["topic", "create", "t", "--fsync", "sometimes"]).is_err());

        let ClientCommand::Produce(p) = parse(&[
            "produce",
            "t",
            "--acks",
            "0",
            "--key-separator",
            ":",
            "--compression",
            "zstd",
            "--partition",
            "2",
            "--batch-size",
            "100",
            "--linger-ms",
            "0",
        ])
        .unwrap() else {
            panic!("not produce");
        };
        assert_eq!(p.acks, Acks::None);
        assert_eq!(p.compression, Compression::Zstd);
        assert_eq!(p.partition, Some(2));
        assert!(parse(&["produce", "t", "--compression", "brotli"]).is_err());
        assert!(parse(&["produce", "t", "--compression", "gzip"]).is_ok());

        let ClientCommand::Consume(c) = parse(&[
            "consume",
            "t",
            "--from",
            "42",
            "--count",
            "5",
            "--timeout-ms",
            "100",
            "--print-offsets",
            "--print-keys",
        ])
        .unwrap() else {
            panic!("not consume");
        };
        assert_eq!(c.from, Some(StartPosition::Offset(42)));
        assert_eq!(c.count, Some(5));
        assert!(c.print_offsets && c.print_keys);
        let ClientCommand::Consume(c) = parse(&["consume", "t", "--from", "latest"]).unwrap()
        else {
            panic!("not consume");
        };
        assert_eq!(c.from, Some(StartPosition::Latest));
        assert_eq!(c.timeout_ms, 0);
        for sub in [
            &["topic", "list"][..],
            &["topic", "describe", "x"],
            &["topic", "delete", "x"],
            &["topic", "alter", "x", "--retention-bytes", "1048576"],
            &[
                "topic",
                "alter",
                "x",
                "--reset",
                "retention.ms",
                "--reset",
                "levee.fsync",
            ],
        ] {
            assert!(parse(sub).is_ok(), "{sub:?}");
        }
        assert!(parse(&["topic", "alter", "x", "--fsync", "sometimes"]).is_err());
        let ClientCommand::Topic(TopicArgs {
            command: TopicCommand::Alter(a),
        }) = parse(&[
            "topic",
            "alter",
            "x",
            "--retention-ms",
            "60000",
            "--max-backlog-bytes",
            "5",
            "--validate-only",
        ])
        .unwrap()
        else {
            panic!("not a topic alter");
        };
        assert_eq!(
            (a.retention_ms, a.max_backlog_bytes, a.validate_only),
            (Some(60000), Some(5), true)
        );
    }
}
