//! Scale scenarios: a topic of 10 000 partitions (`SILT_SCALE_PARTITIONS` to change) on one
//! agent, and on two agents over a real etcd and SeaweedFS. Create, produce one record to every
//! partition (acks=all), consume them all, take leadership over (a restart; the death of one of
//! two agents, half the partitions), run garbage collection. Checked: every record is read back,
//! no metadata transaction came near the store's limits (largest request, most operations), no
//! commit was refused, every partition is led again. Printed: transactions and bytes per flush,
//! the largest request, take-over and GC times, agent RSS (recorded in docs/benchmarks.md).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;

use crate::cluster::TestCluster;
use crate::harness::{eventually, AgentProc};
use crate::kafka::{config, consume_within, create_topic};

fn partitions() -> i32 {
    std::env::var("SILT_SCALE_PARTITIONS")
        .ok()
        .map(|s| s.parse().expect("SILT_SCALE_PARTITIONS is a number"))
        .unwrap_or(10_000)
}

fn m(metrics: &HashMap<String, f64>, k: &str) -> f64 {
    metrics.get(k).copied().unwrap_or(0.0)
}

/// Sends one record to each of `n` partitions; returns how many were acknowledged.
async fn one_each(bootstrap: &str, topic: &str, n: i32) -> usize {
    let p: rdkafka::producer::FutureProducer = config(
        bootstrap,
        &[
            ("acks", "all"),
            ("linger.ms", "50"),
            ("message.timeout.ms", "300000"),
            ("queue.buffering.max.messages", "1000000"),
        ],
    )
    .create()
    .expect("producer");
    let sends: Vec<_> = (0..n)
        .map(|i| {
            let p = p.clone();
            let topic = topic.to_string();
            async move {
                let v = format!("record-{i}");
                p.send(
                    FutureRecord::to(&topic).partition(i).key(&v).payload(&v),
                    Duration::from_secs(300),
                )
                .await
                .is_ok()
            }
        })
        .collect();
    futures::future::join_all(sends)
        .await
        .into_iter()
        .filter(|ok| *ok)
        .count()
}

/// Partitions led (loaded) by these agents together.
fn led(agents: &[&AgentProc]) -> f64 {
    agents
        .iter()
        .map(|a| m(&a.metrics(), "silt_partitions"))
        .sum()
}

/// Waits until these agents lead all `n` partitions between them (asserts it happens).
fn wait_all_led(agents: &[&AgentProc], n: i32) {
    let all = eventually(Duration::from_secs(300), || {
        (led(agents) == n as f64).then_some(())
    });
    assert!(all.is_some(), "{} of {n} partitions led", led(agents));
}

/// Reads every partition of "wide" back from `bootstrap` (asserts every record arrives);
/// returns the seconds it took.
async fn read_back(bootstrap: String, n: i32) -> f64 {
    let t = Instant::now();
    let got = tokio::task::spawn_blocking(move || {
        consume_within(&bootstrap, "wide", n, n as usize, Duration::from_secs(300))
    })
    .await
    .unwrap();
    assert_eq!(got.len(), n as usize, "every record read back");
    t.elapsed().as_secs_f64()
}

/// How long the agent's last GC pass took, once one ran.
fn gc_pass_ms(a: &AgentProc) -> f64 {
    eventually(Duration::from_secs(60), || {
        let x = a.metrics();
        (m(&x, "silt_gc_passes_total") >= 1.0).then(|| m(&x, "silt_gc_last_pass_ms"))
    })
    .expect("a GC pass ran")
}

/// The store limits were respected and no flush commit was refused.
fn assert_within_limits(a: &AgentProc, what: &str) -> (f64, f64) {
    let x = a.metrics();
    let (bytes, ops) = (
        m(&x, "silt_metadata_txn_max_bytes"),
        m(&x, "silt_metadata_txn_max_ops"),
    );
    assert!(
        bytes > 0.0 && bytes < 1.5 * 1024.0 * 1024.0,
        "{what}: largest transaction {bytes} bytes"
    );
    assert!(
        ops > 0.0 && ops <= 128.0,
        "{what}: {ops} operations in one transaction"
    );
    assert_eq!(
        m(&x, "silt_flush_commits_refused_total"),
        0.0,
        "{what}: a commit was refused"
    );
    (bytes, ops)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_partitions_on_one_agent() {
    let n = partitions();
    let mut agent = AgentProc::start(&[
        ("SILT_LIFECYCLE__GC_INTERVAL_MS", "2000"),
        ("SILT_FLUSH__INTERVAL_MS", "100"),
    ]);
    let b = agent.bootstrap();
    let t = Instant::now();
    create_topic(&b, "wide", n, &[]).await;
    wait_all_led(&[&agent], n);
    let create_s = t.elapsed().as_secs_f64();
    let before = agent.metrics();
    let t = Instant::now();
    assert_eq!(
        one_each(&b, "wide", n).await,
        n as usize,
        "every record acknowledged"
    );
    let produce_s = t.elapsed().as_secs_f64();
    let after = agent.metrics();
    let flushes = m(&after, "silt_flushes_total") - m(&before, "silt_flushes_total");
    let txns = m(&after, "silt_metadata_calls_total{op=\"txn\"}")
        - m(&before, "silt_metadata_calls_total{op=\"txn\"}");
    let bytes =
        m(&after, "silt_metadata_txn_bytes_total") - m(&before, "silt_metadata_txn_bytes_total");
    let (max_bytes, max_ops) = assert_within_limits(&agent, "one agent");
    let consume_s = read_back(b, n).await;
    // Take-over: a restart reloads every partition from the offset index.
    agent.kill();
    let t = Instant::now();
    agent.start_again();
    let back = eventually(Duration::from_secs(300), || {
        (led(&[&agent]) == n as f64).then_some(())
    });
    assert!(back.is_some(), "every partition led again after a restart");
    let takeover_s = t.elapsed().as_secs_f64();
    let gc = gc_pass_ms(&agent);
    let rss_mib = agent.rss_kib() / 1024;
    eprintln!(
        "scale, one agent, {n} partitions: create+lead {create_s:.1} s; produce one each {produce_s:.1} s \
         ({flushes} flushes, {:.1} metadata txns and {:.0} bytes per flush; largest txn {max_bytes} bytes, \
         {max_ops} ops); consume all {consume_s:.1} s; restart to all led {takeover_s:.1} s; \
         GC pass {gc} ms; RSS {rss_mib} MiB",
        txns / flushes.max(1.0),
        bytes / flushes.max(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_partitions_on_two_agents_over_etcd_and_s3() {
    let n = partitions();
    let mut c = TestCluster::start_with(
        2,
        &[
            ("SILT_LIFECYCLE__GC_INTERVAL_MS", "2000"),
            ("SILT_FLUSH__INTERVAL_MS", "100"),
        ],
    );
    let b = c.bootstrap();
    let t = Instant::now();
    create_topic(&c.agents[0].bootstrap(), "wide", n, &[]).await;
    wait_all_led(&[&c.agents[0], &c.agents[1]], n);
    let create_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    assert_eq!(
        one_each(&b, "wide", n).await,
        n as usize,
        "every record acknowledged"
    );
    let produce_s = t.elapsed().as_secs_f64();
    let mut txns = 0.0;
    let mut bytes = 0.0;
    let mut flushes = 0.0;
    for a in &c.agents {
        let x = a.metrics();
        txns += m(&x, "silt_metadata_calls_total{op=\"txn\"}");
        bytes += m(&x, "silt_metadata_txn_bytes_total");
        flushes += m(&x, "silt_flushes_total");
    }
    let mut largest = (0.0f64, 0.0f64);
    for (i, a) in c.agents.iter().enumerate() {
        let (b, o) = assert_within_limits(a, &format!("agent {}", i + 1));
        largest = (largest.0.max(b), largest.1.max(o));
    }
    // Kill the agent that leads about half the partitions: the survivor takes them over.
    let half = m(&c.agents[1].metrics(), "silt_partitions");
    c.agents[1].kill();
    let t = Instant::now();
    let back = eventually(Duration::from_secs(300), || {
        (led(&[&c.agents[0]]) == n as f64).then_some(())
    });
    assert!(back.is_some(), "the survivor leads every partition");
    let takeover_s = t.elapsed().as_secs_f64();
    let b0 = c.agents[0].bootstrap();
    let consume_s = read_back(b0, n).await;
    let gc = gc_pass_ms(&c.agents[0]);
    let rss_mib = c.agents[0].rss_kib() / 1024;
    eprintln!(
        "scale, two agents on etcd + SeaweedFS, {n} partitions: create+lead {create_s:.1} s; produce one \
         each {produce_s:.1} s ({:.1} metadata txns and {:.0} bytes per flush overall; largest txn {} bytes, \
         {} ops); killed the leader of {half} partitions: survivor led all after {takeover_s:.1} s \
         (lease TTL 3 s included); consume all {consume_s:.1} s; GC pass {gc} ms; survivor RSS {rss_mib} MiB",
        txns / flushes.max(1.0),
        bytes / flushes.max(1.0),
        largest.0,
        largest.1
    );
}
