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
    /// A delete of one key.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Op::Delete { key: key.into() }
    }

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

/// The limits of one call that every backend enforces the same way (etcd's defaults:
/// `--max-request-bytes` 1.5 MiB, `--max-txn-ops` 128, and the client's 4 MiB gRPC reply cap).
/// A transaction over them is refused with [`MetaError::TooLarge`] before it is sent, by every
/// backend, so code that passes its tests on the embedded store cannot fail on etcd for size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of one request (keys, values and compares of a transaction, with overhead).
    pub max_request_bytes: usize,
    /// Most operations in each of a transaction's compares, success and failure lists.
    pub max_txn_ops: usize,
    /// Most bytes of one reply: [`MetaKv::range_all`] pages stay under it.
    pub max_reply_bytes: usize,
}

/// etcd's default limits, which every backend enforces; replies are decoded up to 64 MiB (the
/// etcd backend raises gRPC's 4 MiB default), which a page of [`PAGE_KEYS`] keys stays under
/// for every value Silt writes (index entries are capped at 2 000 idempotent batches, ~250 KB).
pub const LIMITS: Limits = Limits {
    max_request_bytes: 3 << 19,
    max_txn_ops: 128,
    max_reply_bytes: 64 << 20,
};

/// Keys per page of [`MetaKv::range_all`].
pub const PAGE_KEYS: usize = 128;

/// Per-operation overhead counted by [`Txn::encoded_len`] (protobuf framing, option fields).
const OP_OVERHEAD: usize = 16;

/// How a caller should treat a [`MetaError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Nothing was applied; the same call may succeed later.
    Retryable,
    /// Nothing was applied and the same call will never succeed: change it or give up.
    Permanent,
    /// A write was sent and not answered: it may or may not have been applied. Retry only what
    /// is safe to apply twice, or read back to learn the outcome.
    OutcomeUnknown,
}

/// Failures of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The store could not be reached or its storage failed before anything was applied; the
    /// operation may be retried.
    #[error("metadata store unavailable while {doing}: {source}")]
    Unavailable {
        /// What the store was doing.
        doing: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A write was sent but no answer came back (a timeout, a cut connection): it may have been
    /// applied.
    #[error("metadata store did not answer while {doing} (the write may or may not have been applied): {source}")]
    Unanswered {
        /// What the store was doing.
        doing: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request is over one of the store's [`Limits`]; it was not sent.
    #[error("metadata request refused before sending: {what} is {size}, over the store's limit of {limit}")]
    TooLarge {
        /// What is over the limit.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The store refused the request as invalid (it will never accept it).
    #[error("metadata store refused the request while {doing}: {reason}")]
    Refused {
        /// What the store was doing.
        doing: String,
        /// The store's reason.
        reason: String,
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

impl MetaError {
    /// How a caller should treat this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Unavailable { .. } => ErrorClass::Retryable,
            Self::Unanswered { .. } => ErrorClass::OutcomeUnknown,
            Self::TooLarge { .. } => ErrorClass::Permanent,
            Self::Refused { .. } => ErrorClass::Permanent,
            Self::LeaseNotFound(_) => ErrorClass::Permanent,
            Self::Corrupt { .. } => ErrorClass::Permanent,
        }
    }

    /// Whether the same call may succeed if tried again (retryable or of unknown outcome).
    pub fn is_transient(&self) -> bool {
        self.class() != ErrorClass::Permanent
    }
}

impl Txn {
    /// The bytes this transaction takes in a request, as etcd counts them (keys, values and
    /// compare operands) plus a small overhead per operation.
    pub fn encoded_len(&self) -> usize {
        let op = |o: &Op| {
            OP_OVERHEAD
                + match o {
                    Op::Put { key, value, .. } => key.len() + value.len(),
                    Op::Delete { key } => 2 * key.len(),
                    Op::DeletePrefix { prefix } => 2 * prefix.len(),
                }
        };
        let cmp = |c: &Compare| {
            OP_OVERHEAD
                + c.key.len()
                + match &c.target {
                    CompareTarget::Value(v) => v.len(),
                    _ => 8,
                }
        };
        self.compares.iter().map(cmp).sum::<usize>()
            + self.success.iter().map(op).sum::<usize>()
            + self.failure.iter().map(op).sum::<usize>()
    }

    /// Refuses a transaction over `limits`, saying which limit.
    pub fn check(&self, limits: &Limits) -> Result<(), MetaError> {
        for (what, n) in [
            ("the number of compares", self.compares.len()),
            ("the number of success operations", self.success.len()),
            ("the number of failure operations", self.failure.len()),
        ] {
            if n > limits.max_txn_ops {
                return Err(MetaError::TooLarge {
                    what,
                    size: n,
                    limit: limits.max_txn_ops,
                });
            }
        }
        let size = self.encoded_len();
        if size > limits.max_request_bytes {
            return Err(MetaError::TooLarge {
                what: "the transaction's size in bytes",
                size,
                limit: limits.max_request_bytes,
            });
        }
        Ok(())
    }
}

/// Splits `ops` into transactions that each fit [`LIMITS`] with `compares` attached, in order.
/// Fails with [`MetaError::TooLarge`] if one operation alone cannot fit.
pub fn chunk_ops(compares: &[Compare], ops: Vec<Op>) -> Result<Vec<Txn>, MetaError> {
    let base = Txn {
        compares: compares.to_vec(),
        ..Default::default()
    };
    base.check(&LIMITS)?;
    let budget = LIMITS.max_request_bytes - base.encoded_len();
    let mut out: Vec<Txn> = Vec::new();
    let mut cur: Vec<Op> = Vec::new();
    let mut bytes = 0usize;
    for op in ops {
        let one = Txn {
            success: vec![op.clone()],
            ..Default::default()
        }
        .encoded_len();
        if one > budget {
            return Err(MetaError::TooLarge {
                what: "one operation's size in bytes",
                size: one,
                limit: budget,
            });
        }
        if !cur.is_empty() && (cur.len() == LIMITS.max_txn_ops || bytes + one > budget) {
            out.push(Txn {
                success: std::mem::take(&mut cur),
                ..base.clone()
            });
            bytes = 0;
        }
        bytes += one;
        cur.push(op);
    }
    if !cur.is_empty() {
        out.push(Txn {
            success: cur,
            ..base
        });
    }
    Ok(out)
}

/// An etcd-shaped key-value store. Every backend passes [`crate::conformance`].
#[async_trait]
pub trait MetaKv: Send + Sync + std::fmt::Debug {
    /// One key.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaError>;
    /// Keys under a prefix, ordered by key: one reply, so callers that may see many keys set
    /// a `limit` or use [`MetaKv::range_all`].
    async fn range(&self, req: RangeRequest) -> Result<Vec<KeyValue>, MetaError>;
    /// Every key under a prefix, ascending, read in pages of at most [`PAGE_KEYS`] keys (each
    /// reply stays under the store's reply limit however many keys there are).
    async fn range_all(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, MetaError> {
        let mut out: Vec<KeyValue> = Vec::new();
        let mut from = prefix.to_vec();
        loop {
            let page = self
                .range(RangeRequest {
                    prefix: prefix.to_vec(),
                    start_after_or_at: from.clone(),
                    limit: PAGE_KEYS,
                    descending: false,
                })
                .await?;
            let full = page.len() == PAGE_KEYS;
            if let Some(last) = page.last() {
                from = last.key.clone();
                from.push(0);
            }
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }
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
