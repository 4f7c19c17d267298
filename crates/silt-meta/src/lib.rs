//! Silt's metadata store: an etcd-shaped key-value trait ([`MetaKv`]), its backends, the
//! conformance suite every backend must pass, and the typed key layout (catalog, offset index,
//! producer ids) written once on top of the trait.
//!
//! Code above this crate never talks to a backend directly; it holds a `dyn MetaKv`.
#![warn(missing_docs)]

pub mod conformance;
pub mod embedded;
pub mod faults;
pub mod instrumented;
pub mod kv;
pub mod layout;
pub mod mirror;

pub use embedded::EmbeddedKv;
pub use kv::{
    chunk_ops, Compare, CompareOp, CompareTarget, ErrorClass, KeyValue, LeaseId, Limits, MetaError,
    MetaKv, Op, RangeRequest, Txn, TxnResponse, WatchEvent, LIMITS,
};
