//! The limits layer against hostile clients (issue 12): clients that pipeline large fetches and
//! never read the answers cannot grow the agent's memory past its response budgets, and a
//! well-behaved producer is served meanwhile; connections past the per-address limit are closed
//! at once; idle connections are closed after `connections.idle_timeout_ms`; and under a flood
//! of a thousand connections that write and never read, the agent stays inside its one memory
//! budget (`memory_bytes`).

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
        reserved <= (128u64 << 20) as f64,
        "the agent-wide budget (an eighth of memory_bytes) holds: {reserved}"
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

/// A Produce v9 frame (acks=all) carrying one record of `value_len` bytes to `partition`.
fn produce_frame(topic: &str, partition: i32, value_len: usize) -> bytes::Bytes {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let records = crate::protocol::batch_of(&[(None, vec![7u8; value_len])], -1, -1, -1);
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    crate::protocol::frame(ApiKey::Produce, 9, 1, &req)
}

/// Issue 14 (one memory budget): a thousand connections write 256 KiB produce requests as fast
/// as the agent takes them and never read an answer, while fifty more pipeline 50 MiB fetches
/// they never read — far more than a 512 MiB agent can hold or write. Its resident size stays
/// under `memory_bytes` + 64 MiB throughout, each part stays inside its share, and once the
/// flood stops a well-behaved producer is served. (Before the request budget, frames read from
/// sockets were bounded only per connection, 1 024 requests each.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_inside_one_budget_under_a_flood() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    const BUDGET: u64 = 512 << 20;
    let agent = AgentProc::start(&[
        ("SILT_MEMORY_BYTES", &BUDGET.to_string()),
        ("SILT_CONNECTIONS__MAX_PER_IP", "2000"),
    ]);
    let b = agent.bootstrap();
    create_topic(&b, "flood", 16, &[]).await;
    let p = producer(&b, &[("linger.ms", "5")]);
    let value = vec![3u8; 100_000];
    futures::future::join_all((0..100).map(|_| send(&p, "flood", 0, b"k", &value))).await;
    let baseline = agent.rss_kib();
    let frames: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..16)
            .map(|i| produce_frame("flood", i, 256 << 10))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for i in 0..1000usize {
        let (frames, stop, written, b) = (frames.clone(), stop.clone(), written.clone(), b.clone());
        writers.push(tokio::spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(&b).await else {
                return;
            };
            // Aborted when the flood ends (a write waits while the agent does not read).
            let mut k = i;
            while !stop.load(Ordering::Relaxed) {
                let f = &frames[k % frames.len()];
                if s.write_all(f).await.is_err() {
                    return;
                }
                written.fetch_add(f.len() as u64, Ordering::Relaxed);
                k += 1;
            }
        }));
    }
    let mut hoarders: Vec<Conn> = (0..50).map(|_| Conn::open(&agent)).collect();
    for c in &mut hoarders {
        for _ in 0..20 {
            c.send(ApiKey::Fetch, 4, &big_fetch("flood"));
        }
    }
    let mut peak = 0u64;
    let (mut peak_requests, mut peak_buffer, mut peak_responses) = (0f64, 0f64, 0f64);
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak.max(agent.rss_kib());
        let m = agent.metrics();
        peak_requests = peak_requests.max(m["silt_request_bytes_reserved"]);
        peak_buffer = peak_buffer.max(m["silt_buffered_bytes"]);
        peak_responses = peak_responses.max(m["silt_response_bytes_reserved"]);
    }
    stop.store(true, Ordering::Relaxed);
    let offered = written.load(Ordering::Relaxed);
    for w in &writers {
        w.abort();
    }
    for w in writers {
        let _ = w.await;
    }
    drop(hoarders);
    eprintln!(
        "flood of 1 000 writers and 50 unread fetchers for 20 s against memory_bytes = {} MiB: {} MiB written to sockets; \
         RSS {} MiB at rest, peak {} MiB; peak reserved: requests {} MiB, buffer {} MiB, responses {} MiB",
        BUDGET >> 20,
        offered >> 20,
        baseline >> 10,
        peak >> 10,
        peak_requests as u64 >> 20,
        peak_buffer as u64 >> 20,
        peak_responses as u64 >> 20,
    );
    assert!(
        offered > 1 << 30,
        "the flood wrote only {offered} bytes: not an overload"
    );
    assert!(
        peak_requests <= (BUDGET / 8) as f64,
        "requests over their share: {peak_requests}"
    );
    assert!(
        peak_buffer <= (BUDGET / 8) as f64,
        "buffer over its share: {peak_buffer}"
    );
    assert!(
        peak_responses <= (BUDGET / 8) as f64,
        "responses over their share: {peak_responses}"
    );
    assert!(
        peak <= (BUDGET >> 10) + 64 * 1024,
        "RSS peaked at {} MiB, over memory_bytes ({} MiB) + 64 MiB",
        peak >> 10,
        BUDGET >> 20
    );
    // The flood is over: a producer is served again.
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        send(&p, "flood", 1, b"k", b"after"),
    )
    .await;
    assert!(r.is_ok(), "a producer was not served after the flood");
    eprintln!("first acknowledgement after the flood in {:?}", t.elapsed());
}
