//! The typed key layout of Silt's metadata, one module per kind of key. Every key Silt writes
//! is built here and nowhere else; values are JSON documents whose field names are persisted
//! and must stay stable (add fields with defaults, never rename).
//!
//! ```text
//! /silt/cluster/id                                   cluster id (string)
//! /silt/agents/{node_id}                             Registration of a live agent (leased)
//! /silt/controller                                   node:session of the controller (leased)
//! /silt/assignment/{topic_id}/{partition:010}        Assignment: a partition's leader and epoch
//! /silt/group-shards/{shard:04}                      Assignment: a group shard's coordinator
//! /silt/topics/{name}                                TopicRecord
//! /silt/index/{topic_id}/{partition:010}/{base:020}  IndexEntry: where an offset range lives
//! /silt/archive/{topic_id}/{partition:010}          Progress: Parquet archiving of a partition
//! /silt/log-start/{topic_id}/{partition:010}         log start offset moved by retention / DeleteRecords
//! /silt/load/{node_id}                             AgentLoad: an agent's traffic and busiest partitions (leased)
//! /silt/sessions/{session}                           last flush generation a live session finished (leased)
//! /silt/producer-ids/next                            next unallocated producer id (i64)
//! /silt/groups/{group}/offsets/{topic}/{p:010}       Committed: a group's committed offset
//! /silt/groups/{group}/protocol-type                 protocol type of a group that had members
//! /silt/users/{user}/{mechanism}                     ScramRecord: a user's SCRAM credential
//! /silt/acls/{type}/{name}/{pattern}/{principal}/{host}/{op}/{permission}   AclRecord
//! /silt/quotas/{entity}                              client quotas of user=…,client-id=…
//! /silt/broker-configs/<default>                     cluster-wide broker configs changed at run time
//! /silt/txns/{transactional id}                      TxnRecord: a transactional producer's state
//! /silt/txn-markers/{topic_id}/{p:010}/{txn id}      MarkerRequest: a marker a leader is to write
//! ```

pub mod agents;
pub mod archive;
pub mod assignment;
pub mod broker_configs;
pub mod catalog;
pub mod cluster;
pub mod group_offsets;
pub mod index;
pub mod load;
pub mod producer_ids;
pub mod quotas;
pub mod security;
pub mod txns;

use crate::kv::MetaError;

/// The root of every key Silt writes.
pub const ROOT: &str = "/silt";

pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    key: &[u8],
    value: &[u8],
) -> Result<T, MetaError> {
    serde_json::from_slice(value).map_err(|e| MetaError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn encode_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("metadata values always serialize")
}
