//! Kafka's InitProducerId, for idempotent producers (the default of the
//! Java client since 3.0 and of kafka-python 2.1+) and, with a
//! transactional id, for transactional ones (from the id's coordinator).

use super::txn::txn_code;

use super::codec::kafka_error;
use super::Ctx;
use crate::handlers;
use kafka_protocol::messages::*;

pub async fn init_producer_id(ctx: &Ctx, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let mut out = InitProducerIdResponse::default();
    out.producer_id = ProducerId(-1);
    out.producer_epoch = -1;
    // KIP-360 (v3+): the id and epoch the producer has, -1 when none.
    let existing = (ctx.version >= 3)
        .then_some((req.producer_id.0, req.producer_epoch))
        .filter(|&(pid, epoch)| pid >= 0 && epoch >= 0);
    let txn = req
        .transactional_id
        .map(|t| t.0.as_str().to_string())
        .filter(|t| !t.is_empty());
    if let Some(id) = txn {
        match handlers::txn::init_producer_id(&ctx.shard, id, req.transaction_timeout_ms, existing)
            .await
        {
            Ok((pid, epoch)) => {
                out.producer_id = ProducerId(pid);
                out.producer_epoch = epoch;
            }
            Err(e) => out.error_code = txn_code(&e, ctx.version, 4),
        }
        return out;
    }
    match handlers::producers::init_producer_id(&ctx.shard, existing).await {
        Ok((pid, epoch)) => {
            out.producer_id = ProducerId(pid);
            out.producer_epoch = epoch;
        }
        Err(e) => out.error_code = kafka_error(e.code, false),
    }
    out
}
