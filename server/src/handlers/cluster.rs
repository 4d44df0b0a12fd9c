//! The cluster status a node reports (`levee cluster status`).

use crate::error::{OpError, OpResult};
use crate::shard::Shard;
use levee_schemas::proto::{ClusterStatusResponse, ErrorCode};
use std::rc::Rc;

pub async fn status(shard: &Rc<Shard>) -> OpResult<ClusterStatusResponse> {
    match shard.cluster.clone() {
        Some(view) => Ok(crate::cluster::admin::cluster_status(&view).await),
        None => Err(OpError::new(
            ErrorCode::InvalidRequest,
            "this broker is not part of a cluster (it runs without --coordinators)",
        )),
    }
}
