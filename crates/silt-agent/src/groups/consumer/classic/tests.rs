//! Classic members in consumer groups: the online upgrade, eager and cooperative rejoins, no
//! partition owned twice, Kafka's errors, timeouts, and the stored form.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::*;
use crate::groups::consumer::Heartbeat;
use crate::groups::group::ExportedMember;

use crate::groups::consumer::test_catalog::Catalog;

fn cat() -> Catalog {
    Catalog(BTreeMap::from([("t".to_string(), (Uuid::from_u128(7), 6))]))
}

fn lim() -> ConsumerLimits {
    ConsumerLimits {
        heartbeat_interval_ms: 100,
        session_timeout_ms: 1_000,
        max_size: 50,
    }
}

/// A subscription to "t" at `version`, owning `owned` (v1+).
fn subscription(version: i16, owned: &[i32]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(version);
    b.put_i32(1);
    b.put_i16(1);
    b.put_slice(b"t");
    b.put_i32(-1); // no user data
    if version >= 1 {
        b.put_i32(1);
        b.put_i16(1);
        b.put_slice(b"t");
        b.put_i32(owned.len() as i32);
        for p in owned {
            b.put_i32(*p);
        }
    }
    b.freeze()
}

fn join(id: &str, protocol: &str, meta: Bytes) -> Join {
    Join {
        member_id: id.into(),
        instance_id: None,
        client_id: "rdkafka".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 5_000,
        protocol_type: "consumer".into(),
        protocols: vec![(protocol.into(), meta)],
        require_known_member_id: true,
    }
}

fn parts_of(r: &SyncResult) -> Vec<i32> {
    assert_eq!(r.error, 0, "{r:?}");
    let named = consumer_protocol::decode_assignment(&r.assignment).unwrap();
    named.into_iter().flat_map(|(_, ps)| ps).collect()
}

/// No partition is assigned to, or being revoked from, two members.
fn owned_once(g: &ConsumerGroup) {
    let mut seen = BTreeMap::new();
    for (id, m) in &g.members {
        for ps in m.assigned.values().chain(m.revoking.values()) {
            for p in ps {
                if let Some(other) = seen.insert(*p, id.clone()) {
                    panic!("partition {p} owned by {other} and {id}");
                }
            }
        }
    }
}

/// A classic group of generation 5: members a (partitions 0-2) and b (3-5), protocol "range".
fn upgraded() -> ConsumerGroup {
    let member = |id: &str, ps: Vec<i32>| ExportedMember {
        id: id.into(),
        instance_id: None,
        client_id: "rdkafka".into(),
        client_host: "/h".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 5_000,
        protocols: vec![("range".into(), subscription(0, &[]))],
        assignment: consumer_protocol::encode_assignment(0, &[("t".into(), ps)]),
    };
    let export = ClassicExport {
        generation: 5,
        protocol_type: "consumer".into(),
        protocol: "range".into(),
        members: vec![member("a", vec![0, 1, 2]), member("b", vec![3, 4, 5])],
    };
    ConsumerGroup::from_classic(&export, 0, &lim(), &cat()).unwrap()
}

#[test]
fn an_upgrade_keeps_every_assignment_and_eager_members_rejoin_into_the_new_target() {
    let (c, mut g) = (cat(), upgraded());
    assert_eq!((g.group_epoch, g.members["a"].epoch), (5, 5));
    assert_eq!(
        g.classic_heartbeat("a", None, 5, 1),
        0,
        "nothing changed yet"
    );
    // A consumer-protocol member joins: the group epoch moves, it waits for partitions.
    let r = g.heartbeat(
        Heartbeat {
            member_id: "c".into(),
            member_epoch: 0,
            rebalance_timeout_ms: 5_000,
            topic_names: Some(vec!["t".into()]),
            owned: Some(Parts::new()),
            ..Default::default()
        },
        2,
        &lim(),
        &c,
    );
    assert_eq!(r.error, 0);
    owned_once(&g);
    assert_eq!(
        g.classic_heartbeat("a", None, 5, 3),
        ResponseError::RebalanceInProgress.code()
    );
    assert_eq!(
        g.classic_sync("a", None, 5, (None, None), &c).error,
        ResponseError::RebalanceInProgress.code()
    );
    // a rejoins eagerly (owning nothing): at once, at the new epoch, as a follower.
    let j = g.classic_join(&join("a", "range", subscription(0, &[])), 4, &lim(), &c);
    assert_eq!(j.error, 0, "{j:?}");
    assert_eq!(
        (j.generation, j.protocol_name.as_deref(), j.leader.as_str()),
        (6, Some("range"), "")
    );
    assert!(j.members.is_empty(), "every classic member is a follower");
    let a = parts_of(&g.classic_sync("a", None, 6, (Some("consumer"), Some("range")), &c));
    assert_eq!(a.len(), 2, "a keeps two of its three: {a:?}");
    owned_once(&g);
    // b rejoins too; c then takes what both released.
    let j = g.classic_join(&join("b", "range", subscription(0, &[])), 5, &lim(), &c);
    assert_eq!(j.generation, 6);
    let b = parts_of(&g.classic_sync("b", None, 6, (None, None), &c));
    assert_eq!(b.len(), 2);
    let r = g.heartbeat(
        Heartbeat {
            member_id: "c".into(),
            member_epoch: r.member_epoch,
            ..Default::default()
        },
        6,
        &lim(),
        &c,
    );
    let got: usize = r.assignment.unwrap().values().map(|p| p.len()).sum();
    assert_eq!(got, 2, "the consumer member has its share");
    owned_once(&g);
    assert_eq!(g.classic_heartbeat("a", None, 6, 7), 0);
    assert_eq!(g.state(), "Stable");
    // Offsets: a classic member's generation is its epoch.
    assert_eq!(g.check_member_epoch("a", 6), Ok(()));
    assert_eq!(
        g.check_member_epoch("a", 5),
        Err(ResponseError::IllegalGeneration.code())
    );
    assert_eq!(
        g.check_member_epoch("c", 5),
        Err(ResponseError::StaleMemberEpoch.code())
    );
    let d = g.describe();
    assert_eq!(d.members.iter().filter(|m| m.classic).count(), 2);
}

#[test]
fn a_cooperative_member_gives_partitions_up_before_others_take_them() {
    let (c, mut g) = (cat(), upgraded());
    // A new classic member joins (after MEMBER_ID_REQUIRED), cooperative, owning nothing.
    let j = g.classic_join(
        &join("", "cooperative-sticky", subscription(1, &[])),
        1,
        &lim(),
        &c,
    );
    assert_eq!(
        j.error,
        ResponseError::InconsistentGroupProtocol.code(),
        "a and b only speak range"
    );
    let j = g.classic_join(&join("", "range", subscription(1, &[])), 1, &lim(), &c);
    assert_eq!(j.error, ResponseError::MemberIdRequired.code());
    let d = g.classic_join(
        &join(&j.member_id, "range", subscription(1, &[])),
        2,
        &lim(),
        &c,
    );
    assert_eq!((d.error, d.generation), (0, 6));
    assert!(
        parts_of(&g.classic_sync(&d.member_id, None, 6, (None, None), &c)).is_empty(),
        "a and b still hold everything"
    );
    // a rejoins cooperatively, still owning its three: it must give one up first.
    let j = g.classic_join(
        &join("a", "range", subscription(1, &[0, 1, 2])),
        3,
        &lim(),
        &c,
    );
    assert_eq!(
        j.generation, 5,
        "it stays at its epoch until it has revoked"
    );
    let kept = parts_of(&g.classic_sync("a", None, 5, (None, None), &c));
    assert_eq!(kept.len(), 2);
    owned_once(&g);
    assert_eq!(
        g.classic_heartbeat("a", None, 5, 4),
        ResponseError::RebalanceInProgress.code()
    );
    let j = g.classic_join(&join("a", "range", subscription(1, &kept)), 5, &lim(), &c);
    assert_eq!(j.generation, 6, "revoked: at the new epoch");
    owned_once(&g);
    // The newcomer waits while b still holds one of its partitions; once b has rejoined
    // (eagerly) it is told to rejoin, and gets both.
    assert_eq!(g.classic_heartbeat(&d.member_id, None, 6, 6), 0);
    let b = g.classic_join(&join("b", "range", subscription(1, &[])), 7, &lim(), &c);
    assert_eq!(b.generation, 6);
    owned_once(&g);
    assert_eq!(
        g.classic_heartbeat(&d.member_id, None, 6, 8),
        ResponseError::RebalanceInProgress.code()
    );
    let again = g.classic_join(
        &join(&d.member_id, "range", subscription(1, &[])),
        9,
        &lim(),
        &c,
    );
    assert_eq!(again.generation, 6);
    assert_eq!(
        parts_of(&g.classic_sync(&d.member_id, None, 6, (None, None), &c)).len(),
        2
    );
    owned_once(&g);
    assert_eq!(g.state(), "Stable");
}

#[test]
fn errors_timeouts_leaves_and_the_stored_form() {
    let (c, mut g) = (cat(), upgraded());
    assert_eq!(
        g.classic_heartbeat("a", None, 4, 1),
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(
        g.classic_heartbeat("zz", None, 5, 1),
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(
        g.classic_sync("a", None, 5, (Some("connect"), None), &c)
            .error,
        ResponseError::InconsistentGroupProtocol.code()
    );
    let mut other = join("x", "range", subscription(0, &[]));
    other.protocol_type = "connect".into();
    assert_eq!(
        g.classic_join(&other, 1, &lim(), &c).error,
        ResponseError::InconsistentGroupProtocol.code()
    );
    // Stored and restored: classic members keep their protocols and session timeouts.
    let restored = ConsumerGroup::restore(&g.stored().unwrap(), 100).unwrap();
    assert_eq!(
        restored.members["a"]
            .classic
            .as_ref()
            .unwrap()
            .session_timeout_ms,
        10_000
    );
    assert_eq!(
        restored.members["a"].revoke_deadline_ms, 0,
        "no rejoin deadline after a move"
    );
    // A classic member's session is its own (10 s here, not the group's 1 s).
    g.classic_heartbeat("b", None, 5, 9_000);
    assert_eq!(g.tick(5_000, &lim()), 0);
    assert_eq!(g.tick(10_001, &lim()), 1, "a's session ended");
    assert!(!g.members.contains_key("a"));
    // b, told to rejoin, must within its rebalance timeout (5 s).
    assert_eq!(
        g.classic_heartbeat("b", None, 5, 10_002),
        ResponseError::RebalanceInProgress.code()
    );
    assert_eq!(g.tick(15_003, &lim()), 1, "b did not rejoin in time");
    // Leaves: by id, and by instance id.
    let (c2, mut g) = (cat(), upgraded());
    assert_eq!(g.classic_leave("a", None), 0);
    assert_eq!(
        g.classic_leave("a", None),
        ResponseError::UnknownMemberId.code()
    );
    let mut s = join("", "range", subscription(0, &[]));
    s.instance_id = Some("i1".into());
    let j = g.classic_join(&s, 1, &lim(), &c2);
    assert_eq!(
        j.error, 0,
        "a static member needs no MEMBER_ID_REQUIRED round"
    );
    assert_eq!(
        g.classic_leave("other", Some("i1")),
        ResponseError::FencedInstanceId.code()
    );
    assert_eq!(g.classic_leave("", Some("i1")), 0);
    // A group that is not of consumers cannot be taken over.
    let mut export = ClassicExport {
        generation: 1,
        protocol_type: "connect".into(),
        protocol: "range".into(),
        members: vec![],
    };
    assert!(ConsumerGroup::from_classic(&export, 0, &lim(), &c2).is_err());
    export.protocol_type = "consumer".into();
    export.members.push(ExportedMember {
        id: "m".into(),
        instance_id: None,
        client_id: String::new(),
        client_host: String::new(),
        session_timeout_ms: 1,
        rebalance_timeout_ms: 1,
        protocols: vec![(
            "range".into(),
            Bytes::from_static(b"\x00\x00\x7f\xff\xff\xff"),
        )],
        assignment: Bytes::new(),
    });
    assert!(
        ConsumerGroup::from_classic(&export, 0, &lim(), &c2).is_err(),
        "a hostile subscription"
    );
}

#[test]
fn once_only_classic_members_remain_the_group_is_classic_again_with_a_rebalance() {
    use crate::groups::group::{Group, GroupLimits, State};
    let (c, mut g) = (cat(), upgraded());
    assert_eq!(
        g.downgradable().map(|m| m.len()),
        Some(2),
        "classic members only: a classic group (an upgrade whose joining member failed)"
    );
    let joined = g.heartbeat(
        Heartbeat {
            member_id: "c".into(),
            member_epoch: 0,
            topic_names: Some(vec!["t".into()]),
            owned: Some(Parts::new()),
            ..Default::default()
        },
        1,
        &lim(),
        &c,
    );
    assert!(
        g.downgradable().is_none(),
        "a consumer-protocol member is in the group"
    );
    g.heartbeat(
        Heartbeat {
            member_id: "c".into(),
            member_epoch: -1,
            ..Default::default()
        },
        2,
        &lim(),
        &c,
    );
    assert!(joined.member_epoch > 0);
    let members = g.downgradable().expect("only classic members left");
    assert_eq!(members.len(), 2);
    assert_eq!(members[0].protocols[0].0, "range");
    let glim = GroupLimits {
        min_session_timeout_ms: 1,
        max_session_timeout_ms: 60_000,
        initial_rebalance_delay_ms: 0,
        max_size: 10,
        max_assignment_bytes: 1 << 20,
        consumer: lim(),
    };
    // a and b are still at the upgrade's generation: that is the classic group's, so they are
    // told to rejoin (and may still commit), not that their generation is stale.
    let generation = g.downgrade_generation();
    assert_eq!(generation, 5);
    let mut classic = Group::from_consumer(generation, members, 3, &glim);
    assert_eq!(
        classic.state(),
        State::PreparingRebalance,
        "a rebalance begins at once"
    );
    assert_eq!(
        classic.heartbeat("a", None, 5, 4),
        ResponseError::RebalanceInProgress.code(),
        "the members are told to rejoin"
    );
    assert_eq!(
        classic.check_commit("a", None, 5),
        Ok(()),
        "what a consumed is committed"
    );
    assert_eq!(
        classic.heartbeat("b", None, 3, 4),
        ResponseError::IllegalGeneration.code()
    );
    let mut waits = Vec::new();
    for id in ["a", "b"] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        classic.join(join(id, "range", subscription(0, &[])), 5, &glim, tx);
        waits.push(rx);
    }
    let results: Vec<JoinResult> = waits
        .into_iter()
        .map(|mut r| r.try_recv().expect("answered"))
        .collect();
    assert_eq!(classic.state(), State::CompletingRebalance);
    assert!(
        results.iter().all(|r| r.error == 0 && r.generation == 6),
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|r| !r.members.is_empty()).count(),
        1,
        "one leader assigns"
    );
}
