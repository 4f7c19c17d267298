//! Leadership: `/silt/controller` (the one agent that assigns work, lease-bound),
//! `/silt/assignment/{topic_id}/{p:010}` (each partition's leader and epoch) and
//! `/silt/group-shards/{shard:04}` (each group shard's coordinator and epoch), both written only
//! by the controller, inside transactions that compare its controller key.
//!
//! A leader fences its commits on the assignment key's mod revision as it was when it took the
//! partition: any move rewrites the key, so a deposed leader's late commit always fails.
//! [`balance`] is the pure assignment rule: balanced within one item per agent, and sticky
//! (an item moves only when its leader died or holds more than its share).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{decode_json, encode_json};
use crate::kv::{Compare, LeaseId, MetaError, MetaKv, Op, Txn};

/// Number of group-coordinator shards; a group's shard is [`group_shard`].
pub const GROUP_SHARDS: i32 = 50;

/// Who leads an item (partition or group shard), and since which epoch. Persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The leading agent's node id.
    pub leader: i32,
    /// Bumped on every move; reported to clients as the leader epoch.
    pub epoch: i32,
}

/// Decodes an assignment value.
pub fn decode(key: &[u8], value: &[u8]) -> Result<Assignment, MetaError> {
    decode_json(key, value)
}

/// The controller key.
pub fn controller_key() -> String {
    format!("{}/controller", super::ROOT)
}

/// The controller key's value for an agent session.
pub fn controller_value(node_id: i32, session: &str) -> String {
    format!("{node_id}:{session}")
}

/// The node id in a controller value.
pub fn parse_controller(value: &[u8]) -> Option<i32> {
    std::str::from_utf8(value)
        .ok()?
        .split(':')
        .next()?
        .parse()
        .ok()
}

/// Becomes controller if nobody is; returns whether this session now is. A key that already
/// names this session (left by an earlier term of this agent that stepped down while the store
/// was away, bound to the same live lease) counts as held: nobody else can take it until the
/// lease ends, so refusing it would leave the pool without a controller.
pub async fn try_become_controller(
    kv: &dyn MetaKv,
    node_id: i32,
    session: &str,
    lease: LeaseId,
) -> Result<bool, MetaError> {
    let k = controller_key();
    let mine = controller_value(node_id, session);
    let r = kv
        .txn(Txn {
            compares: vec![Compare::absent(k.clone())],
            success: vec![Op::Put {
                key: k.clone().into_bytes(),
                value: mine.clone().into_bytes(),
                lease,
            }],
            failure: vec![],
        })
        .await?;
    if r.succeeded {
        return Ok(true);
    }
    Ok(kv
        .get(k.as_bytes())
        .await?
        .is_some_and(|kv| kv.value == mine.as_bytes()))
}

/// The compare every controller write carries.
pub fn still_controller(node_id: i32, session: &str) -> Compare {
    Compare::value(controller_key(), controller_value(node_id, session))
}

/// Prefix of every partition assignment.
pub fn partitions_prefix() -> String {
    format!("{}/assignment/", super::ROOT)
}

/// Prefix of every partition assignment of a topic.
pub fn topic_prefix(topic_id: &Uuid) -> String {
    format!("{}{}/", partitions_prefix(), topic_id.simple())
}

/// The assignment key of a partition.
pub fn partition_key(topic_id: &Uuid, partition: i32) -> String {
    format!(
        "{}{}/{partition:010}",
        partitions_prefix(),
        topic_id.simple()
    )
}

/// The partition of an assignment key.
pub fn parse_partition_key(key: &[u8]) -> Option<(Uuid, i32)> {
    let rest = std::str::from_utf8(key)
        .ok()?
        .strip_prefix(&partitions_prefix())?;
    let (t, p) = rest.split_once('/')?;
    Some((Uuid::parse_str(t).ok()?, p.parse().ok()?))
}

/// Prefix of every group-shard assignment.
pub fn shards_prefix() -> String {
    format!("{}/group-shards/", super::ROOT)
}

/// The assignment key of a group shard.
pub fn shard_key(shard: i32) -> String {
    format!("{}{shard:04}", shards_prefix())
}

/// The shard of a group-shard key.
pub fn parse_shard_key(key: &[u8]) -> Option<i32> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(&shards_prefix())?
        .parse()
        .ok()
}

/// The shard coordinating `group` (FNV-1a of the id; stable across versions: it is persisted
/// implicitly by where a group's coordinator looks).
pub fn group_shard(group: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in group.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % GROUP_SHARDS as u32) as i32
}

/// The put the controller writes for an assignment.
pub fn put_op(key: String, a: &Assignment) -> Op {
    Op::put(key, encode_json(a))
}

/// The assignment changes that balance `items` over `live` agents, given `current`: items whose
/// leader is not live, or whose leader holds more than its share, move to the agents with the
/// most room; every move bumps the item's epoch. With no live agent nothing changes.
pub fn balance<K: Ord + Clone>(
    items: &[K],
    current: &BTreeMap<K, Assignment>,
    live: &BTreeSet<i32>,
) -> Vec<(K, Assignment)> {
    if live.is_empty() || items.is_empty() {
        return Vec::new();
    }
    let mut held: BTreeMap<i32, Vec<&K>> = live.iter().map(|a| (*a, Vec::new())).collect();
    let mut unplaced: Vec<&K> = Vec::new();
    for k in items {
        match current.get(k).and_then(|a| held.get_mut(&a.leader)) {
            Some(v) => v.push(k),
            None => unplaced.push(k),
        }
    }
    let (q, r) = (items.len() / live.len(), items.len() % live.len());
    // The agents holding most keep the larger shares, so as little as possible moves.
    let mut by_load: Vec<i32> = live.iter().copied().collect();
    by_load.sort_by_key(|a| (std::cmp::Reverse(held[a].len()), *a));
    let quota: BTreeMap<i32, usize> = by_load
        .iter()
        .enumerate()
        .map(|(rank, a)| (*a, q + usize::from(rank < r)))
        .collect();
    for (a, v) in held.iter_mut() {
        while v.len() > quota[a] {
            unplaced.push(v.pop().expect("over quota"));
        }
    }
    unplaced.sort();
    let mut changes = Vec::with_capacity(unplaced.len());
    for k in unplaced {
        let to = *live
            .iter()
            .max_by_key(|a| {
                (
                    quota[a] as i64 - held[a].len() as i64,
                    std::cmp::Reverse(**a),
                )
            })
            .expect("live is not empty");
        held.get_mut(&to).expect("live agent").push(k);
        let epoch = current.get(k).map_or(0, |a| a.epoch + 1);
        changes.push((k.clone(), Assignment { leader: to, epoch }));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(cur: &mut BTreeMap<i32, Assignment>, ch: Vec<(i32, Assignment)>) -> usize {
        let n = ch.len();
        for (k, a) in ch {
            cur.insert(k, a);
        }
        n
    }

    fn loads(cur: &BTreeMap<i32, Assignment>, live: &BTreeSet<i32>) -> Vec<usize> {
        live.iter()
            .map(|a| cur.values().filter(|x| x.leader == *a).count())
            .collect()
    }

    /// Rule (issue 11.7): an agent whose controller term ended while the store was away, its key
    /// still bound to its live lease, takes the role again; another session never does.
    #[tokio::test]
    async fn a_controller_key_left_by_this_session_is_taken_back() {
        use crate::EmbeddedKv;
        let kv = EmbeddedKv::in_memory(silt_common::ManualClock::new(0));
        let lease = kv
            .grant_lease(std::time::Duration::from_secs(10))
            .await
            .unwrap();
        assert!(try_become_controller(&kv, 1, "s1", lease).await.unwrap());
        assert!(
            try_become_controller(&kv, 1, "s1", lease).await.unwrap(),
            "the same session holds the key: it is controller"
        );
        assert!(!try_become_controller(&kv, 2, "s2", lease).await.unwrap());
        assert!(
            !try_become_controller(&kv, 1, "s1-restarted", lease)
                .await
                .unwrap(),
            "a new session of the same node is not the holder"
        );
    }

    #[test]
    fn balanced_sticky_and_epochs_bump_on_moves() {
        let items: Vec<i32> = (0..10).collect();
        let mut cur = BTreeMap::new();
        let live: BTreeSet<i32> = [1, 2, 3].into();
        let ch = balance(&items, &cur, &live);
        assert_eq!(apply(&mut cur, ch), 10);
        assert_eq!(loads(&cur, &live), vec![4, 3, 3]);
        assert!(cur.values().all(|a| a.epoch == 0));
        assert!(
            balance(&items, &cur, &live).is_empty(),
            "a balanced assignment is left alone"
        );
        // Agent 2 dies: only its items move, evenly.
        let live2: BTreeSet<i32> = [1, 3].into();
        let before = cur.clone();
        let ch = balance(&items, &cur, &live2);
        let moved = apply(&mut cur, ch);
        assert_eq!(moved, 3);
        assert_eq!(loads(&cur, &live2), vec![5, 5]);
        for (k, a) in &cur {
            let b = before[k];
            if b.leader == 2 {
                assert_eq!(a.epoch, b.epoch + 1, "a move bumps the epoch");
            } else {
                assert_eq!(*a, b, "survivors keep their items");
            }
        }
        // Scale out to four: the newcomer takes a fair share, nobody else gains.
        let live4: BTreeSet<i32> = [1, 3, 4, 5].into();
        let ch = balance(&items, &cur, &live4);
        apply(&mut cur, ch);
        let l = loads(&cur, &live4);
        assert_eq!(l.iter().sum::<usize>(), 10);
        assert!(
            l.iter().max().unwrap() - l.iter().min().unwrap() <= 1,
            "{l:?}"
        );
        assert!(balance(&items, &cur, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn keys_parse_back_and_shards_are_spread() {
        let id = Uuid::new_v4();
        assert_eq!(
            parse_partition_key(partition_key(&id, 7).as_bytes()),
            Some((id, 7))
        );
        assert_eq!(parse_shard_key(shard_key(42).as_bytes()), Some(42));
        assert_eq!(parse_controller(b"3:abc"), Some(3));
        let used: BTreeSet<i32> = (0..1000).map(|i| group_shard(&format!("g{i}"))).collect();
        assert_eq!(used.len(), GROUP_SHARDS as usize);
        assert_eq!(group_shard("orders"), group_shard("orders"));
    }
}
