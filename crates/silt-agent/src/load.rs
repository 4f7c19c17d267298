//! The agent's load signal, which an autoscaler follows (docs/operations.md, "Autoscaling"):
//! produce and fetch bytes per second over a sliding window (`load.window_ms`) against the
//! bytes per second one agent is meant to carry (`load.capacity_bytes_per_sec`), and the share
//! of the write buffer in use. `silt_load_ratio` is the larger of the two: 1.0 means the agent
//! carries what it should at most, so a pool is sized by the sum of its agents' ratios over a
//! target (the Kubernetes HPA's rule). The [`LoadJob`] samples once a second.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::broker::Broker;

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

/// Samples the load once a second.
pub struct LoadJob(pub Arc<Broker>);

impl crate::tasks::Periodic for LoadJob {
    fn name(&self) -> &'static str {
        "load"
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn step(&mut self) {
        let b = &self.0;
        let m = &b.metrics;
        b.load.sample(
            Reading {
                now_ms: b.clock.now_ms(),
                produced: m.produced_bytes.load(Ordering::Relaxed),
                fetched: m.fetched_bytes.load(Ordering::Relaxed),
                buffered: b.flusher.buffered_bytes() as u64,
                max_buffered: b.settings.flush.max_buffered_bytes as u64,
            },
            b.settings.load.capacity_bytes_per_sec,
            b.settings.load.window_ms,
        );
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
}
