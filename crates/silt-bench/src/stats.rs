//! Latency percentiles over recorded samples.

use std::time::Duration;

/// Recorded latencies.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[i].as_secs_f64() * 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_sorted_samples() {
        let mut l = Latencies::default();
        for ms in [5u64, 1, 3, 2, 4] {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.quantile_ms(0.5), 3.0);
        assert_eq!(l.quantile_ms(1.0), 5.0);
        assert_eq!(l.quantile_ms(0.0), 1.0);
    }
}
