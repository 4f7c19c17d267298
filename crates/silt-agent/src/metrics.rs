//! Request and traffic metrics: requests and latency per Kafka API, produce and fetch requests,
//! records and bytes per topic, and client connections. Rendered with the rest of the agent's
//! metrics by [`crate::exposition`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kafka_protocol::messages::ApiKey;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];
/// API keys tracked (every key below this).
const APIS: usize = 80;

#[derive(Debug, Default)]
struct ApiStats {
    count: AtomicU64,
    sum_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

/// Per-topic traffic, counted without a lock: the map is locked only to add a topic.
#[derive(Debug, Default)]
struct TopicCounters {
    produce_requests: AtomicU64,
    produced_records: AtomicU64,
    produced_bytes: AtomicU64,
    fetch_requests: AtomicU64,
    fetched_bytes: AtomicU64,
}

/// A snapshot of one topic's counters.
#[derive(Debug, Default, Clone, Copy)]
struct TopicStats {
    produce_requests: u64,
    produced_records: u64,
    produced_bytes: u64,
    fetch_requests: u64,
    fetched_bytes: u64,
}

impl TopicCounters {
    fn snapshot(&self) -> TopicStats {
        let r = Ordering::Relaxed;
        TopicStats {
            produce_requests: self.produce_requests.load(r),
            produced_records: self.produced_records.load(r),
            produced_bytes: self.produced_bytes.load(r),
            fetch_requests: self.fetch_requests.load(r),
            fetched_bytes: self.fetched_bytes.load(r),
        }
    }
}

/// The agent's request metrics.
#[derive(Debug)]
pub struct Metrics {
    apis: Vec<ApiStats>,
    /// Shared by every connection: read-locked per batch, write-locked once per new topic.
    topics: RwLock<HashMap<String, Arc<TopicCounters>>>,
    /// Client connections open now.
    pub connections_open: AtomicI64,
    /// Client connections accepted since start.
    pub connections_total: AtomicU64,
    /// Responses throttled by a client quota.
    pub throttled: AtomicU64,
    /// Produce v0-2 message sets converted up to record batches (Kafka's
    /// ProduceMessageConversionsPerSec).
    pub converted_up: AtomicU64,
    /// Fetch v0-3 responses converted down to message sets (Kafka's
    /// FetchMessageConversionsPerSec).
    pub converted_down: AtomicU64,
    /// Incremental fetch sessions (KIP-227) of every connection.
    pub fetch_sessions: std::sync::Arc<crate::fetch_sessions::Stats>,
    /// Record-batch bytes accepted, over every topic (the load signal's input).
    pub produced_bytes: AtomicU64,
    /// Record-batch bytes returned to consumers, over every topic.
    pub fetched_bytes: AtomicU64,
    /// Long-polling fetches woken by a change to one of their partitions.
    pub long_poll_wakeups: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            apis: (0..APIS).map(|_| ApiStats::default()).collect(),
            topics: RwLock::default(),
            connections_open: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            converted_up: AtomicU64::new(0),
            converted_down: AtomicU64::new(0),
            fetch_sessions: Default::default(),
            produced_bytes: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            long_poll_wakeups: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Requests answered since start, over every API.
    pub fn requests_answered(&self) -> u64 {
        self.apis
            .iter()
            .map(|s| s.count.load(Ordering::Relaxed))
            .sum()
    }

    /// Records one answered request of `api` that took `took` to answer.
    pub fn request(&self, api: ApiKey, took: Duration) {
        let Some(s) = self.apis.get(api as usize) else {
            return;
        };
        s.count.fetch_add(1, Ordering::Relaxed);
        s.sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                s.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn topic(&self, topic: &str, f: impl FnOnce(&TopicCounters)) {
        if let Some(c) = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
        {
            return f(c);
        }
        let c = self
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(topic.to_string())
            .or_default()
            .clone();
        f(&c)
    }

    /// Records an accepted batch.
    pub fn produced(&self, topic: &str, records: u64, bytes: u64) {
        self.produced_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.topic(topic, |s| {
            s.produce_requests.fetch_add(1, Ordering::Relaxed);
            s.produced_records.fetch_add(records, Ordering::Relaxed);
            s.produced_bytes.fetch_add(bytes, Ordering::Relaxed);
        });
    }

    /// Records a fetch of a topic and the bytes it returned.
    pub fn fetched(&self, topic: &str, bytes: u64) {
        self.fetched_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.topic(topic, |s| {
            s.fetch_requests.fetch_add(1, Ordering::Relaxed);
            s.fetched_bytes.fetch_add(bytes, Ordering::Relaxed);
        });
    }

    /// Appends the Prometheus exposition of these metrics to `out`.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP silt_requests_total Kafka requests answered, by API.\n# TYPE silt_requests_total counter");
        let used: Vec<(ApiKey, &ApiStats)> = self
            .apis
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((ApiKey::try_from(i as i16).ok()?, s)))
            .filter(|(_, s)| s.count.load(Ordering::Relaxed) > 0)
            .collect();
        for (k, s) in &used {
            let _ = writeln!(
                out,
                "silt_requests_total{{api=\"{k:?}\"}} {}",
                s.count.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP silt_request_duration_seconds Time to answer a Kafka request, by API.\n# TYPE silt_request_duration_seconds histogram");
        for (k, s) in &used {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "silt_request_duration_seconds_bucket{{api=\"{k:?}\",le=\"{b}\"}} {}",
                    s.buckets[i].load(Ordering::Relaxed)
                );
            }
            let n = s.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "silt_request_duration_seconds_bucket{{api=\"{k:?}\",le=\"+Inf\"}} {n}"
            );
            let _ = writeln!(
                out,
                "silt_request_duration_seconds_sum{{api=\"{k:?}\"}} {}",
                s.sum_us.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "silt_request_duration_seconds_count{{api=\"{k:?}\"}} {n}"
            );
        }
        let mut topics: Vec<(String, TopicStats)> = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(t, c)| (t.clone(), c.snapshot()))
            .collect();
        topics.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (name, help, get) in [
            (
                "silt_produce_requests_total",
                "Partition batches accepted by Produce, by topic.",
                (|s: &TopicStats| s.produce_requests) as fn(&TopicStats) -> u64,
            ),
            (
                "silt_fetch_requests_total",
                "Fetch responses that included the topic, by topic.",
                |s: &TopicStats| s.fetch_requests,
            ),
            (
                "silt_produced_records_total",
                "Records accepted, by topic.",
                |s: &TopicStats| s.produced_records,
            ),
            (
                "silt_produced_bytes_total",
                "Record-batch bytes accepted, by topic.",
                |s: &TopicStats| s.produced_bytes,
            ),
            (
                "silt_fetched_bytes_total",
                "Record-batch bytes returned to consumers, by topic.",
                |s: &TopicStats| s.fetched_bytes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (t, s) in &topics {
                let t = silt_common::metrics::label(t);
                let _ = writeln!(out, "{name}{{topic=\"{t}\"}} {}", get(s));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_counts_requests_and_traffic() {
        let m = Metrics::default();
        m.request(ApiKey::Produce, Duration::from_millis(3));
        m.request(ApiKey::Produce, Duration::from_millis(300));
        m.produced("orders", 10, 1000);
        m.fetched("orders", 500);
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("silt_requests_total{api=\"Produce\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("silt_request_duration_seconds_bucket{api=\"Produce\",le=\"0.005\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("silt_request_duration_seconds_bucket{api=\"Produce\",le=\"0.5\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("silt_produced_records_total{topic=\"orders\"} 10"),
            "{out}"
        );
        assert!(
            out.contains("silt_fetched_bytes_total{topic=\"orders\"} 500"),
            "{out}"
        );
        assert!(!out.contains("api=\"Fetch\""), "unused APIs are not listed");
    }
}
