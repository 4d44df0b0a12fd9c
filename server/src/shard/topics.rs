//! The topic registry of a single node: shard 0 owns `topics.toml`, writes
//! a change durably, then has every shard open (or close and delete) the
//! partitions it owns. On a cluster the coordinators own topics instead
//! (`cluster/admin.rs`, `cluster/metadata.rs`).

use super::Shard;
use crate::error::{OpError, OpResult};
use crate::topics::{self, TopicMeta};
use levee_schemas::proto::ErrorCode;
use std::rc::Rc;
use tracing::{info, warn};

/// The shard that owns the single-node topic registry.
pub const REGISTRY_SHARD: usize = 0;

impl Shard {
    /// Shard 0: creates a topic (validated, stored, opened everywhere).
    pub async fn create_topic(self: Rc<Self>, name: String, mut meta: TopicMeta) -> OpResult<()> {
        let _l = self
            .admin_lock
            .acquire_permit(1)
            .await
            .map_err(|_| OpError::shutting_down())?;
        topics::check_new_topic(&name, &meta, false)?;
        if self.topics.borrow().contains_key(&name) {
            return Err(OpError::new(
                ErrorCode::TopicAlreadyExists,
                format!("topic `{name}` already exists"),
            ));
        }
        if meta.id.is_empty() {
            meta.id = levee_coordinator::new_topic_id();
        }
        let mut all = self.topics.borrow().clone();
        all.insert(name.clone(), meta.clone());
        self.store_registry(&all)?;
        let res = self.broadcast(&name, Some(meta)).await;
        info!(topic = %name, "created topic");
        res
    }

    /// Shard 0: deletes a topic (stored, then closed and removed everywhere).
    pub async fn delete_topic(self: Rc<Self>, name: String) -> OpResult<()> {
        let _l = self
            .admin_lock
            .acquire_permit(1)
            .await
            .map_err(|_| OpError::shutting_down())?;
        if !self.topics.borrow().contains_key(&name) {
            return Err(OpError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic `{name}` does not exist"),
            ));
        }
        let mut all = self.topics.borrow().clone();
        all.remove(&name);
        self.store_registry(&all)?;
        let res = self.broadcast(&name, None).await;
        info!(topic = %name, "deleted topic");
        res
    }

    /// Shard 0: changes a topic's settings (stored, then every shard
    /// retunes its open partitions; see `handlers::topics::alter`).
    pub async fn alter_topic(
        self: Rc<Self>,
        name: String,
        changes: Vec<topics::ConfigChange>,
        replace: bool,
        validate_only: bool,
    ) -> OpResult<TopicMeta> {
        let _l = self
            .admin_lock
            .acquire_permit(1)
            .await
            .map_err(|_| OpError::shutting_down())?;
        let Some(current) = self.topics.borrow().get(&name).cloned() else {
            return Err(OpError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic `{name}` does not exist"),
            ));
        };
        let meta = topics::altered(&name, &current, &changes, replace)?;
        if validate_only || meta == current {
            return Ok(meta);
        }
        let mut all = self.topics.borrow().clone();
        all.insert(name.clone(), meta.clone());
        self.store_registry(&all)?;
        self.broadcast(&name, Some(meta.clone())).await?;
        info!(topic = %name, ?changes, "altered topic settings");
        Ok(meta)
    }

    /// Shard 0: grows a topic to `count` partitions (stored, then the new
    /// partitions opened on their shards). Existing partitions keep their
    /// shard: a partition's owner depends only on its topic and number.
    pub async fn add_partitions(
        self: Rc<Self>,
        name: String,
        count: u32,
        assignment: Vec<Vec<u32>>,
        validate_only: bool,
    ) -> OpResult<()> {
        let _l = self
            .admin_lock
            .acquire_permit(1)
            .await
            .map_err(|_| OpError::shutting_down())?;
        let Some(mut meta) = self.topics.borrow().get(&name).cloned() else {
            return Err(OpError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic `{name}` does not exist"),
            ));
        };
        topics::check_add_partitions(
            &name,
            meta.partitions,
            count,
            meta.replication_factor,
            &assignment,
            &[self.cfg.node_id],
        )?;
        if validate_only {
            return Ok(());
        }
        let from = meta.partitions;
        meta.partitions = count;
        let mut all = self.topics.borrow().clone();
        all.insert(name.clone(), meta.clone());
        self.store_registry(&all)?;
        let res = self.broadcast(&name, Some(meta)).await;
        info!(topic = %name, from, to = count, "added partitions");
        res
    }

    /// Writes `topics.toml`; on a full disk, with the space reserve.
    fn store_registry(&self, all: &std::collections::BTreeMap<String, TopicMeta>) -> OpResult<()> {
        self.space
            .with_reserve("topic metadata (topics.toml)", || {
                topics::store(&self.cfg.data_dir, all)
            })
            .map_err(|e| {
                OpError::new(
                    ErrorCode::StorageError,
                    format!("writing topic metadata: {e}"),
                )
            })
    }

    /// Has every shard adopt (`Some`) or drop (`None`) the topic.
    async fn broadcast(self: &Rc<Self>, name: &str, meta: Option<TopicMeta>) -> OpResult<()> {
        let tasks: Vec<_> = (0..self.nshards)
            .map(|s| {
                let (name, meta) = (name.to_string(), meta.clone());
                glommio::spawn_local(self.submit_to(s, move |shard| async move {
                    shard.apply_topic(name, meta).await
                }))
            })
            .collect();
        let mut first_err = None;
        for t in tasks {
            if let Err(e) = t.await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Adopts (opening its partitions here) or drops a topic.
    async fn apply_topic(&self, name: String, meta: Option<TopicMeta>) -> OpResult<()> {
        match meta {
            Some(meta) => {
                let old = self.topics.borrow_mut().insert(name.clone(), meta.clone());
                if let Err(e) = self.open_topic(&name, &meta).await {
                    warn!(topic = %name, error = %e.message, "opening a partition failed");
                    return Err(e);
                }
                if old.is_some_and(|o| !same_settings(&o, &meta)) {
                    self.retune_topic(&name, &meta).await?;
                }
            }
            None => self.drop_topic(&name).await,
        }
        Ok(())
    }
}

/// Whether two versions of a topic have the same log settings.
pub(crate) fn same_settings(a: &TopicMeta, b: &TopicMeta) -> bool {
    (
        a.retention_bytes,
        a.retention_ms,
        &a.fsync,
        a.max_backlog_bytes,
        a.segment_bytes,
        a.max_message_bytes,
    ) == (
        b.retention_bytes,
        b.retention_ms,
        &b.fsync,
        b.max_backlog_bytes,
        b.segment_bytes,
        b.max_message_bytes,
    )
}
