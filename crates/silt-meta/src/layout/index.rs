//! `/silt/index/{topic_id}/{partition:010}/{base_offset:020}`: the offset index. One entry per
//! partition per flush says which object holds an offset range and where in it.
//!
//! Entries are written by the flush commit — one transaction for every partition in the flush —
//! and are the only thing that makes data visible: the high watermark of a partition is the
//! last entry's `last_offset + 1`. Entries also carry the idempotent-producer state of the
//! batches they cover so a new leader can rebuild it without reading objects.
//! The count of entries per partition grows with flushes until the compaction issue folds them.
//!
//! `/silt/log-start/{topic_id}/{partition:010}` holds a partition's log start offset once
//! retention or DeleteRecords moved it: entries below it are deleted in the same transaction, and
//! with no entry left the high watermark is the log start.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{decode_json, encode_json};
use crate::kv::{Compare, MetaError, MetaKv, Op, RangeRequest};

/// One idempotent batch, as the producer-state rebuild needs it. Persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerBatch {
    /// Producer id.
    pub pid: i64,
    /// Producer epoch.
    pub epoch: i16,
    /// First sequence number of the batch.
    pub first_seq: i32,
    /// Last sequence number of the batch.
    pub last_seq: i32,
    /// Offset given to the batch's first record.
    pub base_offset: i64,
}

/// A transaction's start or end in a range: its first batch in the partition, or its marker
/// (commit or abort). Read_committed reads rebuild their state from these without reading
/// objects. Persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMark {
    /// Producer id.
    pub pid: i64,
    /// Offset of the transaction's first batch in this partition.
    pub first_offset: i64,
    /// For an end: the marker's offset and whether the transaction committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<(i64, bool)>,
}

/// Where a contiguous range of one partition's offsets lives. Persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Object path in the object store.
    pub object: String,
    /// Byte offset of the range's first batch in the object.
    pub pos: u64,
    /// Length in bytes of the range's batches.
    pub len: u64,
    /// First offset.
    pub base_offset: i64,
    /// Last offset (inclusive).
    pub last_offset: i64,
    /// Largest record timestamp in the range.
    pub max_timestamp: i64,
    /// Idempotent batches in the range, in offset order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub producers: Vec<ProducerBatch>,
    /// Sparse positions inside a compacted range: (first offset of a batch, its byte position
    /// relative to `pos`), ascending, so a read starts near its offset instead of at `pos`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marks: Vec<(i64, u64)>,
    /// Transactions that began or ended in the range, in offset order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub txns: Vec<TxnMark>,
    /// A range compaction built from segments already written, by reference instead of by
    /// copy: its bytes are these pieces' bytes, in order. Then `object` and `pos` name the first
    /// piece, `len` is the pieces' total and `marks` is empty (each piece has its own). Empty
    /// for a range in one object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<Piece>,
}

/// One object's part of a range made of several ([`IndexEntry::pieces`]). Persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// Object path in the object store.
    pub object: String,
    /// Byte offset of the piece's first batch in the object.
    pub pos: u64,
    /// Length in bytes of the piece's batches.
    pub len: u64,
    /// First offset.
    pub base_offset: i64,
    /// Last offset (inclusive).
    pub last_offset: i64,
    /// Sparse batch positions, relative to `pos` (as [`IndexEntry::marks`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marks: Vec<(i64, u64)>,
}

impl IndexEntry {
    /// The range's pieces: its own pieces, or itself as the one piece.
    pub fn as_pieces(&self) -> Vec<Piece> {
        if !self.pieces.is_empty() {
            return self.pieces.clone();
        }
        vec![Piece {
            object: self.object.clone(),
            pos: self.pos,
            len: self.len,
            base_offset: self.base_offset,
            last_offset: self.last_offset,
            marks: self.marks.clone(),
        }]
    }

    /// How many objects (pieces) the range is read from.
    pub fn piece_count(&self) -> usize {
        self.pieces.len().max(1)
    }

    /// The range as ranges of one object each, in offset order: itself, or one per piece (with
    /// the range's largest timestamp, and no producer or transaction state: these are for
    /// reading).
    pub fn split(&self) -> Vec<IndexEntry> {
        if self.pieces.is_empty() {
            return vec![self.clone()];
        }
        self.pieces
            .iter()
            .map(|p| IndexEntry {
                object: p.object.clone(),
                pos: p.pos,
                len: p.len,
                base_offset: p.base_offset,
                last_offset: p.last_offset,
                max_timestamp: self.max_timestamp,
                producers: Vec::new(),
                marks: p.marks.clone(),
                txns: Vec::new(),
                pieces: Vec::new(),
            })
            .collect()
    }

    /// Every object the range references.
    pub fn objects(&self) -> Vec<&str> {
        if self.pieces.is_empty() {
            vec![self.object.as_str()]
        } else {
            self.pieces.iter().map(|p| p.object.as_str()).collect()
        }
    }

    /// The byte position (relative to `pos`) of a batch boundary at or before `offset`.
    pub fn seek(&self, offset: i64) -> u64 {
        let i = self.marks.partition_point(|(o, _)| *o <= offset);
        if i == 0 {
            0
        } else {
            self.marks[i - 1].1
        }
    }
}

/// Prefix of every index key of a topic.
pub fn topic_prefix(topic_id: &Uuid) -> String {
    format!("{}/index/{}/", super::ROOT, topic_id.simple())
}

/// Prefix of every index key of a partition.
pub fn partition_prefix(topic_id: &Uuid, partition: i32) -> String {
    format!("{}{partition:010}/", topic_prefix(topic_id))
}

/// The key of one entry.
pub fn key(topic_id: &Uuid, partition: i32, base_offset: i64) -> String {
    format!("{}{base_offset:020}", partition_prefix(topic_id, partition))
}

/// The put that records `entry`.
pub fn put_op(topic_id: &Uuid, partition: i32, entry: &IndexEntry) -> Op {
    Op::put(
        key(topic_id, partition, entry.base_offset),
        encode_json(entry),
    )
}

/// The log-start key of a partition.
pub fn log_start_key(topic_id: &Uuid, partition: i32) -> String {
    format!(
        "{}/log-start/{}/{partition:010}",
        super::ROOT,
        topic_id.simple()
    )
}

/// Prefix of a topic's log-start keys.
pub fn log_start_topic_prefix(topic_id: &Uuid) -> String {
    format!("{}/log-start/{}/", super::ROOT, topic_id.simple())
}

/// A partition's stored log start, and the store revision its key was last written at: every
/// lifecycle step (retention, compaction) rewrites the key and compares that revision, so a
/// step's transaction can apply only on top of the step before it — a delayed duplicate of an
/// earlier step (a transaction the store applied after its caller gave up on it) is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStart {
    /// First offset kept (0 if never moved).
    pub offset: i64,
    /// Revision the key was last written at (0: never written).
    pub revision: i64,
}

/// A partition's stored log start.
pub async fn load_log_start(
    kv: &dyn MetaKv,
    topic_id: &Uuid,
    partition: i32,
) -> Result<LogStart, MetaError> {
    match kv
        .get(log_start_key(topic_id, partition).as_bytes())
        .await?
    {
        Some(v) => Ok(LogStart {
            offset: decode_json(&v.key, &v.value)?,
            revision: v.mod_revision,
        }),
        None => Ok(LogStart::default()),
    }
}

/// The compare every lifecycle step carries: the log-start key was last written at `revision`.
pub fn log_start_unchanged(topic_id: &Uuid, partition: i32, revision: i64) -> Compare {
    Compare::mod_revision(log_start_key(topic_id, partition), revision)
}

/// The put that records a log start.
pub fn log_start_op(topic_id: &Uuid, partition: i32, offset: i64) -> Op {
    Op::put(log_start_key(topic_id, partition), encode_json(&offset))
}

/// The delete of one entry.
pub fn delete_op(topic_id: &Uuid, partition: i32, base_offset: i64) -> Op {
    Op::Delete {
        key: key(topic_id, partition, base_offset).into_bytes(),
    }
}

/// Every object any index entry references (a full scan of the index), and how many index
/// keys there are.
pub async fn referenced_objects(
    kv: &dyn MetaKv,
) -> Result<(std::collections::HashSet<String>, usize), MetaError> {
    let mut out = std::collections::HashSet::new();
    let items = kv
        .range_all(format!("{}/index/", super::ROOT).as_bytes())
        .await?;
    let keys = items.len();
    for item in items {
        let e: IndexEntry = decode_json(&item.key, &item.value)?;
        out.extend(e.objects().into_iter().map(str::to_string));
    }
    Ok((out, keys))
}

/// Every entry of a partition, in offset order.
pub async fn load_partition(
    kv: &dyn MetaKv,
    topic_id: &Uuid,
    partition: i32,
) -> Result<Vec<IndexEntry>, MetaError> {
    kv.range_all(partition_prefix(topic_id, partition).as_bytes())
        .await?
        .into_iter()
        .map(|kv| decode_json(&kv.key, &kv.value))
        .collect()
}

/// Every entry of every partition of a topic, by partition, in offset order (paged): loading
/// many partitions of one topic at once costs a few reads, not two per partition.
pub async fn load_topic(
    kv: &dyn MetaKv,
    topic_id: &Uuid,
) -> Result<std::collections::BTreeMap<i32, Vec<IndexEntry>>, MetaError> {
    let prefix = topic_prefix(topic_id);
    let mut out: std::collections::BTreeMap<i32, Vec<IndexEntry>> = Default::default();
    for item in kv.range_all(prefix.as_bytes()).await? {
        let Some(partition) = std::str::from_utf8(&item.key[prefix.len()..])
            .ok()
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        out.entry(partition)
            .or_default()
            .push(decode_json(&item.key, &item.value)?);
    }
    Ok(out)
}

/// Every stored log start of a topic's partitions (paged).
pub async fn load_topic_log_starts(
    kv: &dyn MetaKv,
    topic_id: &Uuid,
) -> Result<std::collections::HashMap<i32, LogStart>, MetaError> {
    let prefix = log_start_topic_prefix(topic_id);
    let mut out = std::collections::HashMap::new();
    for item in kv.range_all(prefix.as_bytes()).await? {
        if let Some(p) = std::str::from_utf8(&item.key[prefix.len()..])
            .ok()
            .and_then(|p| p.parse::<i32>().ok())
        {
            let offset = decode_json(&item.key, &item.value)?;
            out.insert(
                p,
                LogStart {
                    offset,
                    revision: item.mod_revision,
                },
            );
        }
    }
    Ok(out)
}

/// The last entry of a partition (its high watermark is `last_offset + 1`), if any.
pub async fn last_entry(
    kv: &dyn MetaKv,
    topic_id: &Uuid,
    partition: i32,
) -> Result<Option<IndexEntry>, MetaError> {
    let got = kv
        .range(RangeRequest {
            prefix: partition_prefix(topic_id, partition).into_bytes(),
            limit: 1,
            descending: true,
            ..Default::default()
        })
        .await?;
    got.first()
        .map(|kv| decode_json(&kv.key, &kv.value))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_offset() {
        let id = Uuid::nil();
        assert!(key(&id, 1, 9) < key(&id, 1, 10));
        assert!(key(&id, 1, i64::MAX) < key(&id, 2, 0));
        assert!(key(&id, 3, 5).starts_with(&partition_prefix(&id, 3)));
    }
}
