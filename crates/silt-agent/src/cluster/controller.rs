//! The controller: one agent at a time (whoever creates the lease-bound `/silt/controller`
//! key) keeps partitions and group shards assigned over the live agents.
//!
//! Every agent runs [`run`]; the one that wins the key reconciles whenever the live agents or
//! the catalog change (and every second as a safety net): it reads agents, topics and current
//! assignments straight from the metadata store, computes the changes — partitions by load
//! with [`super::placement::balance_by_load`] from the traffic the agents publish
//! (`/silt/load/…`, see [`LoadView`]), or by count; group shards by count with
//! [`assignment::balance`] — and writes them in transactions of at most [`OPS_PER_TXN`]
//! operations, each compared on its controller key, so a deposed controller writes nothing.
//! When it dies or leaves, its key disappears with its lease and another agent takes over.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use silt_meta::layout::assignment::{self, Assignment, GROUP_SHARDS};
use silt_meta::layout::{agents, catalog, load};
use silt_meta::{LeaseId, MetaError, MetaKv, Op, Txn};
use tokio::sync::watch;

use super::Cluster;

/// Writes per controller transaction (etcd's default limit is 128).
pub const OPS_PER_TXN: usize = 64;

/// Why a reconcile stopped.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("another agent became controller")]
    Deposed,
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Who this agent is, for the controller election.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Node id.
    pub node_id: i32,
    /// Session.
    pub session: String,
    /// The agent's lease.
    pub lease: LeaseId,
}

/// How partitions are placed (the `load.*` settings).
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// By load (else by count).
    pub by_load: bool,
    /// Most moves of partitions carrying traffic per minute.
    pub max_moves_per_minute: usize,
}

/// What the controller knows of partitions' traffic, from the loads the agents publish. A
/// partition's rate is taken from a report that measured it for a whole window, or that shows
/// more than known: a partition that just moved reports a rate still rising from zero, which
/// would otherwise make its new agent look idle and draw more moves (flapping).
#[derive(Debug, Default)]
pub struct LoadView {
    read_at: Option<Instant>,
    /// Partition assignment key → (bytes/s, when learned).
    parts: HashMap<Vec<u8>, (u64, Instant)>,
    /// Group shard assignment key → (coordinator requests/s, when learned).
    shards: HashMap<Vec<u8>, (u64, Instant)>,
    /// Bytes/s per weight unit: a thousandth of the smallest agent capacity.
    unit: u64,
    /// When each recent move of a partition carrying traffic was made.
    moves: VecDeque<Instant>,
}

/// How long a partition's rate is remembered without a fresh report.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Coordinator requests per second a group shard weighs one unit more for.
const SHARD_UNIT_RPS: u64 = 10;

/// Takes a report of `rate` for `key` into `cache` if it measured a whole window, shows more
/// than known, or the known rate is stale.
fn learn(
    cache: &mut HashMap<Vec<u8>, (u64, Instant)>,
    key: Vec<u8>,
    rate: u64,
    whole: bool,
    stale_after: Duration,
) {
    let take = match cache.get(&key) {
        None => true,
        Some((known, at)) => whole || rate > *known || at.elapsed() > stale_after,
    };
    if take {
        cache.insert(key, (rate, Instant::now()));
    }
}

impl LoadView {
    /// Reads the agents' loads if the last read is older than their publication interval.
    async fn refresh(&mut self, meta: &dyn MetaKv) -> Result<(), MetaError> {
        let every = Duration::from_secs(crate::load::PUBLISH_EVERY);
        if self.read_at.is_some_and(|t| t.elapsed() < every) {
            return Ok(());
        }
        let docs = load::list(meta).await?;
        let now = Instant::now();
        self.read_at = Some(now);
        self.unit = docs
            .values()
            .map(|d| d.capacity / 1000)
            .min()
            .unwrap_or(0)
            .max(1);
        for d in docs.values() {
            let stale = 3 * every + Duration::from_millis(d.window_ms);
            for p in &d.partitions {
                let key = assignment::partition_key(&p.topic, p.partition).into_bytes();
                learn(
                    &mut self.parts,
                    key,
                    p.bytes_per_sec,
                    p.observed_ms >= d.window_ms,
                    stale,
                );
            }
            for sh in &d.shards {
                let key = assignment::shard_key(sh.shard).into_bytes();
                learn(
                    &mut self.shards,
                    key,
                    sh.requests_per_sec,
                    sh.observed_ms >= d.window_ms,
                    stale,
                );
            }
        }
        self.parts.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
        self.shards.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
        Ok(())
    }

    /// A group shard's weight: one, plus its coordinator requests in units.
    fn shard_weight(&self, key: &[u8]) -> u64 {
        1 + self
            .shards
            .get(key)
            .map_or(0, |(rps, _)| rps / SHARD_UNIT_RPS)
    }

    /// A partition's weight: one, plus its traffic in units.
    fn weight(&self, key: &[u8]) -> u64 {
        1 + self
            .parts
            .get(key)
            .map_or(0, |(bps, _)| bps / self.unit.max(1))
    }
}

/// Campaigns for the controller key and, while holding it, keeps assignments balanced.
pub async fn run(
    meta: Arc<dyn MetaKv>,
    me: Identity,
    cluster: Arc<Cluster>,
    catalog_changes: watch::Receiver<impl Send + Sync + 'static>,
    placement: Placement,
) {
    let mut catalog_changes = catalog_changes;
    loop {
        match assignment::try_become_controller(meta.as_ref(), me.node_id, &me.session, me.lease)
            .await
        {
            Ok(true) => {
                tracing::info!(node_id = me.node_id, "this agent is the controller");
                lead(
                    meta.as_ref(),
                    &me,
                    &cluster,
                    &mut catalog_changes,
                    placement,
                )
                .await;
                tracing::info!(
                    node_id = me.node_id,
                    "this agent is no longer the controller"
                );
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "controller election failed; retrying"),
        }
        // Wait for the key to go (its holder left or died), checking every second anyway: the
        // watch may be broken, and the key may be this session's own from an earlier term.
        let mut rx = cluster.controller.subscribe();
        let _ =
            tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|s| s.items.is_empty())).await;
    }
}

async fn lead<T>(
    meta: &dyn MetaKv,
    me: &Identity,
    cluster: &Cluster,
    catalog_changes: &mut watch::Receiver<T>,
    placement: Placement,
) {
    let mut agents_rx = cluster.agents.subscribe();
    let mut view = LoadView::default();
    loop {
        agents_rx.borrow_and_update();
        catalog_changes.borrow_and_update();
        let by_load = placement
            .by_load
            .then_some((&mut view, placement.max_moves_per_minute));
        match reconcile(meta, me, by_load, cluster).await {
            Ok(()) => {}
            Err(Stop::Deposed) => return,
            Err(Stop::Meta(e)) => {
                tracing::warn!(error = %e, "controller could not reconcile assignments; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                // Still controller? (The lease may have lapsed while the store was away.) Only a
                // definite answer ends the term: stepping down on an unanswered read would
                // leave the key, bound to a live lease, held by an agent not acting on it.
                match meta.get(assignment::controller_key().as_bytes()).await {
                    Ok(Some(kv))
                        if kv.value
                            == assignment::controller_value(me.node_id, &me.session).as_bytes() => {
                    }
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "controller cannot reach the metadata store; retrying");
                    }
                }
                continue;
            }
        }
        tokio::select! {
            _ = agents_rx.changed() => {}
            _ = catalog_changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn current(
    meta: &dyn MetaKv,
    prefix: String,
    parse: fn(&[u8]) -> Option<Vec<u8>>,
) -> Result<BTreeMap<Vec<u8>, Assignment>, MetaError> {
    let mut out = BTreeMap::new();
    for kv in meta.range_all(prefix.as_bytes()).await? {
        if let Some(k) = parse(&kv.key) {
            out.insert(k, assignment::decode(&kv.key, &kv.value)?);
        }
    }
    Ok(out)
}

fn whole_key(k: &[u8]) -> Option<Vec<u8>> {
    Some(k.to_vec())
}

/// One pass: compute and write the changes.
async fn reconcile(
    meta: &dyn MetaKv,
    me: &Identity,
    by_load: Option<(&mut LoadView, usize)>,
    cluster: &Cluster,
) -> Result<(), Stop> {
    let live: BTreeSet<i32> = agents::list(meta).await?.into_keys().collect();
    let topics = catalog::list(meta).await?;
    let parts = current(meta, assignment::partitions_prefix(), whole_key).await?;
    let shards = current(meta, assignment::shards_prefix(), whole_key).await?;

    let wanted: Vec<Vec<u8>> = topics
        .iter()
        .flat_map(|t| (0..t.partitions).map(|p| assignment::partition_key(&t.id, p).into_bytes()))
        .collect();
    let wanted_set: BTreeSet<&Vec<u8>> = wanted.iter().collect();
    let mut ops: Vec<Op> = parts
        .keys()
        .filter(|k| !wanted_set.contains(k))
        .map(|k| Op::Delete { key: k.clone() })
        .collect();
    let deleted = ops.len();
    let mut load_moves = 0;
    let shard_keys: Vec<Vec<u8>> = (0..GROUP_SHARDS)
        .map(|s| assignment::shard_key(s).into_bytes())
        .collect();
    let (moves, shard_moves) = match by_load {
        None => (
            assignment::balance(&wanted, &parts, &live),
            assignment::balance(&shard_keys, &shards, &live),
        ),
        Some((view, per_minute)) => {
            view.refresh(meta).await?;
            view.moves.retain(|t| t.elapsed() < Duration::from_secs(60));
            let budget = per_minute.saturating_sub(view.moves.len());
            // Hysteresis: a move must shrink a gap by a tenth of the mean traffic per agent.
            let traffic: u64 = wanted.iter().map(|k| view.weight(k) - 1).sum();
            let margin = traffic / live.len().max(1) as u64 / 10;
            let moves = super::placement::balance_by_load(
                &wanted,
                &parts,
                &live,
                |k| view.weight(k),
                margin,
                budget,
            );
            for (k, _) in &moves {
                let orphan = parts.get(k).is_none_or(|a| !live.contains(&a.leader));
                if !orphan && view.weight(k) > 1 {
                    view.moves.push_back(Instant::now());
                    load_moves += 1;
                }
            }
            // Group shards the same way, weighed by their coordinator requests.
            let budget = per_minute.saturating_sub(view.moves.len());
            let requests: u64 = shard_keys.iter().map(|k| view.shard_weight(k) - 1).sum();
            let margin = requests / live.len().max(1) as u64 / 10;
            let shard_moves = super::placement::balance_by_load(
                &shard_keys,
                &shards,
                &live,
                |k| view.shard_weight(k),
                margin,
                budget,
            );
            for (k, _) in &shard_moves {
                let orphan = shards.get(k).is_none_or(|a| !live.contains(&a.leader));
                if !orphan && view.shard_weight(k) > 1 {
                    view.moves.push_back(Instant::now());
                    load_moves += 1;
                }
            }
            (moves, shard_moves)
        }
    };
    let (n_moves, n_shards) = (moves.len(), shard_moves.len());
    for (k, a) in moves.into_iter().chain(shard_moves) {
        ops.push(assignment::put_op(
            String::from_utf8_lossy(&k).into_owned(),
            &a,
        ));
    }
    if ops.is_empty() {
        return Ok(());
    }
    let fence = assignment::still_controller(me.node_id, &me.session);
    let mut chunks = ops.into_iter().peekable();
    while chunks.peek().is_some() {
        let chunk: Vec<Op> = chunks.by_ref().take(OPS_PER_TXN).collect();
        let r = meta
            .txn(Txn {
                compares: vec![fence.clone()],
                success: chunk,
                failure: vec![],
            })
            .await?;
        if !r.succeeded {
            return Err(Stop::Deposed);
        }
    }
    cluster
        .stats
        .load_moves
        .fetch_add(load_moves, Ordering::Relaxed);
    tracing::info!(
        live_agents = live.len(),
        partitions_moved = n_moves,
        moved_for_load = load_moves,
        group_shards_moved = n_shards,
        assignments_deleted = deleted,
        "controller updated assignments"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition that just moved reports a rate still rising from zero: the rate measured
    /// over a whole window stays, so its new agent does not look idle and draw more moves.
    #[test]
    fn a_rising_rate_after_a_move_does_not_replace_a_whole_window() {
        let mut cache = HashMap::new();
        let stale = Duration::from_secs(60);
        learn(&mut cache, b"p".to_vec(), 1000, true, stale);
        learn(&mut cache, b"p".to_vec(), 200, false, stale);
        assert_eq!(
            cache[&b"p".to_vec()].0,
            1000,
            "a partial window is not taken"
        );
        learn(&mut cache, b"p".to_vec(), 1500, false, stale);
        assert_eq!(cache[&b"p".to_vec()].0, 1500, "more than known is taken");
        learn(&mut cache, b"p".to_vec(), 300, true, stale);
        assert_eq!(cache[&b"p".to_vec()].0, 300, "a whole window is taken");
        learn(&mut cache, b"p".to_vec(), 10, false, Duration::ZERO);
        assert_eq!(cache[&b"p".to_vec()].0, 10, "a stale rate is replaced");
        let view = LoadView {
            unit: 100,
            parts: cache,
            ..Default::default()
        };
        assert_eq!((view.weight(b"p"), view.weight(b"idle")), (1, 1));
    }
}
