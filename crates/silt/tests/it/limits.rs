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
    wide_fetch(topic, 1, 50 << 20)
}

/// A fetch of partitions `0..partitions` from offset 0, `per_partition` bytes each, 50 MiB in all.
fn wide_fetch(topic: &str, partitions: i32, per_partition: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(
                (0..partitions)
                    .map(|p| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(per_partition)
                    })
                    .collect(),
            )])
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

/// What a flood did, and the most the agent held meanwhile.
struct Flood {
    offered: u64,
    baseline: u64,
    peak: u64,
    peak_requests: f64,
    peak_buffer: f64,
    peak_responses: f64,
}

/// A thousand connections write produce requests of `value_len` bytes (each to one of
/// `partitions`, in turn) as fast as the agent takes them and never read an answer, while
/// fifty more pipeline fetches (`fetch`) they never read, for `secs` seconds.
async fn flood(
    agent: &AgentProc,
    topic: &str,
    partitions: i32,
    value_len: usize,
    fetch: FetchRequest,
    secs: u64,
) -> Flood {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    let b = agent.bootstrap();
    let baseline = agent.rss_kib();
    let frames: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..partitions)
            .map(|i| produce_frame(topic, i, value_len))
            .collect(),
    );
    // The fetchers first: their requests are written with blocking sends, which would hold a
    // runtime worker (and keep the flood going past its end) if the writers already filled the
    // agent's request budget.
    let mut hoarders: Vec<Conn> = (0..50).map(|_| Conn::open(agent)).collect();
    for c in &mut hoarders {
        for _ in 0..20 {
            c.send(ApiKey::Fetch, 4, &fetch);
        }
    }
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
    let mut f = Flood {
        offered: 0,
        baseline,
        peak: 0,
        peak_requests: 0.0,
        peak_buffer: 0.0,
        peak_responses: 0.0,
    };
    let until = Instant::now() + Duration::from_secs(secs);
    // The flood ends on time even when a sample is slow (the agent answers /metrics late
    // while it is flooded): the writers stop at `until`, and the sample in progress then is
    // the last. Samples block this worker only, not the writers' (block_in_place).
    let timer = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep_until(until.into()).await;
            stop.store(true, Ordering::Relaxed);
        }
    });
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (rss, m) = tokio::task::block_in_place(|| (agent.rss_kib(), agent.metrics()));
        f.peak = f.peak.max(rss);
        f.peak_requests = f.peak_requests.max(m["silt_request_bytes_reserved"]);
        f.peak_buffer = f.peak_buffer.max(m["silt_buffered_bytes"]);
        f.peak_responses = f.peak_responses.max(m["silt_response_bytes_reserved"]);
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    let _ = timer.await;
    f.offered = written.load(Ordering::Relaxed);
    for w in &writers {
        w.abort();
    }
    for w in writers {
        let _ = w.await;
    }
    drop(hoarders);
    f
}

/// The flood was an overload, and the agent stayed inside `budget` (+ 64 MiB) and each share.
fn assert_inside(budget: u64, what: &str, f: &Flood) {
    eprintln!(
        "{what} against memory_bytes = {} MiB: {} MiB written to sockets; \
         RSS {} MiB at rest, peak {} MiB; peak reserved: requests {} MiB, buffer {} MiB, responses {} MiB",
        budget >> 20,
        f.offered >> 20,
        f.baseline >> 10,
        f.peak >> 10,
        f.peak_requests as u64 >> 20,
        f.peak_buffer as u64 >> 20,
        f.peak_responses as u64 >> 20,
    );
    assert!(
        f.offered > 1 << 30,
        "the flood wrote only {} bytes: not an overload",
        f.offered
    );
    assert!(
        f.peak_requests <= (budget / 8) as f64,
        "requests over their share: {}",
        f.peak_requests
    );
    assert!(
        f.peak_buffer <= (budget / 8) as f64,
        "buffer over its share: {}",
        f.peak_buffer
    );
    assert!(
        f.peak_responses <= (budget / 8) as f64,
        "responses over their share: {}",
        f.peak_responses
    );
    assert!(
        f.peak <= (budget >> 10) + 64 * 1024,
        "RSS peaked at {} MiB, over memory_bytes ({} MiB) + 64 MiB",
        f.peak >> 10,
        budget >> 20
    );
}

/// Issue 14 (one memory budget): a thousand connections write 256 KiB produce requests as fast
/// as the agent takes them and never read an answer, while fifty more pipeline 50 MiB fetches
/// they never read — far more than a 512 MiB agent can hold or write. Its resident size stays
/// under `memory_bytes` + 64 MiB throughout, each part stays inside its share, and once the
/// flood stops a well-behaved producer is served. (Before the request budget, frames read from
/// sockets were bounded only per connection, 1 024 requests each.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_inside_one_budget_under_a_flood() {
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
    let f = flood(&agent, "flood", 16, 256 << 10, big_fetch("flood"), 20).await;
    assert_inside(
        BUDGET,
        "flood of 1 000 writers and 50 unread fetchers for 20 s",
        &f,
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

/// The same budget with the shape of many partitions: 4 000 partitions, each flood write to
/// the next one (16 KiB), the unread fetches asking for all 4 000 at 64 KiB each. Per-partition
/// state (buffered batches, tail cache entries, index entries of thousands of small flush
/// ranges) must fit the same budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_inside_one_budget_across_thousands_of_partitions() {
    const BUDGET: u64 = 512 << 20;
    const PARTITIONS: i32 = 4000;
    let agent = AgentProc::start(&[
        ("SILT_MEMORY_BYTES", &BUDGET.to_string()),
        ("SILT_CONNECTIONS__MAX_PER_IP", "2000"),
    ]);
    let b = agent.bootstrap();
    create_topic(&b, "wide", PARTITIONS, &[]).await;
    let fetch = wide_fetch("wide", PARTITIONS, 64 << 10);
    // 30 s: the wide fetches cost the agent more CPU per byte taken in than the narrow ones.
    let f = flood(&agent, "wide", PARTITIONS, 16 << 10, fetch, 30).await;
    assert_inside(BUDGET, "flood over 4 000 partitions for 30 s", &f);
    let p = producer(&b, &[("linger.ms", "5")]);
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        send(&p, "wide", 3999, b"k", b"after"),
    )
    .await;
    assert!(r.is_ok(), "a producer was not served after the flood");
}
