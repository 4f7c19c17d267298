//! The metadata-store trait. Its shape follows etcd v3 so the etcd backend is a thin
//! translation: a single revision counter, compare-and-swap transactions, leases, prefix ranges
//! and prefix watches.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

/// A lease handle; keys put with a lease disappear when it expires or is revoked.
pub type LeaseId = i64;

/// One stored key with its etcd-style revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the transaction that created the key.
    pub create_revision: i64,
    /// Revision of the transaction that last changed the key.
    pub mod_revision: i64,
    /// Number of changes since creation (1 after creation).
    pub version: i64,
    /// The lease the key is bound to, 0 for none.
    pub lease: LeaseId,
}

/// What a transaction compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's version (0 when the key does not exist).
    Version(i64),
    /// The key's create revision (0 when absent).
    CreateRevision(i64),
    /// The key's mod revision (0 when absent).
    ModRevision(i64),
    /// The key's value (an absent key never compares equal).
    Value(Vec<u8>),
}

/// How a transaction compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: Vec<u8>,
    /// The comparison.
    pub op: CompareOp,
    /// The field and the value compared against.
    pub target: CompareTarget,
}

impl Compare {
    /// The key does not exist.
    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::Version(0),
        }
    }
    /// The key was last modified at `rev` (0: the key does not exist).
    pub fn mod_revision(key: impl Into<Vec<u8>>, rev: i64) -> Self {
        Self {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(rev),
        }
    }
    /// The key holds exactly `value`.
    pub fn value(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::Value(value.into()),
        }
    }
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set a key, optionally bound to a lease.
    Put {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// Lease, 0 for none.
        lease: LeaseId,
    },
    /// Remove one key.
    Delete {
        /// Key.
        key: Vec<u8>,
    },
    /// Remove every key starting with the prefix.
    DeletePrefix {
        /// Prefix.
        prefix: Vec<u8>,
    },
}

impl Op {
    /// A put with no lease.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }
}

/// If every compare holds, apply `success`, else apply `failure`; atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Writes applied when they hold.
    pub success: Vec<Op>,
    /// Writes applied when they do not.
    pub failure: Vec<Op>,
}

/// Outcome of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held.
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
}

/// A read of a key range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// Every key starting with this prefix.
    pub prefix: Vec<u8>,
    /// Only keys at or after this one (within the prefix); empty for no bound.
    pub start_after_or_at: Vec<u8>,
    /// At most this many keys; 0 for no limit.
    pub limit: usize,
    /// Newest (greatest) keys first.
    pub descending: bool,
}

impl RangeRequest {
    /// Every key under `prefix`, ascending.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Default::default()
        }
    }
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or changed.
    Put(KeyValue),
    /// A key was removed (the value is empty, the revision is the delete's).
    Delete {
        /// The key removed.
        key: Vec<u8>,
        /// Revision of the removing transaction.
        mod_revision: i64,
    },
}

/// Failures of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The store could not be reached or its storage failed; the operation may be retried.
    #[error("metadata store unavailable while {doing}: {source}")]
    Unavailable {
        /// What the store was doing.
        doing: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The lease does not exist (expired or revoked).
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// A stored value could not be decoded.
    #[error("corrupt metadata value at {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

/// An etcd-shaped key-value store. Every backend passes [`crate::conformance`].
#[async_trait]
pub trait MetaKv: Send + Sync + std::fmt::Debug {
    /// One key.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaError>;
    /// Keys under a prefix, ordered by key.
    async fn range(&self, req: RangeRequest) -> Result<Vec<KeyValue>, MetaError>;
    /// An atomic compare-and-swap transaction.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError>;
    /// A lease that expires `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError>;
    /// Renews a lease.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), MetaError>;
    /// Ends a lease now, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError>;
    /// Changes under `prefix` made after this call, in revision order.
    async fn watch_prefix(
        &self,
        prefix: &[u8],
    ) -> Result<mpsc::UnboundedReceiver<WatchEvent>, MetaError>;
    /// The current revision.
    async fn revision(&self) -> Result<i64, MetaError>;
}
