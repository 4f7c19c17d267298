//! The group coordinator: every consumer group this agent coordinates (the groups of the group
//! shards assigned to it: [`GroupCoordinator::follow_shards`]), their membership state machines
//! ([`group`]), and their committed offsets, which live in the metadata store and are cached
//! here. A group of a shard coordinated elsewhere gets NOT_COORDINATOR; every write of group
//! state is fenced on this agent's registration and the shard's assignment.
//!
//! Membership is in memory only: after a restart, members find their session unknown and
//! rejoin, as after a Kafka coordinator failover. Committed offsets are durable: an OffsetCommit
//! is answered only after its single metadata transaction succeeded.

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
            offsets: BTreeMap::new(),
            stored_protocol_type: None,
            writes: Arc::default(),
            unsure: Default::default(),
            txn_pending: BTreeMap::new(),
        }
    }
}

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
            c.tick();
        }
    }
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone)]
pub struct Described {
    /// State.
    pub state: State,
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
}

/// The coordinator.
#[derive(Debug)]
pub struct GroupCoordinator {
    meta: Arc<dyn MetaKv>,
    clock: Arc<dyn Clock>,
    limits: GroupLimits,
    groups: Mutex<HashMap<String, Entry>>,
    shards: Mutex<Shards>,
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
        }
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

    /// Applies timeouts at the clock's current time.
    pub fn tick(&self) {
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        for e in groups.values_mut() {
            e.group.tick(now, &self.limits);
        }
        groups.retain(|_, e| {
            !(e.group.state() == State::Empty && e.group.is_empty() && e.offsets.is_empty())
        });
    }

    /// JoinGroup.
    pub fn join(&self, group_id: &str, j: Join) -> oneshot::Receiver<JoinResult> {
        let (tx, rx) = oneshot::channel();
        if let Err(error) = self.check(group_id) {
            let _ = tx.send(JoinResult {
                error,
                generation: -1,
                ..Default::default()
            });
            return rx;
        }
        let now = self.clock.now_ms();
        self.lock()
            .entry(group_id.to_string())
            .or_insert_with(Entry::new)
            .group
            .join(j, now, &self.limits, tx);
        rx
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
            Some(e) => e.group.heartbeat(member_id, instance_id, generation, now),
            None => ResponseError::UnknownMemberId.code(),
        }
    }

    /// LeaveGroup for each (member id, instance id).
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        if let Err(code) = self.check(group_id) {
            return vec![code; members.len()];
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
            e.group
                .check_commit(member_id, instance_id, generation)
                .map_err(CommitError::Refused)?;
            // Record the protocol type the first time a member's commit lands, so the group is
            // listed as it was after a restart.
            let record = e
                .group
                .protocol_type()
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

    /// DescribeGroups.
    pub fn describe(&self, group_id: &str) -> Option<Described> {
        let groups = self.lock();
        let e = groups.get(group_id)?;
        Some(Described {
            state: e.group.state(),
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

    /// ListGroups: (group id, protocol type, state).
    pub fn list(&self) -> Vec<(String, String, State)> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(id, e)| {
                // A group that never had members ("simple", offsets only) has no protocol type.
                let pt = e
                    .group
                    .protocol_type()
                    .or(e.stored_protocol_type.as_deref())
                    .unwrap_or("");
                (id.clone(), pt.to_string(), e.group.state())
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
            if !e.group.is_empty() {
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
            let subscribed = if e.group.is_empty() {
                Vec::new()
            } else {
                e.group.subscribed_topics()
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
}
