//! The group coordinator: every consumer group this agent coordinates (the groups of the group
//! shards assigned to it: [`GroupCoordinator::follow_shards`]), their membership state machines
//! ([`group`]), and their committed offsets, which live in the metadata store and are cached
//! here. A group of a shard coordinated elsewhere gets NOT_COORDINATOR; every write of group
//! state is fenced on this agent's registration and the shard's assignment.
//!
//! A group is classic ([`group`]: JoinGroup/SyncGroup, the client assigns) or, once a member
//! joins with ConsumerGroupHeartbeat, a KIP-848 consumer group ([`consumer`]: the server
//! assigns, members reconcile incrementally); the two share committed offsets. A group with
//! members changes protocol as Kafka 4.0's online migration does: a consumer-protocol member
//! joining a classic group of consumers turns it into a consumer group whose classic members go
//! on with JoinGroup, SyncGroup and Heartbeat ([`consumer`]'s classic module); once only classic
//! members remain, it is a classic group again, with a rebalance.
//!
//! Classic membership is in memory only: after a restart or a coordinator move, members find
//! their session unknown and rejoin, as after a Kafka coordinator failover. A consumer group's
//! membership (members, epochs, assignments) is written to the metadata store before a
//! heartbeat that changed it is answered, and loaded with the group's shard, so its members
//! carry on at their epochs across a coordinator move. (Should that document be missing, a
//! group with committed offsets hands out no partition for two heartbeat intervals after its
//! shard came here, so members of before learn they are fenced and give theirs up first.) Committed offsets are durable: an OffsetCommit
//! is answered only after its single metadata transaction succeeded.

pub mod assignors;
pub mod consumer;
pub mod consumer_protocol;
pub mod group;
mod txn_offsets;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kafka_protocol::ResponseError;
use silt_common::Clock;
use silt_meta::layout::assignment;
use silt_meta::layout::group_offsets::{self, CommitStop, Committed};
use silt_meta::{Compare, ErrorClass, MetaError, MetaKv};
use tokio::sync::oneshot;

use group::{Group, GroupLimits, Join, JoinResult, MemberInfo, State, SyncResult};

#[derive(Debug)]
struct Entry {
    group: Group,
    /// Set while the group is a KIP-848 consumer group.
    consumer: Option<consumer::ConsumerGroup>,
    /// The consumer group's membership document as last stored.
    stored_membership: Option<Vec<u8>>,
    /// Serialises this consumer group's heartbeats, each with its membership write.
    membership_writes: Arc<tokio::sync::Mutex<()>>,
    /// Its stored membership did not decode: partitions are held back as after a move.
    unreadable_membership: bool,
    offsets: BTreeMap<(String, i32), Committed>,
    /// The protocol type recorded with the group's offsets ("" for a simple group).
    stored_protocol_type: Option<String>,
    /// Serialises this group's offset writes so they land in request order.
    writes: Arc<tokio::sync::Mutex<()>>,
    /// Partitions whose last commit was not answered: whether it is stored is being read
    /// back; meanwhile OffsetFetch answers COORDINATOR_LOAD_IN_PROGRESS (clients retry) rather
    /// than an offset that may not be what is durable.
    unsure: BTreeSet<(String, i32)>,
    /// Offsets committed in open transactions, by producer id (TxnOffsetCommit).
    txn_pending: BTreeMap<i64, Vec<(String, i32, Committed)>>,
}

impl Entry {
    fn new() -> Self {
        Self {
            group: Group::new(),
            consumer: None,
            stored_membership: None,
            membership_writes: Arc::default(),
            unreadable_membership: false,
            offsets: BTreeMap::new(),
            stored_protocol_type: None,
            writes: Arc::default(),
            unsure: Default::default(),
            txn_pending: BTreeMap::new(),
        }
    }
}

/// Largest membership document stored (well inside etcd's 1.5 MiB request limit).
const MAX_MEMBERSHIP_BYTES: usize = 1024 * 1024;

/// The periodic job that applies group session and rebalance timeouts.
#[derive(Debug)]
pub struct GroupTicker {
    c: std::sync::Weak<GroupCoordinator>,
    every: Duration,
}

impl crate::tasks::Periodic for GroupTicker {
    fn name(&self) -> &'static str {
        "group-timeouts"
    }

    fn interval(&self) -> Duration {
        self.every
    }

    async fn step(&mut self) {
        if let Some(c) = self.c.upgrade() {
            let changed = c.tick();
            c.store_memberships(&changed).await;
        }
    }
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone)]
pub struct Described {
    /// Kafka's name of the group's state.
    pub state: &'static str,
    /// Protocol type ("" if none).
    pub protocol_type: String,
    /// Chosen protocol ("" if none).
    pub protocol: String,
    /// Members.
    pub members: Vec<MemberInfo>,
}

/// Why an offset write failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The group refused it (generation, membership); a Kafka error code.
    #[error("group refused the commit (error {0})")]
    Refused(i16),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The first `written` offsets (in request order) are durable; the rest failed with
    /// `code`.
    #[error("only {written} offsets were written (error {code} for the rest)")]
    Partial {
        /// Offsets written, a prefix of the request.
        written: usize,
        /// The Kafka error code of the others.
        code: i16,
    },
}

/// The group shards coordinated here.
#[derive(Debug, Default)]
struct Shards {
    /// Shard -> the assignment revision its term began at.
    owned: BTreeMap<i32, i64>,
    /// Shards being loaded.
    loading: BTreeSet<i32>,
    /// This agent's registration compare.
    registered: Option<Compare>,
    /// Shard -> when it came here (ms).
    gained_ms: BTreeMap<i32, i64>,
}

/// The coordinator.
#[derive(Debug)]
pub struct GroupCoordinator {
    meta: Arc<dyn MetaKv>,
    clock: Arc<dyn Clock>,
    limits: GroupLimits,
    groups: Mutex<HashMap<String, Entry>>,
    shards: Mutex<Shards>,
    /// Coordinator requests per shard since start (placement by load weighs shards by them).
    requests: Vec<std::sync::atomic::AtomicU64>,
}

impl GroupCoordinator {
    /// A coordinator of no shard yet.
    pub fn new(meta: Arc<dyn MetaKv>, clock: Arc<dyn Clock>, limits: GroupLimits) -> Self {
        Self {
            meta,
            clock,
            limits,
            groups: Mutex::default(),
            shards: Mutex::default(),
            requests: (0..assignment::GROUP_SHARDS)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        }
    }

    /// The shards coordinated here with their request counters.
    pub fn shard_requests(&self) -> Vec<(i32, u64)> {
        let owned: Vec<i32> = self.lock_shards().owned.keys().copied().collect();
        owned
            .into_iter()
            .filter_map(|s| {
                let n = self.requests.get(s as usize)?;
                Some((s, n.load(std::sync::atomic::Ordering::Relaxed)))
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_shards(&self) -> MutexGuard<'_, Shards> {
        self.shards.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this agent coordinates `group` now: the fence its writes carry, or the error
    /// code a client gets (NOT_COORDINATOR, or COORDINATOR_LOAD_IN_PROGRESS).
    pub fn check(&self, group: &str) -> Result<Vec<Compare>, i16> {
        let shard = assignment::group_shard(group);
        if let Some(n) = self.requests.get(shard as usize) {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let s = self.lock_shards();
        match (s.owned.get(&shard), &s.registered) {
            (Some(rev), Some(reg)) => Ok(vec![
                reg.clone(),
                Compare::mod_revision(assignment::shard_key(shard), *rev),
            ]),
            _ if s.loading.contains(&shard) => Err(ResponseError::CoordinatorLoadInProgress.code()),
            _ => Err(ResponseError::NotCoordinator.code()),
        }
    }

    /// Makes the coordinated shards exactly `wanted` (shard -> assignment revision): groups of
    /// shards lost are dropped (their members find the new coordinator), groups of shards
    /// gained are loaded from the metadata store.
    pub async fn follow_shards(
        &self,
        wanted: &BTreeMap<i32, i64>,
        registered: Compare,
    ) -> Result<(), MetaError> {
        let (gained, lost) = {
            let mut s = self.lock_shards();
            s.registered = Some(registered);
            let lost: BTreeSet<i32> = s
                .owned
                .iter()
                .filter(|(k, rev)| wanted.get(k) != Some(rev))
                .map(|(k, _)| *k)
                .collect();
            for k in &lost {
                s.owned.remove(k);
            }
            let gained: BTreeMap<i32, i64> = wanted
                .iter()
                .filter(|(k, _)| !s.owned.contains_key(k))
                .map(|(k, r)| (*k, *r))
                .collect();
            s.loading = gained.keys().copied().collect();
            (gained, lost)
        };
        if !lost.is_empty() {
            let mut groups = self.lock();
            groups.retain(|id, e| {
                let keep = !lost.contains(&assignment::group_shard(id));
                if !keep {
                    e.group.kill();
                }
                keep
            });
            tracing::info!(shards = ?lost, "no longer coordinating group shards");
        }
        if gained.is_empty() {
            return Ok(());
        }
        let stored = group_offsets::load_all(self.meta.as_ref()).await;
        let stored = match stored {
            Ok(s) => s,
            Err(e) => {
                self.lock_shards().loading.clear();
                return Err(e);
            }
        };
        let mine = |g: &str| gained.contains_key(&assignment::group_shard(g));
        let mut fresh: HashMap<String, Entry> = HashMap::new();
        for (g, t, p, c) in stored.offsets.into_iter().filter(|x| mine(&x.0)) {
            fresh
                .entry(g)
                .or_insert_with(Entry::new)
                .offsets
                .insert((t, p), c);
        }
        for (g, pid, offsets) in stored.pending.into_iter().filter(|x| mine(&x.0)) {
            fresh
                .entry(g)
                .or_insert_with(Entry::new)
                .txn_pending
                .insert(pid, offsets);
        }
        let now = self.clock.now_ms();
        for (g, doc) in stored.memberships.into_iter().filter(|x| mine(&x.0)) {
            match consumer::ConsumerGroup::restore(&doc, now) {
                Ok(c) => {
                    let e = fresh.entry(g).or_insert_with(Entry::new);
                    e.consumer = Some(c);
                    e.stored_membership = Some(doc);
                }
                Err(err) => {
                    tracing::warn!(
                        group = %g, error = %err,
                        "a consumer group's stored membership does not decode; its members rejoin"
                    );
                    fresh
                        .entry(g)
                        .or_insert_with(Entry::new)
                        .unreadable_membership = true;
                }
            }
        }
        for (g, pt) in stored.protocol_types.into_iter().filter(|x| mine(&x.0)) {
            fresh
                .entry(g)
                .or_insert_with(Entry::new)
                .stored_protocol_type = Some(pt);
        }
        {
            let mut groups = self.lock();
            groups.retain(|id, _| !mine(id));
            groups.extend(fresh);
        }
        let mut s = self.lock_shards();
        s.loading.clear();
        s.owned.extend(gained.iter().map(|(k, r)| (*k, *r)));
        s.gained_ms.extend(gained.keys().map(|k| (*k, now)));
        tracing::info!(shards = ?gained.keys().collect::<Vec<_>>(), "coordinating group shards");
        Ok(())
    }

    /// Session and rebalance timeouts, applied every `every` (until the coordinator is dropped).
    pub fn ticker(self: &Arc<Self>, every: Duration) -> GroupTicker {
        GroupTicker {
            c: Arc::downgrade(self),
            every,
        }
    }

    /// Applies timeouts at the clock's current time; returns the consumer groups whose
    /// membership changed (members fenced), to be stored.
    pub fn tick(&self) -> Vec<String> {
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        let mut changed = Vec::new();
        for (id, e) in groups.iter_mut() {
            e.group.tick(now, &self.limits);
            if let Some(c) = e.consumer.as_mut() {
                if c.tick(now, &self.limits.consumer) > 0 {
                    changed.push(id.clone());
                    self.maybe_downgrade(id, e, now);
                }
            }
        }
        groups.retain(|_, e| {
            // An entry a heartbeat is working on stays, so its membership lock stays the one.
            Arc::strong_count(&e.membership_writes) > 1
                || e.stored_membership.is_some()
                || e.unreadable_membership
                || !(e.group.state() == State::Empty
                    && e.group.is_empty()
                    && e.consumer.as_ref().is_none_or(|c| c.is_empty())
                    && e.offsets.is_empty())
        });
        changed
    }

    /// Stores the membership of consumer groups changed outside a heartbeat (members fenced
    /// by a timeout), so a coordinator taking them over does not bring those members back.
    pub async fn store_memberships(&self, groups: &[String]) {
        for g in groups {
            let Ok((writes, _guard)) = self.lock_membership(g).await else {
                continue;
            };
            let Ok(fence) = self.check(g) else {
                continue;
            };
            let doc = {
                let groups = self.lock();
                match groups.get(g.as_str()) {
                    Some(e) if Arc::ptr_eq(&e.membership_writes, &writes) => {
                        // None once the group is empty or classic again: the stored one goes.
                        let doc = e.consumer.as_ref().and_then(|c| c.stored());
                        if doc == e.stored_membership {
                            continue;
                        }
                        doc
                    }
                    _ => continue,
                }
            };
            let doc = doc.filter(|d| d.len() <= MAX_MEMBERSHIP_BYTES);
            match group_offsets::put_membership(self.meta.as_ref(), &fence, g, doc.as_deref()).await
            {
                Ok(true) => {
                    if let Some(e) = self.lock().get_mut(g.as_str()) {
                        if Arc::ptr_eq(&e.membership_writes, &writes) {
                            e.stored_membership = doc;
                        }
                    }
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::debug!(group = %g, error = %err, "storing a consumer group's membership after a timeout failed; the next heartbeat stores it")
                }
            }
        }
    }

    /// Locks `group`'s membership (creating the entry if needed): the lock of the entry that
    /// is current once it is held. Err if the group is not coordinated here.
    async fn lock_membership(
        &self,
        group: &str,
    ) -> Result<
        (
            Arc<tokio::sync::Mutex<()>>,
            tokio::sync::OwnedMutexGuard<()>,
        ),
        i16,
    > {
        loop {
            self.check(group)?;
            let writes = self
                .lock()
                .entry(group.to_string())
                .or_insert_with(Entry::new)
                .membership_writes
                .clone();
            let guard = writes.clone().lock_owned().await;
            let current = self
                .lock()
                .get(group)
                .is_some_and(|e| Arc::ptr_eq(&e.membership_writes, &writes));
            if current {
                return Ok((writes, guard));
            }
        }
    }

    /// JoinGroup: to a classic group (answered when its rebalance completes), or from a classic
    /// member of a consumer group with members (answered at once, once the membership is
    /// stored: [`consumer::ConsumerGroup::classic_join`]).
    pub async fn join(
        &self,
        group_id: &str,
        j: Join,
        topics: &(dyn consumer::TopicView + Sync),
    ) -> JoinResult {
        if let Err(error) = self.check(group_id) {
            return JoinResult {
                error,
                generation: -1,
                ..Default::default()
            };
        }
        let now = self.clock.now_ms();
        let classic = {
            let mut groups = self.lock();
            let e = groups
                .entry(group_id.to_string())
                .or_insert_with(Entry::new);
            if e.consumer.as_ref().is_some_and(|c| !c.is_empty()) {
                None
            } else {
                // An empty consumer group becomes a classic one.
                e.consumer = None;
                let (tx, rx) = oneshot::channel();
                e.group.join(j.clone(), now, &self.limits, tx);
                Some(rx)
            }
        };
        let failed = |error: i16| JoinResult {
            error,
            generation: -1,
            ..Default::default()
        };
        match classic {
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| failed(ResponseError::CoordinatorNotAvailable.code())),
            None => {
                let lim = self.limits.consumer.clone();
                self.change_consumer_group(
                    group_id,
                    |c, now| c.classic_join(&j, now, &lim, topics),
                    failed,
                )
                .await
            }
        }
    }

    /// Applies `op` to `group_id`'s consumer group (which must have members) and, if that
    /// changed its membership, stores it before returning `op`'s answer; if it cannot be
    /// stored, the change is undone and the answer is `refused(code)` (the client retries).
    async fn change_consumer_group<R>(
        &self,
        group_id: &str,
        op: impl FnOnce(&mut consumer::ConsumerGroup, i64) -> R,
        refused: impl Fn(i16) -> R,
    ) -> R {
        let (writes, _ordered) = match self.lock_membership(group_id).await {
            Ok(x) => x,
            Err(code) => return refused(code),
        };
        let fence = match self.check(group_id) {
            Ok(f) => f,
            Err(code) => return refused(code),
        };
        let now = self.clock.now_ms();
        let (reply, before, doc) = {
            let mut groups = self.lock();
            let e = match groups.get_mut(group_id) {
                Some(e) if Arc::ptr_eq(&e.membership_writes, &writes) => e,
                _ => return refused(ResponseError::CoordinatorNotAvailable.code()),
            };
            // Emptied meanwhile: the client's retry finds the group as it is now.
            let Some(c) = e.consumer.as_mut().filter(|c| !c.is_empty()) else {
                return refused(ResponseError::CoordinatorNotAvailable.code());
            };
            let before = c.clone();
            let reply = op(c, now);
            self.maybe_downgrade(group_id, e, now);
            let doc = e.consumer.as_ref().and_then(|c| c.stored());
            if doc == e.stored_membership {
                return reply;
            }
            (reply, before, doc)
        };
        match self
            .store_membership_change(group_id, &writes, &fence, &before, doc)
            .await
        {
            Ok(()) => reply,
            Err(code) => refused(code),
        }
    }

    /// Stores a consumer group's changed membership `doc` (fenced); on failure puts `before`
    /// back and returns the code the member gets.
    async fn store_membership_change(
        &self,
        group_id: &str,
        writes: &Arc<tokio::sync::Mutex<()>>,
        fence: &[Compare],
        before: &consumer::ConsumerGroup,
        doc: Option<Vec<u8>>,
    ) -> Result<(), i16> {
        let undo = |code: i16| {
            if let Some(e) = self.lock().get_mut(group_id) {
                if Arc::ptr_eq(&e.membership_writes, writes) {
                    // Back to the consumer group as it was (a downgrade undone too).
                    e.consumer = Some(before.clone());
                    if !before.is_empty() {
                        e.group = Group::new();
                    }
                }
            }
            Err(code)
        };
        // A membership too large to store is not stored at all (the stored one is deleted):
        // the group goes on, and a coordinator taking it over holds its partitions back for two
        // heartbeat intervals instead (see the module docs).
        let doc = match doc {
            Some(d) if d.len() > MAX_MEMBERSHIP_BYTES => {
                tracing::warn!(
                    group = group_id,
                    bytes = d.len(),
                    "a consumer group's membership is too large to store; a coordinator move will make its members rejoin"
                );
                None
            }
            d => d,
        };
        if doc
            == self
                .lock()
                .get(group_id)
                .and_then(|e| e.stored_membership.clone())
        {
            return Ok(());
        }
        match group_offsets::put_membership(self.meta.as_ref(), fence, group_id, doc.as_deref())
            .await
        {
            Ok(true) => {
                if let Some(e) = self.lock().get_mut(group_id) {
                    if Arc::ptr_eq(&e.membership_writes, writes) {
                        e.stored_membership = doc;
                    }
                }
                Ok(())
            }
            Ok(false) => undo(ResponseError::NotCoordinator.code()),
            Err(err) => {
                tracing::warn!(group = group_id, error = %err, "storing a consumer group's membership failed; the member retries");
                undo(ResponseError::CoordinatorNotAvailable.code())
            }
        }
    }

    /// Kafka 4.0's online downgrade: a consumer group whose members are all classic becomes a
    /// classic group again, with a rebalance begun.
    fn maybe_downgrade(&self, group_id: &str, e: &mut Entry, now: i64) {
        let Some(c) = e.consumer.as_ref() else {
            return;
        };
        let Some(members) = c.downgradable() else {
            return;
        };
        tracing::info!(
            group = group_id,
            members = members.len(),
            generation = c.downgrade_generation(),
            "the last consumer-protocol member left: the group is a classic group again"
        );
        e.group = Group::from_consumer(c.downgrade_generation(), members, now, &self.limits);
        e.consumer = None;
    }

    /// The heartbeat interval consumer-protocol members are told.
    pub fn heartbeat_interval_ms(&self) -> i32 {
        self.limits.consumer.heartbeat_interval_ms
    }

    /// ConsumerGroupHeartbeat (KIP-848). A heartbeat that changed the group's membership is
    /// answered once the change is stored; if it cannot be, the change is undone and the
    /// member gets a retriable error.
    pub async fn consumer_heartbeat(
        &self,
        group_id: &str,
        hb: consumer::Heartbeat,
        topics: &(dyn consumer::TopicView + Sync),
    ) -> consumer::Reply {
        let refused = |error: i16, message: Option<String>| consumer::Reply {
            error,
            message,
            member_epoch: -1,
            ..Default::default()
        };
        let (writes, _ordered) = match self.lock_membership(group_id).await {
            Ok(x) => x,
            Err(code) => return refused(code, None),
        };
        // The fence as of now, with this group's heartbeats serialised: a shard reloaded
        // meanwhile has a new revision and refuses the write.
        let fence = match self.check(group_id) {
            Ok(f) => f,
            Err(code) => return refused(code, None),
        };
        let now = self.clock.now_ms();
        let gained = self
            .lock_shards()
            .gained_ms
            .get(&assignment::group_shard(group_id))
            .copied()
            .unwrap_or(0);
        let (reply, before, doc) = {
            let mut groups = self.lock();
            let e = match groups.get_mut(group_id) {
                Some(e) if Arc::ptr_eq(&e.membership_writes, &writes) => e,
                // Reloaded with its shard since the lock was taken: the member retries.
                _ => return refused(ResponseError::CoordinatorNotAvailable.code(), None),
            };
            if e.consumer.is_none() {
                if let Some(classic) = e.group.export() {
                    // Online upgrade: the classic members become members of a consumer group.
                    match consumer::ConsumerGroup::from_classic(
                        &classic,
                        now,
                        &self.limits.consumer,
                        topics,
                    ) {
                        Ok(c) => {
                            tracing::info!(
                                group = group_id,
                                members = classic.members.len(),
                                generation = classic.generation,
                                "a consumer-protocol member joined a classic group: it is now a consumer group"
                            );
                            e.group.converted();
                            e.consumer = Some(c);
                        }
                        Err(why) => {
                            return refused(
                                ResponseError::GroupIdNotFound.code(),
                                Some(format!(
                                    "group {group_id} is a classic group with members that a \
                                     consumer group cannot take over: {why}"
                                )),
                            )
                        }
                    }
                }
            }
            if e.consumer.is_none() {
                let hold = if e.offsets.is_empty() && !e.unreadable_membership {
                    0
                } else {
                    gained + 2 * i64::from(self.limits.consumer.heartbeat_interval_ms)
                };
                e.consumer = Some(consumer::ConsumerGroup::new(hold));
            }
            let c = e.consumer.as_mut().expect("set above");
            let before = c.clone();
            let reply = c.heartbeat(hb, now, &self.limits.consumer, topics);
            self.maybe_downgrade(group_id, e, now);
            let doc = e.consumer.as_ref().and_then(|c| c.stored());
            if doc == e.stored_membership {
                return reply;
            }
            (reply, before, doc)
        };
        match self
            .store_membership_change(group_id, &writes, &fence, &before, doc)
            .await
        {
            Ok(()) => reply,
            Err(code) => refused(code, None),
        }
    }

    /// ConsumerGroupDescribe: the group, or GROUP_ID_NOT_FOUND if it is not a consumer group.
    pub fn consumer_describe(&self, group_id: &str) -> Result<consumer::Described, i16> {
        self.check(group_id)?;
        self.lock()
            .get(group_id)
            .and_then(|e| e.consumer.as_ref())
            .map(|c| c.describe())
            .ok_or(ResponseError::GroupIdNotFound.code())
    }

    /// An OffsetFetch naming a member (v9+): the member must be in the group at that epoch.
    pub fn check_fetching_member(
        &self,
        group_id: &str,
        member_id: Option<&str>,
        epoch: i32,
    ) -> Result<(), i16> {
        let Some(member) = member_id else {
            return Ok(());
        };
        if epoch < 0 {
            return Ok(());
        }
        match self.lock().get(group_id).and_then(|e| e.consumer.as_ref()) {
            Some(c) => c.check_member_epoch(member, epoch),
            None => Ok(()),
        }
    }

    /// SyncGroup.
    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, bytes::Bytes)>,
        topics: &dyn consumer::TopicView,
    ) -> oneshot::Receiver<SyncResult> {
        let (tx, rx) = oneshot::channel();
        if let Err(error) = self.check(group_id) {
            let _ = tx.send(SyncResult {
                error,
                ..Default::default()
            });
            return rx;
        }
        let now = self.clock.now_ms();
        match self.lock().get_mut(group_id) {
            Some(e) if e.consumer.as_ref().is_some_and(|c| !c.is_empty()) => {
                let c = e.consumer.as_ref().expect("checked");
                let _ = tx.send(c.classic_sync(
                    member_id,
                    instance_id,
                    generation,
                    (protocol_type, protocol_name),
                    topics,
                ));
            }
            Some(e) => e.group.sync(
                member_id,
                instance_id,
                generation,
                protocol_type,
                protocol_name,
                assignments,
                now,
                &self.limits,
                tx,
            ),
            None => {
                let _ = tx.send(SyncResult {
                    error: ResponseError::UnknownMemberId.code(),
                    ..Default::default()
                });
            }
        }
        rx
    }

    /// Heartbeat.
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        if let Err(code) = self.check(group_id) {
            return code;
        }
        let now = self.clock.now_ms();
        match self.lock().get_mut(group_id) {
            Some(e) if e.consumer.as_ref().is_some_and(|c| !c.is_empty()) => e
                .consumer
                .as_mut()
                .expect("checked")
                .classic_heartbeat(member_id, instance_id, generation, now),
            Some(e) => e.group.heartbeat(member_id, instance_id, generation, now),
            None => ResponseError::UnknownMemberId.code(),
        }
    }

    /// LeaveGroup for each (member id, instance id).
    pub async fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        if let Err(code) = self.check(group_id) {
            return vec![code; members.len()];
        }
        let consumer = self
            .lock()
            .get(group_id)
            .is_some_and(|e| e.consumer.as_ref().is_some_and(|c| !c.is_empty()));
        if consumer {
            return self
                .change_consumer_group(
                    group_id,
                    |c, _| {
                        members
                            .iter()
                            .map(|(m, i)| c.classic_leave(m, i.as_deref()))
                            .collect()
                    },
                    |code| vec![code; members.len()],
                )
                .await;
        }
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        let Some(e) = groups.get_mut(group_id) else {
            return vec![ResponseError::UnknownMemberId.code(); members.len()];
        };
        members
            .iter()
            .map(|(m, i)| e.group.leave(m, i.as_deref(), now, &self.limits))
            .collect()
    }

    /// OffsetCommit: checks membership, writes the offsets (in one transaction when they fit,
    /// else in order) and caches exactly what is durable as it lands.
    pub async fn commit(
        self: &Arc<Self>,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        offsets: Vec<(String, i32, Committed)>,
    ) -> Result<(), CommitError> {
        let fence = self.check(group_id).map_err(CommitError::Refused)?;
        let writes = {
            let mut groups = self.lock();
            let e = match groups.get_mut(group_id) {
                Some(e) => e,
                None if generation < 0 => groups
                    .entry(group_id.to_string())
                    .or_insert_with(Entry::new),
                None => {
                    return Err(CommitError::Refused(
                        ResponseError::IllegalGeneration.code(),
                    ))
                }
            };
            match &e.consumer {
                Some(c) => c.check_member_epoch(member_id, generation),
                None => e.group.check_commit(member_id, instance_id, generation),
            }
            .map_err(CommitError::Refused)?;
            // Record the protocol type the first time a member's commit lands, so the group is
            // listed as it was after a restart.
            let record = e
                .consumer
                .as_ref()
                .map(|_| "consumer")
                .or(e.group.protocol_type())
                .filter(|pt| e.stored_protocol_type.as_deref() != Some(*pt))
                .map(String::from);
            (e.writes.clone(), record)
        };
        let (writes, record_type) = writes;
        let _ordered = writes.lock().await;
        let mut written = 0usize;
        let res = {
            let mut durable = |done: &[(String, i32, Committed)]| {
                let mut groups = self.lock();
                let e = groups
                    .entry(group_id.to_string())
                    .or_insert_with(Entry::new);
                for (t, p, c) in done {
                    e.offsets.insert((t.clone(), *p), c.clone());
                }
                if written == 0 && record_type.is_some() {
                    e.stored_protocol_type = record_type.clone();
                }
                written += done.len();
            };
            group_offsets::commit(
                self.meta.as_ref(),
                &fence,
                group_id,
                &offsets,
                record_type.as_deref(),
                &mut durable,
            )
            .await
        };
        match res {
            Ok(()) => Ok(()),
            Err(CommitStop::Fenced) if written == 0 => {
                Err(CommitError::Refused(ResponseError::NotCoordinator.code()))
            }
            Err(CommitStop::Fenced) => Err(CommitError::Partial {
                written,
                code: ResponseError::NotCoordinator.code(),
            }),
            Err(CommitStop::Failed { error, unsure }) => {
                tracing::error!(group = group_id, written, error = %error,
                    "offset commit failed in the metadata store");
                if error.class() == ErrorClass::OutcomeUnknown && !unsure.is_empty() {
                    self.read_back_later(group_id, unsure, writes.clone());
                }
                Err(CommitError::Partial {
                    written,
                    code: ResponseError::CoordinatorNotAvailable.code(),
                })
            }
        }
    }

    /// After an unanswered commit: marks its partitions unsure and reads their stored values
    /// back (after the commit in progress, before any later one of the group) until the store
    /// answers, then caches what is stored.
    fn read_back_later(
        self: &Arc<Self>,
        group_id: &str,
        unsure: Vec<(String, i32)>,
        writes: Arc<tokio::sync::Mutex<()>>,
    ) {
        if let Some(e) = self.lock().get_mut(group_id) {
            e.unsure.extend(unsure.iter().cloned());
        }
        let me = Arc::downgrade(self);
        let group = group_id.to_string();
        tokio::spawn(async move {
            let _ordered = writes.lock().await;
            let mut attempt = 0u32;
            loop {
                let Some(c) = me.upgrade() else { return };
                if !c.lock().contains_key(&group) {
                    return; // the shard moved: its next coordinator loads from the store
                }
                match group_offsets::read_back(c.meta.as_ref(), &group, &unsure).await {
                    Ok(rows) => {
                        let mut groups = c.lock();
                        if let Some(e) = groups.get_mut(&group) {
                            for (t, p, stored) in rows {
                                match stored {
                                    Some(v) => e.offsets.insert((t.clone(), p), v),
                                    None => e.offsets.remove(&(t.clone(), p)),
                                };
                                e.unsure.remove(&(t, p));
                            }
                        }
                        tracing::info!(group = %group, "learned the outcome of an unanswered offset commit");
                        return;
                    }
                    Err(e) => {
                        attempt += 1;
                        tracing::warn!(group = %group, attempt, error = %e,
                            "reading back an unanswered offset commit failed; retrying");
                        drop(c);
                        tokio::time::sleep(Duration::from_millis(
                            (100u64 << attempt.min(5)).min(2_000),
                        ))
                        .await;
                    }
                }
            }
        });
    }

    /// Whether OffsetFetch may answer for `group_id`: not while the outcome of one of its
    /// commits is unknown (COORDINATOR_LOAD_IN_PROGRESS: the client retries).
    pub fn offsets_settled(&self, group_id: &str) -> Result<(), i16> {
        match self.lock().get(group_id) {
            Some(e) if !e.unsure.is_empty() => Err(ResponseError::CoordinatorLoadInProgress.code()),
            _ => Ok(()),
        }
    }

    /// Every committed offset of every group coordinated here: (group, topic, partition, offset).
    pub fn committed_all(&self) -> Vec<(String, String, i32, i64)> {
        let groups = self.lock();
        let mut out: Vec<_> = groups
            .iter()
            .flat_map(|(g, e)| {
                e.offsets
                    .iter()
                    .map(move |((t, p), c)| (g.clone(), t.clone(), *p, c.offset))
            })
            .collect();
        out.sort();
        out
    }

    /// Group shards coordinated here.
    pub fn shards_owned(&self) -> usize {
        self.lock_shards().owned.len()
    }

    /// OffsetFetch: the committed offsets of `partitions` (every committed one if `None`).
    pub fn committed(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
    ) -> Vec<(String, i32, Option<Committed>)> {
        let groups = self.lock();
        let offsets = groups.get(group_id).map(|e| &e.offsets);
        match partitions {
            Some(ps) => ps
                .iter()
                .map(|(t, p)| {
                    (
                        t.clone(),
                        *p,
                        offsets.and_then(|o| o.get(&(t.clone(), *p)).cloned()),
                    )
                })
                .collect(),
            None => offsets
                .map(|o| {
                    o.iter()
                        .map(|((t, p), c)| (t.clone(), *p, Some(c.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// DescribeGroups (a consumer group's assignments in the classic consumer protocol's
    /// encoding, topics named through `topics`).
    pub fn describe(&self, group_id: &str, topics: &dyn consumer::TopicView) -> Option<Described> {
        let groups = self.lock();
        let e = groups.get(group_id)?;
        if let Some(c) = &e.consumer {
            let d = c.describe();
            return Some(Described {
                state: d.state,
                protocol_type: "consumer".into(),
                protocol: d.assignor,
                members: d
                    .members
                    .into_iter()
                    .map(|m| MemberInfo {
                        member_id: m.member_id,
                        instance_id: m.instance_id,
                        client_id: m.client_id,
                        client_host: m.client_host,
                        metadata: Default::default(),
                        assignment: consumer_protocol::encode_assignment(
                            0,
                            &m.assigned
                                .iter()
                                .filter_map(|(id, ps)| {
                                    Some((topics.name_of(id)?, ps.iter().copied().collect()))
                                })
                                .collect::<Vec<_>>(),
                        ),
                    })
                    .collect(),
            });
        }
        Some(Described {
            state: e.group.state().name(),
            protocol_type: e
                .group
                .protocol_type()
                .or(e.stored_protocol_type.as_deref())
                .unwrap_or_default()
                .to_string(),
            protocol: if e.group.state() == State::Stable
                || e.group.state() == State::CompletingRebalance
            {
                e.group.protocol().unwrap_or_default().to_string()
            } else {
                String::new()
            },
            members: e.group.describe(),
        })
    }

    /// ListGroups: (group id, protocol type, state, group type).
    pub fn list(&self) -> Vec<(String, String, &'static str, &'static str)> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(id, e)| {
                if let Some(c) = &e.consumer {
                    return (id.clone(), "consumer".to_string(), c.state(), "consumer");
                }
                // A group that never had members ("simple", offsets only) has no protocol type.
                let pt = e
                    .group
                    .protocol_type()
                    .or(e.stored_protocol_type.as_deref())
                    .unwrap_or("");
                (
                    id.clone(),
                    pt.to_string(),
                    e.group.state().name(),
                    "classic",
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// DeleteGroups for one group: only an empty group can be deleted.
    pub async fn delete(&self, group_id: &str) -> Result<(), i16> {
        let fence = self.check(group_id)?;
        {
            let mut groups = self.lock();
            let Some(e) = groups.get_mut(group_id) else {
                return Err(ResponseError::GroupIdNotFound.code());
            };
            if !e.group.is_empty() || e.consumer.as_ref().is_some_and(|c| !c.is_empty()) {
                return Err(ResponseError::NonEmptyGroup.code());
            }
            e.group.kill();
        }
        match group_offsets::delete_group(self.meta.as_ref(), &fence, group_id).await {
            Ok(true) => {}
            Ok(false) => return Err(ResponseError::NotCoordinator.code()),
            Err(err) => {
                tracing::error!(group = group_id, error = %err, "deleting a group's offsets failed");
                return Err(ResponseError::CoordinatorNotAvailable.code());
            }
        }
        self.lock().remove(group_id);
        Ok(())
    }

    /// OffsetDelete: removes committed offsets of partitions of topics the group is not
    /// subscribed to. Returns per-partition error codes, or a group-level error.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> Result<Vec<i16>, i16> {
        let fence = self.check(group_id)?;
        let (deletable, codes) = {
            let groups = self.lock();
            let Some(e) = groups.get(group_id) else {
                return Err(ResponseError::GroupIdNotFound.code());
            };
            let subscribed: Vec<String> = match &e.consumer {
                Some(c) => c.subscribed_names().into_iter().collect(),
                None if e.group.is_empty() => Vec::new(),
                None => e.group.subscribed_topics(),
            };
            let codes: Vec<i16> = partitions
                .iter()
                .map(|(t, _)| {
                    if subscribed.contains(t) {
                        ResponseError::GroupSubscribedToTopic.code()
                    } else {
                        0
                    }
                })
                .collect();
            let deletable: Vec<(String, i32)> = partitions
                .iter()
                .zip(&codes)
                .filter(|(_, c)| **c == 0)
                .map(|(tp, _)| tp.clone())
                .collect();
            (deletable, codes)
        };
        match group_offsets::delete(self.meta.as_ref(), &fence, group_id, &deletable).await {
            Ok(true) => {}
            Ok(false) => return Err(ResponseError::NotCoordinator.code()),
            Err(err) => {
                tracing::error!(group = group_id, error = %err, "deleting offsets failed");
                return Err(ResponseError::CoordinatorNotAvailable.code());
            }
        }
        if let Some(e) = self.lock().get_mut(group_id) {
            for tp in &deletable {
                e.offsets.remove(tp);
            }
        }
        Ok(codes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use silt_common::ManualClock;
    use silt_meta::faults::{Fault, FaultyKv};
    use silt_meta::layout::assignment::Assignment;
    use silt_meta::{EmbeddedKv, Txn};

    fn limits() -> GroupLimits {
        GroupLimits {
            min_session_timeout_ms: 1,
            max_session_timeout_ms: 1_000_000,
            initial_rebalance_delay_ms: 0,
            max_size: 100,
            max_assignment_bytes: 1 << 20,
            consumer: consumer::ConsumerLimits {
                heartbeat_interval_ms: 100,
                session_timeout_ms: 1_000,
                max_size: 100,
            },
        }
    }

    /// A coordinator of `group`'s shard over a store that fails on cue.
    async fn coordinator(group: &str) -> (Arc<GroupCoordinator>, Arc<FaultyKv>, Arc<dyn MetaKv>) {
        let inner: Arc<dyn MetaKv> = Arc::new(EmbeddedKv::in_memory(ManualClock::new(0)));
        let shard = assignment::group_shard(group);
        let rev = inner
            .txn(Txn {
                success: vec![assignment::put_op(
                    assignment::shard_key(shard),
                    &Assignment {
                        leader: 1,
                        epoch: 0,
                    },
                )],
                ..Default::default()
            })
            .await
            .unwrap()
            .revision;
        let faulty = Arc::new(FaultyKv::new(inner.clone()));
        let c = Arc::new(GroupCoordinator::new(
            faulty.clone(),
            ManualClock::new(0),
            limits(),
        ));
        c.follow_shards(&BTreeMap::from([(shard, rev)]), Compare::absent("/none"))
            .await
            .unwrap();
        (c, faulty, inner)
    }

    fn offsets(n: i32, base: i64) -> Vec<(String, i32, Committed)> {
        (0..n)
            .map(|p| {
                (
                    "t".to_string(),
                    p,
                    Committed {
                        offset: base + p as i64,
                        leader_epoch: -1,
                        metadata: None,
                        commit_ms: 0,
                    },
                )
            })
            .collect()
    }

    /// What OffsetFetch would answer, and what the store holds, for partitions 0..n.
    async fn served_and_stored(
        c: &GroupCoordinator,
        kv: &dyn MetaKv,
        n: i32,
    ) -> (Vec<Option<i64>>, Vec<Option<i64>>) {
        let ps: Vec<(String, i32)> = (0..n).map(|p| ("t".to_string(), p)).collect();
        let served = c
            .committed("g", Some(&ps))
            .into_iter()
            .map(|(_, _, c)| c.map(|c| c.offset))
            .collect();
        let stored = group_offsets::read_back(kv, "g", &ps)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, _, c)| c.map(|c| c.offset))
            .collect();
        (served, stored)
    }

    /// Rule (issue 11.4): when a commit of 300 partitions fails part-way, the response says which
    /// offsets were written and OffsetFetch serves exactly what is durable. On the old code the
    /// cache kept the previous offsets of partitions whose transaction had been stored.
    #[tokio::test]
    async fn a_commit_failing_part_way_serves_exactly_what_is_durable() {
        let (c, faulty, kv) = coordinator("g").await;
        c.commit("g", "", None, -1, offsets(300, 0)).await.unwrap();
        // The second transaction of the next commit fails before it is applied.
        faulty.cue(1, 1, Fault::Unavailable);
        let r = c.commit("g", "", None, -1, offsets(300, 1000)).await;
        let written = match r {
            Err(CommitError::Partial { written, code }) => {
                assert_eq!(code, ResponseError::CoordinatorNotAvailable.code());
                written
            }
            other => panic!("expected a partial commit, got {other:?}"),
        };
        assert!(written > 0 && written < 300, "{written}");
        let (served, stored) = served_and_stored(&c, kv.as_ref(), 300).await;
        assert_eq!(served, stored, "OffsetFetch serves what is durable");
        assert_eq!(stored[0], Some(1000));
        assert_eq!(stored[299], Some(299));
        assert!(c.offsets_settled("g").is_ok());
    }

    /// Rule (issue 11.4): a transaction applied but not answered leaves its partitions unsure:
    /// OffsetFetch answers COORDINATOR_LOAD_IN_PROGRESS until the stored values are read back,
    /// then serves them.
    #[tokio::test]
    async fn an_unanswered_commit_is_read_back_before_offsets_are_served() {
        let (c, faulty, kv) = coordinator("g").await;
        c.commit("g", "", None, -1, offsets(10, 0)).await.unwrap();
        faulty.cue(0, 1, Fault::Unanswered);
        assert!(c.commit("g", "", None, -1, offsets(10, 50)).await.is_err());
        let settled = async {
            while c.offsets_settled("g").is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), settled)
            .await
            .expect("read back");
        let (served, stored) = served_and_stored(&c, kv.as_ref(), 10).await;
        assert_eq!(stored[3], Some(53), "the unanswered commit was applied");
        assert_eq!(served, stored);
    }

    struct OneTopic(uuid::Uuid);

    impl consumer::TopicView for OneTopic {
        fn by_name(&self, name: &str) -> Option<(uuid::Uuid, i32)> {
            (name == "t").then_some((self.0, 4))
        }
        fn names(&self) -> Vec<String> {
            vec!["t".into()]
        }
        fn name_of(&self, id: &uuid::Uuid) -> Option<String> {
            (*id == self.0).then(|| "t".into())
        }
    }

    fn hb(member: &str, epoch: i32) -> consumer::Heartbeat {
        consumer::Heartbeat {
            member_id: member.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: 1_000,
            topic_names: (epoch == 0).then(|| vec!["t".to_string()]),
            ..Default::default()
        }
    }

    /// A consumer group's membership is stored before a heartbeat that changed it is
    /// answered: a coordinator taking the shard over knows each member's epoch and
    /// assignment, so members carry on (no rejoin, no partition handed to two members); a
    /// change that cannot be stored is undone and the member retries.
    #[tokio::test]
    async fn a_new_coordinator_carries_on_a_consumer_group_at_its_epochs() {
        let (c, faulty, kv) = coordinator("cg").await;
        let topics = OneTopic(uuid::Uuid::new_v4());
        let a = c.consumer_heartbeat("cg", hb("a", 0), &topics).await;
        assert_eq!((a.error, a.member_epoch), (0, 1));
        let b = c.consumer_heartbeat("cg", hb("b", 0), &topics).await;
        assert_eq!((b.error, b.member_epoch), (0, 2));
        // a is told to give two partitions up: stored before the answer.
        let a2 = c.consumer_heartbeat("cg", hb("a", 1), &topics).await;
        let kept = a2.assignment.clone().expect("revocation sent");
        assert_eq!(kept.values().map(|p| p.len()).sum::<usize>(), 2);

        // The store is down: b's next change is refused and undone.
        faulty.cue(0, 1, Fault::Unavailable);
        let mut owned_a = hb("a", 1);
        owned_a.owned = Some(kept.clone());
        let r = c.consumer_heartbeat("cg", owned_a.clone(), &topics).await;
        assert_eq!(r.error, ResponseError::CoordinatorNotAvailable.code());
        assert_eq!(
            c.consumer_describe("cg").unwrap().members[0].epoch,
            1,
            "undone"
        );

        // Another coordinator loads the shard: same members, epochs and assignments.
        let shard = assignment::group_shard("cg");
        let rev = kv
            .range_all(assignment::shard_key(shard).as_bytes())
            .await
            .unwrap()[0]
            .mod_revision;
        let c2 = GroupCoordinator::new(kv.clone(), ManualClock::new(0), limits());
        c2.follow_shards(&BTreeMap::from([(shard, rev)]), Compare::absent("/none"))
            .await
            .unwrap();
        let d = c2.consumer_describe("cg").unwrap();
        assert_eq!(d.members.len(), 2);
        assert_eq!(d.group_epoch, 2);
        // a acknowledges its revocation at the new coordinator and moves on; then b gets the
        // released partitions; nobody rejoined.
        let r = c2.consumer_heartbeat("cg", owned_a, &topics).await;
        assert_eq!((r.error, r.member_epoch), (0, 2));
        let r = c2.consumer_heartbeat("cg", hb("b", 2), &topics).await;
        assert_eq!(r.error, 0);
        let got = r.assignment.expect("b's partitions");
        assert_eq!(got.values().map(|p| p.len()).sum::<usize>(), 2);
        for (t, ps) in &got {
            assert!(kept.get(t).is_none_or(|k| k.is_disjoint(ps)), "owned twice");
        }
        // Everyone leaves: the document is deleted.
        for m in ["a", "b"] {
            assert_eq!(
                c2.consumer_heartbeat("cg", hb(m, -1), &topics).await.error,
                0
            );
        }
        let left = kv
            .range_all(group_offsets::group_prefix("cg").as_bytes())
            .await
            .unwrap();
        assert!(left.is_empty(), "{left:?}");
    }
}
