//! Consumer-group consume throughput: produce a backlog, then N members of one group (each its
//! own librdkafka consumer on its own thread, `subscribe`) drain it; reports MB/s and records/s
//! from the first record to the last.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use crate::load::{produce, ProduceArgs};

#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    #[command(flatten)]
    pub produce: ProduceArgs,
    /// Members of the consumer group.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
}

pub async fn run(a: GroupArgs) -> anyhow::Result<String> {
    // The backlog: produce for --seconds as fast as possible.
    let backlog = produce(a.produce.clone()).await?;
    let total_records = Arc::new(AtomicU64::new(0));
    let total_bytes = Arc::new(AtomicU64::new(0));
    let group = format!("silt-bench-{}", std::process::id());
    let started = Instant::now();
    let mut threads = Vec::new();
    let expect = backlog.records_total;
    for _ in 0..a.members {
        let (recs, bytes) = (total_records.clone(), total_bytes.clone());
        let (bootstrap, topic, group) = (
            a.produce.bootstrap.clone(),
            a.produce.topic.clone(),
            group.clone(),
        );
        threads.push(std::thread::spawn(
            move || -> anyhow::Result<Option<Instant>> {
                let c: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("group.id", &group)
                    .set("auto.offset.reset", "earliest")
                    .set("enable.auto.commit", "true")
                    .set("fetch.wait.max.ms", "100")
                    .set("log_level", "3")
                    .create()?;
                c.subscribe(&[&topic])?;
                let deadline = Instant::now() + Duration::from_secs(300);
                let mut first = None;
                while recs.load(Ordering::Relaxed) < expect && Instant::now() < deadline {
                    if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                        first.get_or_insert_with(Instant::now);
                        recs.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(
                            m.payload().map_or(0, |p| p.len()) as u64,
                            Ordering::Relaxed,
                        );
                    }
                }
                Ok(first)
            },
        ));
    }
    let mut first: Option<Instant> = None;
    for t in threads {
        if let Some(f) = t
            .join()
            .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??
        {
            first = Some(first.map_or(f, |x: Instant| x.min(f)));
        }
    }
    let span = first
        .map_or(started.elapsed(), |f| f.elapsed())
        .as_secs_f64();
    let recs = total_records.load(Ordering::Relaxed);
    let bytes = total_bytes.load(Ordering::Relaxed);
    Ok(format!(
        "group ({} members): consumed {recs} of {expect} records, {:.1} MB/s, {:.0} records/s",
        a.members,
        bytes as f64 / span / 1e6,
        recs as f64 / span
    ))
}
