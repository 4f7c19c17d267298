use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::*;

use super::test_catalog::Catalog;

fn lim() -> ConsumerLimits {
    ConsumerLimits {
        heartbeat_interval_ms: 100,
        session_timeout_ms: 1_000,
        max_size: 50,
    }
}

/// A client as librdkafka runs one: it owns what it was last sent (revoking at once), and
/// starts over with epoch 0 when fenced.
#[derive(Debug, Clone, Default)]
struct Client {
    id: String,
    epoch: i32,
    owned: Parts,
    alive: bool,
    topics: Vec<String>,
    last: i64,
}

impl Client {
    fn hb(&mut self, g: &mut ConsumerGroup, now: i64, cat: &Catalog, full: bool) -> Reply {
        self.last = now;
        let r = g.heartbeat(
            Heartbeat {
                member_id: self.id.clone(),
                member_epoch: self.epoch,
                rebalance_timeout_ms: 5_000,
                topic_names: (self.epoch == 0 || full).then(|| self.topics.clone()),
                owned: (self.epoch == 0 || full).then(|| self.owned.clone()),
                ..Default::default()
            },
            now,
            &lim(),
            cat,
        );
        if r.error == ResponseError::UnknownMemberId.code()
            || r.error == ResponseError::FencedMemberEpoch.code()
        {
            self.owned.clear();
            self.epoch = 0;
        } else {
            assert_eq!(r.error, 0, "{r:?}");
            self.epoch = r.member_epoch;
            if let Some(a) = &r.assignment {
                self.owned = a.clone();
            }
        }
        r
    }
}

fn owners(clients: &[Client]) -> BTreeMap<(Uuid, i32), Vec<String>> {
    let mut o: BTreeMap<(Uuid, i32), Vec<String>> = BTreeMap::new();
    for c in clients.iter().filter(|c| c.alive) {
        for (t, ps) in &c.owned {
            for p in ps {
                o.entry((*t, *p)).or_default().push(c.id.clone());
            }
        }
    }
    o
}

/// Seeded: members join, leave, die (stop heartbeating) and come back, topics grow; after
/// every heartbeat no partition is owned by two live members, and once things settle every
/// partition is owned exactly once and the group is Stable.
#[test]
fn seeded_membership_changes_never_own_a_partition_twice_and_settle() {
    for seed in 1..=40u64 {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rnd = |n: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % n
        };
        let mut cat = Catalog::default();
        cat.0
            .insert("a".into(), (Uuid::new_v4(), 1 + rnd(12) as i32));
        cat.0
            .insert("b".into(), (Uuid::new_v4(), 1 + rnd(6) as i32));
        let mut g = ConsumerGroup::new(0);
        let mut clients: Vec<Client> = Vec::new();
        let mut now = 0i64;
        for step in 0..300 {
            now += 1 + rnd(60) as i64;
            match rnd(20) {
                0 | 1 if clients.iter().filter(|c| c.alive).count() < 8 => clients.push(Client {
                    id: format!("m{step}"),
                    alive: true,
                    topics: if rnd(3) == 0 {
                        vec!["a".into()]
                    } else {
                        vec!["a".into(), "b".into()]
                    },
                    ..Default::default()
                }),
                2 => {
                    // Leaves cleanly.
                    if let Some(c) = clients.iter_mut().find(|c| c.alive && c.epoch > 0) {
                        let r = g.heartbeat(
                            Heartbeat {
                                member_id: c.id.clone(),
                                member_epoch: -1,
                                ..Default::default()
                            },
                            now,
                            &lim(),
                            &cat,
                        );
                        assert_eq!(r.error, 0);
                        c.alive = false;
                    }
                }
                3 => {
                    // Dies: its partitions are free once the session times out.
                    if let Some(c) = clients.iter_mut().find(|c| c.alive) {
                        c.alive = false;
                    }
                }
                4 => {
                    let (id, n) = cat.0["a"];
                    cat.0.insert("a".into(), (id, n + 1));
                }
                _ => {}
            }
            g.tick(now, &lim());
            let n = clients.len();
            if n > 0 {
                let i = rnd(n as u64) as usize;
                if clients[i].alive {
                    let full = rnd(4) == 0;
                    clients[i].hb(&mut g, now, &cat, full);
                }
            }
            // Live clients heartbeat well within their session.
            for c in clients.iter_mut().filter(|c| c.alive && now - c.last > 400) {
                c.hb(&mut g, now, &cat, false);
            }
            let o = owners(&clients);
            for (tp, who) in &o {
                assert_eq!(
                    who.len(),
                    1,
                    "seed {seed} step {step}: {tp:?} owned by {who:?}"
                );
            }
        }
        // Settle: everyone alive heartbeats until nothing changes.
        for _ in 0..20 {
            now += 50;
            g.tick(now, &lim());
            for c in clients.iter_mut().filter(|c| c.alive) {
                c.hb(&mut g, now, &cat, true);
            }
        }
        now += 2_000;
        for c in clients.iter_mut().filter(|c| c.alive) {
            c.hb(&mut g, now, &cat, true);
        }
        for _ in 0..10 {
            now += 50;
            g.tick(now, &lim());
            for c in clients.iter_mut().filter(|c| c.alive) {
                c.hb(&mut g, now, &cat, true);
            }
        }
        let live = clients.iter().filter(|c| c.alive).count();
        let o = owners(&clients);
        assert!(o.values().all(|w| w.len() == 1), "seed {seed}");
        if live > 0 {
            let want: usize = cat.0.values().map(|(_, n)| *n as usize).sum();
            let a_only = clients
                .iter()
                .filter(|c| c.alive)
                .all(|c| c.topics.len() == 1);
            let b = cat.0["b"].1 as usize;
            let expect = if a_only { want - b } else { want };
            assert_eq!(
                o.len(),
                expect,
                "seed {seed}: every subscribed partition owned"
            );
            assert_eq!(g.state(), "Stable", "seed {seed}");
        } else {
            assert!(o.is_empty());
        }
    }
}

#[test]
fn a_partition_moves_only_after_its_owner_revoked_it() {
    let mut cat = Catalog::default();
    cat.0.insert("t".into(), (Uuid::new_v4(), 2));
    let mut g = ConsumerGroup::new(0);
    let mut a = Client {
        id: "a".into(),
        alive: true,
        topics: vec!["t".into()],
        ..Default::default()
    };
    let mut b = Client {
        id: "b".into(),
        alive: true,
        topics: vec!["t".into()],
        ..Default::default()
    };
    a.hb(&mut g, 0, &cat, false);
    assert_eq!(a.epoch, 1);
    assert_eq!(a.owned.values().map(BTreeSet::len).sum::<usize>(), 2);
    // b joins: epoch 2; b gets nothing until a gives one up.
    let r = b.hb(&mut g, 10, &cat, false);
    assert_eq!(r.member_epoch, 2);
    assert!(b.owned.values().all(BTreeSet::is_empty));
    // a is told to revoke one (it keeps its epoch until it has).
    let r = a.hb(&mut g, 20, &cat, false);
    assert_eq!(r.member_epoch, 1);
    assert_eq!(a.owned.values().map(BTreeSet::len).sum::<usize>(), 1);
    let d = g.describe();
    assert_eq!(d.state, "Reconciling");
    // b still waits: a has not acknowledged.
    b.hb(&mut g, 30, &cat, false);
    assert!(b.owned.values().all(BTreeSet::is_empty));
    // a acknowledges (sends what it owns) and moves to epoch 2; then b gets the partition.
    let r = a.hb(&mut g, 40, &cat, true);
    assert_eq!(r.member_epoch, 2);
    b.hb(&mut g, 50, &cat, false);
    assert_eq!(b.owned.values().map(BTreeSet::len).sum::<usize>(), 1);
    assert_eq!(g.describe().state, "Stable");
    // OffsetCommit epochs.
    assert_eq!(g.check_member_epoch("a", 2), Ok(()));
    assert_eq!(
        g.check_member_epoch("a", 1),
        Err(ResponseError::StaleMemberEpoch.code())
    );
    assert_eq!(
        g.check_member_epoch("zz", 2),
        Err(ResponseError::UnknownMemberId.code())
    );
    assert_eq!(
        g.check_member_epoch("", -1),
        Err(ResponseError::UnknownMemberId.code())
    );
    assert_eq!(
        ConsumerGroup::new(0).check_member_epoch("assign-only", -1),
        Ok(()),
        "a consumer using assign() commits to an empty group"
    );
}

#[test]
fn a_member_that_does_not_revoke_in_time_is_fenced() {
    let mut cat = Catalog::default();
    cat.0.insert("t".into(), (Uuid::new_v4(), 2));
    let mut g = ConsumerGroup::new(0);
    let mut a = Client {
        id: "a".into(),
        alive: true,
        topics: vec!["t".into()],
        ..Default::default()
    };
    let mut b = a.clone();
    b.id = "b".into();
    a.hb(&mut g, 0, &cat, false);
    b.hb(&mut g, 1, &cat, false);
    // a is asked to revoke (rebalance timeout 5 s) but keeps claiming what it had.
    a.hb(&mut g, 2, &cat, false);
    let mut stubborn = a.clone();
    stubborn.owned = g.describe().members[0].target.clone();
    union(&mut stubborn.owned, &a.owned);
    let keep_all: Parts = [(cat.0["t"].0, [0, 1].into())].into();
    let r = g.heartbeat(
        Heartbeat {
            member_id: "a".into(),
            member_epoch: 1,
            owned: Some(keep_all),
            ..Default::default()
        },
        600,
        &lim(),
        &cat,
    );
    assert_eq!(r.member_epoch, 1, "still revoking");
    // Heartbeats keep its session, but the revocation deadline passes.
    g.heartbeat(
        Heartbeat {
            member_id: "a".into(),
            member_epoch: 1,
            ..Default::default()
        },
        5_000,
        &lim(),
        &cat,
    );
    b.hb(&mut g, 5_001, &cat, false);
    assert_eq!(g.tick(5_100, &lim()), 1);
    let r = a.hb(&mut g, 5_200, &cat, false);
    assert_eq!(r.error, ResponseError::UnknownMemberId.code());
    b.hb(&mut g, 5_300, &cat, false);
    b.hb(&mut g, 5_400, &cat, false);
    assert_eq!(b.owned.values().map(BTreeSet::len).sum::<usize>(), 2);
}

#[test]
fn a_static_member_hands_its_assignment_to_its_successor() {
    let mut cat = Catalog::default();
    cat.0.insert("t".into(), (Uuid::new_v4(), 4));
    let mut g = ConsumerGroup::new(0);
    let join = |id: &str, epoch: i32| Heartbeat {
        member_id: id.into(),
        member_epoch: epoch,
        instance_id: Some("i1".into()),
        rebalance_timeout_ms: 1_000,
        topic_names: (epoch == 0).then(|| vec!["t".to_string()]),
        ..Default::default()
    };
    let r = g.heartbeat(join("x", 0), 0, &lim(), &cat);
    let epoch = r.member_epoch;
    let had = r.assignment.clone().unwrap();
    // Another member with the same instance id while x is active: refused.
    let r = g.heartbeat(join("y", 0), 10, &lim(), &cat);
    assert_eq!(r.error, ResponseError::UnreleasedInstanceId.code());
    // x leaves statically; y takes over x's assignment and epoch, without a new group epoch.
    let r = g.heartbeat(join("x", -2), 20, &lim(), &cat);
    assert_eq!((r.error, r.member_epoch), (0, -2));
    let r = g.heartbeat(join("y", 0), 30, &lim(), &cat);
    assert_eq!(r.error, 0);
    assert_eq!(r.member_epoch, epoch);
    assert_eq!(r.assignment.unwrap(), had);
    assert_eq!(g.group_epoch(), epoch);
}

#[test]
fn bad_requests_get_kafkas_errors() {
    let cat = Catalog::default();
    let mut g = ConsumerGroup::new(0);
    let r = g.heartbeat(
        Heartbeat {
            member_id: "m".into(),
            member_epoch: 0,
            topic_names: Some(vec![]),
            assignor: Some("sticky".into()),
            ..Default::default()
        },
        0,
        &lim(),
        &cat,
    );
    assert_eq!(r.error, ResponseError::UnsupportedAssignor.code());
    let r = g.heartbeat(
        Heartbeat {
            member_id: "m".into(),
            member_epoch: 0,
            topic_regex: Some("(".into()),
            ..Default::default()
        },
        0,
        &lim(),
        &cat,
    );
    assert_eq!(r.error, ResponseError::InvalidRegularExpression.code());
    // Valid only once wrapped in an anchoring group: still refused.
    let r = g.heartbeat(
        Heartbeat {
            member_id: "m".into(),
            member_epoch: 0,
            topic_regex: Some("a)|(b".into()),
            ..Default::default()
        },
        0,
        &lim(),
        &cat,
    );
    assert_eq!(r.error, ResponseError::InvalidRegularExpression.code());
    let r = g.heartbeat(
        Heartbeat {
            member_id: "m".into(),
            member_epoch: 3,
            ..Default::default()
        },
        0,
        &lim(),
        &cat,
    );
    assert_eq!(r.error, ResponseError::UnknownMemberId.code());
    let r = g.heartbeat(
        Heartbeat {
            member_id: "m".into(),
            member_epoch: 0,
            ..Default::default()
        },
        0,
        &lim(),
        &cat,
    );
    assert_eq!(r.error, ResponseError::InvalidRequest.code());
}

#[test]
fn regex_subscriptions_follow_new_topics_and_a_hold_delays_assignment() {
    let mut cat = Catalog::default();
    cat.0.insert("orders-1".into(), (Uuid::new_v4(), 1));
    cat.0.insert("other".into(), (Uuid::new_v4(), 1));
    let mut g = ConsumerGroup::new(1_000);
    let r = g.heartbeat(
        Heartbeat {
            member_id: "m".into(),
            member_epoch: 0,
            rebalance_timeout_ms: 1_000,
            topic_regex: Some("orders-.*".into()),
            ..Default::default()
        },
        0,
        &lim(),
        &cat,
    );
    assert_eq!(r.error, 0);
    assert!(
        r.assignment.unwrap().values().all(BTreeSet::is_empty),
        "held after a coordinator move"
    );
    let hb = |epoch| Heartbeat {
        member_id: "m".into(),
        member_epoch: epoch,
        ..Default::default()
    };
    let r = g.heartbeat(hb(r.member_epoch), 1_000, &lim(), &cat);
    let a = r.assignment.unwrap();
    assert_eq!(a.len(), 1);
    assert!(a.contains_key(&cat.0["orders-1"].0));
    cat.0.insert("orders-2".into(), (Uuid::new_v4(), 2));
    let r = g.heartbeat(hb(r.member_epoch), 1_100, &lim(), &cat);
    assert_eq!(
        r.assignment
            .unwrap()
            .values()
            .map(BTreeSet::len)
            .sum::<usize>(),
        3
    );
}

/// A member whose response was lost heartbeats again at its previous epoch without saying
/// what it owns: it is sent its assignment again (else it would never learn of partitions
/// granted in the lost response).
#[test]
fn a_lost_response_is_answered_again() {
    let mut cat = Catalog::default();
    cat.0.insert("t".into(), (Uuid::new_v4(), 2));
    let mut g = ConsumerGroup::new(0);
    let join = g.heartbeat(
        Heartbeat {
            member_id: "a".into(),
            member_epoch: 0,
            rebalance_timeout_ms: 1_000,
            topic_names: Some(vec!["t".into()]),
            ..Default::default()
        },
        0,
        &lim(),
        &cat,
    );
    assert_eq!(join.member_epoch, 1);
    // The topic grows: the next heartbeat moves a to epoch 2 with three partitions; that
    // response is lost.
    let (id, _) = cat.0["t"];
    cat.0.insert("t".into(), (id, 3));
    let hb = |epoch| Heartbeat {
        member_id: "a".into(),
        member_epoch: epoch,
        ..Default::default()
    };
    let lost = g.heartbeat(hb(1), 10, &lim(), &cat);
    assert_eq!(lost.member_epoch, 2);
    assert_eq!(lost.assignment.as_ref().unwrap()[&id].len(), 3);
    // The retry at epoch 1 gets the assignment again.
    let again = g.heartbeat(hb(1), 20, &lim(), &cat);
    assert_eq!(again.error, 0);
    assert_eq!(again.member_epoch, 2);
    assert_eq!(again.assignment, lost.assignment);
    // At the current epoch and unchanged, nothing is resent.
    assert_eq!(g.heartbeat(hb(2), 30, &lim(), &cat).assignment, None);
}
