//! Cluster metadata for clients: the brokers and their addresses.

use crate::shard::Shard;

/// A broker as clients reach it.
#[derive(Debug, Clone)]
pub struct BrokerAddress {
    pub node_id: u32,
    pub host: String,
    pub port: u16,
}

/// Every live broker with its native client address: this node alone, or
/// the cluster's live brokers.
pub fn brokers(shard: &Shard) -> Vec<BrokerAddress> {
    if let Some(md) = shard.cluster.as_ref().and_then(|v| v.metadata()) {
        return md
            .brokers
            .values()
            .filter(|b| b.alive)
            .filter_map(|b| {
                let a: std::net::SocketAddr = b.client_addr.parse().ok()?;
                Some(BrokerAddress {
                    node_id: b.node_id as u32,
                    host: a.ip().to_string(),
                    port: a.port(),
                })
            })
            .collect();
    }
    let (host, port) = match shard.cfg.listen_addr() {
        Ok(a) => (a.ip().to_string(), a.port()),
        Err(_) => (String::new(), 0),
    };
    vec![BrokerAddress {
        node_id: shard.cfg.node_id,
        host,
        port,
    }]
}
