//! The load generator: librdkafka producers (and a consumer for `e2e`) against any Kafka
//! endpoint, with an optional fixed rate, reporting MB/s, records/s and latency percentiles.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::stats::Latencies;

#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Kafka bootstrap address.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topic (created with `--partitions` if it does not exist).
    #[arg(long, default_value = "bench")]
    pub topic: String,
    #[arg(long, default_value_t = 16)]
    pub partitions: i32,
    /// Record value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Seconds to run (after a 2 s warm-up that is not measured).
    #[arg(long, default_value_t = 15.0)]
    pub seconds: f64,
    /// Records per second; 0 for as fast as the client can go.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// acks: all, 1 or 0.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// librdkafka linger.ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// An idempotent producer (enable.idempotence=true).
    #[arg(long)]
    pub idempotent: bool,
    /// A transactional producer committing every this many ms (0: not transactional).
    #[arg(long, default_value_t = 0)]
    pub transaction_ms: u64,
    /// librdkafka queue.buffering.max.kbytes: how far the client may run ahead of the broker.
    #[arg(long, default_value_t = 1_048_576)]
    pub queue_kbytes: u64,
    /// Fill every record's value with fresh pseudo-random bytes (incompressible), not a constant.
    #[arg(long)]
    pub random_values: bool,
}

#[derive(Debug, Clone, Args)]
pub struct E2eArgs {
    #[command(flatten)]
    pub produce: ProduceArgs,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub label: &'static str,
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub consumed: Option<(u64, f64)>,
    /// Records acknowledged over the whole run, warm-up included.
    pub records_total: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.elapsed.as_secs_f64();
        write!(
            f,
            "{}: {:.1} MB/s, {:.0} records/s, latency p50 {:.1} ms, p99 {:.1} ms, errors {}",
            self.label,
            self.bytes as f64 / s / 1e6,
            self.records as f64 / s,
            self.p50_ms,
            self.p99_ms,
            self.errors
        )?;
        if let Some((n, mbs)) = self.consumed {
            write!(f, "; consumed {n} records at {mbs:.1} MB/s")?;
        }
        Ok(())
    }
}

/// Client settings for every client the tool makes; `SILT_BENCH_CLIENT_CONFIG` adds more,
/// comma-separated `key=value` (e.g. `security.protocol=SASL_PLAINTEXT,sasl.mechanism=PLAIN,...`).
fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("log_level", "3");
    if let Ok(extra) = std::env::var("SILT_BENCH_CLIENT_CONFIG") {
        for kv in extra.split(',').filter(|kv| !kv.is_empty()) {
            if let Some((k, v)) = kv.split_once('=') {
                c.set(k.trim(), v.trim());
            }
        }
    }
    c
}

async fn ensure_topic(a: &ProduceArgs) {
    let admin: AdminClient<DefaultClientContext> = match client(&a.bootstrap).create() {
        Ok(a) => a,
        Err(_) => return,
    };
    let t = NewTopic::new(&a.topic, a.partitions, TopicReplication::Fixed(1));
    // The sink does not implement CreateTopics; an error here is fine (the topic may exist).
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        admin.create_topics(&[t], &AdminOptions::new()),
    )
    .await;
}

fn producer(a: &ProduceArgs) -> anyhow::Result<FutureProducer> {
    let mut c = client(&a.bootstrap);
    if a.idempotent {
        c.set("enable.idempotence", "true");
    }
    if a.transaction_ms > 0 {
        c.set(
            "transactional.id",
            format!("silt-bench-{}", std::process::id()),
        );
    }
    Ok(c.set("acks", &a.acks)
        .set("linger.ms", a.linger_ms.to_string())
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", a.queue_kbytes.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "60000")
        .create()?)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// Runs the producer side; `stamp` puts the send time into the first 8 bytes of each value.
async fn run_producer(a: &ProduceArgs, label: &'static str, stamp: bool) -> anyhow::Result<Report> {
    ensure_topic(a).await;
    let p = producer(a)?;
    let txn = (a.transaction_ms > 0).then(|| Duration::from_millis(a.transaction_ms));
    let mut commits = 0u64;
    let mut txn_started = Instant::now();
    if txn.is_some() {
        tokio::task::block_in_place(|| p.init_transactions(Duration::from_secs(30)))?;
        p.begin_transaction()?;
    }
    let lat = Arc::new(Mutex::new(Latencies::default()));
    let errors = Arc::new(Mutex::new(0u64));
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(Instant, bool, rdkafka::producer::DeliveryFuture)>(100_000);
    let collector = {
        let lat = lat.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            let (mut all, mut done) = (0u64, 0u64);
            while let Some((sent, measured, fut)) = rx.recv().await {
                match fut.await {
                    Ok(Ok(_)) if measured => {
                        lat.lock().unwrap().record(sent.elapsed());
                        done += 1;
                        all += 1;
                    }
                    Ok(Ok(_)) => all += 1,
                    _ => *errors.lock().unwrap() += 1,
                }
            }
            (all, done)
        })
    };
    let warmup = Duration::from_secs(2);
    let total = warmup + crate::secs(a.seconds);
    let started = Instant::now();
    let mut value = vec![b'x'; a.record_size.max(8)];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut sent = 0u64;
    let mut measured = 0u64;
    let mut measure_start = None;
    let interval = (a.rate > 0).then(|| Duration::from_secs_f64(1.0 / a.rate as f64));
    while started.elapsed() < total {
        if let Some(iv) = interval {
            let due = started + iv * sent as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        let in_window = started.elapsed() >= warmup;
        if in_window && measure_start.is_none() {
            measure_start = Some(Instant::now());
        }
        if a.random_values {
            for w in value.chunks_mut(8) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                w.copy_from_slice(&rng.to_le_bytes()[..w.len()]);
            }
        }
        if stamp {
            value[..8].copy_from_slice(&now_us().to_be_bytes());
        }
        if let Some(every) = txn {
            if txn_started.elapsed() >= every {
                // Committing waits for every record of the transaction (librdkafka flushes).
                tokio::task::block_in_place(|| p.commit_transaction(Duration::from_secs(60)))?;
                p.begin_transaction()?;
                commits += 1;
                txn_started = Instant::now();
            }
        }
        let part = (sent % a.partitions as u64) as i32;
        let mut rec = FutureRecord::to(&a.topic)
            .partition(part)
            .key("k")
            .payload(&value[..]);
        let fut = loop {
            match p.send_result(rec) {
                Ok(f) => break f,
                Err((_, back)) => {
                    // The client's queue is full: wait for room.
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        let now = Instant::now();
        tx.send((now, in_window, fut)).await?;
        sent += 1;
        if in_window {
            measured += 1;
        }
    }
    if txn.is_some() {
        tokio::task::block_in_place(|| p.commit_transaction(Duration::from_secs(60)))?;
        commits += 1;
        eprintln!("{commits} transactions committed");
    }
    drop(tx);
    let acked_total = collector.await?;
    // A producer so slow that the warm-up never ended (the client blocked on a full queue):
    // everything acknowledged over the whole run, instead of nothing.
    let (acked, measured, elapsed) = match measure_start {
        Some(s) => (acked_total.1, measured, s.elapsed()),
        None => (acked_total.0, sent, started.elapsed()),
    };
    let mut l = lat.lock().unwrap();
    let errors = *errors.lock().unwrap();
    Ok(Report {
        label,
        records: acked.min(measured),
        bytes: acked.min(measured) * a.record_size as u64,
        elapsed,
        p50_ms: l.quantile_ms(0.5),
        p99_ms: l.quantile_ms(0.99),
        errors,
        consumed: None,
        records_total: acked_total.0,
    })
}

pub async fn produce(a: ProduceArgs) -> anyhow::Result<Report> {
    run_producer(&a, "produce", false).await
}

/// Produces at `--rate` while a consumer reads every partition from the end; end-to-end latency
/// is consume time minus the send time stamped into each value.
pub async fn e2e(a: E2eArgs) -> anyhow::Result<Report> {
    let a = a.produce;
    ensure_topic(&a).await;
    let consumer: BaseConsumer = client(&a.bootstrap)
        .set("group.id", "silt-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .set("fetch.min.bytes", "1")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..a.partitions {
        tpl.add_partition_offset(&a.topic, p, Offset::End)?;
    }
    consumer.assign(&tpl)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut lat = Latencies::default();
            let mut bytes = 0u64;
            let mut first: Option<Instant> = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    if let Some(v) = m.payload() {
                        if v.len() >= 8 {
                            let sent = u64::from_be_bytes(v[..8].try_into().unwrap());
                            lat.record(Duration::from_micros(now_us().saturating_sub(sent)));
                            bytes += v.len() as u64;
                            first.get_or_insert_with(Instant::now);
                        }
                    }
                }
            }
            (lat, bytes, first.map(|f| f.elapsed()))
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await; // let the consumer position itself
    let mut r = run_producer(&a, "e2e", true).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut lat, bytes, span) = reader.join().expect("reader thread");
    let span = span.unwrap_or(Duration::from_secs(1)).as_secs_f64();
    r.consumed = Some((lat.len() as u64, bytes as f64 / span / 1e6));
    r.p50_ms = lat.quantile_ms(0.5);
    r.p99_ms = lat.quantile_ms(0.99);
    Ok(r)
}
