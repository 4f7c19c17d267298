//! InitProducerId: a fresh producer id for an idempotent producer, or, with a transactional id,
//! the id's producer id with its next epoch from the transaction coordinator.

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
        // KIP-360: a client that had an identity says which.
        let expected = (req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
        return match b
            .txns
            .init_producer_id(
                &crate::txn::deps(b),
                tid.0.as_str(),
                req.transaction_timeout_ms,
                expected,
                principal,
            )
            .await
        {
            Ok((pid, epoch)) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch),
            Err(e) => InitProducerIdResponse::default()
                .with_error_code(e.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        };
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
