//! The write path's cost and memory: one object PUT and one metadata commit per flush however
//! many partitions are written, and bounded memory (backpressure) when object storage is slow.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;

use crate::harness::AgentProc;
use crate::kafka::{consume, create_topic, producer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_per_flush_do_not_grow_with_partitions() {
    let interval_ms = 100u64;
    let agent = AgentProc::start(&[("SILT_FLUSH__INTERVAL_MS", "100")]);
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
    let (puts, flushes, commits, batches) = (
        d("silt_object_puts_total"),
        d("silt_flushes_total"),
        d("silt_metadata_commits_total"),
        d("silt_flush_batches_total"),
    );
    assert_eq!(puts, flushes, "exactly one object PUT per flush");
    // A flush of up to 60 partitions is one transaction; 64 partitions take at most two
    // (etcd caps a transaction at 128 operations).
    assert!(
        commits >= flushes && commits <= 2.0 * flushes,
        "{commits} metadata commits for {flushes} flushes: a small constant number per flush"
    );
    assert!(
        puts <= (elapsed_ms / interval_ms + 3) as f64,
        "{puts} PUTs in {elapsed_ms} ms with a {interval_ms} ms interval: PUTs must follow the interval, not the 64 partitions"
    );
    assert!(
        batches / flushes >= 10.0,
        "each flush carries many partitions' batches ({batches} batches in {flushes} flushes)"
    );
    assert_eq!(
        agent.object_count() as f64,
        after["silt_object_puts_total"],
        "every PUT is one object on disk"
    );
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
    let m = agent.metrics();
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
