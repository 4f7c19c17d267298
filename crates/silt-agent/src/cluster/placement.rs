//! Placement by load: where the controller puts partitions (and group shards) so that agents
//! carry even traffic, not even counts. A partition weighs one unit plus its measured traffic in units (the
//! controller's [`super::controller`] turns bytes per second into units), so with no traffic
//! this is count balancing (every agent within one of the others) and with traffic it evens
//! out bytes. Moves are chosen greedily, each from a more loaded agent to the least loaded one,
//! only when they shrink the gap between the two by more than `margin` (hysteresis: measured
//! rates are noisy), and at most `loaded_moves` of them move a partition that carries traffic
//! (a move costs its producers a metadata refresh and a retry). An agent's only partition never
//! moves: a hot partition alone on an agent stays put, while many warm ones spread.

use std::collections::{BTreeMap, BTreeSet};

use silt_meta::layout::assignment::Assignment;

/// The assignment changes that place `items` over `live` agents by `weight` (at least 1 each),
/// given `current`. Items without a live leader are placed first, heaviest first, on the least
/// loaded agent. Every move bumps the item's epoch.
pub fn balance_by_load<K: Ord + Clone>(
    items: &[K],
    current: &BTreeMap<K, Assignment>,
    live: &BTreeSet<i32>,
    weight: impl Fn(&K) -> u64,
    margin: u64,
    mut loaded_moves: usize,
) -> Vec<(K, Assignment)> {
    if live.is_empty() || items.is_empty() {
        return Vec::new();
    }
    let mut held: BTreeMap<i32, Vec<(u64, K)>> = live.iter().map(|a| (*a, Vec::new())).collect();
    let mut unplaced: Vec<(u64, K)> = Vec::new();
    for k in items {
        let w = weight(k).max(1);
        match current.get(k).and_then(|a| held.get_mut(&a.leader)) {
            Some(v) => v.push((w, k.clone())),
            None => unplaced.push((w, k.clone())),
        }
    }
    let mut load: BTreeMap<i32, u64> = held
        .iter()
        .map(|(a, v)| (*a, v.iter().map(|(w, _)| w).sum()))
        .collect();
    let mut moved: BTreeMap<K, i32> = BTreeMap::new();
    // Least loaded first; ties to the one holding fewer, then the lower id.
    let lightest = |load: &BTreeMap<i32, u64>, held: &BTreeMap<i32, Vec<(u64, K)>>| -> i32 {
        *load
            .keys()
            .min_by_key(|a| (load[a], held[a].len(), **a))
            .expect("live is not empty")
    };
    unplaced.sort_by(|x, y| y.0.cmp(&x.0).then_with(|| x.1.cmp(&y.1)));
    for (w, k) in unplaced {
        let to = lightest(&load, &held);
        *load.get_mut(&to).expect("live") += w;
        moved.insert(k.clone(), to);
        held.get_mut(&to).expect("live").push((w, k));
    }
    // Each move strictly shrinks the sum of squared loads, so this ends; the bound is a guard.
    for _ in 0..items.len().saturating_mul(2) {
        let to = lightest(&load, &held);
        let mut donors: Vec<i32> = load.keys().copied().filter(|a| *a != to).collect();
        donors.sort_by_key(|a| {
            (
                std::cmp::Reverse(load[a]),
                std::cmp::Reverse(held[a].len()),
                *a,
            )
        });
        let mut step = None;
        for from in donors {
            let gap = load[&from] - load[&to].min(load[&from]);
            if gap <= margin {
                break; // the most loaded donors come first: no later one has a larger gap
            }
            if held[&from].len() < 2 {
                continue;
            }
            // The item that best halves the gap, among those whose move shrinks it by more
            // than the margin (and, for items with traffic, only while the budget lasts).
            let best = held[&from]
                .iter()
                .enumerate()
                .filter(|(_, (w, _))| *w == 1 || loaded_moves > 0)
                .filter(|(_, (w, _))| gap.abs_diff(2 * w) + margin < gap)
                .min_by_key(|(_, (w, k))| (gap.abs_diff(2 * w), (*k).clone()))
                .map(|(i, _)| i);
            if let Some(i) = best {
                step = Some((from, i));
                break;
            }
        }
        let Some((from, i)) = step else {
            break;
        };
        let (w, k) = held.get_mut(&from).expect("live").swap_remove(i);
        *load.get_mut(&from).expect("live") -= w;
        *load.get_mut(&to).expect("live") += w;
        if w > 1 {
            loaded_moves -= 1;
        }
        moved.insert(k.clone(), to);
        held.get_mut(&to).expect("live").push((w, k));
    }
    moved
        .into_iter()
        .filter(|(k, to)| current.get(k).is_none_or(|a| a.leader != *to))
        .map(|(k, to)| {
            let epoch = current.get(&k).map_or(0, |a| a.epoch + 1);
            (k, Assignment { leader: to, epoch })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(cur: &mut BTreeMap<u32, Assignment>, ch: Vec<(u32, Assignment)>) {
        for (k, a) in ch {
            let old = cur.get(&k).map_or(-1, |a| a.epoch);
            assert!(a.epoch > old, "epochs rise on every move");
            cur.insert(k, a);
        }
    }

    fn loads(
        cur: &BTreeMap<u32, Assignment>,
        live: &BTreeSet<i32>,
        w: &dyn Fn(&u32) -> u64,
    ) -> Vec<u64> {
        live.iter()
            .map(|a| {
                cur.iter()
                    .filter(|(_, x)| x.leader == *a)
                    .map(|(k, _)| w(k))
                    .sum()
            })
            .collect()
    }

    #[test]
    fn without_traffic_it_balances_counts_within_one_and_moves_little() {
        let items: Vec<u32> = (0..100).collect();
        let mut cur = BTreeMap::new();
        let two = BTreeSet::from([1, 2]);
        let ch = balance_by_load(&items, &cur, &two, |_| 1, 0, 0);
        apply(&mut cur, ch);
        assert_eq!(loads(&cur, &two, &|_| 1), vec![50, 50]);
        let three = BTreeSet::from([1, 2, 3]);
        let ch = balance_by_load(&items, &cur, &three, |_| 1, 0, 0);
        assert_eq!(ch.len(), 33, "only the new agent's share moves");
        apply(&mut cur, ch);
        let l = loads(&cur, &three, &|_| 1);
        assert!(
            l.iter().max().unwrap() - l.iter().min().unwrap() <= 1,
            "{l:?}"
        );
        assert!(
            balance_by_load(&items, &cur, &three, |_| 1, 0, 0).is_empty(),
            "settled"
        );
        // An agent dies: its partitions go to the others.
        let left = BTreeSet::from([1, 3]);
        let ch = balance_by_load(&items, &cur, &left, |_| 1, 0, 0);
        apply(&mut cur, ch);
        assert_eq!(loads(&cur, &left, &|_| 1), vec![50, 50]);
    }

    #[test]
    fn a_hot_partition_alone_stays_and_warm_ones_spread() {
        let live = BTreeSet::from([1, 2, 3]);
        // Agent 1: one hot partition. Agent 2: six warm ones. Agent 3: two idle ones.
        let w = |k: &u32| match k {
            0 => 1000,
            1..=6 => 101,
            _ => 1,
        };
        let mut cur: BTreeMap<u32, Assignment> = BTreeMap::new();
        cur.insert(
            0,
            Assignment {
                leader: 1,
                epoch: 0,
            },
        );
        for k in 1..=6 {
            cur.insert(
                k,
                Assignment {
                    leader: 2,
                    epoch: 0,
                },
            );
        }
        for k in 7..=8 {
            cur.insert(
                k,
                Assignment {
                    leader: 3,
                    epoch: 0,
                },
            );
        }
        let items: Vec<u32> = (0..=8).collect();
        let ch = balance_by_load(&items, &cur, &live, w, 30, 10);
        assert!(
            ch.iter().all(|(k, _)| *k != 0),
            "the hot partition stays: {ch:?}"
        );
        apply(&mut cur, ch);
        let l = loads(&cur, &live, &w);
        assert_eq!(l[0], 1000);
        assert_eq!((l[1], l[2]), (303, 305), "the warm ones spread: {l:?}");
        assert!(
            balance_by_load(&items, &cur, &live, w, 30, 10).is_empty(),
            "no flapping"
        );
    }

    #[test]
    fn the_budget_limits_moves_of_loaded_partitions_and_the_margin_ignores_noise() {
        let live = BTreeSet::from([1, 2]);
        let items: Vec<u32> = (0..8).collect();
        let cur: BTreeMap<u32, Assignment> = items
            .iter()
            .map(|k| {
                (
                    *k,
                    Assignment {
                        leader: 1,
                        epoch: 3,
                    },
                )
            })
            .collect();
        let w = |_: &u32| 100;
        let ch = balance_by_load(&items, &cur, &live, w, 0, 2);
        assert_eq!(ch.len(), 2, "two loaded moves allowed");
        assert!(ch.iter().all(|(_, a)| a.leader == 2 && a.epoch == 4));
        // Loads 100 and 108 in units: a gap of 8 is under a margin of 10, nothing moves.
        let cur2: BTreeMap<u32, Assignment> = [(0, 1), (1, 2)]
            .into_iter()
            .map(|(k, l)| {
                (
                    k,
                    Assignment {
                        leader: l,
                        epoch: 0,
                    },
                )
            })
            .chain((2..4).map(|k| {
                (
                    k,
                    Assignment {
                        leader: 2,
                        epoch: 0,
                    },
                )
            }))
            .collect();
        let w2 = |k: &u32| match k {
            0 => 100,
            1 => 104,
            _ => 2,
        };
        assert!(balance_by_load(&[0, 1, 2, 3], &cur2, &live, w2, 10, 10).is_empty());
    }

    /// Seeded: random weights and pools; after one pass with an unlimited budget, no agent is
    /// further from the lightest than the largest single weight plus the margin (unless it holds
    /// one item), and a second pass changes nothing.
    #[test]
    fn seeded_pools_settle_in_one_pass_and_stay_settled() {
        for seed in 1..=200u64 {
            let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut rnd = |n: u64| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s % n.max(1)
            };
            let agents = 1 + rnd(6) as i32;
            let live: BTreeSet<i32> = (1..=agents).collect();
            let n = 1 + rnd(60) as u32;
            let items: Vec<u32> = (0..n).collect();
            let weights: Vec<u64> = items
                .iter()
                .map(|_| if rnd(3) == 0 { 1 } else { 1 + rnd(1000) })
                .collect();
            let w = |k: &u32| weights[*k as usize];
            let mut cur = BTreeMap::new();
            for k in &items {
                if rnd(4) != 0 {
                    let leader = 1 + rnd(agents as u64 + 1) as i32; // sometimes a dead one
                    cur.insert(*k, Assignment { leader, epoch: 0 });
                }
            }
            let margin = rnd(50);
            let ch = balance_by_load(&items, &cur, &live, w, margin, usize::MAX);
            apply(&mut cur, ch);
            assert!(
                items.iter().all(|k| live.contains(&cur[k].leader)),
                "seed {seed}: all placed"
            );
            let l = loads(&cur, &live, &w);
            let max_w = weights.iter().copied().max().unwrap();
            let lightest = *l.iter().min().unwrap();
            for (a, load) in live.iter().zip(&l) {
                let count = cur.values().filter(|x| x.leader == *a).count();
                assert!(
                    count < 2 || load - lightest <= max_w + margin,
                    "seed {seed}: loads {l:?}, margin {margin}, weights {weights:?}"
                );
            }
            assert!(
                balance_by_load(&items, &cur, &live, w, margin, usize::MAX).is_empty(),
                "seed {seed}: a second pass moved something"
            );
        }
    }
}
