//! `/silt/groups/{group}/offsets/{topic}/{partition:010}`: a consumer group's committed offsets,
//! one key per partition, and `/silt/groups/{group}/protocol-type`: the protocol type of a group
//! that had members (absent for "simple" groups that only commit), and
//! `/silt/groups/{group}/txn-offsets/{pid:020}`: offsets a transactional producer committed in
//! its open transaction (TxnOffsetCommit), made the group's offsets when it commits and dropped
//! when it aborts, and `/silt/groups/{group}/membership`: a KIP-848 consumer group's members,
//! epochs and assignments (an opaque document the coordinator writes before it answers a
//! heartbeat that changed them, so a new coordinator carries on where the old one stopped;
//! deleted when the group has no member). A commit of many partitions is
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

fn membership_key(group: &str) -> String {
    format!("{}membership", group_prefix(group))
}

/// Writes (or, with `None`, deletes) a consumer group's membership document, fenced; false if
/// the fence failed.
pub async fn put_membership(
    kv: &dyn MetaKv,
    fence: &[Compare],
    group: &str,
    doc: Option<&[u8]>,
) -> Result<bool, MetaError> {
    let key = membership_key(group);
    let op = match doc {
        Some(d) => Op::put(key, d.to_vec()),
        None => Op::Delete {
            key: key.into_bytes(),
        },
    };
    fenced_write(kv, fence, vec![op]).await
}

fn protocol_type_key(group: &str) -> String {
    format!("{}protocol-type", group_prefix(group))
}

/// Offsets by (topic, partition), as one commit carries them.
pub type PartitionOffsets = Vec<(String, i32, Committed)>;

/// The key of a producer's pending transactional offsets for `group`.
pub fn txn_offsets_key(group: &str, pid: i64) -> String {
    format!("{}txn-offsets/{pid:020}", group_prefix(group))
}

/// The put of a producer's pending transactional offsets.
pub fn txn_offsets_put(group: &str, pid: i64, offsets: &[(String, i32, Committed)]) -> Op {
    Op::put(txn_offsets_key(group, pid), encode_json(&offsets))
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

/// Told each transaction's offsets once they are stored.
pub type OnDurable<'a> = dyn FnMut(&[(String, i32, Committed)]) + Send + 'a;

/// Why a commit stopped before writing every offset.
#[derive(Debug)]
pub enum CommitStop {
    /// The fence no longer holds: nothing more was written.
    Fenced,
    /// The store failed. The offsets of `unsure` (one transaction's worth) may or may not be
    /// stored when the error's class is [`crate::ErrorClass::OutcomeUnknown`]; later ones were
    /// not written.
    Failed {
        /// The store's error.
        error: MetaError,
        /// (topic, partition) of the transaction whose outcome is unknown.
        unsure: Vec<(String, i32)>,
    },
}

/// Writes committed offsets for several partitions, recording the group's protocol type with
/// them when `protocol_type` is given. Every write of group state carries the coordinator's
/// `fence` (its registration and its shard's assignment). A commit that fits one transaction
/// (etcd: 128 operations, 1.5 MiB: a commit of up to 127 partitions) is atomic; a larger one
/// is written in transactions, in order, and `durable` is called with each transaction's
/// offsets as soon as it is stored, so a cache fed by it holds exactly what is durable.
/// Returns how many offsets were written, or why it stopped.
pub async fn commit(
    kv: &dyn MetaKv,
    fence: &[Compare],
    group: &str,
    offsets: &[(String, i32, Committed)],
    protocol_type: Option<&str>,
    durable: &mut OnDurable<'_>,
) -> Result<(), CommitStop> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut ops: Vec<Op> = offsets
        .iter()
        .map(|(t, p, c)| Op::put(key(group, t, *p), encode_json(c)))
        .collect();
    if let Some(pt) = protocol_type {
        ops.insert(0, Op::put(protocol_type_key(group), pt));
    }
    let lead = usize::from(protocol_type.is_some());
    let txns = crate::kv::chunk_ops(fence, ops).map_err(|error| CommitStop::Failed {
        error,
        unsure: Vec::new(),
    })?;
    let mut done = 0usize;
    for (i, txn) in txns.into_iter().enumerate() {
        let n = txn.success.len() - if i == 0 { lead } else { 0 };
        let these = &offsets[done..done + n];
        match kv.txn(txn).await {
            Ok(r) if r.succeeded => {
                durable(these);
                done += n;
            }
            Ok(_) => return Err(CommitStop::Fenced),
            Err(error) => {
                return Err(CommitStop::Failed {
                    error,
                    unsure: these.iter().map(|(t, p, _)| (t.clone(), *p)).collect(),
                })
            }
        }
    }
    Ok(())
}

/// The stored committed offsets of some partitions of a group (to learn the outcome of a
/// commit that was not answered).
pub async fn read_back(
    kv: &dyn MetaKv,
    group: &str,
    partitions: &[(String, i32)],
) -> Result<Vec<(String, i32, Option<Committed>)>, MetaError> {
    let mut out = Vec::with_capacity(partitions.len());
    for (t, p) in partitions {
        let got = match kv.get(key(group, t, *p).as_bytes()).await? {
            Some(v) => Some(decode_json(&v.key, &v.value)?),
            None => None,
        };
        out.push((t.clone(), *p, got));
    }
    Ok(out)
}

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
    for txn in crate::kv::chunk_ops(fence, ops)? {
        if !fenced_write(kv, fence, txn.success).await? {
            return Ok(false);
        }
    }
    Ok(true)
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
    /// (group, producer id, offsets) committed in transactions still open.
    pub pending: Vec<(String, i64, PartitionOffsets)>,
    /// (group, membership document) of consumer groups with members.
    pub memberships: Vec<(String, Vec<u8>)>,
}

/// Everything stored for every group.
pub async fn load_all(kv: &dyn MetaKv) -> Result<Stored, MetaError> {
    let prefix = all_prefix();
    let mut out = Stored::default();
    for item in kv.range_all(prefix.as_bytes()).await? {
        let k = String::from_utf8_lossy(&item.key).into_owned();
        let rest = &k[prefix.len()..];
        if let Some(group) = rest.strip_suffix("/membership") {
            out.memberships.push((unescape(group), item.value.to_vec()));
            continue;
        }
        if let Some(group) = rest.strip_suffix("/protocol-type") {
            out.protocol_types.push((
                unescape(group),
                String::from_utf8_lossy(&item.value).into_owned(),
            ));
            continue;
        }
        let mut parts = rest.splitn(3, '/');
        let (Some(group), Some(kind), Some(tp)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if kind == "txn-offsets" {
            if let Ok(pid) = tp.parse::<i64>() {
                let offsets: Vec<(String, i32, Committed)> = decode_json(&item.key, &item.value)?;
                out.pending.push((unescape(group), pid, offsets));
            }
            continue;
        }
        if kind != "offsets" {
            continue;
        }
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
        let mut seen = 0;
        let mut count = |o: &[(String, i32, Committed)]| seen += o.len();
        commit(&kv, &[], "g/1 %x", &two, Some("consumer"), &mut count)
            .await
            .unwrap();
        commit(&kv, &[], "g", &[("t".into(), 0, c(9))], None, &mut count)
            .await
            .unwrap();
        let fence = [Compare::value("/silt/agents/1", "x")];
        assert!(
            matches!(
                commit(
                    &kv,
                    &fence,
                    "g",
                    &[("t".into(), 0, c(10))],
                    None,
                    &mut count
                )
                .await,
                Err(CommitStop::Fenced)
            ),
            "a failed fence writes nothing"
        );
        assert_eq!(seen, 3, "durable offsets are reported");
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

    /// Rule (issue 11.4): a commit of 300 partitions is written in transactions within the
    /// store's limits and every durable one is reported as it lands; a commit that fits one
    /// transaction is reported once, whole.
    #[tokio::test]
    async fn large_commits_report_each_durable_transaction() {
        let kv = EmbeddedKv::in_memory(ManualClock::new(0));
        let c = |o| Committed {
            offset: o,
            leader_epoch: -1,
            metadata: None,
            commit_ms: 1,
        };
        let many: Vec<(String, i32, Committed)> = (0..300)
            .map(|p| ("t".to_string(), p, c(p as i64)))
            .collect();
        let mut reports = Vec::new();
        let mut durable = |o: &[(String, i32, Committed)]| reports.push(o.len());
        commit(&kv, &[], "big", &many, Some("consumer"), &mut durable)
            .await
            .unwrap();
        assert_eq!(reports.iter().sum::<usize>(), 300);
        assert!(reports.len() >= 3, "{reports:?}");
        assert!(reports.iter().all(|n| *n <= crate::LIMITS.max_txn_ops));
        let mut reports = Vec::new();
        let mut durable = |o: &[(String, i32, Committed)]| reports.push(o.len());
        commit(&kv, &[], "small", &many[..100], None, &mut durable)
            .await
            .unwrap();
        assert_eq!(reports, vec![100], "one atomic transaction");
        let back = read_back(&kv, "big", &[("t".into(), 7), ("t".into(), 999)])
            .await
            .unwrap();
        assert_eq!(back[0].2.as_ref().map(|c| c.offset), Some(7));
        assert!(back[1].2.is_none());
    }
}
