//! The agent's load signal, which an autoscaler follows (docs/operations.md, "Autoscaling"):
//! produce and fetch bytes per second over a sliding window (`load.window_ms`) against the
//! bytes per second one agent is meant to carry (`load.capacity_bytes_per_sec`), and the share
//! of the write buffer in use. `silt_load_ratio` is the larger of the two: 1.0 means the agent
//! carries what it should at most, so a pool is sized by the sum of its agents' ratios over a
//! target (the Kubernetes HPA's rule). The [`LoadJob`] samples once a second and, every
//! [`PUBLISH_EVERY`] seconds, publishes the agent's load and its busiest partitions
//! (`/silt/load/{node_id}`, under its lease) for the controller's placement by load.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use silt_meta::layout::load::{self, AgentLoad, PartitionLoad, ShardLoad};
use uuid::Uuid;

use crate::broker::Broker;

/// Seconds between two publications of the agent's load.
pub const PUBLISH_EVERY: u64 = 5;

/// One sample of the agent's byte counters.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: i64,
    produced: u64,
    fetched: u64,
}

/// The load, as last measured.
#[derive(Debug, Default)]
pub struct LoadMeter {
    samples: Mutex<VecDeque<Sample>>,
    produce_bps: AtomicU64,
    fetch_bps: AtomicU64,
    /// The ratio's f64 bits.
    ratio: AtomicU64,
}

/// What one measurement sees.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// Unix ms (the agent's clock).
    pub now_ms: i64,
    /// Record-batch bytes accepted since start.
    pub produced: u64,
    /// Record-batch bytes returned since start.
    pub fetched: u64,
    /// Bytes buffered or in flight to object storage.
    pub buffered: u64,
    /// The buffer's bound (`flush.max_buffered_bytes`).
    pub max_buffered: u64,
}

impl LoadMeter {
    /// Takes a reading: the rates over the samples within `window_ms`, and the ratio against
    /// `capacity` bytes/s.
    pub fn sample(&self, r: Reading, capacity: u64, window_ms: u64) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.push_back(Sample {
            at_ms: r.now_ms,
            produced: r.produced,
            fetched: r.fetched,
        });
        while s.len() > 2 && r.now_ms - s[1].at_ms >= window_ms as i64 {
            s.pop_front();
        }
        let (first, last) = (s[0], s[s.len() - 1]);
        let span_ms = (last.at_ms - first.at_ms).max(1) as u64;
        let rate = |a: u64, b: u64| {
            if s.len() < 2 {
                0
            } else {
                b.saturating_sub(a) * 1000 / span_ms
            }
        };
        let produce = rate(first.produced, last.produced);
        let fetch = rate(first.fetched, last.fetched);
        self.produce_bps.store(produce, Ordering::Relaxed);
        self.fetch_bps.store(fetch, Ordering::Relaxed);
        let traffic = (produce + fetch) as f64 / capacity.max(1) as f64;
        let buffer = r.buffered as f64 / r.max_buffered.max(1) as f64;
        self.ratio
            .store(traffic.max(buffer).to_bits(), Ordering::Relaxed);
    }

    /// The load ratio: the larger of traffic over capacity and buffer use.
    pub fn ratio(&self) -> f64 {
        f64::from_bits(self.ratio.load(Ordering::Relaxed))
    }

    /// Produce bytes per second over the window.
    pub fn produce_bytes_per_sec(&self) -> u64 {
        self.produce_bps.load(Ordering::Relaxed)
    }

    /// Fetch bytes per second over the window.
    pub fn fetch_bytes_per_sec(&self) -> u64 {
        self.fetch_bps.load(Ordering::Relaxed)
    }
}

/// A counter as sampled: (Unix ms, count so far).
type Samples = VecDeque<(i64, u64)>;

/// Rates of counters over a sliding window, sampled once a second: bytes of the partitions led
/// here, requests of the group shards coordinated here.
#[derive(Debug)]
pub struct Rates<K> {
    /// Per key: when this agent first saw it here, and its counter's samples.
    items: HashMap<K, (i64, Samples)>,
}

impl<K> Default for Rates<K> {
    fn default() -> Self {
        Self {
            items: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Copy> Rates<K> {
    /// Records the counters of `now` (key, count so far) at `now_ms`; forgets keys no longer
    /// here.
    pub fn sample(&mut self, now_ms: i64, window_ms: u64, now: &[(K, u64)]) {
        let mut seen = std::collections::HashSet::with_capacity(now.len());
        for &(k, total) in now {
            seen.insert(k);
            let (_, samples) = self
                .items
                .entry(k)
                .or_insert_with(|| (now_ms, VecDeque::new()));
            samples.push_back((now_ms, total));
            while samples.len() > 2 && now_ms - samples[1].0 >= window_ms as i64 {
                samples.pop_front();
            }
        }
        self.items.retain(|k, _| seen.contains(k));
    }

    /// The busiest keys with a rate above zero, at most `max`, busiest first: (key, per
    /// second, ms observed).
    pub fn busiest(&self, now_ms: i64, max: usize) -> Vec<(K, u64, u64)> {
        let mut out: Vec<(K, u64, u64)> = self
            .items
            .iter()
            .filter_map(|(k, (since, s))| {
                let (first, last) = (s.front()?, s.back()?);
                let span = (last.0 - first.0).max(1) as u64;
                let rate = last.1.saturating_sub(first.1) * 1000 / span;
                (rate > 0).then_some((*k, rate, (now_ms - since).max(0) as u64))
            })
            .collect();
        out.sort_by_key(|x| std::cmp::Reverse(x.1));
        out.truncate(max);
        out
    }
}

/// CPU time this process used so far, in clock ticks (Linux `/proc/self/stat`; 0 elsewhere).
fn cpu_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// Clock ticks per second of `/proc` times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// Samples the load once a second and publishes it for the controller.
pub struct LoadJob {
    b: Arc<Broker>,
    lease: silt_meta::LeaseId,
    partitions: Rates<(Uuid, i32)>,
    shards: Rates<i32>,
    requests: Rates<()>,
    cpu: (i64, u64),
    steps: u64,
}

impl LoadJob {
    /// The job of an agent whose session holds `lease`.
    pub fn new(b: Arc<Broker>, lease: silt_meta::LeaseId) -> Self {
        Self {
            b,
            lease,
            partitions: Rates::default(),
            shards: Rates::default(),
            requests: Rates::default(),
            cpu: (0, 0),
            steps: 0,
        }
    }
}

impl crate::tasks::Periodic for LoadJob {
    fn name(&self) -> &'static str {
        "load"
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn step(&mut self) {
        let b = &self.b;
        let m = &b.metrics;
        let now = b.clock.now_ms();
        let (capacity, window) = (
            b.settings.load.capacity_bytes_per_sec,
            b.settings.load.window_ms,
        );
        b.load.sample(
            Reading {
                now_ms: now,
                produced: m.produced_bytes.load(Ordering::Relaxed),
                fetched: m.fetched_bytes.load(Ordering::Relaxed),
                buffered: b.flusher.buffered_bytes() as u64,
                max_buffered: b.settings.flush.max_buffered_bytes as u64,
            },
            capacity,
            window,
        );
        let led: Vec<((Uuid, i32), u64)> = b
            .cluster
            .local_partitions()
            .iter()
            .map(|p| ((p.topic_id, p.index), p.traffic.total()))
            .collect();
        self.partitions.sample(now, window, &led);
        self.shards.sample(now, window, &b.groups.shard_requests());
        self.requests
            .sample(now, window, &[((), m.requests_answered())]);
        let ticks = cpu_ticks();
        let (last_ms, last_ticks) = std::mem::replace(&mut self.cpu, (now, ticks));
        self.steps += 1;
        if !self.steps.is_multiple_of(PUBLISH_EVERY) {
            return;
        }
        let cpu_cores = if last_ms > 0 && now > last_ms {
            ticks.saturating_sub(last_ticks) as f64
                / TICKS_PER_SEC
                / ((now - last_ms) as f64 / 1000.0)
        } else {
            0.0
        };
        let doc = AgentLoad {
            at_ms: now,
            bytes_per_sec: b.load.produce_bytes_per_sec() + b.load.fetch_bytes_per_sec(),
            capacity,
            window_ms: window,
            partitions: self
                .partitions
                .busiest(now, load::MAX_PARTITIONS)
                .into_iter()
                .map(|((topic, partition), bps, observed_ms)| PartitionLoad {
                    topic,
                    partition,
                    bytes_per_sec: bps,
                    observed_ms,
                })
                .collect(),
            requests_per_sec: self.requests.busiest(now, 1).first().map_or(0, |r| r.1),
            cpu_cores,
            buffer: b.flusher.buffered_bytes() as f64
                / b.settings.flush.max_buffered_bytes.max(1) as f64,
            shards: self
                .shards
                .busiest(now, usize::MAX)
                .into_iter()
                .map(|(shard, rps, observed_ms)| ShardLoad {
                    shard,
                    requests_per_sec: rps,
                    observed_ms,
                })
                .collect(),
        };
        let txn = silt_meta::Txn {
            success: vec![load::put_op(b.node.id, &doc, self.lease)],
            ..Default::default()
        };
        if let Err(e) = b.meta.txn(txn).await {
            tracing::debug!(error = %e, "publishing this agent's load failed; retried");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(now_ms: i64, produced: u64, fetched: u64, buffered: u64) -> Reading {
        Reading {
            now_ms,
            produced,
            fetched,
            buffered,
            max_buffered: 1000,
        }
    }

    #[test]
    fn rates_follow_the_window_and_the_ratio_takes_the_larger_signal() {
        let m = LoadMeter::default();
        m.sample(at(0, 0, 0, 0), 1000, 3000);
        assert_eq!(m.ratio(), 0.0, "one sample has no rate");
        // 500 B/s produced and 250 B/s fetched for 3 s: 0.75 of a 1000 B/s capacity.
        for s in 1..=3 {
            m.sample(at(s * 1000, 500 * s as u64, 250 * s as u64, 0), 1000, 3000);
        }
        assert_eq!(
            (m.produce_bytes_per_sec(), m.fetch_bytes_per_sec()),
            (500, 250)
        );
        assert!((m.ratio() - 0.75).abs() < 1e-9, "{}", m.ratio());
        // Traffic stops: the window forgets it.
        for s in 4..=7 {
            m.sample(at(s * 1000, 1500, 750, 0), 1000, 3000);
        }
        assert_eq!(m.produce_bytes_per_sec(), 0);
        // A full buffer alone (a slow object store) says the agent is loaded.
        m.sample(at(8000, 1500, 750, 900), 1000, 3000);
        assert!((m.ratio() - 0.9).abs() < 1e-9, "{}", m.ratio());
    }

    #[test]
    fn partition_rates_follow_their_window_and_forget_moved_partitions() {
        let (t, mut r) = (Uuid::new_v4(), Rates::default());
        for s in 0..=4i64 {
            let led = [
                ((t, 0), 1000 * s as u64),
                ((t, 1), 10 * s as u64),
                ((t, 2), 0),
            ];
            r.sample(10_000 + s * 1000, 3000, &led);
        }
        let b = r.busiest(14_000, 256);
        assert_eq!(
            b.iter().map(|p| (p.0 .1, p.1)).collect::<Vec<_>>(),
            vec![(0, 1000), (1, 10)],
            "busiest first; idle partitions are not listed"
        );
        assert_eq!(b[0].2, 4000, "observed since first seen");
        assert_eq!(r.busiest(14_000, 1).len(), 1);
        let before = cpu_ticks();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_ticks() > before, "this process's CPU time is read");
        r.sample(15_000, 3000, &[((t, 1), 50)]);
        assert_eq!(r.busiest(15_000, 256).len(), 1, "partition 0 moved away");
    }
}
