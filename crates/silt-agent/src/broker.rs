//! The components and shared state every request handler works with.

use std::sync::Arc;

use silt_common::{Clock, Settings};
use silt_meta::MetaKv;
use silt_storage::Storage;

use crate::cache::ObjectCache;
use crate::cluster::Cluster;
use crate::flush::Flusher;
use crate::groups::GroupCoordinator;
use crate::producer_ids::ProducerIds;
use crate::topics::Topics;

pub use crate::cluster::Node;

/// Shared state of a running agent.
#[derive(Debug)]
pub struct Broker {
    /// Settings it was started with.
    pub settings: Settings,
    /// Where a test may stop the agent as if it had crashed (never armed outside tests).
    pub crash_points: Arc<crate::crash_points::CrashPoints>,
    /// Itself.
    pub node: Node,
    /// Cluster id.
    pub cluster_id: String,
    /// Metadata store (instrumented).
    pub meta: Arc<dyn MetaKv>,
    /// Its call counters.
    pub meta_stats: Arc<silt_meta::instrumented::MetaStats>,
    /// This agent session's id (names its objects).
    pub session: String,
    /// Parquet archiver state.
    pub archive: crate::service_state::ArchiveState,
    /// Serialises log-start moves (retention, DeleteRecords).
    pub lifecycle_lock: tokio::sync::Mutex<()>,
    /// Garbage-collection counters.
    pub gc: crate::service_state::GcStats,
    /// Compaction counters.
    pub compaction: crate::service_state::CompactionStats,
    /// Run-time log level control.
    pub log_levels: Option<Arc<dyn crate::log_levels::LogLevels>>,
    /// Object store.
    pub storage: Storage,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Topics.
    pub topics: Topics,
    /// Agents, leadership, and the partitions led here.
    pub cluster: Arc<Cluster>,
    /// The write path.
    pub flusher: Flusher,
    /// Recently written objects.
    pub cache: Arc<ObjectCache>,
    /// Producer id allocation.
    pub producer_ids: ProducerIds,
    /// Consumer groups coordinated here.
    pub groups: Arc<GroupCoordinator>,
    /// Request and traffic metrics.
    pub metrics: crate::metrics::Metrics,
    /// Connection and response-memory limits.
    pub limits: Arc<crate::limits::ConnectionLimits>,
    /// Set when this agent session ends (shut down, or abandoned after losing its lease):
    /// connections served by it close, so clients reconnect to whatever serves next.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// TLS, SASL users and mechanisms, the authorizer.
    pub security: crate::security::Security,
    /// Client quotas (produce and fetch byte rates).
    pub quotas: crate::quotas::Quotas,
    /// The transaction coordinator of the shards coordinated here.
    pub txns: crate::txn::coordinator::TxnCoordinator,
    /// The load signal autoscalers follow.
    pub load: crate::load::LoadMeter,
    /// Read-only copies of partitions led elsewhere, for consumers reading from their zone.
    pub followers: crate::follower::FollowerReads,
}
