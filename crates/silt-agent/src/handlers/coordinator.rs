//! FindCoordinator. Consumer groups and transactions are not served yet, so every key gets
//! COORDINATOR_NOT_AVAILABLE (retriable) with a message saying so. Serving the API at all
//! matters: librdkafka only enables lz4 for brokers that advertise FindCoordinator.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::ResponseError;

use super::str_bytes;

const WHY: &str = "consumer groups and transactions are not supported by this Silt version yet; consume with assign()";

/// Handles FindCoordinator (v0-v3 single key, v4+ batched keys).
pub fn handle(req: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let code = ResponseError::CoordinatorNotAvailable.code();
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(WHY)))
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default()
        .with_error_code(code)
        .with_error_message((version >= 1).then(|| str_bytes(WHY)))
        .with_node_id(BrokerId(-1))
        .with_port(-1)
}
