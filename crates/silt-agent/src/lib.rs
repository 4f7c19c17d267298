//! The Silt agent: a Kafka broker whose log lives in object storage.
//!
//! Layout: [`agent`] starts and stops; [`connection`] owns a client socket; [`handlers`] answer
//! Kafka APIs; [`append`] and [`flush`] are the write path; [`read`] and [`cache`] the read
//! path; [`partition`], [`producer`], [`topics`] and [`topic_config`] hold state; [`error`] is
//! the one map from internal errors to Kafka error codes. [`broker`] is the core the services
//! borrow; the services (archiver, lifecycle jobs, controller, group coordinator) are started
//! and stopped by [`tasks`], keep their exposed state in [`service_state`], and are never
//! imported by the core. The request pipeline's layers: [`connection`] (frames, decoding), [`session`]
//! (authentication), [`authz`] (authorization), [`quotas`] (byte rates), [`limits`] (connection and memory limits), then
//! [`handlers`]; [`listeners`] and [`security`] set them up. The agent depends on the metadata
//! and object-store traits, never on a backend.
#![warn(missing_docs)]

pub mod admin_http;
pub mod agent;
pub mod append;
pub mod archiver;
pub mod authz;
pub mod blocks;
pub mod broker;
pub mod cache;
pub mod cluster;
pub mod connection;
pub mod crash_points;
pub mod error;
pub mod exposition;
pub mod flush;
pub mod groups;
pub mod handlers;
pub mod lifecycle;
pub mod limits;
pub mod listeners;
pub mod log_levels;
pub mod metrics;
pub mod partition;
pub mod producer;
pub mod producer_ids;
pub mod quotas;
pub mod read;
pub mod security;
pub mod service_state;
pub mod session;
pub mod startup;
pub mod tasks;
#[cfg(test)]
mod test_batches;
pub mod topic_config;
pub mod topics;

pub use agent::{Agent, Components, Lost, StartError};
