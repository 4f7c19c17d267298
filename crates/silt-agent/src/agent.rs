//! Starting and stopping an agent: build shared state from the components passed in, register
//! under a lease (fencing any earlier session of the same node id), follow the catalog and the
//! assignments, campaign for controller, run the flush pipeline and the listener. SIGTERM
//! handling lives in the binary; [`Agent::shutdown`] is what it calls: stop taking writes,
//! flush, leave the cluster, and wait for the partitions to be handed over.

use std::net::SocketAddr;
use std::sync::Arc;

use silt_common::{Clock, Settings};
use silt_meta::layout::agents::{self, Registration};
use silt_meta::layout::cluster;
use silt_meta::MetaKv;
use silt_storage::Storage;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::{Broker, Node};
use crate::cache::ObjectCache;
use crate::cluster::controller::{self, Identity};
use crate::cluster::Cluster;
use crate::flush::Flusher;
use crate::groups::group::GroupLimits;
use crate::groups::GroupCoordinator;
use crate::producer_ids::ProducerIds;
pub use crate::startup::StartError;
use crate::tasks::{Periodic, TaskRunner};
use crate::topics::Topics;

/// What an agent is built from.
#[derive(Debug, Clone)]
pub struct Components {
    /// Metadata store.
    pub meta: Arc<dyn MetaKv>,
    /// Object store.
    pub storage: Storage,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Run-time log level control, if the embedding program offers it.
    pub log_levels: Option<Arc<dyn crate::log_levels::LogLevels>>,
    /// Crash points (never armed outside tests).
    pub crash_points: Arc<crate::crash_points::CrashPoints>,
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    broker: Arc<Broker>,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    /// The lease keeper and the jobs that write (archiver, compaction, retention, GC, session
    /// progress): stopped first on shutdown.
    jobs: TaskRunner,
    /// What keeps the agent part of the cluster (leadership reactor, controller election, group
    /// timeouts, the admin port): stopped last.
    membership: TaskRunner,
    lease_lost: watch::Receiver<Option<Lost>>,
    lease: silt_meta::LeaseId,
    stop_accepting: watch::Sender<bool>,
    accept: Vec<JoinHandle<()>>,
    listener_addrs: Vec<(String, SocketAddr)>,
    flush: JoinHandle<()>,
}

impl Agent {
    /// Starts an agent.
    pub async fn start(settings: Settings, mut c: Components) -> Result<Self, StartError> {
        let instrumented = silt_meta::instrumented::InstrumentedKv::new(c.meta.clone());
        let meta_stats = instrumented.stats();
        c.meta = Arc::new(instrumented);
        let bound = crate::listeners::bind_all(&settings).await?;
        let addr = bound[0].info.addr;
        let security = crate::security::Security::start(&settings, c.meta.clone()).await?;
        let quotas = crate::quotas::Quotas::start(c.meta.clone())
            .await
            .map_err(|source| StartError::Meta {
                doing: "reading the client quotas",
                source,
            })?;
        let markers = crate::txn::markers::MarkerRequests::start(c.meta.clone())
            .await
            .map_err(|source| StartError::Meta {
                doing: "reading the transaction marker requests",
                source,
            })?;
        let admin_listener = match settings.admin_listen.as_deref() {
            Some(a) if !a.is_empty() => Some(tokio::net::TcpListener::bind(a).await.map_err(
                |source| StartError::Bind {
                    addr: a.to_string(),
                    setting: "admin_listen",
                    env: "ADMIN_LISTEN",
                    source,
                },
            )?),
            _ => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let session = uuid::Uuid::new_v4().simple().to_string();
        let host = bound[0].info.host.clone();
        let port = bound[0].info.port;
        let ttl = std::time::Duration::from_millis(settings.metadata.lease_ttl_ms);
        let meta_err = |doing: &'static str| move |source| StartError::Meta { doing, source };
        let lease = c
            .meta
            .grant_lease(ttl)
            .await
            .map_err(meta_err("granting this agent's lease"))?;
        let registration = Registration {
            session: session.clone(),
            host: host.clone(),
            port,
            listeners: crate::listeners::endpoints(&bound),
            rack: settings.rack.clone(),
        };
        let (node_id, reg_value) =
            match agents::register(c.meta.as_ref(), settings.node_id, &registration, lease)
                .await
                .map_err(meta_err("registering this agent"))?
            {
                Ok(r) => r,
                Err(taken) => {
                    return Err(StartError::NodeIdTaken {
                        node_id: taken.node_id,
                        host: taken.holder.host,
                        port: taken.holder.port,
                    })
                }
            };
        let cluster_id = cluster::get_or_create(
            c.meta.as_ref(),
            &uuid::Uuid::new_v4().simple().to_string()[..22],
        )
        .await
        .map_err(|source| StartError::Meta {
            doing: "reading the cluster id",
            source,
        })?;
        let secret = cluster::producer_id_key(
            c.meta.as_ref(),
            &silt_security::scram::random_bytes(32)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        )
        .await
        .map_err(|source| StartError::Meta {
            doing: "reading the producer-id secret",
            source,
        })?;
        let sealer = silt_security::producer_ids::PidSealer::new(secret.as_bytes());
        let topics = Topics::load(c.meta.clone(), c.clock.clone(), settings.topics.clone()).await?;
        let cluster = Cluster::start(c.meta.clone(), node_id, reg_value)
            .await
            .map_err(meta_err("following agents and assignments"))?;
        let g = &settings.groups;
        let groups = Arc::new(GroupCoordinator::new(
            c.meta.clone(),
            c.clock.clone(),
            GroupLimits {
                min_session_timeout_ms: g.min_session_timeout_ms,
                max_session_timeout_ms: g.max_session_timeout_ms,
                initial_rebalance_delay_ms: g.initial_rebalance_delay_ms,
                max_size: g.max_size,
                max_assignment_bytes: g.max_assignment_bytes,
                consumer: crate::groups::consumer::ConsumerLimits {
                    heartbeat_interval_ms: g.consumer_heartbeat_interval_ms,
                    session_timeout_ms: g.consumer_session_timeout_ms,
                    max_size: g.max_size,
                },
            },
        ));
        let mut tail = ObjectCache::new(settings.flush.tail_cache_bytes);
        let cs = &settings.cache;
        if cs.memory_bytes > 0 {
            let dir = cs
                .dir
                .clone()
                .unwrap_or_else(|| settings.data_dir.join("cache"));
            // A fresh disk tier per start: cached blocks are immutable, but not worth recovering.
            let _ = std::fs::remove_dir_all(&dir);
            tail.blocks = Some(
                crate::blocks::BlockCache::open(
                    cs.memory_bytes,
                    cs.disk_bytes_for(settings.object_store.kind),
                    &dir,
                    cs.block_bytes,
                    cs.read_ahead_ranges,
                )
                .await
                .map_err(StartError::Cache)?,
            );
        }
        let cache = Arc::new(tail);
        let mut flush = settings.flush.clone();
        flush.min_gap_ms = Some(flush.min_gap_ms_for(settings.object_store.kind));
        let flusher = Flusher::new(
            flush,
            c.storage.clone(),
            c.meta.clone(),
            cache.clone(),
            node_id,
            session.clone(),
            cluster.registered(),
        )
        .with_crash_points(c.crash_points.clone());
        let node = Node {
            id: node_id,
            host,
            port,
            listeners: registration.listeners.clone(),
            rack: registration.rack.clone(),
        };
        let settings_connections = settings.connections.clone();
        let broker = Arc::new(Broker {
            producer_ids: ProducerIds::new(c.meta.clone(), sealer),
            groups,
            metrics: crate::metrics::Metrics::default(),
            node,
            cluster_id,
            meta: c.meta,
            meta_stats,
            session: session.clone(),
            archive: Default::default(),
            lifecycle_lock: Default::default(),
            gc: Default::default(),
            compaction: Default::default(),
            log_levels: c.log_levels,
            crash_points: c.crash_points,
            storage: c.storage,
            clock: c.clock,
            topics,
            cluster: cluster.clone(),
            flusher: flusher.clone(),
            cache,
            settings,
            stopping: watch::channel(false).0,
            limits: crate::limits::ConnectionLimits::new(settings_connections),
            security,
            quotas,
            txns: Default::default(),
            load: Default::default(),
            followers: Default::default(),
        });
        let flush = tokio::spawn(flusher.run());
        let (lease_lost_tx, lease_lost) = watch::channel(None);
        let mut jobs = TaskRunner::new();
        jobs.spawn(
            "lease-keeper",
            keep_lease(broker.clone(), lease, ttl, lease_lost_tx),
        );
        jobs.every(crate::archiver::ArchiverJob(broker.clone()));
        jobs.every(crate::lifecycle::retention::RetentionJob(broker.clone()));
        jobs.every(crate::lifecycle::gc::GcJob::new(broker.clone()));
        jobs.every(crate::lifecycle::compaction::CompactionJob(broker.clone()));
        jobs.every(crate::txn::markers::MarkerJob::new(broker.clone(), markers));
        jobs.every(crate::txn::TxnPassJob(broker.clone()));
        jobs.every(crate::load::LoadJob::new(broker.clone(), lease));
        jobs.every(ProgressJob {
            b: broker.clone(),
            session: session.clone(),
            lease,
            published: None,
        });
        let mut membership = TaskRunner::new();
        membership.spawn(
            "leadership",
            cluster
                .clone()
                .run(broker.topics.subscribe(), broker.groups.clone()),
        );
        membership.spawn(
            "controller-election",
            controller::run(
                broker.meta.clone(),
                Identity {
                    node_id,
                    session: session.clone(),
                    lease,
                },
                cluster.clone(),
                broker.topics.subscribe(),
                controller::Placement {
                    by_load: broker.settings.load.placement,
                    max_moves_per_minute: broker.settings.load.max_moves_per_minute,
                },
            ),
        );
        membership.every(broker.groups.ticker(std::time::Duration::from_millis(100)));
        // Serve once this agent's share is known and loaded (bounded: a dead agent's
        // partitions wait for its lease to lapse, and clients retry meanwhile).
        let mut settled = cluster.settled();
        if tokio::time::timeout(ttl * 2, settled.wait_for(|s| *s))
            .await
            .is_err()
        {
            tracing::warn!("some partitions or group shards have no live leader yet; serving anyway (clients retry until they do)");
        }
        if let Some(l) = admin_listener {
            membership.spawn("admin-http", crate::admin_http::serve(l, broker.clone()));
        }
        if let Some(job) = crate::security::JwksRefreshJob::new(&broker.security, &broker.settings)
        {
            membership.every(job);
        }
        if let Some(job) = crate::security::TlsReloadJob::new(&broker.security, &broker.settings) {
            membership.every(job);
        }
        let (stop_accepting, stop_rx) = watch::channel(false);
        let listener_addrs = bound
            .iter()
            .map(|b| (b.info.name.clone(), b.info.addr))
            .collect();
        let accept = bound
            .into_iter()
            .map(|b| crate::connection::accept(b, broker.clone(), stop_rx.clone()))
            .collect();
        tracing::info!(%addr, node_id = broker.node.id, session = %session,
            topics = broker.topics.all().len(), partitions_led = cluster.local_partitions().len(),
            agents = cluster.brokers().len(), "agent ready");
        Ok(Self {
            broker,
            addr,
            admin_addr,
            jobs,
            membership,
            lease_lost,
            lease,
            stop_accepting,
            accept,
            listener_addrs,
            flush,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound address of the listener named `name` (`DEFAULT` for `listen`).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// The bound admin HTTP address, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// This session's lease (for tests that simulate a crash: revoking it ends the session as
    /// its expiry would).
    pub fn lease(&self) -> silt_meta::LeaseId {
        self.lease
    }

    /// Shared state (for tests and tools).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Resolves when this session is over: its lease expired (it was cut off from the metadata
    /// store or stalled for longer than the TTL; [`Agent::abandon`] it and start a new session)
    /// or another start took its node id (exit).
    pub async fn lease_lost(&self) -> Lost {
        let mut rx = self.lease_lost.clone();
        let got = rx.wait_for(|l| l.is_some()).await.map(|l| *l);
        got.ok().flatten().unwrap_or(Lost::Expired)
    }

    /// Ends a session that lost its lease, at once: no flush (its commits would be refused),
    /// every buffered write fails, connections close, background work stops. Its partitions
    /// already belong to other agents. The process then starts a fresh session with
    /// [`Agent::start`], fenced from this one by the new registration.
    pub async fn abandon(self) {
        let _ = self.broker.stopping.send(true);
        self.broker.flusher.abandon();
        let _ = self.stop_accepting.send(true);
        for a in self.accept {
            let _ = a.await;
        }
        // The store may still be away: steps in progress get a moment, not a wait on it.
        let grace = std::time::Duration::from_millis(500);
        self.jobs.stop(grace).await;
        self.membership.stop(grace).await;
        // The pipeline ends on its own once closed (its last commits are refused); it is not
        // waited on for longer than the grace period.
        let mut flush = self.flush;
        if tokio::time::timeout(grace, &mut flush).await.is_err() {
            flush.abort();
            let _ = flush.await;
        }
        // Connections finish their last response and let go of the session's state (the block
        // cache's files among it) before a new session opens them.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while Arc::strong_count(&self.broker) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::info!(
            session = %self.broker.session,
            "abandoned this agent session: buffered writes failed (producers retry), connections closed"
        );
    }

    /// Graceful stop: refuse new writes (clients retry elsewhere), flush and commit what is
    /// buffered, leave the cluster (revoking the lease drops the registration and any
    /// controller role at once), wait briefly for the partitions to be handed over while still
    /// answering Metadata, then close.
    pub async fn shutdown(self) {
        let started = std::time::Instant::now();
        // Writing jobs finish the step they are in; the lease keeper stops with them (the
        // lease is revoked below).
        self.jobs.stop(std::time::Duration::from_secs(5)).await;
        self.broker.flusher.close();
        // Bounded: with the metadata store unreachable, commits cannot finish; what is not
        // committed was never acknowledged with acks=all.
        let ttl = std::time::Duration::from_millis(self.broker.settings.metadata.lease_ttl_ms);
        if tokio::time::timeout(ttl * 3, self.flush).await.is_err() {
            tracing::error!("buffered writes could not be committed before shutdown (is the metadata store reachable?); they were not acknowledged and producers will retry them");
        }
        if let Err(e) = self.broker.meta.revoke_lease(self.lease).await {
            tracing::warn!(error = %e, "could not revoke this agent's lease; it expires on its own");
        }
        let cluster = &self.broker.cluster;
        if cluster.peers() > 0 {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
            while cluster.assigned_here() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let _ = self.stop_accepting.send(true);
        for a in self.accept {
            let _ = a.await;
        }
        let _ = self.broker.stopping.send(true);
        self.membership
            .stop(std::time::Duration::from_secs(1))
            .await;
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "agent stopped; every acknowledged write is committed and its partitions handed over"
        );
    }
}

/// How an agent session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The lease expired (cut off from the metadata store, or stalled, longer than the TTL):
    /// start a new session in the same process.
    Expired,
    /// Another start registered this node id: this process must stop.
    TakenOver,
}

/// Renews the agent's lease every third of its TTL. If the lease is gone (this agent was cut
/// off or stalled longer than the TTL and its partitions moved), or the flush pipeline was
/// fenced, the session is over: it stops taking writes (its commits would be refused anyway)
/// and says why.
async fn keep_lease(
    broker: Arc<Broker>,
    lease: silt_meta::LeaseId,
    ttl: std::time::Duration,
    lost: watch::Sender<Option<Lost>>,
) {
    let mut iv = tokio::time::interval(ttl / 3);
    iv.tick().await;
    loop {
        iv.tick().await;
        if broker.flusher.subscribe().borrow().stopped {
            // The flush pipeline was fenced: by another start of this node id, or because this
            // session's registration expired with its lease. Only the store can tell which.
            let key = agents::key(broker.node.id);
            match broker.meta.get(key.as_bytes()).await {
                Ok(Some(kv)) if kv.lease != lease => {
                    tracing::error!("another start registered this node id; this agent stops");
                    let _ = lost.send(Some(Lost::TakenOver));
                    return;
                }
                Ok(Some(_)) => {
                    tracing::error!("this agent's flush pipeline stopped; starting a new session");
                    let _ = lost.send(Some(Lost::Expired));
                    return;
                }
                Ok(None) => {
                    tracing::error!(
                        "this agent's registration expired with its lease; starting a new session"
                    );
                    let _ = lost.send(Some(Lost::Expired));
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "this agent's commits were refused and the metadata store does not answer; retrying");
                    continue;
                }
            }
        }
        match broker.meta.keep_alive(lease).await {
            Ok(()) => {}
            Err(silt_meta::MetaError::LeaseNotFound(_)) => {
                tracing::error!("this agent's lease expired (it was unreachable or stalled for longer than metadata.lease_ttl_ms); its partitions moved to other agents. Failing its buffered writes and starting a new session");
                broker.flusher.abandon();
                let _ = lost.send(Some(Lost::Expired));
                return;
            }
            Err(e) => tracing::warn!(error = %e, "renewing this agent's lease failed; retrying"),
        }
    }
}

/// Publishes, under the agent's lease, the last flush generation and compaction step this
/// session finished, so garbage collection knows which of its unreferenced objects can never be
/// committed any more. At most once a second, and only on change.
struct ProgressJob {
    b: Arc<Broker>,
    session: String,
    lease: silt_meta::LeaseId,
    published: Option<agents::SessionProgress>,
}

impl Periodic for ProgressJob {
    fn name(&self) -> &'static str {
        "session-progress"
    }

    fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    async fn step(&mut self) {
        let now = agents::SessionProgress {
            flush: self.b.flusher.subscribe().borrow().committed,
            compact: self
                .b
                .compaction
                .finished
                .load(std::sync::atomic::Ordering::SeqCst),
        };
        if self.published == Some(now) {
            return;
        }
        let txn = silt_meta::Txn {
            success: vec![agents::session_progress_op(&self.session, &now, self.lease)],
            ..Default::default()
        };
        match self.b.meta.txn(txn).await {
            Ok(_) => self.published = Some(now),
            Err(e) => tracing::debug!(error = %e, "publishing session progress failed; retrying"),
        }
    }
}
