//! Transaction version 2 (KIP-890 part 2), as a Kafka 4 Java client speaks it, in raw frames
//! (librdkafka and kafka-python do not speak it yet): the agent offers `transaction.version` 2
//! in ApiVersions; partitions join a transaction with their first Produce v12 and groups with
//! TxnOffsetCommit v5, without AddPartitionsToTxn or AddOffsetsToTxn; every EndTxn v5 moves the
//! producer to the next epoch, so a delayed write of an ended transaction can never land in a
//! later one; a retried EndTxn whose answer was lost is recognised, also after a SIGKILL; a
//! transaction open at a SIGKILL is aborted by the producer's next instance; read_committed
//! readers see committed transactions once and aborted ones never.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::kafka::create_topic;
use crate::protocol::Conn;

const TOPIC: &str = "tv2";
const TID: &str = "tv2-app";
const GROUP: &str = "tv2-group";

fn name() -> TopicName {
    TopicName(StrBytes::from_static_str(TOPIC))
}

/// A transactional batch of `n` records of `pid` at `epoch` from sequence `seq`.
fn txn_batch(n: usize, (pid, epoch): (i64, i16), seq: i32) -> Bytes {
    let mut b = crate::protocol::batch(n, pid, epoch, seq).to_vec();
    b[21..23].copy_from_slice(&0x10u16.to_be_bytes()); // the transactional attribute
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(b)
}

/// Produce v12 of one transactional batch to `partition`: the partition's error code.
fn produce(c: &mut Conn, partition: i32, records: Bytes) -> i16 {
    let r: ProduceResponse = c.call(
        ApiKey::Produce,
        12,
        &ProduceRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(TID))))
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(name())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(records))])]),
    );
    r.responses[0].partition_responses[0].error_code
}

/// EndTxn v5, retried while a client retries: (error, producer id, epoch).
fn end(c: &mut Conn, (pid, epoch): (i64, i16), commit: bool) -> (i16, i64, i16) {
    for _ in 0..400 {
        let r: EndTxnResponse = c.call(
            ApiKey::EndTxn,
            5,
            &EndTxnRequest::default()
                .with_transactional_id(TransactionalId(StrBytes::from_static_str(TID)))
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_committed(commit),
        );
        if r.error_code != 51 {
            return (r.error_code, r.producer_id.0, r.producer_epoch);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("EndTxn stayed CONCURRENT_TRANSACTIONS");
}

fn init(c: &mut Conn) -> (i64, i16) {
    for _ in 0..200 {
        let r: InitProducerIdResponse = c.call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(TID))))
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        );
        if r.error_code == 0 {
            return (r.producer_id.0, r.producer_epoch);
        }
        assert!([14, 15, 16, 51].contains(&r.error_code), "{r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("InitProducerId never succeeded");
}

/// TxnOffsetCommit v5 (no AddOffsetsToTxn before it) of `offset` for partition 0.
fn commit_offset(c: &mut Conn, (pid, epoch): (i64, i16), offset: i64) -> i16 {
    let r: TxnOffsetCommitResponse = c.call(
        ApiKey::TxnOffsetCommit,
        5,
        &TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_static_str(TID)))
            .with_group_id(GroupId(StrBytes::from_static_str(GROUP)))
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_generation_id(-1)
            .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                .with_name(name())
                .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(offset)])]),
    );
    r.topics[0].partitions[0].error_code
}

fn committed_offset(c: &mut Conn) -> i64 {
    crate::transactions::stable_committed_offset(c, GROUP, TOPIC)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_version_2_moves_the_epoch_on_with_every_transaction() {
    let mut agent = crate::harness::AgentProc::start(&[]);
    create_topic(&agent.bootstrap(), TOPIC, 2, &[]).await;
    let mut c = Conn::open(&agent);

    // Offered as a Kafka 4 broker offers it.
    let v: ApiVersionsResponse = c.call(
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("silt-test"))
            .with_client_software_version(StrBytes::from_static_str("1")),
    );
    let tv = v
        .finalized_features
        .iter()
        .find(|f| f.name.as_str() == "transaction.version")
        .expect("transaction.version finalized");
    assert_eq!((tv.min_version_level, tv.max_version_level), (2, 2));
    assert!(v.finalized_features_epoch > 0);
    let max = |k: ApiKey| {
        v.api_keys
            .iter()
            .find(|a| a.api_key == k as i16)
            .map_or(-1, |a| a.max_version)
    };
    assert!(max(ApiKey::Produce) >= 12 && max(ApiKey::EndTxn) >= 5);
    assert!(max(ApiKey::TxnOffsetCommit) >= 5);

    // Transaction 1 at epoch e: partitions and the group join implicitly.
    let first = init(&mut c);
    let (pid, e) = first;
    assert_eq!(produce(&mut c, 0, txn_batch(3, first, 0)), 0, "first write");
    assert_eq!(produce(&mut c, 1, txn_batch(2, first, 0)), 0);
    assert_eq!(
        commit_offset(&mut c, first, 7),
        0,
        "offsets join implicitly"
    );
    assert_eq!(end(&mut c, first, true), (0, pid, e + 1), "the next epoch");
    assert_eq!(committed_offset(&mut c), 7);
    // Its answer lost, the client retries with the identity it had: the same answer.
    assert_eq!(
        end(&mut c, first, true),
        (0, pid, e + 1),
        "a retried EndTxn"
    );
    assert_eq!(
        end(&mut c, first, false).0,
        48,
        "INVALID_TXN_STATE: the other outcome"
    );

    // A delayed write of transaction 1 (the next sequence, never sent before) cannot open a
    // transaction of its own or join the next one.
    let late = produce(&mut c, 0, txn_batch(1, first, 3));
    assert_eq!(
        late, 47,
        "INVALID_PRODUCER_EPOCH after the transaction ended"
    );
    assert_eq!(
        commit_offset(&mut c, first, 99),
        47,
        "INVALID_PRODUCER_EPOCH"
    );

    // Transaction 2 at epoch e+1 (sequences start again), aborted.
    let second = (pid, e + 1);
    assert_eq!(produce(&mut c, 0, txn_batch(5, second, 0)), 0);
    let late = produce(&mut c, 0, txn_batch(1, first, 3));
    assert_eq!(
        late, 47,
        "INVALID_PRODUCER_EPOCH inside the next transaction"
    );
    assert_eq!(commit_offset(&mut c, second, 50), 0);
    assert_eq!(end(&mut c, second, false), (0, pid, e + 2));
    assert_eq!(committed_offset(&mut c), 7, "aborted offsets are dropped");

    // Aborting with nothing open moves the epoch on too; committing with nothing open is refused.
    let third = (pid, e + 2);
    assert_eq!(end(&mut c, third, true).0, 48, "INVALID_TXN_STATE");
    assert_eq!(end(&mut c, third, false), (0, pid, e + 3));

    // Transaction 3 at e+3 commits one record on partition 0.
    let fourth = (pid, e + 3);
    assert_eq!(produce(&mut c, 0, txn_batch(1, fourth, 0)), 0);
    assert_eq!(end(&mut c, fourth, true), (0, pid, e + 4));

    // SIGKILL: the ended transaction and its retry identity are durable.
    agent.restart();
    let mut c = Conn::open(&agent);
    assert_eq!(
        end(&mut c, fourth, true),
        (0, pid, e + 4),
        "retried after a crash"
    );
    // A fifth transaction's write is acknowledged, then the agent is SIGKILLed again.
    let fifth = (pid, e + 4);
    assert_eq!(produce(&mut c, 1, txn_batch(4, fifth, 0)), 0);
    agent.restart();
    let mut c = Conn::open(&agent);
    // A new instance aborts it (at a fencing epoch) and fences the old one.
    let next = init(&mut c);
    assert_eq!(
        next,
        (pid, e + 6),
        "one epoch for the abort, one for the new instance"
    );
    assert_eq!(end(&mut c, fifth, true).0, 90, "PRODUCER_FENCED");
    assert_eq!(
        produce(&mut c, 1, txn_batch(1, fifth, 4)),
        47,
        "the zombie cannot write"
    );

    // read_committed: the committed transactions once; the aborted ones never.
    let mut values = crate::transactions::read_committed(&agent.bootstrap(), TOPIC, 2);
    values.sort();
    assert_eq!(values, ["v0", "v0", "v0", "v1", "v1", "v2"], "{values:?}");
}
