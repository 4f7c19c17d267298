//! FindCoordinator. Groups are coordinated by this agent (in a cluster: by the agent owning the
//! group's shard). Transactions are not served yet: transactional keys get
//! COORDINATOR_NOT_AVAILABLE with a message saying so.

use std::sync::Arc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::broker::Broker;

const KEY_GROUP: i8 = 0;
const NO_TXN: &str = "transactions are not supported by this Silt version yet";

fn coordinator(b: &Broker, key: StrBytes, key_type: i8) -> Coordinator {
    let c = Coordinator::default().with_key(key);
    if key_type == KEY_GROUP {
        c.with_node_id(BrokerId(b.node.id))
            .with_host(str_bytes(b.node.host.clone()))
            .with_port(b.node.port)
    } else {
        c.with_node_id(BrokerId(-1))
            .with_port(-1)
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_error_message(Some(str_bytes(NO_TXN)))
    }
}

/// Handles FindCoordinator (v0-v3 single key, v4+ batched keys).
pub fn handle(
    b: &Arc<Broker>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let key_type = if version >= 1 {
        req.key_type
    } else {
        KEY_GROUP
    };
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|k| coordinator(b, k, key_type))
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let c = coordinator(b, req.key, key_type);
    FindCoordinatorResponse::default()
        .with_error_code(c.error_code)
        .with_error_message(if version >= 1 { c.error_message } else { None })
        .with_node_id(c.node_id)
        .with_host(c.host)
        .with_port(c.port)
}
