//! The Silt agent: a Kafka broker whose log lives in object storage.
//!
//! Layout: [`agent`] starts and stops; `connection` owns a client socket; `handlers` answer
//! Kafka APIs; [`append`] and [`flush`] are the write path; [`read`] and `cache` the read path;
//! [`partition`], `producer`, [`topics`] and `topic_config` hold state; `error` is the one map
//! from internal errors to Kafka error codes. [`broker`] is the core the services borrow; the
//! services (archiver, [`lifecycle`] jobs, controller, group coordinator) are started and stopped
//! by `tasks`, keep their exposed state in `service_state`, and are never imported by the core.
//! The request pipeline's layers: `connection` (frames, decoding), `session` (authentication),
//! `fetch_sessions` (incremental fetch, KIP-227), `authz` (authorization), `quotas` (byte rates and request time), `limits` (connection and
//! memory limits), then `handlers`; `listeners` and `security` set them up. The agent depends on
//! the metadata and object-store traits, never on a backend.
//!
//! Public: what the `silt` binary and the simulation drive (the agent, the write and read paths,
//! partitions, topics, the lifecycle steps, [`crash_points`], [`log_levels`]); everything else is
//! `pub(crate)`.
#![warn(missing_docs)]

pub(crate) mod admin_http;
pub mod agent;
pub mod append;
pub(crate) mod archive_reads;
pub(crate) mod archiver;
pub(crate) mod authz;
pub(crate) mod blocks;
pub mod broker;
pub(crate) mod cache;
pub(crate) mod cluster;
pub(crate) mod connection;
pub mod crash_points;
pub(crate) mod error;
pub(crate) mod exposition;
pub(crate) mod fetch_sessions;
pub mod flush;
pub(crate) mod follower;
pub(crate) mod groups;
pub(crate) mod handlers;
pub mod lifecycle;
pub(crate) mod limits;
pub(crate) mod listeners;
pub(crate) mod load;
pub mod log_levels;
pub(crate) mod metrics;
pub(crate) mod old_formats;
pub mod partition;
pub(crate) mod producer;
pub(crate) mod producer_ids;
pub(crate) mod quotas;
pub mod read;
pub(crate) mod security;
pub(crate) mod service_state;
pub(crate) mod session;
pub(crate) mod startup;
pub(crate) mod tasks;
#[cfg(test)]
mod test_batches;
pub(crate) mod topic_config;
pub mod topics;
pub(crate) mod txn;
pub(crate) mod txn_index;

pub use agent::{Agent, Components, Lost, StartError};
