//! The group coordinator: every consumer group this agent coordinates (all of them on a single
//! agent; a shard of them in a cluster), their membership state machines ([`group`]), and their
//! committed offsets, which live in the metadata store and are cached here.
//!
//! Membership is in memory only: after a restart, members find their session unknown and
//! rejoin, as after a Kafka coordinator failover. Committed offsets are durable: an OffsetCommit
//! is answered only after its single metadata transaction succeeded.

pub mod group;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kafka_protocol::ResponseError;
use silt_common::Clock;
use silt_meta::layout::group_offsets::{self, Committed};
use silt_meta::{MetaError, MetaKv};
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
}

impl Entry {
    fn new() -> Self {
        Self {
            group: Group::new(),
            offsets: BTreeMap::new(),
            stored_protocol_type: None,
            writes: Arc::default(),
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
}

/// The coordinator.
#[derive(Debug)]
pub struct GroupCoordinator {
    meta: Arc<dyn MetaKv>,
    clock: Arc<dyn Clock>,
    limits: GroupLimits,
    groups: Mutex<HashMap<String, Entry>>,
}

impl GroupCoordinator {
    /// Loads every group's committed offsets.
    pub async fn load(
        meta: Arc<dyn MetaKv>,
        clock: Arc<dyn Clock>,
        limits: GroupLimits,
    ) -> Result<Self, MetaError> {
        let mut groups: HashMap<String, Entry> = HashMap::new();
        let stored = group_offsets::load_all(meta.as_ref()).await?;
        for (g, t, p, c) in stored.offsets {
            groups
                .entry(g)
                .or_insert_with(Entry::new)
                .offsets
                .insert((t, p), c);
        }
        for (g, pt) in stored.protocol_types {
            groups
                .entry(g)
                .or_insert_with(Entry::new)
                .stored_protocol_type = Some(pt);
        }
        Ok(Self {
            meta,
            clock,
            limits,
            groups: Mutex::new(groups),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs session and rebalance timeouts every `every` until the coordinator is dropped.
    pub fn spawn_ticker(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(every);
            loop {
                iv.tick().await;
                let Some(c) = weak.upgrade() else { break };
                c.tick();
            }
        })
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
        let now = self.clock.now_ms();
        match self.lock().get_mut(group_id) {
            Some(e) => e.group.heartbeat(member_id, instance_id, generation, now),
            None => ResponseError::UnknownMemberId.code(),
        }
    }

    /// LeaveGroup for each (member id, instance id).
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
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

    /// OffsetCommit: checks membership, writes every partition in one transaction, then caches.
    pub async fn commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        offsets: Vec<(String, i32, Committed)>,
    ) -> Result<(), CommitError> {
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
        group_offsets::commit(
            self.meta.as_ref(),
            group_id,
            &offsets,
            record_type.as_deref(),
        )
        .await?;
        let mut groups = self.lock();
        let e = groups
            .entry(group_id.to_string())
            .or_insert_with(Entry::new);
        for (t, p, c) in offsets {
            e.offsets.insert((t, p), c);
        }
        if record_type.is_some() {
            e.stored_protocol_type = record_type;
        }
        Ok(())
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
        if let Err(err) = group_offsets::delete_group(self.meta.as_ref(), group_id).await {
            tracing::error!(group = group_id, error = %err, "deleting a group's offsets failed");
            return Err(ResponseError::CoordinatorNotAvailable.code());
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
        if let Err(err) = group_offsets::delete(self.meta.as_ref(), group_id, &deletable).await {
            tracing::error!(group = group_id, error = %err, "deleting offsets failed");
            return Err(ResponseError::CoordinatorNotAvailable.code());
        }
        if let Some(e) = self.lock().get_mut(group_id) {
            for tp in &deletable {
                e.offsets.remove(tp);
            }
        }
        Ok(codes)
    }
}
