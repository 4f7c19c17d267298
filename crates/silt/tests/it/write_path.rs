//! The write path's cost and memory: one object PUT and one metadata commit per flush however
//! many partitions are written, and bounded memory (backpressure) when object storage is slow.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;

use crate::harness::AgentProc;
use crate::kafka::{consume, create_topic, producer};

/// 30 rounds of one record to each of 64 partitions, 50 ms apart, against an agent with `env`;
/// returns (PUTs, flushes, commits, batches, elapsed ms) and checks every PUT is one object.
async fn rounds_over_64_partitions(env: &[(&str, &str)]) -> (f64, f64, f64, f64, u64) {
    let agent = AgentProc::start(env);
    let b = agent.bootstrap();
    create_topic(&b, "many", 64, &[]).await;
    let p = producer(&b, &[("linger.ms", "5")]);
    let before = agent.metrics();
    let started = Instant::now();
    let mut futs = Vec::new();
    for round in 0..30 {
        for part in 0..64 {
            let v = format!("{round}-{part}");
            futs.push(
                p.send_result(
                    FutureRecord::to("many")
                        .partition(part)
                        .key("k")
                        .payload(&v),
                )
                .unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for f in futs {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let after = agent.metrics();
    let d = |k: &str| after[k] - before[k];
    assert_eq!(
        agent.object_count() as f64,
        after["silt_object_puts_total"],
        "every PUT is one object on disk"
    );
    (
        d("silt_object_puts_total"),
        d("silt_flushes_total"),
        d("silt_metadata_commits_total"),
        d("silt_flush_batches_total"),
        elapsed_ms,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_per_flush_do_not_grow_with_partitions() {
    // Early flushes off: PUTs follow the interval. With the defaults, a quiet buffer (each
    // round, once its 64 batches are in) is flushed early, within the PUT budget.
    let interval_ms = 100u64;
    for (early, bound_ms) in [(false, interval_ms), (true, 20)] {
        let mut env = vec![("SILT_FLUSH__INTERVAL_MS", "100")];
        if !early {
            env.push(("SILT_FLUSH__IDLE_MS", "0"));
        }
        let (puts, flushes, commits, batches, elapsed_ms) = rounds_over_64_partitions(&env).await;
        assert_eq!(puts, flushes, "exactly one object PUT per flush");
        // A flush of up to 60 partitions is one transaction; 64 partitions take at most two
        // (etcd caps a transaction at 128 operations).
        assert!(
            commits >= flushes && commits <= 2.0 * flushes,
            "{commits} metadata commits for {flushes} flushes: a small constant number per flush"
        );
        assert!(
            puts <= (elapsed_ms / bound_ms + 3) as f64,
            "{puts} PUTs in {elapsed_ms} ms (early flushes {early}): PUTs must follow the interval or the PUT budget ({bound_ms} ms), not the 64 partitions"
        );
        assert!(
            batches / flushes >= 10.0,
            "each flush carries many partitions' batches ({batches} batches in {flushes} flushes)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_object_storage_applies_backpressure_not_memory_growth() {
    let agent = AgentProc::start(&[
        ("SILT_OBJECT_STORE__INJECT_LATENCY_MS", "700"),
        ("SILT_FLUSH__MAX_BUFFERED_BYTES", "16777216"),
        ("SILT_FLUSH__MAX_BYTES", "4194304"),
    ]);
    let b = agent.bootstrap();
    create_topic(&b, "slow", 4, &[("max.message.bytes", "2097152")]).await;
    let baseline = agent.rss_kib();
    let p = producer(
        &b,
        &[
            ("acks", "1"),
            ("linger.ms", "5"),
            ("batch.size", "1000000"),
            ("queue.buffering.max.kbytes", "1048576"),
            ("queue.buffering.max.messages", "1000000"),
        ],
    );
    let value = vec![42u8; 64 * 1024];
    let n = 640; // 40 MiB, well over the 16 MiB buffer
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let pid = agent.pid();
        let admin = agent.admin_port;
        std::thread::spawn(move || {
            let mut max_rss = 0u64;
            let mut max_buffered = 0f64;
            while !done.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kb) = status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    max_rss = max_rss.max(kb);
                }
                if let Ok(m) = std::panic::catch_unwind(|| metrics_at(admin)) {
                    max_buffered = max_buffered.max(m);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (max_rss, max_buffered)
        })
    };
    let mut futs = Vec::new();
    for i in 0..n {
        futs.push(
            p.send_result(
                FutureRecord::to("slow")
                    .partition(i % 4)
                    .key("k")
                    .payload(&value),
            )
            .unwrap(),
        );
    }
    for f in futs {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    // acks=1 answers before durability; wait until everything is readable (committed).
    let got = consume(&b, "slow", 4, n as usize);
    done.store(true, Ordering::Relaxed);
    let (max_rss, max_buffered) = sampler.join().unwrap();
    assert_eq!(got.len(), n as usize);
    assert!(got.iter().all(|g| g.value.as_deref() == Some(&value[..])));
    assert!(
        max_buffered <= 16.0 * 1024.0 * 1024.0,
        "buffer exceeded its budget: {max_buffered}"
    );
    assert!(
        max_rss < baseline + 160 * 1024,
        "agent memory grew from {baseline} KiB to {max_rss} KiB while 40 MiB were produced into a 16 MiB buffer"
    );
}

fn metrics_at(port: u16) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("silt_buffered_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_metrics_match_the_traffic_sent() {
    let agent = AgentProc::start(&[]);
    let b = agent.bootstrap();
    create_topic(&b, "metered", 2, &[]).await;
    let p = producer(&b, &[("linger.ms", "0")]);
    let value = vec![9u8; 100];
    for i in 0..50 {
        p.send(
            FutureRecord::to("metered")
                .partition(i % 2)
                .key("k")
                .payload(&value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    let got = consume(&b, "metered", 2, 50);
    assert_eq!(got.len(), 50);
    // A group commits partition 0 at 10 (lag 15) and partition 1 at its end (lag 0).
    let c: rdkafka::consumer::BaseConsumer =
        crate::kafka::config(&b, &[("group.id", "metered-group")])
            .create()
            .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("metered", 0, rdkafka::Offset::Offset(10))
        .unwrap();
    tpl.add_partition_offset("metered", 1, rdkafka::Offset::Offset(25))
        .unwrap();
    rdkafka::consumer::Consumer::commit(&c, &tpl, rdkafka::consumer::CommitMode::Sync).unwrap();
    let m = agent.metrics_strict();
    let lag = |p: i32| {
        m[&format!("silt_group_lag{{group=\"metered-group\",topic=\"metered\",partition=\"{p}\"}}")]
    };
    assert_eq!((lag(0), lag(1)), (15.0, 0.0), "group lag per partition");
    assert_eq!(
        m["silt_produce_requests_total{topic=\"metered\"}"], 50.0,
        "one partition batch per record sent one at a time"
    );
    assert!(m["silt_fetch_requests_total{topic=\"metered\"}"] >= 1.0);
    assert_eq!(
        m["silt_object_requests_total{op=\"put\"}"], m["silt_object_puts_total"],
        "no PUT failed, so attempts = PUTs"
    );
    assert_eq!(
        m["silt_object_request_duration_seconds_count{op=\"put\"}"],
        m["silt_object_puts_total"]
    );
    assert_eq!(m["silt_flush_size_bytes_count"], m["silt_flushes_total"]);
    assert_eq!(
        m["silt_flush_duration_seconds_count"],
        m["silt_flushes_total"]
    );
    assert_eq!(m["silt_flush_size_bytes_sum"], m["silt_flush_bytes_total"]);
    assert!(
        m["silt_metadata_calls_total{op=\"txn\"}"] >= m["silt_metadata_commits_total"],
        "every flush commit is a metadata transaction"
    );
    assert_eq!(m["silt_metadata_call_failures_total{op=\"txn\"}"], 0.0);
    assert!(
        m["silt_connections_accepted_total"] >= 3.0,
        "admin, producer and consumers"
    );
    assert!(
        m["silt_connections"] >= 1.0,
        "the producer is still connected"
    );
    assert_eq!(m["silt_partitions"], 2.0);
    assert_eq!(
        m["silt_group_shards"], 50.0,
        "a single agent coordinates every group"
    );
    assert_eq!(m["silt_is_controller"], 1.0);
    assert_eq!(
        m["silt_high_watermark{topic=\"metered\",partition=\"0\"}"],
        25.0
    );
    assert_eq!(
        m["silt_produced_records_total{topic=\"metered\"}"], 50.0,
        "records counted exactly"
    );
    let produced = m["silt_produced_bytes_total{topic=\"metered\"}"];
    assert!(
        (50.0 * 100.0..50.0 * 300.0).contains(&produced),
        "batch bytes plausible: {produced}"
    );
    assert!(
        m["silt_fetched_bytes_total{topic=\"metered\"}"] >= produced,
        "everything produced was fetched"
    );
    let produce_requests = m["silt_requests_total{api=\"Produce\"}"];
    assert!(
        produce_requests >= 50.0,
        "acks=all one at a time: at least one request per record"
    );
    assert_eq!(
        m["silt_request_duration_seconds_count{api=\"Produce\"}"],
        produce_requests
    );
    assert_eq!(
        m["silt_request_duration_seconds_bucket{api=\"Produce\",le=\"+Inf\"}"],
        produce_requests
    );
    assert_eq!(m["silt_object_puts_total"], m["silt_flushes_total"]);
    assert!(
        m["silt_flush_bytes_total"] >= produced,
        "every produced byte was flushed"
    );
}
