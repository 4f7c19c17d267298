//! End-to-end tests: the real `silt` binary driven by librdkafka and raw Kafka frames.

mod autoscaling;
mod backends;
mod cli;
mod clients;
mod cluster;
mod config;
mod durability;
mod fetch_sessions;
mod groups;
mod harness;
mod kafka;
mod lifecycle;
mod limits;
mod netfaults;
mod placement;
mod protocol;
mod read_path;
mod scale;
mod security;
mod tls_clients;
mod transactions;
mod transactions_v2;
mod txn_checker;
mod versions;
mod write_path;
mod zones;
