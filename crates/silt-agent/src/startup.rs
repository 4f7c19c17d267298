//! Why an agent could not start: one error type for every start-up step (listeners, security
//! set-up, the metadata store, the cache), each saying what to change.

use silt_meta::MetaError;

use crate::error::TopicError;

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("could not listen on {addr} ({setting}): {source}. Is another agent or Kafka broker using it? Set `{setting}` in the config file or SILT_{env}")]
    Bind {
        /// The address.
        addr: String,
        /// The setting that names it.
        setting: &'static str,
        /// Its environment variable suffix.
        env: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metadata store failed during start-up.
    #[error("metadata store failed while {doing}: {source}")]
    Meta {
        /// What start-up was doing.
        doing: &'static str,
        /// The cause.
        #[source]
        source: MetaError,
    },
    /// Another live agent is registered with this node id.
    #[error("node id {node_id} is registered by a live agent at {host}:{port}. Give every agent its own node_id, or set node_id = -1 to have a free one allocated")]
    NodeIdTaken {
        /// The node id.
        node_id: i32,
        /// The holder's advertised host.
        host: String,
        /// The holder's advertised port.
        port: i32,
    },
    /// A security setting could not be put to use.
    #[error("{0}")]
    Security(String),
    /// The block cache could not be set up.
    #[error("the block cache could not be set up: {0}. Check cache.dir (or data_dir) is writable, or set cache.disk_bytes = 0")]
    Cache(String),
    /// Loading topics failed.
    #[error("could not load topics: {0}")]
    Topics(#[from] TopicError),
}
