//! `/silt/load/{node_id}`: each agent's load, published under its lease every few seconds and
//! read by the controller to place partitions by load rather than by count. It holds the agent's
//! total traffic and its busiest partitions (at most [`MAX_PARTITIONS`], so the document stays
//! a few KiB whatever the partition count); a partition not listed carries no measurable load.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{decode_json, encode_json};
use crate::kv::{LeaseId, MetaError, MetaKv, Op};

/// Partitions listed per agent, busiest first.
pub const MAX_PARTITIONS: usize = 256;

/// One agent's load. Persisted (leased).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentLoad {
    /// When it was measured (Unix ms).
    pub at_ms: i64,
    /// Produce plus fetch bytes per second over the agent's window.
    pub bytes_per_sec: u64,
    /// The agent's `load.capacity_bytes_per_sec`.
    pub capacity: u64,
    /// The agent's `load.window_ms`.
    pub window_ms: u64,
    /// The busiest partitions it leads.
    #[serde(default)]
    pub partitions: Vec<PartitionLoad>,
    /// Kafka requests per second it answered.
    #[serde(default)]
    pub requests_per_sec: u64,
    /// CPU it used, in cores (1.0 = one core busy), over the last second.
    #[serde(default)]
    pub cpu_cores: f64,
    /// The share of its write buffer in use (0 to 1).
    #[serde(default)]
    pub buffer: f64,
    /// The group shards it coordinates that see requests, busiest first.
    #[serde(default)]
    pub shards: Vec<ShardLoad>,
}

/// One group shard's coordinator requests on the agent coordinating it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLoad {
    /// Shard number.
    pub shard: i32,
    /// Coordinator requests per second (joins, heartbeats, commits, fetches of offsets).
    pub requests_per_sec: u64,
    /// How long the agent has measured it (ms).
    pub observed_ms: u64,
}

/// One partition's traffic on the agent leading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLoad {
    /// Topic id.
    pub topic: Uuid,
    /// Partition index.
    pub partition: i32,
    /// Produce plus fetch bytes per second.
    pub bytes_per_sec: u64,
    /// How long the agent has measured it (ms): below the window, the rate is still rising
    /// from zero after a move.
    pub observed_ms: u64,
}

/// Prefix of every agent's load.
pub fn prefix() -> String {
    format!("{}/load/", super::ROOT)
}

/// The load key of `node_id`.
pub fn key(node_id: i32) -> String {
    format!("{}{node_id}", prefix())
}

/// The node id of a load key.
pub fn parse_key(key: &[u8]) -> Option<i32> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(&prefix())?
        .parse()
        .ok()
}

/// Publishes `load` for `node_id` under `lease` (it vanishes with the agent).
pub fn put_op(node_id: i32, load: &AgentLoad, lease: LeaseId) -> Op {
    Op::Put {
        key: key(node_id).into_bytes(),
        value: encode_json(load),
        lease,
    }
}

/// Every live agent's load by node id.
pub async fn list(kv: &dyn MetaKv) -> Result<BTreeMap<i32, AgentLoad>, MetaError> {
    let mut out = BTreeMap::new();
    for item in kv.range_all(prefix().as_bytes()).await? {
        if let Some(id) = parse_key(&item.key) {
            out.insert(id, decode_json(&item.key, &item.value)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_document_stays_small_and_round_trips() {
        let load = AgentLoad {
            at_ms: 1,
            bytes_per_sec: u64::MAX,
            capacity: 104_857_600,
            window_ms: 10_000,
            partitions: (0..MAX_PARTITIONS as i32)
                .map(|p| PartitionLoad {
                    topic: Uuid::new_v4(),
                    partition: p,
                    bytes_per_sec: u64::MAX,
                    observed_ms: u64::MAX,
                })
                .collect(),
            requests_per_sec: 1,
            cpu_cores: 1.5,
            buffer: 0.25,
            shards: vec![ShardLoad {
                shard: 3,
                requests_per_sec: 10,
                observed_ms: 1,
            }],
        };
        let Op::Put { value, key, .. } = put_op(7, &load, 0) else {
            panic!()
        };
        assert!(value.len() < 64 << 10, "{} bytes", value.len());
        assert_eq!(parse_key(&key), Some(7));
        assert_eq!(decode_json::<AgentLoad>(&key, &value).unwrap(), load);
    }
}
