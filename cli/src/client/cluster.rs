//! `levee cluster status`.

use std::io::Write;

use clap::{Args, Subcommand};

use levee_client::ClientError;

use super::{connect, ConnectArgs};

/// `levee cluster ...`
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// Cluster inspection.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Print each node's address, coordinator role, liveness, partitions
    /// led and under-replicated, then the coordinator quorum's state.
    Status(ClusterStatusArgs),
}

/// `levee cluster status`
#[derive(Debug, Clone, Args)]
pub struct ClusterStatusArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

pub(super) async fn cluster(cmd: ClusterCommand) -> Result<(), ClientError> {
    let ClusterCommand::Status(a) = cmd;
    let client = connect(&a.connect).await?;
    let status = client.cluster_status().await?;
    let mut out = std::io::stdout().lock();
    out.write_all(render_cluster_status(&status).as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The text `levee cluster status` prints.
fn render_cluster_status(s: &levee_client::ClusterStatus) -> String {
    let mut out = String::from("ID\tADDRESS\tROLE\tSTATUS\tLED\tUNDER-REPLICATED\n");
    for n in &s.nodes {
        out += &format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            n.node_id,
            n.address.as_deref().unwrap_or("-"),
            n.role.as_deref().filter(|r| !r.is_empty()).unwrap_or("-"),
            if n.live { "live" } else { "down" },
            n.partitions_led,
            n.under_replicated
        );
    }
    out += &format!(
        "quorum: {}/{} coordinators up, ",
        s.coordinators_up, s.coordinators_total
    );
    match s.leader {
        Some(l) => out += &format!("leader: node {l}\n"),
        None => {
            out += "no leader: metadata changes (topic creation, leader election) are unavailable\n"
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::parse;
    use crate::client::ClientCommand;

    #[test]
    fn cluster_status_command_line() {
        let ClientCommand::Cluster(ClusterArgs {
            command: ClusterCommand::Status(a),
        }) = parse(&["cluster", "status", "--bootstrap", "a:1,b:2,c:3"]).unwrap()
        else {
            panic!("not cluster status");
        };
        assert_eq!(a.connect.bootstrap, vec!["a:1", "b:2", "c:3"]);
        assert!(parse(&["cluster"]).is_err());
        assert!(parse(&["cluster", "status", "extra"]).is_err());
    }

    #[test]
    fn cluster_status_rendering() {
        let node = |id: u32, role: &str, live: bool| levee_client::NodeStatus {
            node_id: id,
            address: Some(format!("10.0.0.{id}:9092")),
            role: Some(role.into()),
            live,
            partitions_led: id * 2,
            under_replicated: u32::from(!live),
        };
        let mut s = levee_client::ClusterStatus {
            nodes: vec![node(1, "leader", true), node(2, "follower", false)],
            coordinators_up: 3,
            coordinators_total: 3,
            leader: Some(1),
        };
        assert_eq!(
            render_cluster_status(&s),
            "ID\tADDRESS\tROLE\tSTATUS\tLED\tUNDER-REPLICATED\n\
             1\t10.0.0.1:9092\tleader\tlive\t2\t0\n\
             2\t10.0.0.2:9092\tfollower\tdown\t4\t1\n\
             quorum: 3/3 coordinators up, leader: node 1\n"
        );
        s.coordinators_up = 1;
        s.leader = None;
        assert!(render_cluster_status(&s).ends_with(
            "quorum: 1/3 coordinators up, no leader: metadata changes (topic creation, leader election) are unavailable\n"
        ));
    }
}
