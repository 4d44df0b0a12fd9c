//! Kafka's InitProducerId, for idempotent producers (the default of the
//! Java client since 3.0 and of kafka-python 2.1+).

use super::codec::{code, kafka_error};
use super::Ctx;
use crate::handlers;
use kafka_protocol::messages::*;

pub async fn init_producer_id(ctx: &Ctx, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let mut out = InitProducerIdResponse::default();
    out.producer_id = ProducerId(-1);
    out.producer_epoch = -1;
    let existing = (ctx.version >= 3).then_some((req.producer_id.0, req.producer_epoch));
    let txn = req.transactional_id.map(|t| t.0.as_str().to_string());
    match handlers::producers::init_producer_id(&ctx.shard, txn, existing).await {
        Ok((pid, epoch)) => {
            out.producer_id = ProducerId(pid);
            out.producer_epoch = epoch;
        }
        Err(e) if e.code == levee_schemas::proto::ErrorCode::InvalidRequest => {
            // Transactions: not yet.
            out.error_code = code::INVALID_REQUEST;
        }
        Err(e) => out.error_code = kafka_error(e.code, false),
    }
    out
}
