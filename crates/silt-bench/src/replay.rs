//! Replay throughput: one librdkafka consumer assigned every partition of an existing topic from
//! its earliest offset reads to the high watermarks it saw when it started; reports MB/s and
//! records/s from the first record to the last, and checks offsets never skip or repeat.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topic to read.
    #[arg(long)]
    pub topic: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

pub fn run(a: ReplayArgs) -> anyhow::Result<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &a.bootstrap)
        .set("group.id", "silt-bench-replay")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .set("log_level", "3")
        .create()?;
    let md = c.fetch_metadata(Some(&a.topic), Duration::from_secs(10))?;
    let parts = md
        .topics()
        .first()
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    anyhow::ensure!(parts > 0, "topic {} has no partitions", a.topic);
    let mut end = HashMap::new();
    let mut next = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        let (low, high) = c.fetch_watermarks(&a.topic, p, Duration::from_secs(10))?;
        if high > low {
            end.insert(p, high);
            next.insert(p, low);
            tpl.add_partition_offset(&a.topic, p, Offset::Offset(low))?;
        }
    }
    c.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let (mut records, mut bytes, mut first, mut last) = (0u64, 0u64, None, Instant::now());
    while !end.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out with {} partitions unread",
            end.len()
        );
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        let p = m.partition();
        first.get_or_insert_with(Instant::now);
        last = Instant::now();
        records += 1;
        bytes += (m.payload().map_or(0, |v| v.len()) + m.key().map_or(0, |k| k.len())) as u64;
        let want = next.get(&p).copied().unwrap_or(m.offset());
        anyhow::ensure!(
            m.offset() >= want,
            "partition {p}: offset {} after {want}",
            m.offset()
        );
        next.insert(p, m.offset() + 1);
        if end.get(&p).is_some_and(|e| m.offset() + 1 >= *e) {
            end.remove(&p);
        }
    }
    let secs = first
        .map_or(0.0, |f| last.duration_since(f).as_secs_f64())
        .max(1e-3);
    Ok(format!(
        "replay {}: {records} records, {:.1} MB in {secs:.2} s: {:.1} MB/s, {:.0} records/s",
        a.topic,
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs,
        records as f64 / secs
    ))
}
