//! `levee produce`: one message per line of stdin.

use std::collections::VecDeque;
use std::io::BufRead;
use std::time::Duration;

use clap::Args;
use tokio::sync::mpsc;

use levee_client::producer::{Acks, DeliveryFuture, Producer, ProducerConfig};
use levee_client::{ClientError, Compression};

use super::{connect, ConnectArgs};

/// `levee produce`
#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    pub topic: String,
    /// 0 (no acknowledgement), 1 (leader appended) or all (durable).
    #[arg(long, default_value = "all")]
    pub acks: Acks,
    /// Split each line at the first SEP: key before, value after (lines
    /// without SEP are sent with no key).
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Send every message to this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// Bytes per partition batch.
    #[arg(long, default_value_t = 64 * 1024)]
    pub batch_size: usize,
    /// Wait up to this long for a batch to fill.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Write in transactions of this transactional id: one transaction per
    /// chunk of up to 256 input lines, committed before the next is read
    /// (read_committed consumers see a chunk whole or not at all). A
    /// failed transaction is aborted and the command fails.
    #[arg(long, value_name = "ID")]
    pub transactional_id: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

/// Lines of stdin, read on a plain thread so a slow pipe never blocks the
/// runtime. Each chunk holds up to 256 lines without their `\n`.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<Vec<Vec<u8>>>> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut chunk = Vec::with_capacity(256);
        loop {
            let mut line = Vec::new();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    chunk.push(line);
                    if chunk.len() == 256
                        && tx
                            .blocking_send(Ok(std::mem::replace(
                                &mut chunk,
                                Vec::with_capacity(256),
                            )))
                            .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(Ok(chunk));
        }
    });
    rx
}

fn split_key(line: Vec<u8>, sep: Option<&[u8]>) -> (Option<Vec<u8>>, Vec<u8>) {
    let Some(sep) = sep.filter(|s| !s.is_empty()) else {
        return (None, line);
    };
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (Some(line[..i].to_vec()), line[i + sep.len()..].to_vec()),
        None => (None, line),
    }
}

#[derive(Default)]
struct Tally {
    total: u64,
    failed: u64,
    first_error: Option<ClientError>,
}

impl Tally {
    fn record(&mut self, r: Result<(), ClientError>) {
        self.total += 1;
        if let Err(e) = r {
            self.failed += 1;
            if self.first_error.is_none() {
                self.first_error = Some(e);
            }
        }
    }
}

pub(super) async fn produce(a: ProduceArgs) -> Result<(), String> {
    let client = connect(&a.connect).await.map_err(|e| e.to_string())?;
    // Fail fast (once, not per message) if the topic or partition is missing.
    let info = client
        .describe_topic(&a.topic)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(p) = a.partition {
        let n = info.partition_count();
        if p >= n {
            return Err(format!(
                "topic `{}` has {n} partition(s) (0..{n}); there is no partition {p}",
                a.topic
            ));
        }
    }
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: a.acks,
            compression: a.compression,
            batch_size: a.batch_size,
            linger: Duration::from_millis(a.linger_ms),
            partition: a.partition,
            transactional_id: a.transactional_id.clone(),
            ..ProducerConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let transactional = a.transactional_id.is_some();
    if transactional {
        producer
            .init_transactions()
            .await
            .map_err(|e| e.to_string())?;
    }
    let sep = a.key_separator.as_deref().map(str::as_bytes);
    let mut lines = stdin_lines();
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    let mut tally = Tally::default();
    let mut read_error = None;
    while let Some(chunk) = lines.recv().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                read_error = Some(e);
                break;
            }
        };
        if transactional {
            producer.begin_transaction().map_err(|e| e.to_string())?;
        }
        for line in chunk {
            let (key, value) = split_key(line, sep);
            match producer.send(&a.topic, key, value).await {
                Ok(f) => pending.push_back(f),
                Err(e) => tally.record(Err(e)),
            }
            // Keep the list of outstanding futures bounded: reports arrive
            // roughly in order, so wait for the oldest.
            while pending.len() > 100_000 {
                if let Some(f) = pending.pop_front() {
                    tally.record(f.await.map(drop));
                }
            }
        }
        if transactional {
            if let Err(e) = producer.commit_transaction().await {
                let aborted = match producer.abort_transaction().await {
                    Ok(()) => "aborted".to_string(),
                    Err(a) => format!("not aborted: {a}"),
                };
                return Err(format!(
                    "committing a transaction after {} message(s) failed ({aborted}): {e}",
                    tally.total + pending.len() as u64
                ));
            }
        }
    }
    let flushed = producer.flush().await;
    for f in pending {
        tally.record(f.await.map(drop));
    }
    if let Err(e) = flushed {
        return Err(e.to_string());
    }
    if let Some(e) = read_error {
        return Err(format!(
            "reading stdin failed after {} message(s): {e}",
            tally.total
        ));
    }
    if tally.failed > 0 {
        let why = tally.first_error.map(|e| e.to_string()).unwrap_or_default();
        return Err(format!(
            "{} of {} message(s) failed: {why}",
            tally.failed, tally.total
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_separator_splits_at_the_first() {
        assert_eq!(
            split_key(b"k:v:w".to_vec(), Some(b":")),
            (Some(b"k".to_vec()), b"v:w".to_vec())
        );
        assert_eq!(
            split_key(b"kv".to_vec(), Some(b":")),
            (None, b"kv".to_vec())
        );
        assert_eq!(
            split_key(b"a::b".to_vec(), Some(b"::")),
            (Some(b"a".to_vec()), b"b".to_vec())
        );
        assert_eq!(split_key(b"k:v".to_vec(), None), (None, b"k:v".to_vec()));
    }
}
