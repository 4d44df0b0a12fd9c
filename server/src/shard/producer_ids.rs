//! Producer ids for idempotent producers, unique across the cluster. Shard
//! 0 hands them out from a block: on a single node the block is reserved
//! in `<data_dir>/producer-ids` (written durably before any id of it is
//! used), on a cluster through the coordinator quorum
//! (`AllocateProducerIds`).

use super::Shard;
use crate::error::{OpError, OpResult};
use levee_schemas::proto::ErrorCode;
use std::time::{Duration, Instant};

/// Ids reserved at a time.
const BLOCK: u32 = 1000;
const FILE: &str = "producer-ids";

impl Shard {
    /// The next producer id (shard 0 only).
    pub async fn next_producer_id(&self) -> OpResult<i64> {
        if let Some((next, end)) = self.producer_ids.get() {
            if next < end {
                self.producer_ids.set(Some((next + 1, end)));
                return Ok(next);
            }
        }
        let _l = self
            .admin_lock
            .acquire_permit(1)
            .await
            .map_err(|_| OpError::shutting_down())?;
        let first = match self.cluster.clone() {
            Some(view) => self.reserve_from_quorum(&view).await?,
            None => self.reserve_from_file().await?,
        };
        self.producer_ids
            .set(Some((first + 1, first + i64::from(BLOCK))));
        Ok(first)
    }

    async fn reserve_from_file(&self) -> OpResult<i64> {
        let path = self.cfg.data_dir.join(FILE);
        let res = glommio::executor()
            .spawn_blocking(move || -> std::io::Result<i64> {
                let first = match std::fs::read_to_string(&path) {
                    Ok(t) => t.trim().parse::<i64>().map_err(std::io::Error::other)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                    Err(e) => return Err(e),
                };
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, format!("{}\n", first + i64::from(BLOCK)))?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(first)
            })
            .await;
        res.map_err(|e| {
            OpError::new(
                ErrorCode::StorageError,
                format!("reserving producer ids in {FILE}: {e}"),
            )
        })
    }

    async fn reserve_from_quorum(&self, view: &crate::cluster::ClusterView) -> OpResult<i64> {
        let me = u64::from(self.cfg.node_id);
        let addrs = view.addrs();
        let cmd = levee_coordinator::Command::AllocateProducerIds {
            node_id: me,
            count: BLOCK,
        };
        let applied = glommio::executor()
            .spawn_blocking(move || {
                levee_coordinator::client::propose(&addrs, cmd, Duration::from_secs(5))
            })
            .await
            .map_err(|e| {
                OpError::new(
                    ErrorCode::CoordinatorUnavailable,
                    format!("reserving producer ids through the coordinators: {e}"),
                )
            })?;
        // This node's block is in the metadata from that version on.
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if view.version() > applied.version {
                if let Some(md) = view.metadata() {
                    if let Some(&(first, _)) = md.producer_id_blocks.get(&me) {
                        return Ok(first);
                    }
                }
            }
            if Instant::now() >= until {
                return Err(OpError::new(
                    ErrorCode::RequestTimedOut,
                    "the producer id block committed, but this node has not seen it yet; retry",
                ));
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }
}
