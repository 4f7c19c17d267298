//! `/silt/groups/{group}/offsets/{topic}/{partition:010}`: a consumer group's committed offsets,
//! one key per partition, and `/silt/groups/{group}/protocol-type`: the protocol type of a group
//! that had members (absent for "simple" groups that only commit). A commit of many partitions is
//! one transaction (one metadata write); deleting a group is one prefix delete. Persisted: field
//! names are stable.

use serde::{Deserialize, Serialize};

use super::{decode_json, encode_json};
use crate::kv::{Compare, MetaError, MetaKv, Op, Txn};

/// A committed offset. Persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The next offset the group will consume.
    pub offset: i64,
    /// Leader epoch of the committed record, -1 if unknown.
    #[serde(default = "minus_one")]
    pub leader_epoch: i32,
    /// Client metadata string.
    #[serde(default)]
    pub metadata: Option<String>,
    /// Commit time, ms since the epoch.
    pub commit_ms: i64,
}

fn minus_one() -> i32 {
    -1
}

/// Prefix of every group's keys.
pub fn all_prefix() -> String {
    format!("{}/groups/", super::ROOT)
}

/// Prefix of every key of one group. Group ids may contain any character but `/` would make
/// prefixes ambiguous, so ids are percent-encoded.
pub fn group_prefix(group: &str) -> String {
    format!("{}{}/", all_prefix(), escape(group))
}

fn protocol_type_key(group: &str) -> String {
    format!("{}protocol-type", group_prefix(group))
}

fn key(group: &str, topic: &str, partition: i32) -> String {
    format!("{}offsets/{topic}/{partition:010}", group_prefix(group))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes committed offsets for several partitions in one transaction, recording the group's
/// protocol type with them when `protocol_type` is given. Every write of group state carries
/// the coordinator's `fence` (its registration and its shard's assignment) and returns `false`,
/// writing nothing, when the fence no longer holds.
pub async fn commit(
    kv: &dyn MetaKv,
    fence: &[Compare],
    group: &str,
    offsets: &[(String, i32, Committed)],
    protocol_type: Option<&str>,
) -> Result<bool, MetaError> {
    if offsets.is_empty() {
        return Ok(true);
    }
    let mut ops: Vec<Op> = offsets
        .iter()
        .map(|(t, p, c)| Op::put(key(group, t, *p), encode_json(c)))
        .collect();
    if let Some(pt) = protocol_type {
        ops.insert(0, Op::put(protocol_type_key(group), pt));
    }
    // etcd caps a transaction at 128 operations: a commit of many partitions takes several,
    // in order; a refused fence stops at the first.
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let chunk: Vec<Op> = ops.by_ref().take(OPS_PER_TXN).collect();
        if !fenced_write(kv, fence, chunk).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes per offset-commit transaction.
const OPS_PER_TXN: usize = 100;

async fn fenced_write(kv: &dyn MetaKv, fence: &[Compare], ops: Vec<Op>) -> Result<bool, MetaError> {
    kv.txn(Txn {
        compares: fence.to_vec(),
        success: ops,
        failure: vec![],
    })
    .await
    .map(|r| r.succeeded)
}

/// Deletes some partitions' committed offsets in one transaction.
pub async fn delete(
    kv: &dyn MetaKv,
    fence: &[Compare],
    group: &str,
    partitions: &[(String, i32)],
) -> Result<bool, MetaError> {
    if partitions.is_empty() {
        return Ok(true);
    }
    let ops = partitions
        .iter()
        .map(|(t, p)| Op::Delete {
            key: key(group, t, *p).into_bytes(),
        })
        .collect();
    fenced_write(kv, fence, ops).await
}

/// Deletes every committed offset of a group.
pub async fn delete_group(
    kv: &dyn MetaKv,
    fence: &[Compare],
    group: &str,
) -> Result<bool, MetaError> {
    let ops = vec![Op::DeletePrefix {
        prefix: group_prefix(group).into_bytes(),
    }];
    fenced_write(kv, fence, ops).await
}

/// What is stored for every group.
#[derive(Debug, Default)]
pub struct Stored {
    /// (group, topic, partition, committed).
    pub offsets: Vec<(String, String, i32, Committed)>,
    /// (group, protocol type) of groups that had members.
    pub protocol_types: Vec<(String, String)>,
}

/// Everything stored for every group.
pub async fn load_all(kv: &dyn MetaKv) -> Result<Stored, MetaError> {
    let prefix = all_prefix();
    let mut out = Stored::default();
    for item in kv.range_all(prefix.as_bytes()).await? {
        let k = String::from_utf8_lossy(&item.key).into_owned();
        let rest = &k[prefix.len()..];
        if let Some(group) = rest.strip_suffix("/protocol-type") {
            out.protocol_types.push((
                unescape(group),
                String::from_utf8_lossy(&item.value).into_owned(),
            ));
            continue;
        }
        let mut parts = rest.splitn(3, '/');
        let (Some(group), Some("offsets"), Some(tp)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some((topic, partition)) = tp.rsplit_once('/') else {
            continue;
        };
        let Ok(partition) = partition.parse::<i32>() else {
            continue;
        };
        let c: Committed = decode_json(&item.key, &item.value)?;
        out.offsets
            .push((unescape(group), topic.to_string(), partition, c));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedKv;
    use silt_common::ManualClock;

    #[tokio::test]
    async fn commit_load_delete_with_odd_group_names() {
        let kv = EmbeddedKv::in_memory(ManualClock::new(0));
        let c = |o| Committed {
            offset: o,
            leader_epoch: -1,
            metadata: Some("m".into()),
            commit_ms: 1,
        };
        let two = [("t".into(), 0, c(5)), ("t".into(), 1, c(7))];
        assert!(commit(&kv, &[], "g/1 %x", &two, Some("consumer"))
            .await
            .unwrap());
        commit(&kv, &[], "g", &[("t".into(), 0, c(9))], None)
            .await
            .unwrap();
        let fence = [Compare::value("/silt/agents/1", "x")];
        assert!(
            !commit(&kv, &fence, "g", &[("t".into(), 0, c(10))], None)
                .await
                .unwrap(),
            "a failed fence writes nothing"
        );
        let stored = load_all(&kv).await.unwrap();
        assert_eq!(
            stored.protocol_types,
            vec![("g/1 %x".to_string(), "consumer".to_string())],
            "only groups that had members record a protocol type"
        );
        let mut all = stored.offsets;
        all.sort_by_key(|a| (a.0.clone(), a.2));
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].0, "g/1 %x");
        assert_eq!(all[1].3.offset, 5);
        delete(&kv, &[], "g/1 %x", &[("t".into(), 1)])
            .await
            .unwrap();
        delete_group(&kv, &[], "g").await.unwrap();
        let all = load_all(&kv).await.unwrap().offsets;
        // Deleting a group removes its protocol type too.
        delete_group(&kv, &[], "g/1 %x").await.unwrap();
        assert!(load_all(&kv).await.unwrap().protocol_types.is_empty());
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].0.as_str(), all[0].2), ("g/1 %x", 0));
    }
}
