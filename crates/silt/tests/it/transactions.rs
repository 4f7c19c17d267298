//! Transactions on a three-agent cluster (real etcd, real SeaweedFS) with the `rdkafka` crate:
//! a transactional producer writes to partitions led by every agent (markers are written by
//! each partition's leader at the coordinator's request) while the coordinator's agent is
//! SIGKILLed; a read_committed reader then finds every committed transaction whole, once, no
//! aborted one, and every transaction whose outcome the client could not learn all or nothing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::cluster::TestCluster;
use crate::kafka::{config, create_topic};

/// Every record a read_committed reader gets, from the beginning, until nothing new arrives
/// for a while: (partition, offset, value), in arrival order.
pub fn read_committed_records(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i32, i64, String)> {
    let c: BaseConsumer = config(
        bootstrap,
        &[
            ("group.id", "txn-checker"),
            ("enable.auto.commit", "false"),
            ("isolation.level", "read_committed"),
            ("fetch.wait.max.ms", "50"),
        ],
    )
    .create()
    .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(180);
    while last.elapsed() < Duration::from_secs(6) && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let v = String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap();
            out.push((m.partition(), m.offset(), v));
            last = Instant::now();
        }
    }
    out
}

/// Partition 0's committed offset of `topic` for `group`, once no transaction has it pending
/// (OffsetFetch with `require_stable`, retried while the answer is not settled).
pub fn stable_committed_offset(conn: &mut crate::protocol::Conn, group: &str, topic: &str) -> i64 {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    for _ in 0..200 {
        let r: OffsetFetchResponse = conn.call(
            ApiKey::OffsetFetch,
            7,
            &OffsetFetchRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
                .with_require_stable(true)
                .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_indexes(vec![0])])),
        );
        let p = &r.topics[0].partitions[0];
        if r.error_code == 0 && p.error_code == 0 {
            return p.committed_offset;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the committed offset never settled");
}

/// The values [`read_committed_records`] reads.
pub fn read_committed(bootstrap: &str, topic: &str, partitions: i32) -> Vec<String> {
    read_committed_records(bootstrap, topic, partitions)
        .into_iter()
        .map(|(_, _, v)| v)
        .collect()
}

fn txn_producer(bootstrap: &str, tid: &str) -> FutureProducer {
    let p: FutureProducer = config(
        bootstrap,
        &[
            ("transactional.id", tid),
            ("transaction.timeout.ms", "30000"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "30000"),
        ],
    )
    .create()
    .expect("transactional producer");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match p.init_transactions(Duration::from_secs(30)) {
            Ok(()) => return p,
            Err(e) if Instant::now() < deadline => {
                eprintln!("init_transactions: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("init_transactions: {e}"),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Committed,
    Aborted,
    Unknown,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_across_agents_are_all_or_nothing_through_a_coordinator_kill() {
    let mut c = TestCluster::start(3);
    let b = c.bootstrap();
    create_topic(&b, "txc", 6, &[]).await;
    let tid = "txc-app";
    let coordinator = crate::cluster::find_coordinator(&c, tid);
    let mut p = txn_producer(&b, tid);
    let mut rounds: Vec<(Vec<String>, Outcome)> = Vec::new();
    let mut killed = None;
    for round in 0..14 {
        if round == 6 {
            let i = (coordinator - 1) as usize;
            c.agents[i].kill();
            killed = Some((i, Instant::now()));
        }
        if round == 10 {
            if let Some((i, _)) = killed {
                c.agents[i].start_again();
            }
        }
        let values: Vec<String> = (0..12).map(|i| format!("t{round}-{i}")).collect();
        let abort = round % 4 == 3;
        let mut outcome = Outcome::Unknown;
        let attempt: Result<(), String> = async {
            p.begin_transaction().map_err(|e| e.to_string())?;
            for (i, v) in values.iter().enumerate() {
                p.send(
                    FutureRecord::to("txc")
                        .partition(i as i32 % 6)
                        .payload(v)
                        .key(v),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e.to_string())?;
            }
            if abort {
                p.abort_transaction(Duration::from_secs(60))
                    .map_err(|e| e.to_string())?;
                outcome = Outcome::Aborted;
            } else {
                p.commit_transaction(Duration::from_secs(60))
                    .map_err(|e| e.to_string())?;
                outcome = Outcome::Committed;
            }
            Ok(())
        }
        .await;
        if let Err(e) = attempt {
            eprintln!("round {round}: {e}; a new producer instance takes over");
            // Whatever the client saw, the transaction ends whole: the next instance aborts it
            // if it was open, or its prepared commit is completed.
            p = txn_producer(&b, tid);
        }
        rounds.push((values, outcome));
    }
    if let Some((_, at)) = killed {
        eprintln!(
            "coordinator agent killed; rounds went on {} s later",
            at.elapsed().as_secs()
        );
    }
    let seen = read_committed(&b, "txc", 6);
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no record read twice");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (round, (values, outcome)) in rounds.iter().enumerate() {
        let present = values.iter().filter(|v| unique.contains(v)).count();
        *counts
            .entry(match outcome {
                Outcome::Committed => "committed",
                Outcome::Aborted => "aborted",
                Outcome::Unknown => "unknown",
            })
            .or_default() += 1;
        match outcome {
            Outcome::Committed => {
                assert_eq!(present, values.len(), "round {round} committed: all of it")
            }
            Outcome::Aborted => assert_eq!(present, 0, "round {round} aborted: none of it"),
            Outcome::Unknown => assert!(
                present == 0 || present == values.len(),
                "round {round}: torn transaction ({present} of {} read)",
                values.len()
            ),
        }
    }
    let expected: usize = rounds
        .iter()
        .filter(|(_, o)| *o == Outcome::Committed)
        .count();
    assert!(expected >= 8, "most rounds committed: {counts:?}");
    eprintln!("rounds: {counts:?}; records read: {}", seen.len());
}

/// DescribeTransactions and ListTransactions show an open transaction (its state, producer,
/// partitions) and then its completion; filters and unknown ids are answered as Kafka does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_described_and_listed() {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    let agent = crate::harness::AgentProc::start(&[]);
    let b = agent.bootstrap();
    create_topic(&b, "described", 2, &[]).await;
    let p = txn_producer(&b, "desc-app");
    p.begin_transaction().unwrap();
    for i in 0..4 {
        p.send(
            FutureRecord::to("described")
                .partition(i % 2)
                .payload("v")
                .key("k"),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    let mut conn = crate::protocol::Conn::open(&agent);
    let describe = |conn: &mut crate::protocol::Conn| -> DescribeTransactionsResponse {
        conn.call(
            ApiKey::DescribeTransactions,
            0,
            &DescribeTransactionsRequest::default().with_transactional_ids(vec![
                TransactionalId(StrBytes::from_static_str("desc-app")),
                TransactionalId(StrBytes::from_static_str("never-used")),
            ]),
        )
    };
    let d = describe(&mut conn);
    let open = &d.transaction_states[0];
    assert_eq!(open.error_code, 0);
    assert_eq!(open.transaction_state.as_str(), "Ongoing");
    assert!(open.producer_id.0 >= 0 && open.transaction_start_time_ms > 0);
    let mut parts = open.topics[0].partitions.clone();
    parts.sort();
    assert_eq!(
        (open.topics[0].topic.0.as_str(), parts),
        ("described", vec![0, 1])
    );
    assert_eq!(
        d.transaction_states[1].error_code, 105,
        "TRANSACTIONAL_ID_NOT_FOUND"
    );

    let list =
        |conn: &mut crate::protocol::Conn, states: &[&'static str]| -> ListTransactionsResponse {
            conn.call(
                ApiKey::ListTransactions,
                1,
                &ListTransactionsRequest::default()
                    .with_state_filters(
                        states
                            .iter()
                            .map(|s| StrBytes::from_static_str(s))
                            .collect(),
                    )
                    .with_duration_filter(-1),
            )
        };
    // DescribeProducers: the producer on each partition, its open transaction's first offset.
    let producers = |conn: &mut crate::protocol::Conn| -> DescribeProducersResponse {
        conn.call(
            ApiKey::DescribeProducers,
            0,
            &DescribeProducersRequest::default().with_topics(vec![
                describe_producers_request::TopicRequest::default()
                    .with_name(TopicName(StrBytes::from_static_str("described")))
                    .with_partition_indexes(vec![0, 1, 7]),
                describe_producers_request::TopicRequest::default()
                    .with_name(TopicName(StrBytes::from_static_str("nope")))
                    .with_partition_indexes(vec![0]),
            ]),
        )
    };
    let dp = producers(&mut conn);
    let parts = &dp.topics[0].partitions;
    for part in &parts[..2] {
        assert_eq!(part.error_code, 0, "{part:?}");
        assert_eq!(part.active_producers.len(), 1, "{part:?}");
        let a = &part.active_producers[0];
        assert_eq!(a.producer_id, open.producer_id);
        assert_eq!(a.producer_epoch, open.producer_epoch as i32);
        assert_eq!(a.last_sequence, 1, "two records on each partition: {a:?}");
        assert_eq!(
            a.current_txn_start_offset, 0,
            "the open transaction starts at 0"
        );
        assert!(a.last_timestamp > 0);
    }
    assert_eq!(
        parts[2].error_code, 3,
        "partition 7: UNKNOWN_TOPIC_OR_PARTITION"
    );
    assert_eq!(dp.topics[1].partitions[0].error_code, 3, "unknown topic");

    let l = list(&mut conn, &["Ongoing", "Bogus"]);
    assert_eq!(l.transaction_states.len(), 1);
    assert_eq!(
        l.transaction_states[0].transactional_id.0.as_str(),
        "desc-app"
    );
    assert_eq!(l.unknown_state_filters.len(), 1, "Bogus is not a state");

    // The command line and the metrics show it too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_silt"))
        .args(["admin", "--bootstrap", &b, "transactions", "list"])
        .env_remove("SILT_ADMIN_BOOTSTRAP")
        .output()
        .unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    let line = out
        .lines()
        .find(|l| l.starts_with("desc-app"))
        .unwrap_or_else(|| panic!("no desc-app in:\n{out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[1], "Ongoing", "{line}");
    assert!(cells[4].parse::<i64>().is_ok(), "open for some ms: {line}");
    assert_eq!(cells[5], "described-0,described-1", "{line}");
    let m = agent.metrics();
    assert_eq!(
        m[r#"silt_open_transactions{topic="described",partition="0"}"#],
        1.0
    );
    assert_eq!(m[r#"silt_lso_lag{topic="described",partition="1"}"#], 2.0);

    p.commit_transaction(Duration::from_secs(30)).unwrap();
    let m = agent.metrics();
    assert_eq!(
        m[r#"silt_open_transactions{topic="described",partition="0"}"#],
        0.0
    );
    assert_eq!(m[r#"silt_lso_lag{topic="described",partition="1"}"#], 0.0);
    let d = describe(&mut conn);
    assert_eq!(
        d.transaction_states[0].transaction_state.as_str(),
        "CompleteCommit"
    );
    assert!(list(&mut conn, &["Ongoing"]).transaction_states.is_empty());
    let dp = producers(&mut conn);
    let a = &dp.topics[0].partitions[0].active_producers[0];
    assert_eq!(
        (a.last_sequence, a.current_txn_start_offset),
        (1, -1),
        "committed: no open transaction, the marker leaves the sequence alone"
    );
    assert_eq!(list(&mut conn, &[]).transaction_states.len(), 1);
}

/// Offsets sent in a transaction land only in that producer's open transaction: a late
/// TxnOffsetCommit of an ended transaction gets INVALID_TXN_STATE, and a zombie's (an older
/// epoch of the same transactional id, arriving after the new instance sent its own offsets)
/// gets INVALID_PRODUCER_EPOCH, instead of being merged into the new transaction, whose commit
/// would have made the zombie's older offsets the group's (a consume-transform-produce
/// application would then process inputs twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_zombie_offset_commits_never_land_in_a_later_transaction() {
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    let agent = crate::harness::AgentProc::start(&[]);
    create_topic(&agent.bootstrap(), "zin", 1, &[]).await;
    let mut conn = crate::protocol::Conn::open(&agent);
    let tid = || TransactionalId(StrBytes::from_static_str("zombie-app"));
    let group = || GroupId(StrBytes::from_static_str("zombie-group"));
    // Retries what a client retries (the coordinator loading, a transaction completing).
    let retriable = [14, 15, 16, 51];
    let init = |conn: &mut crate::protocol::Conn| -> (i64, i16) {
        for _ in 0..200 {
            let r: InitProducerIdResponse = conn.call(
                ApiKey::InitProducerId,
                1,
                &InitProducerIdRequest::default()
                    .with_transactional_id(Some(tid()))
                    .with_transaction_timeout_ms(60_000),
            );
            if r.error_code == 0 {
                return (r.producer_id.0, r.producer_epoch);
            }
            assert!(retriable.contains(&r.error_code), "InitProducerId: {r:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("InitProducerId never succeeded");
    };
    let add = |conn: &mut crate::protocol::Conn, (pid, epoch): (i64, i16)| {
        let r: AddOffsetsToTxnResponse = conn.call(
            ApiKey::AddOffsetsToTxn,
            1,
            &AddOffsetsToTxnRequest::default()
                .with_transactional_id(tid())
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_group_id(group()),
        );
        assert_eq!(r.error_code, 0, "AddOffsetsToTxn");
    };
    let offsets =
        |conn: &mut crate::protocol::Conn, (pid, epoch): (i64, i16), offset: i64| -> i16 {
            let r: TxnOffsetCommitResponse = conn.call(
                ApiKey::TxnOffsetCommit,
                2,
                &TxnOffsetCommitRequest::default()
                    .with_transactional_id(tid())
                    .with_group_id(group())
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch)
                    .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_static_str("zin")))
                        .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(offset)])]),
            );
            r.topics[0].partitions[0].error_code
        };
    let end = |conn: &mut crate::protocol::Conn, (pid, epoch): (i64, i16)| {
        for _ in 0..200 {
            let r: EndTxnResponse = conn.call(
                ApiKey::EndTxn,
                1,
                &EndTxnRequest::default()
                    .with_transactional_id(tid())
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch)
                    .with_committed(true),
            );
            if r.error_code == 0 {
                return;
            }
            assert!(retriable.contains(&r.error_code), "EndTxn: {r:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("EndTxn never succeeded");
    };
    let committed =
        |conn: &mut crate::protocol::Conn| stable_committed_offset(conn, "zombie-group", "zin");

    let first = init(&mut conn);
    add(&mut conn, first);
    assert_eq!(offsets(&mut conn, first, 10), 0);
    end(&mut conn, first);
    assert_eq!(committed(&mut conn), 10);
    // A late copy of the first transaction's offsets, once it ended.
    assert_eq!(offsets(&mut conn, first, 3), 48, "INVALID_TXN_STATE");

    // A new instance (a newer epoch) sends its offsets; then the old one's arrive.
    let second = init(&mut conn);
    assert_eq!(second.0, first.0);
    assert!(second.1 > first.1);
    add(&mut conn, second);
    assert_eq!(offsets(&mut conn, second, 20), 0);
    assert_eq!(offsets(&mut conn, first, 3), 47, "INVALID_PRODUCER_EPOCH");
    end(&mut conn, second);
    assert_eq!(
        committed(&mut conn),
        20,
        "the zombie's offsets were committed"
    );
}

/// KIP-447: offsets sent in a transaction name the consumer they come from (member id and
/// generation, TxnOffsetCommit v3+); those of a consumer the group no longer has at that
/// generation (rebalanced meanwhile) are refused, so the producer aborts and its outputs for
/// those inputs are never read — instead of committing positions the group has since moved
/// past or back from (a consume-transform-produce application would write inputs twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_of_a_rebalanced_consumer_never_join_a_transaction() {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    let agent =
        crate::harness::AgentProc::start(&[("SILT_GROUPS__INITIAL_REBALANCE_DELAY_MS", "0")]);
    create_topic(&agent.bootstrap(), "kin", 1, &[]).await;
    let mut conn = crate::protocol::Conn::open(&agent);
    let group = || GroupId(StrBytes::from_static_str("kip447"));
    let tid = || TransactionalId(StrBytes::from_static_str("kip447-app"));
    // A classic member: JoinGroup (twice: the first answer hands out the member id), SyncGroup.
    let join = |conn: &mut crate::protocol::Conn, member: &str| -> JoinGroupResponse {
        conn.call(
            ApiKey::JoinGroup,
            5,
            &JoinGroupRequest::default()
                .with_group_id(group())
                .with_session_timeout_ms(30_000)
                .with_rebalance_timeout_ms(30_000)
                .with_member_id(StrBytes::from_string(member.to_string()))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(bytes::Bytes::from_static(
                        b"\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff",
                    ))]),
        )
    };
    let first = join(&mut conn, "");
    assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
    let joined = join(&mut conn, first.member_id.as_str());
    assert_eq!(joined.error_code, 0, "{joined:?}");
    let (member, generation) = (joined.member_id.to_string(), joined.generation_id);
    let synced: SyncGroupResponse = conn.call(
        ApiKey::SyncGroup,
        3,
        &SyncGroupRequest::default()
            .with_group_id(group())
            .with_member_id(StrBytes::from_string(member.clone()))
            .with_generation_id(generation),
    );
    assert_eq!(synced.error_code, 0);
    // A transactional producer with the group in its transaction.
    let init: InitProducerIdResponse = conn.call(
        ApiKey::InitProducerId,
        1,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(tid()))
            .with_transaction_timeout_ms(60_000),
    );
    assert_eq!(init.error_code, 0);
    let (pid, epoch) = (init.producer_id, init.producer_epoch);
    let added: AddOffsetsToTxnResponse = conn.call(
        ApiKey::AddOffsetsToTxn,
        1,
        &AddOffsetsToTxnRequest::default()
            .with_transactional_id(tid())
            .with_producer_id(pid)
            .with_producer_epoch(epoch)
            .with_group_id(group()),
    );
    assert_eq!(added.error_code, 0);
    let commit = |conn: &mut crate::protocol::Conn, member: &str, generation: i32| -> i16 {
        let r: TxnOffsetCommitResponse = conn.call(
            ApiKey::TxnOffsetCommit,
            3,
            &TxnOffsetCommitRequest::default()
                .with_transactional_id(tid())
                .with_group_id(group())
                .with_producer_id(pid)
                .with_producer_epoch(epoch)
                .with_member_id(StrBytes::from_string(member.to_string()))
                .with_generation_id(generation)
                .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("kin")))
                    .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(5)])]),
        );
        r.topics[0].partitions[0].error_code
    };
    assert_eq!(
        commit(&mut conn, &member, generation - 1),
        22,
        "ILLEGAL_GENERATION"
    );
    assert_eq!(
        commit(&mut conn, "someone-else", generation),
        25,
        "UNKNOWN_MEMBER_ID"
    );
    assert_eq!(
        commit(&mut conn, &member, generation),
        0,
        "the current member at its generation"
    );
}
