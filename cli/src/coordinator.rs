//! `levee coordinator status|metadata`: one coordinator's view of the
//! quorum and of the cluster metadata.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(clap::Args)]
pub(crate) struct CoordinatorArgs {
    #[command(subcommand)]
    cmd: CoordinatorCommand,
}

#[derive(Subcommand)]
enum CoordinatorCommand {
    /// Print one coordinator's role (`Mode: leader` or `Mode: follower`),
    /// term, leader, commit and applied index, and its peers.
    Status {
        /// The coordinator's address (its entry in `coordinators`).
        #[arg(long, env = "LEVEE_COORDINATOR", default_value = "127.0.0.1:9093")]
        coordinator: String,
    },
    /// Print the cluster metadata the coordinator has applied: brokers and
    /// their liveness, topics, partition leaders, epochs and in-sync replicas.
    Metadata {
        /// The coordinator's address.
        #[arg(long, env = "LEVEE_COORDINATOR", default_value = "127.0.0.1:9093")]
        coordinator: String,
    },
}

pub(crate) fn coordinator(args: CoordinatorArgs) -> ExitCode {
    let timeout = std::time::Duration::from_secs(5);
    let out = match args.cmd {
        CoordinatorCommand::Status { coordinator } => {
            levee_coordinator::client::status(&coordinator, timeout).map(|s| s.render())
        }
        CoordinatorCommand::Metadata { coordinator } => {
            levee_coordinator::client::metadata(&coordinator, timeout).map(|m| {
                let mut out = format!("version: {}\n", m.version);
                for b in m.brokers.values() {
                    out += &format!(
                        "broker {}\t{}\tshards {}\t{}\n",
                        b.node_id,
                        b.client_addr,
                        b.shards,
                        if b.alive { "alive" } else { "down" }
                    );
                }
                out
            })
        }
    };
    match out {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
