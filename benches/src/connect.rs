//! Connecting to the broker, over either protocol: the native client's
//! configuration, and the Kafka client.

use std::sync::Arc;

use levee_client::ClientConfig;

use crate::kafka::KafkaClient;
use crate::workload::Config;

pub(crate) fn client_config(cfg: &Config, name: String) -> ClientConfig {
    ClientConfig {
        client_id: name,
        ..ClientConfig::new(
            cfg.args
                .bootstrap
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        )
    }
}

/// Connects a Kafka client to `--bootstrap`.
pub(crate) async fn kafka_connect(cfg: &Config) -> Result<Arc<KafkaClient>, String> {
    KafkaClient::connect(&cfg.args.bootstrap)
        .await
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "connecting to the Kafka broker at {:?}: {e}",
                cfg.args.bootstrap
            )
        })
}
