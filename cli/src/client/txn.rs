//! `levee txn list|describe`: the transactions of Kafka clients'
//! transactional producers, as their coordinators see them.

use std::io::Write;

use clap::{Args, Subcommand};

use levee_client::ClientError;

use super::{connect, ConnectArgs};

/// `levee txn ...`
#[derive(Debug, Clone, Args)]
pub struct TxnArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TxnCommand,
}

/// Transactions.
#[derive(Debug, Clone, Subcommand)]
pub enum TxnCommand {
    /// One line per transactional id:
    /// `id<TAB>state<TAB>producer_id<TAB>epoch<TAB>age_ms<TAB>partitions<TAB>coordinator`
    /// (`--open`: only those with a transaction open or completing).
    List(TxnListArgs),
    /// A transactional id's state, its open transaction's age, partitions
    /// and groups.
    Describe(TxnIdArgs),
}

/// `levee txn list`
#[derive(Debug, Clone, Args)]
pub struct TxnListArgs {
    /// Only transactions open or completing.
    #[arg(long)]
    pub open: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

/// `levee txn describe ID`
#[derive(Debug, Clone, Args)]
pub struct TxnIdArgs {
    /// The transactional id.
    pub transactional_id: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

fn is_open(state: &str) -> bool {
    matches!(state, "Ongoing" | "PrepareCommit" | "PrepareAbort")
}

pub(super) async fn txn(cmd: TxnCommand) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    match cmd {
        TxnCommand::List(a) => {
            let client = connect(&a.connect).await?;
            for t in client.list_transactions(None).await? {
                if a.open && !is_open(&t.state) {
                    continue;
                }
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    t.transactional_id,
                    t.state,
                    t.producer_id,
                    t.epoch,
                    t.age_ms,
                    t.partitions.len(),
                    t.coordinator
                )?;
            }
        }
        TxnCommand::Describe(a) => {
            let client = connect(&a.connect).await?;
            let t = client.describe_transaction(&a.transactional_id).await?;
            writeln!(out, "transactional id: {}", t.transactional_id)?;
            writeln!(out, "coordinator: node {}", t.coordinator)?;
            writeln!(out, "state: {}", t.state)?;
            writeln!(out, "producer id: {}", t.producer_id)?;
            writeln!(out, "epoch: {}", t.epoch)?;
            writeln!(out, "timeout: {} ms", t.timeout_ms)?;
            if is_open(&t.state) {
                writeln!(out, "open for: {} ms", t.age_ms)?;
            }
            writeln!(out, "partitions: {}", t.partitions.len())?;
            for (topic, p) in &t.partitions {
                writeln!(out, "  {topic}\t{p}")?;
            }
            writeln!(out, "groups: {}", t.groups.len())?;
            for g in &t.groups {
                writeln!(out, "  {g}")?;
            }
        }
    }
    Ok(())
}
