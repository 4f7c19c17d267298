//! This agent's place in the cluster: the live agents, who leads each partition and group
//! shard (followed live from the metadata store), and the partitions this agent leads now.
//!
//! The [`Cluster::run`] reactor turns assignment changes into local state: a partition newly
//! assigned here is loaded from the offset index (high watermark, producer state) and served
//! with its new epoch; one assigned elsewhere is closed at once (appends refused, buffered
//! batches fail their fenced commit) and dropped. Group shards are handed to the group
//! coordinator the same way. The [`controller`] decides the assignments.

pub mod controller;
pub mod placement;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use silt_meta::layout::agents::{self, Registration};
use silt_meta::layout::assignment::{self, Assignment};
use silt_meta::layout::catalog::TopicRecord;
use silt_meta::mirror::{Mirror, Snapshot};
use silt_meta::{Compare, MetaError, MetaKv};
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::PartitionError;
use crate::groups::GroupCoordinator;
use crate::partition::Partition;
use crate::topics::Topic;

/// Partitions loaded at once when leadership arrives.
const LOAD_CONCURRENCY: usize = 16;
/// From this many partitions of one topic gained at once, the topic's whole index is read in
/// pages instead of two reads per partition.
const BULK_LOAD_PARTITIONS: usize = 32;

/// This agent as clients see it.
#[derive(Debug, Clone)]
pub struct Node {
    /// Broker id.
    pub id: i32,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: i32,
    /// Advertised addresses of its other named listeners.
    pub listeners: std::collections::BTreeMap<String, silt_meta::layout::agents::Endpoint>,
    /// Its zone, if set.
    pub rack: Option<String>,
}

impl Node {
    /// Its advertised address on the listener named `listener`, if it has one.
    pub fn endpoint(&self, listener: &str) -> Option<(&str, i32)> {
        if listener == silt_common::config::DEFAULT_LISTENER {
            return Some((&self.host, self.port));
        }
        self.listeners
            .get(listener)
            .map(|e| (e.host.as_str(), e.port))
    }
}

/// A partition's identity.
pub type PartitionKey = (Uuid, i32);

/// Rendezvous (highest random weight) score of an agent for a partition: stable across agents
/// and restarts, so every agent picks the same reader.
fn rendezvous(topic_id: &Uuid, partition: i32, node: i32) -> u64 {
    let (hi, lo) = topic_id.as_u64_pair();
    let mut z = hi ^ lo.rotate_left(17) ^ ((partition as u64) << 32) ^ (node as u32 as u64);
    for _ in 0..2 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
    }
    z
}

/// Leadership counters (exported as metrics).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Partitions taken over by this agent.
    pub partitions_gained: AtomicU64,
    /// Partitions given up by this agent.
    pub partitions_lost: AtomicU64,
    /// Milliseconds the last batch of partition loads took (index read, state rebuilt).
    pub last_load_ms: AtomicU64,
    /// Partitions in the last batch of loads.
    pub last_load_partitions: AtomicU64,
    /// Partitions carrying traffic that this agent, as controller, moved to even out load.
    pub load_moves: AtomicU64,
}

/// The cluster as this agent sees it.
#[derive(Debug)]
pub struct Cluster {
    me: i32,
    registration: Vec<u8>,
    meta: Arc<dyn MetaKv>,
    agents: Mirror<i32, Registration>,
    partitions: Mirror<PartitionKey, Assignment>,
    shards: Mirror<i32, Assignment>,
    controller: Mirror<(), i32>,
    local: RwLock<HashMap<PartitionKey, Arc<Partition>>>,
    settled: watch::Sender<bool>,
    /// Counters.
    pub stats: ClusterStats,
}

fn reg_value(k: &[u8], v: &[u8]) -> Option<Registration> {
    agents::decode(k, v).ok()
}

fn assignment_value(k: &[u8], v: &[u8]) -> Option<Assignment> {
    assignment::decode(k, v).ok()
}

fn controller_key(k: &[u8]) -> Option<()> {
    (k == assignment::controller_key().as_bytes()).then_some(())
}

fn controller_value(_: &[u8], v: &[u8]) -> Option<i32> {
    assignment::parse_controller(v)
}

impl Cluster {
    /// Starts following the cluster's metadata as node `me` registered with `registration`.
    pub async fn start(
        meta: Arc<dyn MetaKv>,
        me: i32,
        registration: Vec<u8>,
    ) -> Result<Arc<Self>, MetaError> {
        let agents = Mirror::start(meta.clone(), agents::prefix(), agents::parse_key, reg_value);
        let partitions = Mirror::start(
            meta.clone(),
            assignment::partitions_prefix(),
            assignment::parse_partition_key,
            assignment_value,
        );
        let shards = Mirror::start(
            meta.clone(),
            assignment::shards_prefix(),
            assignment::parse_shard_key,
            assignment_value,
        );
        let controller = Mirror::start(
            meta.clone(),
            assignment::controller_key(),
            controller_key,
            controller_value,
        );
        Ok(Arc::new(Self {
            me,
            registration,
            agents: agents.await?,
            partitions: partitions.await?,
            shards: shards.await?,
            controller: controller.await?,
            meta,
            local: RwLock::default(),
            settled: watch::channel(false).0,
            stats: ClusterStats::default(),
        }))
    }

    /// This agent's node id.
    pub fn me(&self) -> i32 {
        self.me
    }

    /// The compare every commit of this agent carries: its registration is still there.
    pub fn registered(&self) -> Compare {
        agents::registered(self.me, &self.registration)
    }

    /// Every live agent as a broker, by id.
    pub fn brokers(&self) -> Vec<Node> {
        self.agents
            .snapshot()
            .items
            .iter()
            .map(|(id, r)| Node {
                id: *id,
                host: r.value.host.clone(),
                port: r.value.port,
                listeners: r.value.listeners.clone(),
                rack: r.value.rack.clone(),
            })
            .collect()
    }

    /// KIP-392: the live agent a consumer in `rack` should read a partition from. The leader
    /// if it is in that rack (`None`: no redirect); otherwise one live agent of the rack,
    /// chosen by rendezvous hashing on the partition, so a zone's readers of different
    /// partitions spread over the zone's agents and keep their agent while it lives. `None`
    /// also when no live agent is in the rack.
    pub fn preferred_reader(
        &self,
        topic_id: &Uuid,
        partition: i32,
        leader: i32,
        rack: &str,
    ) -> Option<i32> {
        let snap = self.agents.snapshot();
        let in_rack = |id: &i32| {
            snap.items
                .get(id)
                .is_some_and(|r| r.value.rack.as_deref() == Some(rack))
        };
        if in_rack(&leader) {
            return None;
        }
        snap.items
            .keys()
            .filter(|id| in_rack(id))
            .max_by_key(|id| rendezvous(topic_id, partition, **id))
            .copied()
    }

    /// The agents listed as a partition's replicas (Metadata): its leader, then, when agents
    /// carry racks, the agent each other rack's consumers read it from.
    pub fn replicas(&self, topic_id: &Uuid, partition: i32, leader: i32) -> Vec<i32> {
        let racks: BTreeSet<String> = self
            .agents
            .snapshot()
            .items
            .values()
            .filter_map(|r| r.value.rack.clone())
            .collect();
        let mut out = vec![leader];
        for rack in racks {
            if let Some(id) = self.preferred_reader(topic_id, partition, leader, &rack) {
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        out
    }

    /// A live agent.
    pub fn node(&self, id: i32) -> Option<Node> {
        self.agents.snapshot().items.get(&id).map(|r| Node {
            id,
            host: r.value.host.clone(),
            port: r.value.port,
            listeners: r.value.listeners.clone(),
            rack: r.value.rack.clone(),
        })
    }

    fn is_live(&self, id: i32) -> bool {
        self.agents.snapshot().items.contains_key(&id)
    }

    /// The controller's node id, if a live agent holds it.
    pub fn controller_id(&self) -> Option<i32> {
        let c = self.controller.snapshot().items.get(&())?.value;
        self.is_live(c).then_some(c)
    }

    /// The live leader and epoch of a partition.
    pub fn leader(&self, topic_id: &Uuid, partition: i32) -> Option<Assignment> {
        let a = self
            .partitions
            .snapshot()
            .items
            .get(&(*topic_id, partition))?
            .value;
        self.is_live(a.leader).then_some(a)
    }

    /// The live coordinator of a group shard.
    pub fn shard_owner(&self, shard: i32) -> Option<Assignment> {
        let a = self.shards.snapshot().items.get(&shard)?.value;
        self.is_live(a.leader).then_some(a)
    }

    /// The partition if this agent leads it now; otherwise the error a client gets.
    pub fn partition(&self, topic: &Topic, index: i32) -> Result<Arc<Partition>, PartitionError> {
        if !topic.has_partition(index) {
            return Err(PartitionError::UnknownTopicOrPartition {
                topic: topic.record.name.clone(),
                partition: index,
            });
        }
        if let Some(p) = self.read_local().get(&(topic.record.id, index)) {
            if !p.is_closed() {
                return Ok(p.clone());
            }
        }
        Err(PartitionError::NotLeader(
            match self.leader(&topic.record.id, index) {
                Some(a) if a.leader == self.me => format!(
                    "{}-{index} is being loaded by this agent; retry",
                    topic.record.name
                ),
                Some(a) => format!("{}-{index} is led by node {}", topic.record.name, a.leader),
                None => format!("{}-{index} has no live leader yet", topic.record.name),
            },
        ))
    }

    /// Waits (at most `timeout`) until every partition of `topic` has a live leader and those
    /// led here are loaded.
    pub async fn wait_led(&self, topic: &Topic, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let id = topic.record.id;
        loop {
            let done = (0..topic.record.partitions).all(|p| match self.leader(&id, p) {
                Some(a) if a.leader == self.me => self.read_local().contains_key(&(id, p)),
                Some(_) => true,
                None => false,
            });
            if done || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Partitions led here now.
    pub fn local_partitions(&self) -> Vec<Arc<Partition>> {
        self.read_local().values().cloned().collect()
    }

    fn read_local(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PartitionKey, Arc<Partition>>> {
        self.local.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether every partition and group shard has a live leader and those assigned here are
    /// loaded.
    pub fn settled(&self) -> watch::Receiver<bool> {
        self.settled.subscribe()
    }

    /// How many partitions and group shards are assigned to this agent.
    pub fn assigned_here(&self) -> usize {
        let p = self.partitions.snapshot();
        let s = self.shards.snapshot();
        p.items
            .values()
            .filter(|a| a.value.leader == self.me)
            .count()
            + s.items
                .values()
                .filter(|a| a.value.leader == self.me)
                .count()
    }

    /// Live agents other than this one.
    pub fn peers(&self) -> usize {
        self.agents
            .snapshot()
            .items
            .keys()
            .filter(|id| **id != self.me)
            .count()
    }

    /// Follows assignment changes until the task is aborted.
    pub async fn run(
        self: Arc<Self>,
        mut catalog: watch::Receiver<Arc<Snapshot<String, TopicRecord>>>,
        groups: Arc<GroupCoordinator>,
    ) {
        let mut parts = self.partitions.subscribe();
        let mut shards = self.shards.subscribe();
        let mut agents = self.agents.subscribe();
        loop {
            let cat = catalog.borrow_and_update().clone();
            parts.borrow_and_update();
            shards.borrow_and_update();
            agents.borrow_and_update();
            let loaded = self.follow_partitions(&cat).await;
            let shards_ok = self.follow_shards(&groups).await;
            let all_led = cat
                .items
                .values()
                .all(|t| (0..t.value.partitions).all(|p| self.leader(&t.value.id, p).is_some()));
            let shards_led = (0..assignment::GROUP_SHARDS).all(|s| self.shard_owner(s).is_some());
            self.settled
                .send_replace(loaded && shards_ok && all_led && shards_led);
            tokio::select! {
                _ = catalog.changed() => {}
                _ = parts.changed() => {}
                _ = shards.changed() => {}
                _ = agents.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Closes partitions led elsewhere now and loads those newly led here. Returns whether
    /// every partition assigned here is loaded.
    async fn follow_partitions(&self, catalog: &Snapshot<String, TopicRecord>) -> bool {
        let names: HashMap<Uuid, &str> = catalog
            .items
            .values()
            .map(|t| (t.value.id, t.value.name.as_str()))
            .collect();
        let snap = self.partitions.snapshot();
        let wanted: BTreeMap<PartitionKey, (i32, i64)> = snap
            .items
            .iter()
            .filter(|(k, a)| a.value.leader == self.me && names.contains_key(&k.0))
            .map(|(k, a)| (*k, (a.value.epoch, a.mod_revision)))
            .collect();
        let to_load: Vec<(PartitionKey, i32, i64)> = {
            let mut local = self.local.write().unwrap_or_else(|p| p.into_inner());
            local.retain(|k, p| {
                let keep =
                    !p.is_closed() && wanted.get(k).is_some_and(|w| w.1 == p.fence_revision);
                if !keep {
                    p.close();
                    self.stats.partitions_lost.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(topic = %p.topic, partition = p.index, "no longer leading partition");
                }
                keep
            });
            wanted
                .iter()
                .filter(|(k, _)| !local.contains_key(k))
                .map(|(k, (e, r))| (*k, *e, *r))
                .collect()
        };
        if to_load.is_empty() {
            return true;
        }
        let started = std::time::Instant::now();
        let n = to_load.len();
        let meta = self.meta.as_ref();
        // Many partitions of one topic (a take-over, a wide topic created): read the topic's
        // index and log starts in a few paged reads; a few partitions: two reads each.
        let mut by_topic: BTreeMap<Uuid, Vec<(PartitionKey, i32, i64)>> = BTreeMap::new();
        for x in to_load {
            by_topic.entry(x.0 .0).or_default().push(x);
        }
        let (bulk, single): (Vec<_>, Vec<_>) = by_topic
            .into_values()
            .partition(|ps| ps.len() >= BULK_LOAD_PARTITIONS);
        let mut loaded: Vec<(PartitionKey, Result<Partition, MetaError>)> =
            futures::stream::iter(single.into_iter().flatten())
                .map(|(k, epoch, rev)| {
                    let name = names[&k.0].to_string();
                    async move { (k, Partition::load(meta, &name, k.0, k.1, epoch, rev).await) }
                })
                .buffer_unordered(LOAD_CONCURRENCY)
                .collect()
                .await;
        for ps in bulk {
            let topic_id = ps[0].0 .0;
            let name = names[&topic_id];
            let read = async {
                let entries = silt_meta::layout::index::load_topic(meta, &topic_id).await?;
                let starts =
                    silt_meta::layout::index::load_topic_log_starts(meta, &topic_id).await?;
                Ok::<_, MetaError>((entries, starts))
            };
            match read.await {
                Ok((mut entries, starts)) => {
                    for (k, epoch, rev) in ps {
                        let p = Partition::from_index(
                            name,
                            topic_id,
                            k.1,
                            epoch,
                            rev,
                            entries.remove(&k.1).unwrap_or_default(),
                            starts.get(&k.1).copied().unwrap_or_default(),
                        );
                        loaded.push((k, Ok(p)));
                    }
                }
                Err(e) => {
                    for (k, _, _) in ps {
                        loaded.push((
                            k,
                            Err(MetaError::Unavailable {
                                doing: "loading a topic's offset index".into(),
                                source: e.to_string().into(),
                            }),
                        ));
                    }
                }
            }
        }
        let mut ok = true;
        let mut local = self.local.write().unwrap_or_else(|p| p.into_inner());
        for (k, res) in loaded {
            match res {
                Ok(p) => {
                    let (epoch, hw) = {
                        let st = p.lock();
                        (st.leader_epoch, st.high_watermark)
                    };
                    tracing::info!(topic = %p.topic, partition = p.index, epoch,
                        high_watermark = hw, "leading partition");
                    local.insert(k, Arc::new(p));
                    self.stats.partitions_gained.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    ok = false;
                    tracing::warn!(topic_id = %k.0, partition = k.1, error = %e,
                        "loading a partition assigned to this agent failed; retrying");
                }
            }
        }
        let ms = started.elapsed().as_millis() as u64;
        self.stats.last_load_ms.store(ms, Ordering::Relaxed);
        self.stats
            .last_load_partitions
            .store(n as u64, Ordering::Relaxed);
        tracing::info!(
            partitions = n,
            ms,
            "took leadership: offset index and producer state rebuilt"
        );
        ok
    }

    async fn follow_shards(&self, groups: &GroupCoordinator) -> bool {
        let wanted: BTreeMap<i32, i64> = self
            .shards
            .snapshot()
            .items
            .iter()
            .filter(|(_, a)| a.value.leader == self.me)
            .map(|(s, a)| (*s, a.mod_revision))
            .collect();
        match groups.follow_shards(&wanted, self.registered()).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "loading group shards assigned to this agent failed; retrying");
                false
            }
        }
    }
}
