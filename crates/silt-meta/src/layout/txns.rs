//! `/silt/txns/{transactional id}`: the durable state of a transactional producer — its producer
//! id and epoch, where its current transaction stands, and the partitions and groups it touched
//! — written by the transaction's coordinator (the agent of the id's group shard, fenced on that
//! shard's assignment like group offsets).
//!
//! `/silt/txn-markers/{topic_id}/{partition:010}/{transactional id}`: a marker the coordinator
//! asks the partition's leader to write (commit or abort); the leader deletes it once the marker
//! is durable. The coordinator completes the transaction when none of its requests is left.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::security::escape;
use super::{decode_json, encode_json};
use crate::kv::{MetaError, MetaKv, Op};

/// Where a transaction stands (Kafka's transaction states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnStatus {
    /// No transaction since the producer id was issued or the last one completed.
    Empty,
    /// A transaction is open: partitions or groups were added.
    Ongoing,
    /// Commit decided; markers being written.
    PrepareCommit,
    /// Abort decided; markers being written.
    PrepareAbort,
    /// The last transaction committed.
    CompleteCommit,
    /// The last transaction aborted.
    CompleteAbort,
}

impl TxnStatus {
    /// Kafka's name of the state (DescribeTransactions, ListTransactions).
    pub fn kafka_name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
        }
    }
}

/// A transactional producer's state. Persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    /// Producer id.
    pub pid: i64,
    /// Current producer epoch.
    pub epoch: i16,
    /// The producer's `transaction.timeout.ms`.
    pub timeout_ms: i32,
    /// Where its transaction stands.
    pub status: TxnStatus,
    /// Partitions in the current (or last) transaction: (topic, partition). Stored grouped by
    /// topic (`{"topic": [0, 1, ...]}`), so a transaction over every partition of a
    /// 10 000-partition topic with a long name stays far below the store's request limit.
    #[serde(default, with = "grouped")]
    pub partitions: Vec<(String, i32)>,
    /// Groups whose offsets the current (or last) transaction commits.
    #[serde(default)]
    pub groups: Vec<String>,
    /// When the current transaction began (Unix ms), 0 if none.
    #[serde(default)]
    pub started_ms: i64,
    /// When the record last changed (Unix ms).
    #[serde(default)]
    pub updated_ms: i64,
    /// Transaction version 2 (KIP-890 part 2): the producer id and epoch the client ended its
    /// last transaction with, before EndTxn moved it on, so a retried EndTxn is recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<(i64, i16)>,
    /// Transaction version 2, when ending exhausted the epoch: the producer id the client
    /// continues with (at epoch 0) once the transaction is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_pid: Option<i64>,
}

/// The stored form of [`TxnRecord::partitions`]: grouped by topic; a list of pairs (the first
/// form) is still read.
mod grouped {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[(String, i32)], s: S) -> Result<S::Ok, S::Error> {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in v {
            by_topic.entry(t.as_str()).or_default().push(*p);
        }
        by_topic.serialize(s)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Grouped(BTreeMap<String, Vec<i32>>),
        Pairs(Vec<(String, i32)>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, i32)>, D::Error> {
        Ok(match Form::deserialize(d)? {
            Form::Grouped(m) => m
                .into_iter()
                .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
                .collect(),
            Form::Pairs(v) => v,
        })
    }
}

/// The key of a transactional id's record.
pub fn key(transactional_id: &str) -> String {
    format!("{}/txns/{}", super::ROOT, escape(transactional_id))
}

/// Prefix of every transactional id's record.
pub fn prefix() -> String {
    format!("{}/txns/", super::ROOT)
}

/// The put that stores `r`.
pub fn put_op(transactional_id: &str, r: &TxnRecord) -> Op {
    Op::put(key(transactional_id), encode_json(r))
}

/// A record as stored.
pub fn decode(k: &[u8], v: &[u8]) -> Result<TxnRecord, MetaError> {
    decode_json(k, v)
}

/// Loads a transactional id's record and its mod revision.
pub async fn load(
    kv: &dyn MetaKv,
    transactional_id: &str,
) -> Result<Option<(TxnRecord, i64)>, MetaError> {
    match kv.get(key(transactional_id).as_bytes()).await? {
        Some(v) => Ok(Some((decode(&v.key, &v.value)?, v.mod_revision))),
        None => Ok(None),
    }
}

/// Prefix of every group's offset-marker requests: `/silt/txn-group-markers/{group}/{pid:020}`,
/// asking the group's coordinator to make a producer's pending transactional offsets the
/// group's (commit) or drop them (abort). The value is `true` for commit.
pub fn group_markers_prefix() -> String {
    format!("{}/txn-group-markers/", super::ROOT)
}

/// The key of a group offset-marker request.
pub fn group_marker_key(group: &str, pid: i64) -> String {
    format!("{}{}/{pid:020}", group_markers_prefix(), escape(group))
}

/// Parses a group offset-marker request key: (group, producer id).
pub fn parse_group_marker_key(k: &[u8]) -> Option<(String, i64)> {
    let s = std::str::from_utf8(k).ok()?;
    let rest = s.strip_prefix(&group_markers_prefix())?;
    let (group, pid) = rest.rsplit_once('/')?;
    Some((super::security::unescape(group)?, pid.parse().ok()?))
}

/// The transactional id of a record's key.
pub fn parse_key(k: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(k).ok()?;
    super::security::unescape(s.strip_prefix(&prefix())?)
}

/// A marker request: which producer's transaction ends, and how. Persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerRequest {
    /// Producer id.
    pub pid: i64,
    /// Producer epoch the marker carries.
    pub epoch: i16,
    /// Commit (true) or abort.
    pub commit: bool,
    /// The coordinator's term (its shard assignment revision, truncated), written in the marker.
    pub coordinator_epoch: i32,
}

/// Prefix of every marker request.
pub fn markers_prefix() -> String {
    format!("{}/txn-markers/", super::ROOT)
}

/// Prefix of one partition's marker requests.
pub fn partition_markers_prefix(topic_id: &Uuid, partition: i32) -> String {
    format!("{}{}/{partition:010}/", markers_prefix(), topic_id.simple())
}

/// The key of a marker request.
pub fn marker_key(topic_id: &Uuid, partition: i32, transactional_id: &str) -> String {
    format!(
        "{}{}",
        partition_markers_prefix(topic_id, partition),
        escape(transactional_id)
    )
}

/// Parses a marker request key: (topic id, partition).
pub fn parse_marker_key(k: &[u8]) -> Option<(Uuid, i32)> {
    let s = std::str::from_utf8(k).ok()?;
    let rest = s.strip_prefix(&markers_prefix())?;
    let mut parts = rest.splitn(3, '/');
    let topic = Uuid::parse_str(parts.next()?).ok()?;
    let partition = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((topic, partition))
}

/// The put of a marker request.
pub fn marker_put(
    topic_id: &Uuid,
    partition: i32,
    transactional_id: &str,
    m: &MarkerRequest,
) -> Op {
    Op::put(
        marker_key(topic_id, partition, transactional_id),
        encode_json(m),
    )
}

/// A marker request as stored.
pub fn decode_marker(k: &[u8], v: &[u8]) -> Result<MarkerRequest, MetaError> {
    decode_json(k, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stored_by_topic_and_the_first_form_still_reads() {
        let name = "t".repeat(249);
        let r = TxnRecord {
            pid: 5,
            epoch: 2,
            timeout_ms: 60_000,
            status: TxnStatus::Ongoing,
            partitions: (0..10_000).map(|p| (name.clone(), p)).collect(),
            groups: vec![],
            started_ms: 1,
            updated_ms: 2,
            previous: None,
            next_pid: None,
        };
        let Op::Put { value, .. } = put_op("x", &r) else {
            panic!("a put")
        };
        assert!(
            value.len() < 64 << 10,
            "10 000 partitions of a 249-character topic: {} bytes",
            value.len()
        );
        assert_eq!(decode(b"k", &value).unwrap(), r);
        let old = br#"{"pid":1,"epoch":0,"timeout_ms":1000,"status":"ongoing","partitions":[["a",1],["b",0]]}"#;
        assert_eq!(
            decode(b"k", old).unwrap().partitions,
            vec![("a".to_string(), 1), ("b".to_string(), 0)]
        );
    }

    #[test]
    fn keys_escape_ids_and_parse_back() {
        let t = Uuid::new_v4();
        let k = marker_key(&t, 7, "orders/app 1");
        assert!(k.ends_with("/0000000007/orders%2Fapp%201"), "{k}");
        assert_eq!(parse_marker_key(k.as_bytes()), Some((t, 7)));
        assert_eq!(parse_marker_key(b"/silt/txn-markers/nope"), None);
        assert_eq!(
            parse_group_marker_key(group_marker_key("g/1 x", 42).as_bytes()),
            Some(("g/1 x".to_string(), 42))
        );
        assert_eq!(parse_key(key("a/b c").as_bytes()).as_deref(), Some("a/b c"));
        assert_eq!(key("a/b"), "/silt/txns/a%2Fb");
        let r = TxnRecord {
            pid: 5,
            epoch: 2,
            timeout_ms: 60_000,
            status: TxnStatus::Ongoing,
            partitions: vec![("t".into(), 0)],
            groups: vec!["g".into()],
            started_ms: 1,
            updated_ms: 2,
            previous: Some((5, 1)),
            next_pid: Some(9),
        };
        let op = put_op("x", &r);
        let Op::Put { value, .. } = op else {
            panic!("a put")
        };
        assert_eq!(decode(b"k", &value).unwrap(), r);
    }
}
