//! `/silt/agents/{node_id}`: which agent session may write on behalf of a node id. Commits
//! compare on it, so a second agent started with the same node id fences the first.

use crate::kv::{Compare, MetaError, MetaKv, Op, Txn};

/// The registration key of `node_id`.
pub fn key(node_id: i32) -> String {
    format!("{}/agents/{node_id}", super::ROOT)
}

/// Claims `node_id` for `session`, replacing any earlier session.
pub async fn register(kv: &dyn MetaKv, node_id: i32, session: &str) -> Result<(), MetaError> {
    kv.txn(Txn {
        success: vec![Op::put(key(node_id), session)],
        ..Default::default()
    })
    .await
    .map(|_| ())
}

/// The compare a commit carries: `node_id` is still held by `session`.
pub fn still_registered(node_id: i32, session: &str) -> Compare {
    Compare::value(key(node_id), session)
}
