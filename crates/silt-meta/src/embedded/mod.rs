//! The embedded metadata store: an in-process implementation of [`MetaKv`] whose state is a
//! sorted map in memory, made durable by an append-only log file that is fsynced before a
//! transaction is applied or answered.
//!
//! Owns the files under its directory (`meta.log`). Leases are not durable: a restart ends every
//! lease, and keys bound to leases are gone after it, as they would be once an etcd lease expired.
//! Lease expiry is evaluated against the injected clock whenever the store is used.

mod log;
mod state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use silt_common::Clock;
use tokio::sync::mpsc;

use crate::kv::*;
use log::LogFile;
use state::State;

/// The embedded store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EmbeddedKv {
    inner: Arc<Mutex<Inner>>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    log: Option<LogFile>,
}

impl EmbeddedKv {
    /// Opens (or creates) the store in `dir`, replaying its log.
    pub fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, MetaError> {
        let (log, records) = LogFile::open(dir).map_err(|e| unavailable("opening the log", e))?;
        let mut state = State::default();
        for rec in records {
            state.replay(rec);
        }
        state.drop_leased_keys();
        tracing::info!(dir = %dir.display(), revision = state.revision, keys = state.len(), "embedded metadata store opened");
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                state,
                log: Some(log),
            })),
            clock,
        })
    }

    /// A store that lives only in memory (unit tests).
    pub fn in_memory(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                state: State::default(),
                log: None,
            })),
            clock,
        }
    }

    /// The log file path of a store in `dir`.
    pub fn log_path(dir: &Path) -> PathBuf {
        LogFile::path(dir)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner, i64) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<T, MetaError> {
        let inner = self.inner.clone();
        let now = self.clock.now_ms();
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
            guard.expire_leases(now)?;
            f(&mut guard, now)
        })
        .await
        .map_err(|e| unavailable("running a metadata operation", e))?
    }
}

impl Inner {
    /// Makes `ops` durable, then applies them; returns the new revision.
    fn commit(&mut self, ops: Vec<Op>) -> Result<i64, MetaError> {
        let rec = self.state.plan(&ops);
        if rec.changes.is_empty() {
            return Ok(self.state.revision);
        }
        if let Some(log) = self.log.as_mut() {
            log.append(&rec)
                .map_err(|e| unavailable("appending to the log", e))?;
        }
        let events = self.state.apply(rec);
        self.state.notify(events);
        if let Some(log) = self.log.as_mut() {
            if log.wants_compaction(self.state.approx_bytes()) {
                // The transaction is already durable; a failed compaction only means the log
                // stays long for now.
                if let Err(e) = log.rewrite(&self.state.snapshot()) {
                    tracing::warn!(error = %e, "metadata log compaction failed; will retry on a later commit");
                }
            }
        }
        Ok(self.state.revision)
    }

    fn expire_leases(&mut self, now: i64) -> Result<(), MetaError> {
        let expired = self.state.take_expired_leases(now);
        if expired.is_empty() {
            return Ok(());
        }
        let ops = self.state.lease_key_deletes(&expired);
        self.commit(ops).map(|_| ())
    }
}

fn unavailable(doing: &str, e: impl std::error::Error + Send + Sync + 'static) -> MetaError {
    MetaError::Unavailable {
        doing: doing.into(),
        source: Box::new(e),
    }
}

#[async_trait]
impl MetaKv for EmbeddedKv {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaError> {
        let key = key.to_vec();
        self.blocking(move |i, _| Ok(i.state.get(&key).cloned()))
            .await
    }

    async fn range(&self, req: RangeRequest) -> Result<Vec<KeyValue>, MetaError> {
        self.blocking(move |i, _| Ok(i.state.range(&req))).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        txn.check(&crate::kv::LIMITS)?;
        self.blocking(move |i, _| {
            for op in txn.success.iter().chain(txn.failure.iter()) {
                if let Op::Put { lease, .. } = op {
                    if *lease != 0 && !i.state.has_lease(*lease) {
                        return Err(MetaError::LeaseNotFound(*lease));
                    }
                }
            }
            let succeeded = txn.compares.iter().all(|c| i.state.holds(c));
            let ops = if succeeded { txn.success } else { txn.failure };
            let revision = i.commit(ops)?;
            Ok(TxnResponse {
                succeeded,
                revision,
            })
        })
        .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        let ttl_ms = ttl.as_millis() as i64;
        self.blocking(move |i, now| Ok(i.state.grant_lease(now, ttl_ms)))
            .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), MetaError> {
        self.blocking(move |i, now| i.state.keep_alive(lease, now))
            .await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError> {
        self.blocking(move |i, _| {
            if !i.state.revoke_lease(lease) {
                return Err(MetaError::LeaseNotFound(lease));
            }
            let ops = i.state.lease_key_deletes(&[lease]);
            i.commit(ops).map(|_| ())
        })
        .await
    }

    async fn watch_prefix(
        &self,
        prefix: &[u8],
    ) -> Result<mpsc::UnboundedReceiver<WatchEvent>, MetaError> {
        let prefix = prefix.to_vec();
        self.blocking(move |i, _| Ok(i.state.watch(prefix))).await
    }

    async fn revision(&self) -> Result<i64, MetaError> {
        self.blocking(|i, _| Ok(i.state.revision)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use silt_common::ManualClock;

    #[tokio::test]
    async fn conformance_in_memory() {
        let clock = ManualClock::new(1_000_000);
        crate::conformance::run_all(&EmbeddedKv::in_memory(clock.clone()), &|d| clock.advance(d))
            .await;
    }

    #[tokio::test]
    async fn conformance_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000_000);
        let kv = EmbeddedKv::open(dir.path(), clock.clone()).unwrap();
        crate::conformance::run_all(&kv, &|d| clock.advance(d)).await;
    }

    #[tokio::test]
    async fn state_survives_reopen_and_leased_keys_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let kv = EmbeddedKv::open(dir.path(), clock.clone()).unwrap();
        kv.txn(Txn {
            success: vec![Op::put("a", "1"), Op::put("b", "2")],
            ..Default::default()
        })
        .await
        .unwrap();
        let lease = kv.grant_lease(Duration::from_secs(10)).await.unwrap();
        kv.txn(Txn {
            success: vec![Op::Put {
                key: b"leased".to_vec(),
                value: b"x".to_vec(),
                lease,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
        kv.txn(Txn {
            success: vec![Op::Delete { key: b"b".to_vec() }],
            ..Default::default()
        })
        .await
        .unwrap();
        let rev = kv.revision().await.unwrap();
        drop(kv);
        let kv = EmbeddedKv::open(dir.path(), clock).unwrap();
        assert_eq!(kv.get(b"a").await.unwrap().unwrap().value, b"1");
        assert!(kv.get(b"b").await.unwrap().is_none());
        assert!(kv.get(b"leased").await.unwrap().is_none());
        assert!(kv.revision().await.unwrap() >= rev);
    }

    #[tokio::test]
    async fn torn_tail_is_ignored_on_reopen() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let kv = EmbeddedKv::open(dir.path(), clock.clone()).unwrap();
        kv.txn(Txn {
            success: vec![Op::put("k", "v")],
            ..Default::default()
        })
        .await
        .unwrap();
        drop(kv);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(EmbeddedKv::log_path(dir.path()))
            .unwrap();
        f.write_all(&[0, 0, 0, 40, 1, 2, 3]).unwrap();
        drop(f);
        let kv = EmbeddedKv::open(dir.path(), clock.clone()).unwrap();
        assert_eq!(kv.get(b"k").await.unwrap().unwrap().value, b"v");
        kv.txn(Txn {
            success: vec![Op::put("k2", "v2")],
            ..Default::default()
        })
        .await
        .unwrap();
        drop(kv);
        let kv = EmbeddedKv::open(dir.path(), clock).unwrap();
        assert_eq!(kv.get(b"k2").await.unwrap().unwrap().value, b"v2");
    }

    #[tokio::test]
    async fn compaction_keeps_every_live_key() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let kv = EmbeddedKv::open(dir.path(), clock.clone()).unwrap();
        let big = vec![7u8; 64 * 1024];
        for i in 0..400 {
            kv.txn(Txn {
                success: vec![Op::put(format!("k{}", i % 10), big.clone())],
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let len = std::fs::metadata(EmbeddedKv::log_path(dir.path()))
            .unwrap()
            .len();
        assert!(len < 400 * 64 * 1024, "log was not compacted: {len} bytes");
        drop(kv);
        let kv = EmbeddedKv::open(dir.path(), clock).unwrap();
        let all = kv.range(RangeRequest::prefix("k")).await.unwrap();
        assert_eq!(all.len(), 10);
        assert!(all.iter().all(|kv| kv.value == big));
    }
}
