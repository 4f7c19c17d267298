//! Consumer groups end to end: rdkafka StreamConsumers sharing a topic, committed offsets that
//! survive SIGKILL of the agent, and hostile group clients that get Kafka's error codes without
//! disturbing other groups.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::harness::AgentProc;
use crate::kafka::{config, create_topic, producer};
use crate::protocol::Conn;

pub const GROUP_ENV: &[(&str, &str)] = &[
    ("SILT_GROUPS__INITIAL_REBALANCE_DELAY_MS", "200"),
    ("SILT_GROUPS__MIN_SESSION_TIMEOUT_MS", "1000"),
];

pub fn group_consumer(bootstrap: &str, group: &str) -> StreamConsumer {
    config(
        bootstrap,
        &[
            ("group.id", group),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "false"),
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
            ("fetch.wait.max.ms", "50"),
        ],
    )
    .create()
    .expect("consumer")
}

pub async fn produce_n(b: &str, topic: &str, partitions: i32, n: usize) {
    let p = producer(b, &[]);
    let mut futs = Vec::new();
    for i in 0..n {
        let v = format!("r{i}");
        futs.push(
            p.send_result(
                FutureRecord::to(topic)
                    .partition((i % partitions as usize) as i32)
                    .key("k")
                    .payload(&v),
            )
            .unwrap(),
        );
    }
    for f in futs {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_consumers_share_a_topic_and_commits_survive_sigkill() {
    let mut agent = AgentProc::start(GROUP_ENV);
    let b = agent.bootstrap();
    create_topic(&b, "shared", 6, &[]).await;
    produce_n(&b, "shared", 6, 600).await;

    let consumers: Vec<StreamConsumer> = (0..3).map(|_| group_consumer(&b, "g-stream")).collect();
    for c in &consumers {
        c.subscribe(&["shared"]).unwrap();
    }
    let mut seen: HashMap<(i32, i64), usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 600 && Instant::now() < deadline {
        for (i, c) in consumers.iter().enumerate() {
            if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(50), c.recv()).await {
                if let Some(prev) = seen.insert((m.partition(), m.offset()), i) {
                    assert_eq!(
                        prev,
                        i,
                        "record {}:{} delivered to two members",
                        m.partition(),
                        m.offset()
                    );
                }
            }
        }
    }
    assert_eq!(seen.len(), 600, "every record consumed");
    // Every member owns a disjoint share of the six partitions, and together all of them.
    let mut owned = HashSet::new();
    for c in &consumers {
        let a = c.assignment().unwrap();
        assert_eq!(a.count(), 2, "a fair share");
        for e in a.elements() {
            assert!(
                owned.insert(e.partition()),
                "partition {} owned twice",
                e.partition()
            );
        }
    }
    assert_eq!(owned.len(), 6);
    for c in &consumers {
        c.commit_consumer_state(CommitMode::Sync).unwrap();
    }
    drop(consumers);

    agent.kill();
    agent.restart();
    let b = agent.bootstrap();
    let c = group_consumer(&b, "g-stream");
    let mut tpl = TopicPartitionList::new();
    for p in 0..6 {
        tpl.add_partition("shared", p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    for e in committed.elements() {
        assert_eq!(
            e.offset(),
            Offset::Offset(100),
            "partition {} committed offset after SIGKILL",
            e.partition()
        );
    }
    // A member of the group resumes there: only new records arrive.
    produce_n(&b, "shared", 6, 6).await;
    c.subscribe(&["shared"]).unwrap();
    let mut fresh = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fresh.len() < 6 && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
            fresh.push(m.offset());
        }
    }
    assert_eq!(
        fresh,
        vec![100; 6],
        "resumed exactly at the committed offsets"
    );
}

fn join_req(group: &str, member: &str, meta: Bytes) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.into())))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(StrBytes::from_string(member.into()))
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(StrBytes::from_static_str("range"))
            .with_metadata(meta)])
}

fn gid(s: &str) -> GroupId {
    GroupId(StrBytes::from_string(s.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_group_clients_get_kafka_errors_and_disturb_no_one() {
    let agent = AgentProc::start(GROUP_ENV);
    let b = agent.bootstrap();
    create_topic(&b, "calm", 2, &[]).await;
    let good = group_consumer(&b, "good");
    good.subscribe(&["calm"]).unwrap();
    produce_n(&b, "calm", 2, 10).await;
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < 10 && Instant::now() < deadline {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), good.recv()).await {
            got += 1;
        }
    }
    assert_eq!(got, 10, "the well-behaved group consumes");
    let rss_before = agent.rss_kib();

    let mut c = Conn::open(&agent);
    // Unknown member, wrong generation, empty group id.
    let hb: HeartbeatResponse = c.call(
        ApiKey::Heartbeat,
        4,
        &HeartbeatRequest::default()
            .with_group_id(gid("good"))
            .with_generation_id(1)
            .with_member_id(StrBytes::from_static_str("intruder")),
    );
    assert_eq!(hb.error_code, 25, "UNKNOWN_MEMBER_ID");
    let jr: JoinGroupResponse = c.call(ApiKey::JoinGroup, 5, &join_req("", "", Bytes::new()));
    assert_eq!(jr.error_code, 24, "INVALID_GROUP_ID");

    // A member of its own group, then bad syncs and commits.
    let r: JoinGroupResponse = c.call(
        ApiKey::JoinGroup,
        5,
        &join_req("mine", "", Bytes::from_static(b"m")),
    );
    assert_eq!(r.error_code, 79, "MEMBER_ID_REQUIRED");
    let me = r.member_id.clone();
    let r: JoinGroupResponse = c.call(
        ApiKey::JoinGroup,
        5,
        &join_req("mine", &me, Bytes::from_static(b"m")),
    );
    assert_eq!((r.error_code, r.generation_id), (0, 1));
    let bad_sync: SyncGroupResponse = c.call(
        ApiKey::SyncGroup,
        3,
        &SyncGroupRequest::default()
            .with_group_id(gid("mine"))
            .with_generation_id(5)
            .with_member_id(me.clone()),
    );
    assert_eq!(bad_sync.error_code, 22, "ILLEGAL_GENERATION");
    let huge = SyncGroupRequestAssignment::default()
        .with_member_id(me.clone())
        .with_assignment(Bytes::from(vec![0u8; 2 << 20]));
    let sync: SyncGroupResponse = c.call(
        ApiKey::SyncGroup,
        3,
        &SyncGroupRequest::default()
            .with_group_id(gid("mine"))
            .with_generation_id(1)
            .with_member_id(me.clone())
            .with_assignments(vec![huge]),
    );
    assert_eq!(
        sync.error_code, -1,
        "a 2 MiB assignment is refused the way Kafka refuses it"
    );
    let commit: OffsetCommitResponse = c.call(
        ApiKey::OffsetCommit,
        8,
        &OffsetCommitRequest::default()
            .with_group_id(gid("mine"))
            .with_generation_id_or_member_epoch(42)
            .with_member_id(me.clone())
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("calm")))
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_committed_offset(3),
                    ]),
            ]),
    );
    assert_eq!(
        commit.topics[0].partitions[0].error_code, 22,
        "ILLEGAL_GENERATION"
    );

    // A thousand joins to one group: bounded by groups.max_size, answered, no growth.
    let mut codes = HashMap::new();
    for _ in 0..1000 {
        c.send(
            ApiKey::JoinGroup,
            5,
            &join_req("flood", "", Bytes::from(vec![1u8; 1024])),
        );
    }
    for _ in 0..1000 {
        let (_, r): (i32, JoinGroupResponse) = c.recv(ApiKey::JoinGroup, 5);
        *codes.entry(r.error_code).or_insert(0) += 1;
    }
    assert_eq!(codes.values().sum::<i32>(), 1000);
    assert!(
        codes.keys().all(|c| *c == 79 || *c == 81),
        "MEMBER_ID_REQUIRED or GROUP_MAX_SIZE_REACHED: {codes:?}"
    );

    // The good group is undisturbed.
    produce_n(&b, "calm", 2, 4).await;
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < 4 && Instant::now() < deadline {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), good.recv()).await {
            got += 1;
        }
    }
    assert_eq!(got, 4, "the good group keeps consuming");
    let rss_after = agent.rss_kib();
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}
