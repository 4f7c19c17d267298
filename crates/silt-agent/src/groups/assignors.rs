//! The server-side assignors of KIP-848 consumer groups: `uniform` (the default: every member
//! gets an even share of the partitions it subscribes to, and keeps what it had where that stays
//! even) and `range` (per topic, contiguous ranges in member-id order, so members subscribed to
//! co-partitioned topics get the same partition numbers of each).
//!
//! Both are pure functions of the members' subscriptions, the topics' partition counts and the
//! previous target assignment.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

/// Partitions by topic id.
pub type Parts = BTreeMap<Uuid, BTreeSet<i32>>;

/// The assignors served, by the names clients ask for (`group.remote.assignor`).
pub const NAMES: [&str; 2] = ["uniform", "range"];

/// What an assignor sees of one member.
#[derive(Debug, Clone, Default)]
pub struct MemberSpec {
    /// Topic ids the member subscribes to (only topics that exist).
    pub topics: BTreeSet<Uuid>,
    /// The member's previous target assignment.
    pub previous: Parts,
}

/// The target assignment of every member under `assignor` (an entry per member, possibly
/// empty). `partitions` holds each subscribed topic's partition count.
pub fn assign(
    assignor: &str,
    members: &BTreeMap<String, MemberSpec>,
    partitions: &BTreeMap<Uuid, i32>,
) -> BTreeMap<String, Parts> {
    match assignor {
        "range" => range(members, partitions),
        _ => uniform(members, partitions),
    }
}

fn count(p: &Parts) -> usize {
    p.values().map(BTreeSet::len).sum()
}

fn uniform(
    members: &BTreeMap<String, MemberSpec>,
    partitions: &BTreeMap<Uuid, i32>,
) -> BTreeMap<String, Parts> {
    let mut out: BTreeMap<String, Parts> =
        members.keys().map(|m| (m.clone(), Parts::new())).collect();
    // Every partition some member subscribes to.
    let wanted: BTreeSet<Uuid> = members
        .values()
        .flat_map(|m| m.topics.iter().copied())
        .collect();
    let all: Vec<(Uuid, i32)> = wanted
        .iter()
        .filter_map(|t| partitions.get(t).map(|n| (*t, *n)))
        .flat_map(|(t, n)| (0..n).map(move |p| (t, p)))
        .collect();
    let subscribers = members.values().filter(|m| !m.topics.is_empty()).count();
    if subscribers == 0 || all.is_empty() {
        return out;
    }
    let cap = all.len().div_ceil(subscribers);
    let mut taken: BTreeSet<(Uuid, i32)> = BTreeSet::new();
    // Keep what each member had, up to an even share.
    for (id, m) in members {
        let mine = out.get_mut(id).expect("every member has an entry");
        let mut kept = 0;
        for (t, ps) in &m.previous {
            if !m.topics.contains(t) {
                continue;
            }
            let n = partitions.get(t).copied().unwrap_or(0);
            for p in ps {
                if kept < cap && *p < n && taken.insert((*t, *p)) {
                    mine.entry(*t).or_default().insert(*p);
                    kept += 1;
                }
            }
        }
    }
    // The rest to the least loaded member subscribed to the topic.
    for (t, p) in &all {
        if taken.contains(&(*t, *p)) {
            continue;
        }
        let best = members
            .iter()
            .filter(|(_, m)| m.topics.contains(t))
            .min_by_key(|(id, _)| (count(&out[*id]), (*id).clone()))
            .map(|(id, _)| id.clone());
        if let Some(id) = best {
            out.get_mut(&id)
                .expect("every member has an entry")
                .entry(*t)
                .or_default()
                .insert(*p);
            taken.insert((*t, *p));
        }
    }
    // Even out: move partitions from the most to the least loaded member that may take them.
    for _ in 0..all.len() {
        let mut by_load: Vec<(usize, String)> = out
            .iter()
            .filter(|(id, _)| !members[*id].topics.is_empty())
            .map(|(id, p)| (count(p), id.clone()))
            .collect();
        by_load.sort();
        let Some((max, from)) = by_load.last().cloned() else {
            break;
        };
        let moved = by_load
            .iter()
            .take_while(|(n, _)| *n + 2 <= max)
            .find_map(|(_, to)| {
                let takes = &members[to].topics;
                out[&from]
                    .iter()
                    .find(|(t, ps)| takes.contains(*t) && !ps.is_empty())
                    .and_then(|(t, ps)| ps.iter().next_back().map(|p| (to.clone(), *t, *p)))
            });
        let Some((to, t, p)) = moved else {
            break;
        };
        let src = out.get_mut(&from).expect("member");
        if let Some(ps) = src.get_mut(&t) {
            ps.remove(&p);
            if ps.is_empty() {
                src.remove(&t);
            }
        }
        out.get_mut(&to)
            .expect("member")
            .entry(t)
            .or_default()
            .insert(p);
    }
    out
}

fn range(
    members: &BTreeMap<String, MemberSpec>,
    partitions: &BTreeMap<Uuid, i32>,
) -> BTreeMap<String, Parts> {
    let mut out: BTreeMap<String, Parts> =
        members.keys().map(|m| (m.clone(), Parts::new())).collect();
    for (t, n) in partitions {
        let subs: Vec<&String> = members
            .iter()
            .filter(|(_, m)| m.topics.contains(t))
            .map(|(id, _)| id)
            .collect();
        if subs.is_empty() || *n <= 0 {
            continue;
        }
        let k = subs.len() as i32;
        let (each, extra) = (n / k, n % k);
        let mut next = 0;
        for (i, id) in subs.iter().enumerate() {
            let take = each + i32::from((i as i32) < extra);
            if take > 0 {
                out.get_mut(*id)
                    .expect("member")
                    .insert(*t, (next..next + take).collect());
            }
            next += take;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize, topics: &[Uuid]) -> BTreeMap<String, MemberSpec> {
        (0..n)
            .map(|i| {
                (
                    format!("m{i}"),
                    MemberSpec {
                        topics: topics.iter().copied().collect(),
                        previous: Parts::new(),
                    },
                )
            })
            .collect()
    }

    fn owners(a: &BTreeMap<String, Parts>) -> BTreeMap<(Uuid, i32), Vec<String>> {
        let mut o: BTreeMap<(Uuid, i32), Vec<String>> = BTreeMap::new();
        for (m, parts) in a {
            for (t, ps) in parts {
                for p in ps {
                    o.entry((*t, *p)).or_default().push(m.clone());
                }
            }
        }
        o
    }

    /// Seeded: every subscribed partition has exactly one owner, subscribed to its topic;
    /// loads differ by at most one for members of the same subscription; and a member joining
    /// or leaving moves few partitions (the others keep theirs).
    #[test]
    fn uniform_is_complete_exclusive_balanced_and_sticky() {
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let topics: Vec<Uuid> = (0..1 + next(4)).map(|_| Uuid::new_v4()).collect();
            let parts: BTreeMap<Uuid, i32> =
                topics.iter().map(|t| (*t, 1 + next(64) as i32)).collect();
            let n = 1 + next(12) as usize;
            let mut ms = members(n, &topics);
            let first = assign("uniform", &ms, &parts);
            let o = owners(&first);
            let total: i32 = parts.values().sum();
            assert_eq!(o.len(), total as usize, "every partition assigned");
            assert!(o.values().all(|v| v.len() == 1), "owned once");
            let loads: Vec<usize> = first.values().map(count).collect();
            assert!(
                loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1,
                "{loads:?}"
            );
            // One member more: the others keep all but what the newcomer needs.
            for (id, m) in ms.iter_mut() {
                m.previous = first[id].clone();
            }
            ms.insert(
                "new".into(),
                MemberSpec {
                    topics: topics.iter().copied().collect(),
                    previous: Parts::new(),
                },
            );
            let second = assign("uniform", &ms, &parts);
            let moved: usize = first
                .iter()
                .map(|(id, p)| {
                    p.iter()
                        .map(|(t, ps)| {
                            ps.iter()
                                .filter(|x| !second[id].get(t).is_some_and(|s| s.contains(x)))
                                .count()
                        })
                        .sum::<usize>()
                })
                .sum();
            let fair = (total as usize).div_ceil(n + 1);
            assert!(moved <= fair, "moved {moved} > a fair share {fair}");
            let loads: Vec<usize> = second.values().map(count).collect();
            assert!(
                loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1,
                "{loads:?}"
            );
        }
    }

    #[test]
    fn uniform_respects_different_subscriptions() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let parts = BTreeMap::from([(a, 4), (b, 2)]);
        let mut ms = BTreeMap::new();
        ms.insert(
            "x".to_string(),
            MemberSpec {
                topics: [a].into(),
                previous: Parts::new(),
            },
        );
        ms.insert(
            "y".to_string(),
            MemberSpec {
                topics: [a, b].into(),
                previous: Parts::new(),
            },
        );
        let out = assign("uniform", &ms, &parts);
        assert!(!out["x"].contains_key(&b), "x does not subscribe to b");
        assert_eq!(owners(&out).len(), 6);
        assert_eq!(count(&out["x"]), 3);
        assert_eq!(count(&out["y"]), 3);
    }

    #[test]
    fn range_gives_contiguous_ranges_in_member_order() {
        let t = Uuid::new_v4();
        let out = assign("range", &members(3, &[t]), &BTreeMap::from([(t, 8)]));
        assert_eq!(out["m0"][&t], (0..3).collect());
        assert_eq!(out["m1"][&t], (3..6).collect());
        assert_eq!(out["m2"][&t], (6..8).collect());
    }
}
