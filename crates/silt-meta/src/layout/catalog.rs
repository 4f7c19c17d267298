//! `/silt/topics/{name}`: the topic catalog.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{archive, assignment, decode_json, encode_json, index};
use crate::kv::{Compare, MetaError, MetaKv, Op, Txn};

/// A topic as stored. Persisted: field names are stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// The topic's name.
    pub name: String,
    /// Its id (Kafka topic id); a re-created topic gets a new one.
    pub id: Uuid,
    /// Number of partitions.
    pub partitions: i32,
    /// Topic configs set explicitly (Kafka names, e.g. `retention.ms`).
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
}

/// Prefix of every topic record.
pub fn prefix() -> String {
    format!("{}/topics/", super::ROOT)
}

/// The topic name of a catalog key.
pub fn parse_key(key: &[u8]) -> Option<String> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(&prefix())
        .map(String::from)
}

/// Decodes a topic record.
pub fn decode(key: &[u8], value: &[u8]) -> Result<TopicRecord, MetaError> {
    decode_json(key, value)
}

/// The key of topic `name`.
pub fn key(name: &str) -> String {
    format!("{}{name}", prefix())
}

/// Every topic.
pub async fn list(kv: &dyn MetaKv) -> Result<Vec<TopicRecord>, MetaError> {
    kv.range_all(prefix().as_bytes())
        .await?
        .into_iter()
        .map(|kv| decode_json(&kv.key, &kv.value))
        .collect()
}

/// Topic `name`'s record and the revision it was last changed at.
pub async fn get(kv: &dyn MetaKv, name: &str) -> Result<Option<(TopicRecord, i64)>, MetaError> {
    match kv.get(key(name).as_bytes()).await? {
        Some(cur) => Ok(Some((decode_json(&cur.key, &cur.value)?, cur.mod_revision))),
        None => Ok(None),
    }
}

/// Replaces a topic's record if it is still at `revision` (configs changed, partitions added);
/// returns whether it was replaced.
pub async fn replace(
    kv: &dyn MetaKv,
    topic: &TopicRecord,
    revision: i64,
) -> Result<bool, MetaError> {
    let k = key(&topic.name);
    let r = kv
        .txn(Txn {
            compares: vec![Compare::mod_revision(k.clone(), revision)],
            success: vec![Op::put(k, encode_json(topic))],
            failure: vec![],
        })
        .await?;
    Ok(r.succeeded)
}

/// Creates `topic` unless one of that name exists; returns whether it was created.
pub async fn create(kv: &dyn MetaKv, topic: &TopicRecord) -> Result<bool, MetaError> {
    let k = key(&topic.name);
    let r = kv
        .txn(Txn {
            compares: vec![Compare::absent(k.clone())],
            success: vec![Op::put(k, encode_json(topic))],
            failure: vec![],
        })
        .await?;
    Ok(r.succeeded)
}

/// Deletes the topic with every key it had (offset index, log starts, archive progress,
/// partition assignments) in one transaction; returns the record deleted, if any.
pub async fn delete(kv: &dyn MetaKv, name: &str) -> Result<Option<TopicRecord>, MetaError> {
    let k = key(name);
    let Some(cur) = kv.get(k.as_bytes()).await? else {
        return Ok(None);
    };
    let topic: TopicRecord = decode_json(&cur.key, &cur.value)?;
    let r = kv
        .txn(Txn {
            compares: vec![Compare::mod_revision(k.clone(), cur.mod_revision)],
            success: vec![
                Op::Delete {
                    key: k.into_bytes(),
                },
                Op::DeletePrefix {
                    prefix: index::topic_prefix(&topic.id).into_bytes(),
                },
                Op::DeletePrefix {
                    prefix: archive::topic_prefix(&topic.id).into_bytes(),
                },
                Op::DeletePrefix {
                    prefix: index::log_start_topic_prefix(&topic.id).into_bytes(),
                },
                // The partitions' assignments go in the same transaction: every commit to a
                // partition compares its assignment, so a flush, compaction or archive step
                // racing the deletion lands before it or is refused — never leaves keys behind.
                Op::DeletePrefix {
                    prefix: assignment::topic_prefix(&topic.id).into_bytes(),
                },
            ],
            failure: vec![],
        })
        .await?;
    Ok(r.succeeded.then_some(topic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedKv;
    use silt_common::ManualClock;

    #[tokio::test]
    async fn create_list_delete() {
        let kv = EmbeddedKv::in_memory(ManualClock::new(0));
        let t = TopicRecord {
            name: "orders".into(),
            id: Uuid::new_v4(),
            partitions: 3,
            configs: BTreeMap::from([("retention.ms".into(), "1000".into())]),
            created_ms: 5,
        };
        assert!(create(&kv, &t).await.unwrap());
        assert!(!create(&kv, &t).await.unwrap(), "second create must fail");
        assert_eq!(list(&kv).await.unwrap(), vec![t.clone()]);
        let (got, rev) = get(&kv, "orders").await.unwrap().unwrap();
        assert_eq!(got, t);
        let mut grown = t.clone();
        grown.partitions = 5;
        assert!(replace(&kv, &grown, rev).await.unwrap());
        assert!(
            !replace(&kv, &t, rev).await.unwrap(),
            "a replace from a stale revision is refused"
        );
        assert_eq!(get(&kv, "orders").await.unwrap().unwrap().0, grown);
        assert_eq!(delete(&kv, "orders").await.unwrap(), Some(grown));
        assert!(list(&kv).await.unwrap().is_empty());
        assert_eq!(delete(&kv, "orders").await.unwrap(), None);
    }
}
