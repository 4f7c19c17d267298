//! Classic members in a consumer group: Kafka 4.0's online migration between the two group
//! protocols (`group.consumer.migration.policy=bidirectional`, its default).
//!
//! - **Upgrade.** A consumer-protocol member joining a classic group with members (protocol type
//!   "consumer") turns it into a consumer group ([`ConsumerGroup::from_classic`]): the group
//!   epoch is the classic generation, every member keeps its epoch (the generation), its
//!   subscription (decoded from its JoinGroup metadata) and its assignment (decoded from its
//!   SyncGroup assignment), which is also the first target. The newcomer's join moves the group
//!   epoch, so the classic members are told to rejoin.
//! - **Classic requests** to a consumer group: JoinGroup updates the member's subscription,
//!   reconciles it towards its target with the partitions it says it owns (an eager client owns
//!   none by then; a cooperative one keeps what it still has) and is answered at once, with the
//!   member's epoch as generation, its first protocol and no leader (every classic member is a
//!   follower). SyncGroup hands out its current assignment. Heartbeat answers
//!   REBALANCE_IN_PROGRESS when the member is behind the group epoch, must give up partitions,
//!   or could take released ones — and from then on the member must rejoin within its rebalance
//!   timeout. A classic member's session is its own session timeout.
//! - **Downgrade.** Once the last consumer-protocol member has left or been fenced and classic
//!   members remain, the group turns back into a classic group ([`ConsumerGroup::downgradable`],
//!   `Group::from_consumer`): generation = the group epoch, a rebalance begun at once, so the
//!   members rejoin and their leader assigns again.

use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    intersect, minus, ConsumerGroup, ConsumerLimits, Member, MemberState, Parts, TopicView,
};
use crate::groups::consumer_protocol;
use crate::groups::group::{ClassicExport, ExportedMember, Join, JoinResult, SyncResult};

/// The protocol type of classic consumers.
pub const CLASSIC_PROTOCOL_TYPE: &str = "consumer";

/// What a consumer group keeps of a classic member. Persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassicMeta {
    /// Its session timeout.
    pub session_timeout_ms: i32,
    /// Its protocols in preference order, with their metadata.
    pub protocols: Vec<(String, Vec<u8>)>,
}

impl ClassicMeta {
    /// Its first protocol (the one a consumer group answers with).
    fn first(&self) -> &str {
        self.protocols.first().map_or("", |p| p.0.as_str())
    }

    /// The version its subscription is written at (its assignments are written at it too).
    fn version(&self) -> i16 {
        self.protocols
            .first()
            .and_then(|p| p.1.get(..2))
            .map_or(0, |v| i16::from_be_bytes([v[0], v[1]]))
    }
}

fn to_parts(named: &[(String, Vec<i32>)], topics: &dyn TopicView) -> Parts {
    let mut out = Parts::new();
    for (name, ps) in named {
        if let Some((id, count)) = topics.by_name(name) {
            out.entry(id)
                .or_default()
                .extend(ps.iter().copied().filter(|p| (0..count).contains(p)));
        }
    }
    out.retain(|_, ps| !ps.is_empty());
    out
}

fn to_named(parts: &Parts, topics: &dyn TopicView) -> Vec<(String, Vec<i32>)> {
    parts
        .iter()
        .filter_map(|(id, ps)| Some((topics.name_of(id)?, ps.iter().copied().collect())))
        .collect()
}

fn join_error(e: ResponseError, member_id: &str) -> JoinResult {
    JoinResult {
        error: e.code(),
        generation: -1,
        member_id: member_id.to_string(),
        ..Default::default()
    }
}

fn sync_error(e: ResponseError) -> SyncResult {
    SyncResult {
        error: e.code(),
        ..Default::default()
    }
}

impl ConsumerGroup {
    /// A classic group's members taken over by a consumer group (online upgrade). An error says
    /// why it cannot be (the joining member gets GROUP_ID_NOT_FOUND, as from Kafka).
    pub fn from_classic(
        c: &ClassicExport,
        now: i64,
        lim: &ConsumerLimits,
        topics: &dyn TopicView,
    ) -> Result<Self, String> {
        if c.protocol_type != CLASSIC_PROTOCOL_TYPE {
            return Err(format!(
                "its protocol type is {:?}, not \"consumer\"",
                c.protocol_type
            ));
        }
        if c.members.len() > lim.max_size {
            return Err(format!(
                "it has {} members, more than a consumer group may have ({})",
                c.members.len(),
                lim.max_size
            ));
        }
        let mut g = ConsumerGroup::new(0);
        g.group_epoch = c.generation;
        g.assignment_epoch = c.generation;
        for m in &c.members {
            let meta = m
                .protocols
                .iter()
                .find(|p| p.0 == c.protocol)
                .map(|p| &p.1)
                .ok_or_else(|| format!("member {} has no metadata for {}", m.id, c.protocol))?;
            let sub = consumer_protocol::decode_subscription(meta)
                .ok_or_else(|| format!("member {}'s subscription does not decode", m.id))?;
            let assigned = consumer_protocol::decode_assignment(&m.assignment)
                .ok_or_else(|| format!("member {}'s assignment does not decode", m.id))?;
            let assigned = to_parts(&assigned, topics);
            g.target.insert(m.id.clone(), assigned.clone());
            let mut member = Member::joining(m.instance_id.clone(), m.rebalance_timeout_ms, now);
            member.rack_id = sub.rack.clone();
            member.client_id = m.client_id.clone();
            member.client_host = m.client_host.clone();
            member.names = sub.topics.iter().cloned().collect();
            member.epoch = c.generation;
            member.previous_epoch = c.generation;
            member.assigned = assigned;
            member.classic = Some(ClassicMeta {
                session_timeout_ms: m.session_timeout_ms,
                protocols: m
                    .protocols
                    .iter()
                    .map(|(n, b)| (n.clone(), b.to_vec()))
                    .collect(),
            });
            g.members.insert(m.id.clone(), member);
        }
        g.refresh_topics(topics);
        Ok(g)
    }

    /// JoinGroup from a classic member, answered at once.
    pub fn classic_join(
        &mut self,
        j: &Join,
        now: i64,
        lim: &ConsumerLimits,
        topics: &dyn TopicView,
    ) -> JoinResult {
        if j.protocol_type != CLASSIC_PROTOCOL_TYPE || j.protocols.is_empty() {
            return join_error(ResponseError::InconsistentGroupProtocol, &j.member_id);
        }
        // Some protocol of the joiner must be supported by every other classic member.
        let common = j.protocols.iter().any(|(name, _)| {
            self.members
                .iter()
                .filter(|(id, _)| **id != j.member_id)
                .filter_map(|(_, m)| m.classic.as_ref())
                .all(|c| c.protocols.iter().any(|p| &p.0 == name))
        });
        if !common {
            return join_error(ResponseError::InconsistentGroupProtocol, &j.member_id);
        }
        let Some(sub) = consumer_protocol::decode_subscription(&j.protocols[0].1) else {
            return join_error(ResponseError::InconsistentGroupProtocol, &j.member_id);
        };
        let mut id = j.member_id.clone();
        let known = self.members.contains_key(&id);
        let fresh = || format!("{}-{}", j.client_id, Uuid::new_v4().simple());
        if id.is_empty() {
            id = fresh();
            // A new dynamic member first learns its id (v4+, KIP-394).
            if j.instance_id.is_none() && j.require_known_member_id {
                return JoinResult {
                    error: ResponseError::MemberIdRequired.code(),
                    generation: -1,
                    member_id: id,
                    ..Default::default()
                };
            }
        }
        let before = self.group_epoch;
        // A static member: its instance's member, or it replaces that member.
        if let Some(inst) = &j.instance_id {
            let holder = self
                .members
                .iter()
                .find(|(_, m)| m.instance_id.as_ref() == Some(inst))
                .map(|(id, _)| id.clone());
            match holder {
                Some(h) if h == id => {}
                Some(h) if !known => {
                    let mut m = self.members.remove(&h).expect("found above");
                    m.epoch = 0;
                    m.left_static = false;
                    if let Some(t) = self.target.remove(&h) {
                        self.target.insert(id.clone(), t);
                    }
                    self.members.insert(id.clone(), m);
                }
                Some(_) => return join_error(ResponseError::FencedInstanceId, &id),
                None => {}
            }
        }
        if !self.members.contains_key(&id) {
            if self.members.len() >= lim.max_size {
                return join_error(ResponseError::GroupMaxSizeReached, &id);
            }
            self.members.insert(
                id.clone(),
                Member::joining(j.instance_id.clone(), j.rebalance_timeout_ms, now),
            );
            self.group_epoch += 1;
        }
        let m = self.members.get_mut(&id).expect("member");
        if m.classic.is_none() && m.epoch != 0 {
            // A consumer-protocol member's id used by a classic client.
            return join_error(ResponseError::UnknownMemberId, &id);
        }
        let names: std::collections::BTreeSet<String> = sub.topics.iter().cloned().collect();
        let mut changed = names != m.names || m.regex.is_some() || m.assignor.is_some();
        m.names = names;
        m.regex = None;
        m.assignor = None;
        m.rack_id = sub.rack.clone();
        m.client_id = j.client_id.clone();
        m.client_host = j.client_host.clone();
        m.rebalance_timeout_ms = j.rebalance_timeout_ms;
        m.last_seen_ms = now;
        m.revoke_deadline_ms = 0;
        m.classic = Some(ClassicMeta {
            session_timeout_ms: j.session_timeout_ms,
            protocols: j
                .protocols
                .iter()
                .map(|(n, b)| (n.clone(), b.to_vec()))
                .collect(),
        });
        changed |= self.refresh_topics(topics);
        if changed && self.group_epoch == before {
            self.group_epoch += 1;
        }
        if self.group_epoch > self.assignment_epoch {
            self.compute_target(topics);
        }
        // Reconciled with what it says it owns: an eager client has given everything up by
        // now; a cooperative one keeps what it still has, so it may have to give some up first.
        let owned = to_parts(&sub.owned, topics);
        self.reconcile(&id, Some(&owned), now);
        if self.members[&id].state == MemberState::UnrevokedPartitions {
            self.reconcile(&id, Some(&owned), now);
        }
        let m = &self.members[&id];
        let protocol = m.classic.as_ref().map(|c| c.first().to_string());
        JoinResult {
            error: 0,
            generation: m.epoch,
            protocol_type: Some(CLASSIC_PROTOCOL_TYPE.to_string()),
            protocol_name: protocol,
            leader: String::new(),
            member_id: id,
            members: Vec::new(),
        }
    }

    /// Finds a classic member for SyncGroup and Heartbeat, checking its instance id and
    /// generation.
    fn classic_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<&Member, ResponseError> {
        let m = self
            .members
            .get(member_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        if instance_id.is_some() && m.instance_id.as_deref() != instance_id {
            return Err(ResponseError::FencedInstanceId);
        }
        if m.classic.is_none() {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != m.epoch {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(m)
    }

    /// SyncGroup from a classic member: its current assignment.
    pub fn classic_sync(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        (protocol_type, protocol_name): (Option<&str>, Option<&str>),
        topics: &dyn TopicView,
    ) -> SyncResult {
        let m = match self.classic_member(member_id, instance_id, generation) {
            Ok(m) => m,
            Err(e) => return sync_error(e),
        };
        let c = m.classic.as_ref().expect("a classic member");
        if protocol_type.is_some_and(|t| t != CLASSIC_PROTOCOL_TYPE)
            || protocol_name.is_some_and(|n| n != c.first())
        {
            return sync_error(ResponseError::InconsistentGroupProtocol);
        }
        if self.group_epoch > m.epoch && m.state != MemberState::UnrevokedPartitions {
            return sync_error(ResponseError::RebalanceInProgress);
        }
        SyncResult {
            error: 0,
            assignment: consumer_protocol::encode_assignment(
                c.version(),
                &to_named(&m.assigned, topics),
            ),
            protocol_type: Some(CLASSIC_PROTOCOL_TYPE.to_string()),
            protocol_name: Some(c.first().to_string()),
        }
    }

    /// Heartbeat from a classic member: REBALANCE_IN_PROGRESS when it must rejoin (then within
    /// its rebalance timeout).
    pub fn classic_heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: i64,
    ) -> i16 {
        if let Err(e) = self.classic_member(member_id, instance_id, generation) {
            return e.code();
        }
        let held = self.held_by_others(member_id);
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let group_epoch = self.group_epoch;
        let m = self.members.get_mut(member_id).expect("found above");
        m.last_seen_ms = now;
        let missing = minus(&target, &m.assigned);
        let rejoin = m.epoch < group_epoch
            || m.state == MemberState::UnrevokedPartitions
            || (m.state == MemberState::UnreleasedPartitions
                && intersect(&missing, &held).is_empty());
        if !rejoin {
            m.revoke_deadline_ms = 0;
            return 0;
        }
        if m.revoke_deadline_ms == 0 {
            m.revoke_deadline_ms = now + i64::from(m.rebalance_timeout_ms);
        }
        ResponseError::RebalanceInProgress.code()
    }

    /// When every member left is classic (the last consumer-protocol member left or was
    /// fenced): the members for a classic group to take over (Kafka 4.0's online downgrade).
    pub fn downgradable(&self) -> Option<Vec<ExportedMember>> {
        if self.members.is_empty() || self.members.values().any(|m| m.classic.is_none()) {
            return None;
        }
        Some(
            self.members
                .iter()
                .map(|(id, m)| {
                    let c = m.classic.as_ref().expect("all classic");
                    ExportedMember {
                        id: id.clone(),
                        instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        session_timeout_ms: c.session_timeout_ms,
                        rebalance_timeout_ms: m.rebalance_timeout_ms,
                        protocols: c
                            .protocols
                            .iter()
                            .map(|(n, b)| (n.clone(), bytes::Bytes::from(b.clone())))
                            .collect(),
                        // The classic rebalance that follows hands out new assignments.
                        assignment: bytes::Bytes::new(),
                    }
                })
                .collect(),
        )
    }

    /// The generation a downgraded group starts at: its members' epoch (the newest, if they
    /// differ), so members at it are told REBALANCE_IN_PROGRESS, not ILLEGAL_GENERATION, and
    /// can still commit what they consumed before they rejoin (a leave moved the group epoch
    /// past theirs).
    pub fn downgrade_generation(&self) -> i32 {
        self.members
            .values()
            .map(|m| m.epoch)
            .max()
            .unwrap_or(self.group_epoch)
    }

    /// LeaveGroup of one member, by id, or by instance id (v3+).
    pub fn classic_leave(&mut self, member_id: &str, instance_id: Option<&str>) -> i16 {
        let id = match instance_id {
            Some(inst) => {
                let holder = self
                    .members
                    .iter()
                    .find(|(_, m)| m.instance_id.as_deref() == Some(inst))
                    .map(|(id, _)| id.clone());
                match holder {
                    Some(h) if member_id.is_empty() || h == member_id => h,
                    Some(_) => return ResponseError::FencedInstanceId.code(),
                    None => return ResponseError::UnknownMemberId.code(),
                }
            }
            None => member_id.to_string(),
        };
        if self.members.remove(&id).is_none() {
            return ResponseError::UnknownMemberId.code();
        }
        self.target.remove(&id);
        self.group_epoch += 1;
        0
    }
}

#[cfg(test)]
mod tests;
