//! Fault injection at the metadata-store seam: a [`MetaKv`] wrapper that fails on cue, for
//! tests and the storage-engine simulation. Transactions writing under a prefix can be refused
//! for good, and the Nth transaction from now can fail before it is applied (unavailable) or
//! after (unanswered: applied, but the caller is told it failed). Never used in production.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::kv::{
    KeyValue, LeaseId, MetaError, MetaKv, Op, RangeRequest, Txn, TxnResponse, WatchEvent,
};
use tokio::sync::mpsc;

/// How the cued transaction fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Not applied; the caller is told the store is unavailable.
    Unavailable = 0,
    /// Applied; the caller is told it was not answered.
    Unanswered = 1,
    /// Not applied now; the caller is told it was not answered, and the transaction is kept to
    /// be applied later ([`FaultyKv::apply_delayed`]), as etcd may apply a proposal after its
    /// client gave up on it.
    Delayed = 2,
}

/// See the module docs.
#[derive(Debug)]
pub struct FaultyKv {
    inner: Arc<dyn MetaKv>,
    /// Transactions putting a key under this prefix are refused for good.
    pub refuse_prefix: Mutex<Option<Vec<u8>>>,
    /// When set, only transactions writing under one of these prefixes count towards the cue
    /// and take its fault (the rest pass untouched), so a test can aim at one path.
    pub only_prefixes: Mutex<Vec<Vec<u8>>>,
    /// Transactions to let through before the cued one fails (-1: none is cued).
    pub fail_after: AtomicI64,
    /// How many consecutive transactions fail once the cue is reached.
    pub fail_count: AtomicI64,
    fault: AtomicU8,
    /// Faults injected so far.
    pub injected: AtomicI64,
    /// Transactions held back by [`Fault::Delayed`], in order.
    delayed: Mutex<Vec<Txn>>,
}

impl FaultyKv {
    /// Wraps `inner`, with no fault cued.
    pub fn new(inner: Arc<dyn MetaKv>) -> Self {
        Self {
            inner,
            refuse_prefix: Mutex::new(None),
            only_prefixes: Mutex::new(Vec::new()),
            fail_after: AtomicI64::new(-1),
            fail_count: AtomicI64::new(1),
            fault: AtomicU8::new(0),
            injected: AtomicI64::new(0),
            delayed: Mutex::new(Vec::new()),
        }
    }

    /// Cues the transaction `after` transactions from now to fail with `fault`, and `count`
    /// transactions after it.
    pub fn cue(&self, after: i64, count: i64, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
        self.fail_count.store(count, Ordering::SeqCst);
        self.fail_after.store(after, Ordering::SeqCst);
    }

    /// Applies the transactions held back by [`Fault::Delayed`], in order; returns each with
    /// whether its compares held.
    pub async fn apply_delayed(&self) -> Result<Vec<(Txn, bool)>, MetaError> {
        let held = std::mem::take(&mut *self.delayed.lock().unwrap());
        let mut out = Vec::with_capacity(held.len());
        for txn in held {
            let applied = self.inner.txn(txn.clone()).await?.succeeded;
            out.push((txn, applied));
        }
        Ok(out)
    }

    fn err(unanswered: bool) -> MetaError {
        let source: Box<dyn std::error::Error + Send + Sync> = "injected fault".into();
        if unanswered {
            MetaError::Unanswered {
                doing: "a test".into(),
                source,
            }
        } else {
            MetaError::Unavailable {
                doing: "a test".into(),
                source,
            }
        }
    }
}

#[async_trait::async_trait]
impl MetaKv for FaultyKv {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaError> {
        self.inner.get(key).await
    }
    async fn range(&self, req: RangeRequest) -> Result<Vec<KeyValue>, MetaError> {
        self.inner.range(req).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        if let Some(prefix) = self.refuse_prefix.lock().unwrap().clone() {
            let hits = txn
                .success
                .iter()
                .any(|o| matches!(o, Op::Put { key, .. } if key.starts_with(&prefix)));
            if hits {
                return Err(MetaError::Refused {
                    doing: "a test".into(),
                    reason: "refused by the test".into(),
                });
            }
        }
        let aimed = {
            let only = self.only_prefixes.lock().unwrap();
            only.is_empty()
                || txn.success.iter().any(|o| {
                    let key = match o {
                        Op::Put { key, .. } | Op::Delete { key } => key,
                        Op::DeletePrefix { prefix } => prefix,
                    };
                    only.iter().any(|p| key.starts_with(p))
                })
        };
        if !aimed {
            return self.inner.txn(txn).await;
        }
        let left = self.fail_after.load(Ordering::SeqCst);
        if left > 0 {
            self.fail_after.fetch_sub(1, Ordering::SeqCst);
        } else if left == 0 {
            if self.fail_count.fetch_sub(1, Ordering::SeqCst) <= 1 {
                self.fail_after.store(-1, Ordering::SeqCst);
            }
            self.injected.fetch_add(1, Ordering::SeqCst);
            let fault = self.fault.load(Ordering::SeqCst);
            if fault == Fault::Unanswered as u8 {
                self.inner.txn(txn).await?;
            } else if fault == Fault::Delayed as u8 {
                self.delayed.lock().unwrap().push(txn);
            }
            return Err(Self::err(fault != Fault::Unavailable as u8));
        }
        self.inner.txn(txn).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), MetaError> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError> {
        self.inner.revoke_lease(lease).await
    }
    async fn watch_prefix(
        &self,
        prefix: &[u8],
    ) -> Result<mpsc::UnboundedReceiver<WatchEvent>, MetaError> {
        self.inner.watch_prefix(prefix).await
    }
    async fn revision(&self) -> Result<i64, MetaError> {
        self.inner.revision().await
    }
}
