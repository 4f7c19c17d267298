//! InitProducerId for idempotent producers. Transactional ids need the transactions issue and
//! are refused with a clear message.

use std::sync::Arc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use crate::broker::Broker;

/// Handles InitProducerId; the id is sealed to `principal` (only it may produce with it).
pub async fn handle(
    b: &Arc<Broker>,
    req: InitProducerIdRequest,
    principal: &str,
) -> InitProducerIdResponse {
    if let Some(tid) = &req.transactional_id {
        tracing::warn!(transactional_id = %tid.0.as_str(), "transactions are not supported yet; refusing InitProducerId");
        return InitProducerIdResponse::default()
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    match b.producer_ids.next(principal).await {
        Ok(pid) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(0),
        Err(e) => {
            tracing::error!(error = %e, "could not allocate a producer id");
            InitProducerIdResponse::default()
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}
