//! A [`MetaKv`] decorator that counts and times every call to the store it wraps: requests,
//! failures and latency per kind of call, and transactions whose compares did not hold
//! (fencing at work). The agent wraps whatever backend it is given, so the metrics are the same
//! for the embedded store and etcd.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use silt_common::metrics::Histogram;
use tokio::sync::mpsc;

use crate::kv::*;

/// Kinds of call, as metric labels.
pub const KINDS: [&str; 8] = [
    "get",
    "range",
    "txn",
    "grant_lease",
    "keep_alive",
    "revoke_lease",
    "watch",
    "revision",
];

/// Counters of one kind of call.
#[derive(Debug)]
pub struct CallStats {
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that failed (unavailable store, lease not found, corrupt value).
    pub failures: AtomicU64,
    /// Time per call.
    pub latency: Histogram,
}

impl Default for CallStats {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency: Histogram::latency(),
        }
    }
}

/// Counters of every kind of call, in [`KINDS`] order.
#[derive(Debug, Default)]
pub struct MetaStats {
    /// Per kind.
    pub calls: [CallStats; 8],
    /// Transactions that ran but whose compares failed (nothing written).
    pub txn_refused: AtomicU64,
    /// Bytes of every transaction sent ([`Txn::encoded_len`]).
    pub txn_bytes: AtomicU64,
    /// The largest transaction sent, in bytes.
    pub txn_max_bytes: AtomicU64,
    /// The most operations in one list of a transaction sent.
    pub txn_max_ops: AtomicU64,
    /// Unix ms of the last successful call (0: none yet).
    pub last_ok_ms: AtomicU64,
    /// Unix ms of the last failed call (0: none).
    pub last_error_ms: AtomicU64,
}

impl MetaStats {
    /// Whether the store answered more recently than it failed.
    pub fn healthy(&self) -> bool {
        self.last_error_ms.load(Ordering::Relaxed) <= self.last_ok_ms.load(Ordering::Relaxed)
    }
}

/// The decorator.
#[derive(Debug)]
pub struct InstrumentedKv {
    inner: Arc<dyn MetaKv>,
    stats: Arc<MetaStats>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl InstrumentedKv {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn MetaKv>) -> Self {
        Self {
            inner,
            stats: Arc::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<MetaStats> {
        self.stats.clone()
    }

    fn record<T>(&self, kind: usize, started: Instant, r: &Result<T, MetaError>) {
        let s = &self.stats.calls[kind];
        s.calls.fetch_add(1, Ordering::Relaxed);
        s.latency.observe_duration(started.elapsed());
        match r {
            Ok(_) => self.stats.last_ok_ms.store(unix_ms(), Ordering::Relaxed),
            // An expired lease is an answer, not an unreachable store.
            Err(MetaError::LeaseNotFound(_)) => {
                s.failures.fetch_add(1, Ordering::Relaxed);
                self.stats.last_ok_ms.store(unix_ms(), Ordering::Relaxed);
            }
            Err(_) => {
                s.failures.fetch_add(1, Ordering::Relaxed);
                self.stats.last_error_ms.store(unix_ms(), Ordering::Relaxed);
            }
        }
    }
}

#[async_trait]
impl MetaKv for InstrumentedKv {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaError> {
        let t = Instant::now();
        let r = self.inner.get(key).await;
        self.record(0, t, &r);
        r
    }

    async fn range(&self, req: RangeRequest) -> Result<Vec<KeyValue>, MetaError> {
        let t = Instant::now();
        let r = self.inner.range(req).await;
        self.record(1, t, &r);
        r
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        let bytes = txn.encoded_len() as u64;
        let ops = txn
            .compares
            .len()
            .max(txn.success.len())
            .max(txn.failure.len()) as u64;
        self.stats.txn_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.stats.txn_max_bytes.fetch_max(bytes, Ordering::Relaxed);
        self.stats.txn_max_ops.fetch_max(ops, Ordering::Relaxed);
        let t = Instant::now();
        let r = self.inner.txn(txn).await;
        self.record(2, t, &r);
        if matches!(
            r,
            Ok(TxnResponse {
                succeeded: false,
                ..
            })
        ) {
            self.stats.txn_refused.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        let t = Instant::now();
        let r = self.inner.grant_lease(ttl).await;
        self.record(3, t, &r);
        r
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), MetaError> {
        let t = Instant::now();
        let r = self.inner.keep_alive(lease).await;
        self.record(4, t, &r);
        r
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError> {
        let t = Instant::now();
        let r = self.inner.revoke_lease(lease).await;
        self.record(5, t, &r);
        r
    }

    async fn watch_prefix(
        &self,
        prefix: &[u8],
    ) -> Result<mpsc::UnboundedReceiver<WatchEvent>, MetaError> {
        let t = Instant::now();
        let r = self.inner.watch_prefix(prefix).await;
        self.record(6, t, &r);
        r
    }

    async fn revision(&self) -> Result<i64, MetaError> {
        let t = Instant::now();
        let r = self.inner.revision().await;
        self.record(7, t, &r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conformance, EmbeddedKv};
    use silt_common::ManualClock;

    #[tokio::test]
    async fn passes_conformance_and_counts_calls() {
        let clock = ManualClock::new(1_000_000);
        let kv = InstrumentedKv::new(Arc::new(EmbeddedKv::in_memory(clock.clone())));
        let stats = kv.stats();
        conformance::run_all(&kv, &|d| clock.advance(d)).await;
        let txns = stats.calls[2].calls.load(Ordering::Relaxed);
        assert!(txns > 0);
        assert_eq!(stats.calls[2].latency.count(), txns);
        assert!(
            stats.txn_refused.load(Ordering::Relaxed) > 0,
            "the suite runs failing compares"
        );
        assert!(stats.healthy());
    }
}
