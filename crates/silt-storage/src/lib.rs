//! Object storage for Silt: the flush-object format ([`object`]), object naming ([`paths`]) and
//! [`Storage`], the wrapper every object-store call goes through (retries with backoff and
//! jitter, request counters, injected latency and failures for tests).
//!
//! This crate never decides what to write or when; the agent does.
#![warn(missing_docs)]

pub mod direct;
mod direct_read;
pub mod object;
pub mod paths;
pub mod store;

pub use store::{Faults, Storage, StorageError, StorageStats};
