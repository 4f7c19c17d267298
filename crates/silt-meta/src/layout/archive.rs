//! `/silt/archive/{topic_id}/{partition:010}`: how far a partition is archived as Parquet.
//!
//! `next_offset` is the first offset not yet in a visible archive file. `pending` names a file
//! whose commit succeeded but which may not be visible yet (written under its staging name;
//! the archiver copies it to its visible name, then clears `pending`). Written only by the
//! partition's leader, fenced like flush commits, so each offset lands in exactly one file.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{decode_json, encode_json};
use crate::kv::{MetaError, MetaKv, Op};

/// A committed file not yet known to be visible. Persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFile {
    /// Where the bytes are.
    pub staging: String,
    /// Where they must appear.
    pub visible: String,
}

/// Archive progress of a partition. Persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// First offset not yet archived.
    pub next_offset: i64,
    /// A committed file still to be made visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingFile>,
    /// Files made visible so far.
    #[serde(default)]
    pub files: u64,
}

/// Decodes a progress value.
pub fn decode(value: &[u8]) -> Result<Progress, MetaError> {
    decode_json(b"/silt/archive/", value)
}

/// Prefix of every progress key of a topic.
pub fn topic_prefix(topic_id: &Uuid) -> String {
    format!("{}/archive/{}/", super::ROOT, topic_id.simple())
}

/// The progress key of a partition.
pub fn key(topic_id: &Uuid, partition: i32) -> String {
    format!("{}{partition:010}", topic_prefix(topic_id))
}

/// A partition's progress (default: nothing archived).
pub async fn load(kv: &dyn MetaKv, topic_id: &Uuid, partition: i32) -> Result<Progress, MetaError> {
    match kv.get(key(topic_id, partition).as_bytes()).await? {
        Some(v) => decode_json(&v.key, &v.value),
        None => Ok(Progress::default()),
    }
}

/// The put that records `progress`.
pub fn put_op(topic_id: &Uuid, partition: i32, progress: &Progress) -> Op {
    Op::put(key(topic_id, partition), encode_json(progress))
}

/// How far DeleteRecords moved the start of a partition that serves its archive
/// (`silt.archive.serve`): offsets below it are out of range even where archive files still
/// hold them. Persisted as `{"floor": offset}` next to the progress keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    /// The first offset still served.
    pub floor: i64,
}

/// The floor key of a partition (under the topic's prefix, so deleting the topic deletes it).
pub fn floor_key(topic_id: &Uuid, partition: i32) -> String {
    format!("{}floor-{partition:010}", topic_prefix(topic_id))
}

/// A partition's floor (0 when DeleteRecords never moved it).
pub async fn load_floor(
    kv: &dyn MetaKv,
    topic_id: &Uuid,
    partition: i32,
) -> Result<i64, MetaError> {
    match kv.get(floor_key(topic_id, partition).as_bytes()).await? {
        Some(v) => Ok(decode_json::<Floor>(&v.key, &v.value)?.floor),
        None => Ok(0),
    }
}

/// The put that records `floor`.
pub fn floor_op(topic_id: &Uuid, partition: i32, floor: i64) -> Op {
    Op::put(
        floor_key(topic_id, partition),
        encode_json(&Floor { floor }),
    )
}
