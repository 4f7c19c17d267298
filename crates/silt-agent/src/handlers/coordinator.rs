//! FindCoordinator: a group, and a transactional id, is coordinated by the agent its group shard
//! is assigned to (COORDINATOR_NOT_AVAILABLE while the shard has no live coordinator, as Kafka
//! answers during a failover).

use std::sync::Arc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use silt_meta::layout::assignment;

use super::str_bytes;
use crate::broker::Broker;

const KEY_GROUP: i8 = 0;
const KEY_TRANSACTION: i8 = 1;

fn coordinator(b: &Broker, key: StrBytes, key_type: i8, listener: &str) -> Coordinator {
    let shard = assignment::group_shard(&key);
    let c = Coordinator::default().with_key(key);
    if key_type == KEY_GROUP || key_type == KEY_TRANSACTION {
        let node = b
            .cluster
            .shard_owner(shard)
            .and_then(|a| b.cluster.node(a.leader));
        match node
            .as_ref()
            .and_then(|n| Some((n.id, n.endpoint(listener)?)))
        {
            Some((id, (host, port))) => c
                .with_node_id(BrokerId(id))
                .with_host(str_bytes(host))
                .with_port(port),
            None => c
                .with_node_id(BrokerId(-1))
                .with_port(-1)
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                .with_error_message(Some(str_bytes(
                    "the coordinator is moving between agents; retry",
                ))),
        }
    } else {
        c.with_node_id(BrokerId(-1))
            .with_port(-1)
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_error_message(Some(str_bytes("unknown coordinator key type")))
    }
}

/// Handles FindCoordinator (v0-v3 single key, v4+ batched keys).
pub fn handle(
    b: &Arc<Broker>,
    req: FindCoordinatorRequest,
    version: i16,
    listener: &str,
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
            .map(|k| coordinator(b, k, key_type, listener))
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let c = coordinator(b, req.key, key_type, listener);
    FindCoordinatorResponse::default()
        .with_error_code(c.error_code)
        .with_error_message(if version >= 1 { c.error_message } else { None })
        .with_node_id(c.node_id)
        .with_host(c.host)
        .with_port(c.port)
}
