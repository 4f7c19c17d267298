//! The limits layer against hostile clients (issue 12): clients that pipeline large fetches and
//! never read the answers cannot grow the agent's memory past its response budgets, and a
//! well-behaved producer is served meanwhile; connections past the per-address limit are closed
//! at once; idle connections are closed after `connections.idle_timeout_ms`.

use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::harness::{eventually, AgentProc};
use crate::kafka::{create_topic, producer, send};
use crate::protocol::Conn;

fn big_fetch(topic: &str) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(50 << 20)])])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_cannot_grow_memory() {
    let agent = AgentProc::start(&[]);
    let b = agent.bootstrap();
    create_topic(&b, "hoard", 1, &[]).await;
    let p = producer(&b, &[("linger.ms", "20"), ("batch.size", "1000000")]);
    let value = vec![9u8; 100_000];
    let sends: Vec<_> = (0..400)
        .map(|_| send(&p, "hoard", 0, b"k", &value))
        .collect();
    futures::future::join_all(sends).await; // 40 MB in the partition
    let baseline = agent.rss_kib();
    // Ten clients pipeline a hundred 50 MiB fetches each and never read a byte back.
    let mut hoarders: Vec<Conn> = (0..10).map(|_| Conn::open(&agent)).collect();
    for c in &mut hoarders {
        for _ in 0..100 {
            c.send(ApiKey::Fetch, 4, &big_fetch("hoard"));
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    // A well-behaved producer is still acknowledged promptly.
    let t = Instant::now();
    for i in 0..5 {
        send(&p, "hoard", 0, b"k", format!("ok-{i}").as_bytes()).await;
    }
    let ack = t.elapsed();
    let rss = agent.rss_kib();
    let m = agent.metrics();
    let reserved = m["silt_response_bytes_reserved"];
    eprintln!(
        "10 clients x 100 unread 50 MiB fetches: RSS {} -> {} MiB, {reserved} response bytes reserved, 5 acks in {ack:?}",
        baseline / 1024,
        rss / 1024
    );
    assert!(
        reserved <= (1u64 << 30) as f64,
        "the agent-wide budget holds"
    );
    assert!(
        rss < baseline + 1_600 * 1024,
        "RSS grew from {baseline} KiB to {rss} KiB"
    );
    assert!(ack < Duration::from_secs(10), "a producer waited {ack:?}");
    drop(hoarders);
    let released = eventually(Duration::from_secs(20), || {
        (agent.metrics()["silt_response_bytes_reserved"] == 0.0).then_some(())
    });
    assert!(
        released.is_some(),
        "closed connections give their budget back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limits_are_closed_and_idle_ones_time_out() {
    let agent = AgentProc::start(&[
        ("SILT_CONNECTIONS__MAX_PER_IP", "20"),
        ("SILT_CONNECTIONS__IDLE_TIMEOUT_MS", "1500"),
    ]);
    let mut conns: Vec<Conn> = (0..25).map(|_| Conn::open(&agent)).collect();
    let mut served = 0;
    let mut refused = 0;
    for c in &mut conns {
        c.send(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default());
        match c.recv_frame() {
            Some(_) => served += 1,
            None => refused += 1,
        }
    }
    assert_eq!((served, refused), (20, 5), "20 per address");
    let m = agent.metrics();
    assert!(m["silt_connections_refused_total{reason=\"per_ip\"}"] >= 5.0);
    // The served ones say nothing more: closed after the idle timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let closed = conns.iter_mut().map(|c| c.closed()).filter(|c| *c).count();
    assert_eq!(closed, 25, "every idle connection was closed");
    assert!(agent.metrics()["silt_connections_idle_closed_total"] >= served as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_counts_are_bounded_per_topic_and_in_all() {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;
    let agent = AgentProc::start(&[
        ("SILT_TOPICS__MAX_PARTITIONS_PER_TOPIC", "50"),
        ("SILT_TOPICS__MAX_PARTITIONS_TOTAL", "60"),
        ("SILT_TOPICS__AUTO_CREATE", "false"),
    ]);
    let a = crate::kafka::admin(&agent.bootstrap());
    let create = |name: &'static str, n: i32| {
        let a = &a;
        async move {
            let r = a
                .create_topics(
                    &[NewTopic::new(name, n, TopicReplication::Fixed(1))],
                    &AdminOptions::new(),
                )
                .await
                .unwrap();
            r[0].clone().map(|_| ()).map_err(|(_, e)| e)
        }
    };
    assert_eq!(
        create("too-wide", 51).await,
        Err(RDKafkaErrorCode::InvalidPartitions)
    );
    assert_eq!(create("fits", 40).await, Ok(()));
    assert_eq!(
        create("over-budget", 30).await,
        Err(RDKafkaErrorCode::PolicyViolation)
    );
    assert_eq!(create("last", 20).await, Ok(()));
}
