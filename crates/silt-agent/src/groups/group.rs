//! One classic consumer group's membership state machine (Kafka's GroupCoordinator protocol):
//! Empty → PreparingRebalance → CompletingRebalance → Stable, with member-id assignment
//! (KIP-394), static membership (KIP-345), session and rebalance timeouts, and the leader's
//! assignment handed to every member verbatim (the assignor is the client's job).
//!
//! Time is a parameter (`now`, ms): nothing here reads a clock, so tests drive it directly.
//! Requests that must wait (JoinGroup until the rebalance completes, SyncGroup until the leader
//! assigns) park a oneshot sender; answering drops it into the waiter's response.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;

/// Limits and delays, from the `groups` settings.
#[derive(Debug, Clone)]
pub struct GroupLimits {
    /// Smallest accepted session timeout.
    pub min_session_timeout_ms: i32,
    /// Largest accepted session timeout.
    pub max_session_timeout_ms: i32,
    /// Delay of the first rebalance of an empty group, so several members join at once.
    pub initial_rebalance_delay_ms: i32,
    /// Most members (and members waiting for their id) a group holds.
    pub max_size: usize,
    /// Most bytes of assignments the leader may hand out in one SyncGroup.
    pub max_assignment_bytes: usize,
    /// Consumer-protocol (KIP-848) groups' timeouts.
    pub consumer: super::consumer::ConsumerLimits,
}

/// The group states, named as DescribeGroups and ListGroups report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No members.
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Members have their assignments.
    Stable,
    /// Deleted.
    Dead,
}

impl State {
    /// Kafka's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
            State::Dead => "Dead",
        }
    }
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinResult {
    /// Error code (0 for none).
    pub error: i16,
    /// The generation the member joined.
    pub generation: i32,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The chosen protocol (assignor).
    pub protocol_name: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// The member's id.
    pub member_id: String,
    /// For the leader: every member with its metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

/// The answer to a SyncGroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncResult {
    /// Error code (0 for none).
    pub error: i16,
    /// The member's assignment.
    pub assignment: Bytes,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The chosen protocol.
    pub protocol_name: Option<String>,
}

/// A JoinGroup, decoded.
#[derive(Debug, Clone)]
pub struct Join {
    /// Member id ("" for a new member).
    pub member_id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Client id from the request header.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout_ms: i32,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: i32,
    /// Protocol type (e.g. "consumer").
    pub protocol_type: String,
    /// Supported protocols in preference order, with their metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a new member must first learn its id (MEMBER_ID_REQUIRED).
    pub require_known_member_id: bool,
}

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: i64,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    /// Answers whatever this member is waiting on with `error`.
    fn fail_waiters(&mut self, member_id: &str, error: i16) {
        if let Some(tx) = self.join_waiter.take() {
            let _ = tx.send(JoinResult {
                error,
                generation: -1,
                member_id: member_id.to_string(),
                ..Default::default()
            });
        }
        if let Some(tx) = self.sync_waiter.take() {
            let _ = tx.send(SyncResult {
                error,
                ..Default::default()
            });
        }
    }

    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// A described member (DescribeGroups).
#[derive(Debug, Clone)]
pub struct MemberInfo {
    /// Member id.
    pub member_id: String,
    /// Static id.
    pub instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Metadata for the chosen protocol.
    pub metadata: Bytes,
    /// Current assignment.
    pub assignment: Bytes,
}

/// A classic group's members as a consumer group takes them over (online upgrade).
#[derive(Debug, Clone)]
pub struct ClassicExport {
    /// The generation, which becomes the consumer group's epoch.
    pub generation: i32,
    /// Protocol type ("consumer" for consumers).
    pub protocol_type: String,
    /// The chosen protocol (assignor).
    pub protocol: String,
    /// Members.
    pub members: Vec<ExportedMember>,
}

/// A classic member as [`ClassicExport`] carries it.
#[derive(Debug, Clone)]
pub struct ExportedMember {
    /// Member id.
    pub id: String,
    /// Static id.
    pub instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout_ms: i32,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: i32,
    /// Protocols in preference order, with their metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// Its assignment of the current generation (empty if it has none yet).
    pub assignment: Bytes,
}

/// One group.
#[derive(Debug)]
pub struct Group {
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Ids handed out with MEMBER_ID_REQUIRED, with the time they expire.
    pending: HashMap<String, i64>,
    /// Static instance id → member id.
    statics: HashMap<String, String>,
    rebalance_deadline: i64,
    initial_deadline: i64,
    rebalance_started: i64,
    next_member: u64,
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

impl Default for Group {
    fn default() -> Self {
        Self::new()
    }
}

impl Group {
    /// An empty group.
    pub fn new() -> Self {
        Self {
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            statics: HashMap::new(),
            rebalance_deadline: 0,
            initial_deadline: 0,
            rebalance_started: 0,
            next_member: 0,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Current generation.
    #[cfg(test)]
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// Protocol type, once a member joined.
    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    /// Chosen protocol of the current generation.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Whether the group has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `member_id` is a member.
    #[cfg(test)]
    pub fn has_member(&self, member_id: &str) -> bool {
        self.members.contains_key(member_id)
    }

    /// Members, for DescribeGroups.
    pub fn describe(&self) -> Vec<MemberInfo> {
        let protocol = self.protocol.clone().unwrap_or_default();
        self.members
            .iter()
            .map(|(id, m)| MemberInfo {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                // As Kafka: metadata and assignment only once the group is Stable.
                metadata: if self.state == State::Stable {
                    m.metadata_for(&protocol)
                } else {
                    Bytes::new()
                },
                assignment: if self.state == State::Stable {
                    m.assignment.clone()
                } else {
                    Bytes::new()
                },
            })
            .collect()
    }

    /// Every member's subscribed topics (consumer protocol), for OffsetDelete.
    pub fn subscribed_topics(&self) -> Vec<String> {
        let protocol = self.protocol.clone().unwrap_or_default();
        let mut out: Vec<String> = self
            .members
            .values()
            .flat_map(|m| consumer_subscription(&m.metadata_for(&protocol)))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The members, for a consumer group to take over (`None` while the group has none).
    pub fn export(&self) -> Option<ClassicExport> {
        if self.members.is_empty() {
            return None;
        }
        Some(ClassicExport {
            generation: self.generation,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol: self.protocol.clone().unwrap_or_default(),
            members: self
                .members
                .iter()
                .map(|(id, m)| ExportedMember {
                    id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocols: m.protocols.clone(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// A consumer group whose members are all classic, turned back into a classic group (Kafka
    /// 4.0's online downgrade): generation `generation` (the consumer group's epoch), the members
    /// kept, and a rebalance begun at once, so they rejoin and their leader assigns.
    pub fn from_consumer(
        generation: i32,
        members: Vec<ExportedMember>,
        now: i64,
        lim: &GroupLimits,
    ) -> Self {
        let mut g = Self::new();
        g.generation = generation;
        g.protocol_type = Some("consumer".to_string());
        g.state = State::Stable;
        for m in members {
            if let Some(inst) = &m.instance_id {
                g.statics.insert(inst.clone(), m.id.clone());
            }
            g.members.insert(
                m.id,
                Member {
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocols: m.protocols,
                    assignment: m.assignment,
                    last_seen: now,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        g.protocol = g.choose_protocol();
        g.leader = g.members.keys().next().cloned();
        g.prepare_rebalance(now, lim);
        g
    }

    /// The group became a consumer group: whatever its members wait on (a join, a sync) is
    /// answered REBALANCE_IN_PROGRESS, as Kafka answers them on an online upgrade, and it is
    /// empty again.
    pub fn converted(&mut self) {
        let err = code(ResponseError::RebalanceInProgress);
        for (id, m) in self.members.iter_mut() {
            m.fail_waiters(id, err);
        }
        *self = Self::new();
    }

    /// Marks the group deleted; waiters learn the coordinator lost it.
    pub fn kill(&mut self) {
        let err = code(ResponseError::CoordinatorNotAvailable);
        for (id, m) in self.members.iter_mut() {
            m.fail_waiters(id, err);
        }
        self.members.clear();
        self.state = State::Dead;
    }

    fn check_member(&self, member_id: &str, instance_id: Option<&str>) -> Result<(), i16> {
        if let Some(inst) = instance_id {
            match self.statics.get(inst) {
                Some(id) if id != member_id => return Err(code(ResponseError::FencedInstanceId)),
                None if !self.members.contains_key(member_id) => {
                    return Err(code(ResponseError::UnknownMemberId))
                }
                _ => {}
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(code(ResponseError::UnknownMemberId));
        }
        Ok(())
    }

    fn fresh_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        let rand = uuid::Uuid::new_v4().simple().to_string();
        format!("{client_id}-{}-{}", self.next_member, &rand[..12])
    }

    /// Handles a JoinGroup. The answer goes to `tx`, now or when the rebalance completes.
    pub fn join(&mut self, j: Join, now: i64, lim: &GroupLimits, tx: oneshot::Sender<JoinResult>) {
        let fail = |tx: oneshot::Sender<JoinResult>, e: ResponseError, member_id: &str| {
            let _ = tx.send(JoinResult {
                error: code(e),
                generation: -1,
                member_id: member_id.to_string(),
                ..Default::default()
            });
        };
        if self.state == State::Dead {
            return fail(tx, ResponseError::CoordinatorNotAvailable, &j.member_id);
        }
        if j.session_timeout_ms < lim.min_session_timeout_ms
            || j.session_timeout_ms > lim.max_session_timeout_ms
        {
            return fail(tx, ResponseError::InvalidSessionTimeout, &j.member_id);
        }
        if j.protocol_type.is_empty() || j.protocols.is_empty() || !self.protocols_compatible(&j) {
            return fail(tx, ResponseError::InconsistentGroupProtocol, &j.member_id);
        }
        if j.member_id.is_empty() {
            let new_id = self.fresh_member_id(&j.client_id);
            if let Some(inst) = j.instance_id.clone() {
                if let Some(old) = self.statics.get(&inst).cloned() {
                    return self.static_rejoin(old, new_id, j, now, lim, tx);
                }
            } else if j.require_known_member_id {
                if self.members.len() + self.pending.len() >= lim.max_size {
                    return fail(tx, ResponseError::GroupMaxSizeReached, "");
                }
                self.pending
                    .insert(new_id.clone(), now + j.session_timeout_ms as i64);
                return fail(tx, ResponseError::MemberIdRequired, &new_id);
            }
            if self.members.len() + self.pending.len() >= lim.max_size {
                return fail(tx, ResponseError::GroupMaxSizeReached, "");
            }
            return self.add_member(new_id, j, now, lim, tx);
        }
        if self.pending.remove(&j.member_id).is_some() {
            let id = j.member_id.clone();
            return self.add_member(id, j, now, lim, tx);
        }
        if let Err(e) = self.check_member(&j.member_id, j.instance_id.as_deref()) {
            let _ = tx.send(JoinResult {
                error: e,
                generation: -1,
                member_id: j.member_id.clone(),
                ..Default::default()
            });
            return;
        }
        // A known member rejoins.
        let id = j.member_id.clone();
        let m = self.members.get_mut(&id).expect("checked");
        let changed = m.protocols != j.protocols;
        m.protocols = j.protocols;
        m.session_timeout_ms = j.session_timeout_ms;
        m.rebalance_timeout_ms = j.rebalance_timeout_ms;
        m.last_seen = now;
        if let Some(old) = m.join_waiter.replace(tx) {
            let _ = old.send(JoinResult {
                error: code(ResponseError::RebalanceInProgress),
                generation: -1,
                member_id: id.clone(),
                ..Default::default()
            });
        }
        let is_leader = self.leader.as_deref() == Some(id.as_str());
        match self.state {
            State::PreparingRebalance => self.maybe_complete_join(now),
            State::CompletingRebalance | State::Stable
                if !(changed || is_leader && self.state == State::Stable) =>
            {
                // Nothing changed: answer with the current generation without a rebalance.
                let tx = self
                    .members
                    .get_mut(&id)
                    .and_then(|m| m.join_waiter.take())
                    .expect("just set");
                let _ = tx.send(self.join_result(&id, is_leader));
            }
            _ => self.prepare_rebalance(now, lim),
        }
    }

    fn protocols_compatible(&self, j: &Join) -> bool {
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(j.protocol_type.as_str()) {
            return false;
        }
        // At least one protocol every member (and this one) supports.
        j.protocols.iter().any(|(name, _)| {
            self.members
                .iter()
                .filter(|(id, _)| **id != j.member_id)
                .all(|(_, m)| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn static_rejoin(
        &mut self,
        old: String,
        new_id: String,
        j: Join,
        now: i64,
        lim: &GroupLimits,
        tx: oneshot::Sender<JoinResult>,
    ) {
        let Some(mut m) = self.members.remove(&old) else {
            self.statics
                .remove(j.instance_id.as_deref().unwrap_or_default());
            let _ = tx.send(JoinResult {
                error: code(ResponseError::UnknownMemberId),
                generation: -1,
                ..Default::default()
            });
            return;
        };
        // The old incarnation is fenced.
        m.fail_waiters(&old, code(ResponseError::FencedInstanceId));
        let changed = m.protocols != j.protocols;
        m.protocols = j.protocols;
        m.session_timeout_ms = j.session_timeout_ms;
        m.rebalance_timeout_ms = j.rebalance_timeout_ms;
        m.client_id = j.client_id;
        m.client_host = j.client_host;
        m.last_seen = now;
        let was_leader = self.leader.as_deref() == Some(old.as_str());
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        self.members.insert(new_id.clone(), m);
        self.statics
            .insert(j.instance_id.clone().unwrap_or_default(), new_id.clone());
        match self.state {
            State::Stable if !changed => {
                // KIP-345: a static member that comes back in time keeps its assignment; no
                // rebalance. The leader is answered as a follower so it does not reassign.
                let _ = tx.send(self.join_result(&new_id, false));
            }
            State::PreparingRebalance => {
                self.members.get_mut(&new_id).expect("inserted").join_waiter = Some(tx);
                self.maybe_complete_join(now);
            }
            _ => {
                self.members.get_mut(&new_id).expect("inserted").join_waiter = Some(tx);
                self.prepare_rebalance(now, lim);
            }
        }
    }

    fn add_member(
        &mut self,
        id: String,
        j: Join,
        now: i64,
        lim: &GroupLimits,
        tx: oneshot::Sender<JoinResult>,
    ) {
        if self.members.is_empty() {
            self.protocol_type = Some(j.protocol_type.clone());
        }
        if let Some(inst) = &j.instance_id {
            self.statics.insert(inst.clone(), id.clone());
        }
        self.members.insert(
            id,
            Member {
                instance_id: j.instance_id,
                client_id: j.client_id,
                client_host: j.client_host,
                session_timeout_ms: j.session_timeout_ms,
                rebalance_timeout_ms: j.rebalance_timeout_ms,
                protocols: j.protocols,
                assignment: Bytes::new(),
                last_seen: now,
                join_waiter: Some(tx),
                sync_waiter: None,
            },
        );
        match self.state {
            State::PreparingRebalance => {
                if now < self.initial_deadline {
                    // Still in the initial delay: give others a moment more to join.
                    let cap = self.rebalance_started + self.max_rebalance_timeout() as i64;
                    self.initial_deadline = (now + lim.initial_rebalance_delay_ms as i64).min(cap);
                }
                self.maybe_complete_join(now);
            }
            _ => self.prepare_rebalance(now, lim),
        }
    }

    fn max_rebalance_timeout(&self) -> i32 {
        self.members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0)
    }

    fn prepare_rebalance(&mut self, now: i64, lim: &GroupLimits) {
        let err = code(ResponseError::RebalanceInProgress);
        for m in self.members.values_mut() {
            if let Some(tx) = m.sync_waiter.take() {
                let _ = tx.send(SyncResult {
                    error: err,
                    ..Default::default()
                });
            }
        }
        let was_empty = self.state == State::Empty;
        self.state = State::PreparingRebalance;
        self.rebalance_started = now;
        self.rebalance_deadline = now + self.max_rebalance_timeout() as i64;
        self.initial_deadline = if was_empty {
            now + (lim.initial_rebalance_delay_ms as i64).min(self.max_rebalance_timeout() as i64)
        } else {
            now
        };
        self.maybe_complete_join(now);
    }

    fn maybe_complete_join(&mut self, now: i64) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined =
            self.members.values().all(|m| m.join_waiter.is_some()) && self.pending.is_empty();
        if !((all_joined && now >= self.initial_deadline) || now >= self.rebalance_deadline) {
            return;
        }
        // Members that did not rejoin in time are out.
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join_waiter.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.remove(&id);
        }
        self.pending.clear();
        self.generation += 1;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = self.choose_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = State::CompletingRebalance;
        let leader = self.leader.clone().unwrap_or_default();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.join_result(&id, id == leader);
            if let Some(tx) = self.members.get_mut(&id).and_then(|m| m.join_waiter.take()) {
                let _ = tx.send(result);
            }
            if let Some(m) = self.members.get_mut(&id) {
                m.last_seen = now;
                m.assignment = Bytes::new();
            }
        }
    }

    /// Each member votes for its most preferred protocol among those all members support.
    fn choose_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let common: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(x, _)| x == *n))
            })
            .collect();
        let mut votes: Vec<(usize, &String)> = common.iter().map(|c| (0usize, *c)).collect();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| common.contains(&n)) {
                if let Some(v) = votes.iter_mut().find(|(_, c)| *c == name) {
                    v.0 += 1;
                }
            }
        }
        // Most votes; ties go to the earliest in the first member's preference order.
        let best = votes.iter().map(|(n, _)| *n).max()?;
        votes
            .into_iter()
            .find(|(n, _)| *n == best)
            .map(|(_, c)| c.clone())
    }

    fn join_result(&self, member_id: &str, as_leader: bool) -> JoinResult {
        let protocol = self.protocol.clone().unwrap_or_default();
        JoinResult {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if as_leader {
                self.members
                    .iter()
                    .map(|(id, m)| (id.clone(), m.instance_id.clone(), m.metadata_for(&protocol)))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(mut m) = self.members.remove(id) {
            if let Some(inst) = &m.instance_id {
                if self.statics.get(inst).map(String::as_str) == Some(id) {
                    self.statics.remove(inst);
                }
            }
            m.fail_waiters(id, code(ResponseError::UnknownMemberId));
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// Handles a SyncGroup; the answer goes to `tx`, now or when the leader has assigned.
    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        now: i64,
        lim: &GroupLimits,
        tx: oneshot::Sender<SyncResult>,
    ) {
        let reply = |e: ResponseError| SyncResult {
            error: code(e),
            ..Default::default()
        };
        if self.state == State::Dead {
            let _ = tx.send(reply(ResponseError::CoordinatorNotAvailable));
            return;
        }
        if let Err(e) = self.check_member(member_id, instance_id) {
            let _ = tx.send(SyncResult {
                error: e,
                ..Default::default()
            });
            return;
        }
        if generation != self.generation {
            let _ = tx.send(reply(ResponseError::IllegalGeneration));
            return;
        }
        if protocol_type.is_some_and(|p| Some(p) != self.protocol_type.as_deref())
            || protocol_name.is_some_and(|p| Some(p) != self.protocol.as_deref())
        {
            let _ = tx.send(reply(ResponseError::InconsistentGroupProtocol));
            return;
        }
        match self.state {
            State::Empty | State::Dead => {
                let _ = tx.send(reply(ResponseError::UnknownMemberId));
            }
            State::PreparingRebalance => {
                let _ = tx.send(reply(ResponseError::RebalanceInProgress));
            }
            State::Stable => {
                let _ = tx.send(self.sync_result(member_id));
            }
            State::CompletingRebalance => {
                let m = self.members.get_mut(member_id).expect("checked");
                m.last_seen = now;
                m.sync_waiter = Some(tx);
                if self.leader.as_deref() != Some(member_id) {
                    return;
                }
                let total: usize = assignments.iter().map(|(_, a)| a.len()).sum();
                if total > lim.max_assignment_bytes {
                    // Kafka fails to store such a group and answers UNKNOWN_SERVER_ERROR; the
                    // members rejoin.
                    tracing::warn!(
                        total,
                        limit = lim.max_assignment_bytes,
                        "group assignment too large; refusing it"
                    );
                    for m in self.members.values_mut() {
                        m.assignment = Bytes::new();
                        if let Some(w) = m.sync_waiter.take() {
                            let _ = w.send(reply(ResponseError::UnknownServerError));
                        }
                    }
                    return;
                }
                let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                for (id, m) in self.members.iter_mut() {
                    m.assignment = given.remove(id).unwrap_or_default();
                }
                self.state = State::Stable;
                let ids: Vec<String> = self.members.keys().cloned().collect();
                for id in ids {
                    let r = self.sync_result(&id);
                    if let Some(w) = self.members.get_mut(&id).and_then(|m| m.sync_waiter.take()) {
                        let _ = w.send(r);
                    }
                }
            }
        }
    }

    fn sync_result(&self, member_id: &str) -> SyncResult {
        SyncResult {
            error: 0,
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
        }
    }

    /// Handles a Heartbeat; returns its error code.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: i64,
    ) -> i16 {
        if self.state == State::Dead {
            return code(ResponseError::CoordinatorNotAvailable);
        }
        if let Err(e) = self.check_member(member_id, instance_id) {
            return e;
        }
        if generation != self.generation {
            return code(ResponseError::IllegalGeneration);
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_seen = now;
        }
        match self.state {
            State::PreparingRebalance => code(ResponseError::RebalanceInProgress),
            State::Empty => code(ResponseError::UnknownMemberId),
            _ => 0,
        }
    }

    /// Handles one member of a LeaveGroup (by member id, or by instance id when the member id
    /// is empty); returns its error code.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: i64,
        lim: &GroupLimits,
    ) -> i16 {
        if self.state == State::Dead {
            return code(ResponseError::CoordinatorNotAvailable);
        }
        let id = match (member_id.is_empty(), instance_id) {
            (true, Some(inst)) => match self.statics.get(inst) {
                Some(id) => id.clone(),
                None => return code(ResponseError::UnknownMemberId),
            },
            _ => {
                if let Err(e) = self.check_member(member_id, instance_id) {
                    return e;
                }
                member_id.to_string()
            }
        };
        self.remove(&id);
        self.after_removal(now, lim);
        0
    }

    fn after_removal(&mut self, now: i64, lim: &GroupLimits) {
        match self.state {
            State::Stable | State::CompletingRebalance => self.prepare_rebalance(now, lim),
            State::PreparingRebalance => self.maybe_complete_join(now),
            State::Empty | State::Dead => {}
        }
        if self.members.is_empty()
            && self.state != State::PreparingRebalance
            && self.state != State::Dead
        {
            self.state = State::Empty;
        }
    }

    /// Expires members whose session timed out and completes rebalances whose time is up.
    pub fn tick(&mut self, now: i64, lim: &GroupLimits) {
        self.pending.retain(|_, deadline| *deadline > now);
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join_waiter.is_none() && m.sync_waiter.is_none())
            .filter(|(_, m)| m.last_seen + m.session_timeout_ms as i64 <= now)
            .map(|(id, _)| id.clone())
            .collect();
        if !expired.is_empty() {
            for id in &expired {
                tracing::info!(member = %id, "group member's session expired; removing it");
                self.remove(id);
            }
            self.after_removal(now, lim);
        }
        if self.state == State::CompletingRebalance {
            // A leader that never sends its assignment holds everyone up: drop it after its
            // session timeout.
            if let Some(l) = self.leader.clone() {
                if let Some(m) = self.members.get(&l) {
                    if m.sync_waiter.is_none() && m.last_seen + m.session_timeout_ms as i64 <= now {
                        self.remove(&l);
                        self.after_removal(now, lim);
                    }
                }
            }
        }
        self.maybe_complete_join(now);
    }

    /// Whether an OffsetCommit from this member at this generation is accepted.
    pub fn check_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), i16> {
        if generation < 0 && self.members.is_empty() && self.state != State::Dead {
            // A client not using group management that sends its member id anyway (librdkafka
            // with group.protocol=consumer and assign()): accepted while the group is empty, as
            // Kafka accepts it.
            return Ok(());
        }
        if generation < 0 && member_id.is_empty() {
            // A "simple" commit by a client not using group membership.
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(code(ResponseError::UnknownMemberId))
            };
        }
        if self.state == State::Dead {
            return Err(code(ResponseError::CoordinatorNotAvailable));
        }
        self.check_member(member_id, instance_id)?;
        if generation != self.generation {
            return Err(code(ResponseError::IllegalGeneration));
        }
        if self.state == State::CompletingRebalance {
            return Err(code(ResponseError::RebalanceInProgress));
        }
        Ok(())
    }
}

/// The topics in a consumer-protocol subscription (`version:i16 topics:[string] ...`).
pub fn consumer_subscription(meta: &[u8]) -> Vec<String> {
    let mut b = meta;
    let mut take = |n: usize| -> Option<&[u8]> {
        if b.len() < n {
            return None;
        }
        let (x, rest) = b.split_at(n);
        b = rest;
        Some(x)
    };
    let mut parse = || -> Option<Vec<String>> {
        let _version = i16::from_be_bytes(take(2)?.try_into().ok()?);
        let n = i32::from_be_bytes(take(4)?.try_into().ok()?);
        let mut out = Vec::new();
        for _ in 0..n.clamp(0, 100_000) {
            let len = i16::from_be_bytes(take(2)?.try_into().ok()?);
            let s = take(len.max(0) as usize)?;
            out.push(String::from_utf8_lossy(s).into_owned());
        }
        Some(out)
    };
    parse().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    //! The state machine driven with explicit times: no sleeping, no clock.
    use super::*;
    use tokio::sync::oneshot::error::TryRecvError;

    fn lim() -> GroupLimits {
        GroupLimits {
            min_session_timeout_ms: 1_000,
            max_session_timeout_ms: 60_000,
            initial_rebalance_delay_ms: 0,
            max_size: 10,
            max_assignment_bytes: 1024,
            consumer: crate::groups::consumer::ConsumerLimits {
                heartbeat_interval_ms: 100,
                session_timeout_ms: 1_000,
                max_size: 10,
            },
        }
    }

    fn req(member: &str, instance: Option<&str>) -> Join {
        Join {
            member_id: member.into(),
            instance_id: instance.map(String::from),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 20_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            require_known_member_id: true,
        }
    }

    fn join(g: &mut Group, j: Join, now: i64) -> oneshot::Receiver<JoinResult> {
        let (tx, rx) = oneshot::channel();
        g.join(j, now, &lim(), tx);
        rx
    }

    fn sync(
        g: &mut Group,
        id: &str,
        gen: i32,
        assign: Vec<(&str, &'static [u8])>,
        now: i64,
    ) -> oneshot::Receiver<SyncResult> {
        let (tx, rx) = oneshot::channel();
        let a = assign
            .into_iter()
            .map(|(m, b)| (m.to_string(), Bytes::from_static(b)))
            .collect();
        g.sync(id, None, gen, None, None, a, now, &lim(), tx);
        rx
    }

    /// A new member learns its id, joins, and (alone) leads generation 1.
    fn first_member(g: &mut Group) -> String {
        let r = join(g, req("", None), 0).try_recv().unwrap();
        assert_eq!(r.error, ResponseError::MemberIdRequired.code());
        let id = r.member_id;
        let r = join(g, req(&id, None), 0).try_recv().unwrap();
        assert_eq!(
            (r.error, r.generation, r.leader.as_str()),
            (0, 1, id.as_str())
        );
        assert_eq!(r.members.len(), 1, "the leader sees every member");
        let s = sync(g, &id, 1, vec![(id.as_str(), b"A")], 0)
            .try_recv()
            .unwrap();
        assert_eq!((s.error, &s.assignment[..]), (0, &b"A"[..]));
        assert_eq!(g.state(), State::Stable);
        id
    }

    /// Adds a second member and completes the rebalance; returns its id.
    fn second_member(g: &mut Group, a: &str, now: i64) -> String {
        let r = join(g, req("", None), now).try_recv().unwrap();
        let b = r.member_id;
        let mut rb = join(g, req(&b, None), now);
        assert_eq!(g.state(), State::PreparingRebalance);
        assert!(
            matches!(rb.try_recv(), Err(TryRecvError::Empty)),
            "waits for the others"
        );
        assert_eq!(
            g.heartbeat(a, None, 1, now),
            ResponseError::RebalanceInProgress.code()
        );
        let ra = join(g, req(a, None), now).try_recv().unwrap();
        let rb = rb.try_recv().unwrap();
        assert_eq!((ra.generation, rb.generation), (2, 2));
        assert_eq!(ra.leader, a, "the leader stays the leader");
        assert_eq!(ra.members.len(), 2);
        assert!(rb.members.is_empty(), "followers do not see members");
        let mut sb = sync(g, &b, 2, vec![], now);
        assert!(
            matches!(sb.try_recv(), Err(TryRecvError::Empty)),
            "followers wait for the leader"
        );
        let sa = sync(g, a, 2, vec![(a, b"A2"), (b.as_str(), b"B2")], now)
            .try_recv()
            .unwrap();
        assert_eq!(&sa.assignment[..], b"A2");
        assert_eq!(&sb.try_recv().unwrap().assignment[..], b"B2");
        b
    }

    #[test]
    fn members_join_sync_and_rebalance() {
        let mut g = Group::new();
        let a = first_member(&mut g);
        let b = second_member(&mut g, &a, 1_000);
        assert_eq!(g.state(), State::Stable);
        assert_eq!(g.generation(), 2);
        assert_eq!(g.heartbeat(&b, None, 2, 1_100), 0);
        // Leaving triggers a rebalance that the remaining member completes alone.
        assert_eq!(g.leave(&b, None, 1_200, &lim()), 0);
        let r = join(&mut g, req(&a, None), 1_300).try_recv().unwrap();
        assert_eq!((r.generation, r.members.len()), (3, 1));
    }

    #[test]
    fn kafka_error_codes_for_bad_requests() {
        let mut g = Group::new();
        let a = first_member(&mut g);
        assert_eq!(
            g.heartbeat("nobody", None, 1, 0),
            ResponseError::UnknownMemberId.code()
        );
        assert_eq!(
            g.heartbeat(&a, None, 7, 0),
            ResponseError::IllegalGeneration.code()
        );
        let s = sync(&mut g, &a, 9, vec![], 0).try_recv().unwrap();
        assert_eq!(s.error, ResponseError::IllegalGeneration.code());
        let mut other = req("", None);
        other.protocol_type = "connect".into();
        assert_eq!(
            join(&mut g, other, 0).try_recv().unwrap().error,
            ResponseError::InconsistentGroupProtocol.code()
        );
        let mut short = req("", None);
        short.session_timeout_ms = 10;
        assert_eq!(
            join(&mut g, short, 0).try_recv().unwrap().error,
            ResponseError::InvalidSessionTimeout.code()
        );
        let mut no_common = req("", None);
        no_common.protocols = vec![("roundrobin".into(), Bytes::new())];
        no_common.require_known_member_id = false;
        assert_eq!(
            join(&mut g, no_common, 0).try_recv().unwrap().error,
            ResponseError::InconsistentGroupProtocol.code()
        );
        assert_eq!(
            g.leave("nobody", None, 0, &lim()),
            ResponseError::UnknownMemberId.code()
        );
        assert_eq!(g.check_commit(&a, None, 1), Ok(()));
        assert_eq!(
            g.check_commit(&a, None, 0),
            Err(ResponseError::IllegalGeneration.code())
        );
        assert_eq!(
            g.check_commit("", None, -1),
            Err(ResponseError::UnknownMemberId.code()),
            "simple commits only to empty groups"
        );
        assert_eq!(Group::new().check_commit("", None, -1), Ok(()));
        // A client not using group management may send a member id (librdkafka does with
        // group.protocol=consumer and assign()): accepted by an empty group, as in Kafka.
        assert_eq!(Group::new().check_commit("its-own-id", None, -1), Ok(()));
        assert_eq!(
            g.check_commit("its-own-id", None, -1),
            Err(ResponseError::UnknownMemberId.code())
        );
    }

    #[test]
    fn expired_sessions_are_removed_and_a_rebalance_follows() {
        let mut g = Group::new();
        let a = first_member(&mut g);
        let b = second_member(&mut g, &a, 0);
        // a keeps heartbeating; b goes silent for longer than its 10 s session.
        for t in (1_000..=9_000).step_by(1_000) {
            assert_eq!(g.heartbeat(&a, None, 2, t), 0);
            g.tick(t, &lim());
            assert!(g.has_member(&b), "b is within its session at {t}");
        }
        g.tick(10_000, &lim());
        assert!(!g.has_member(&b), "b's session expired");
        assert_eq!(g.state(), State::PreparingRebalance);
        assert_eq!(
            g.heartbeat(&b, None, 2, 12_000),
            ResponseError::UnknownMemberId.code()
        );
        let r = join(&mut g, req(&a, None), 12_100).try_recv().unwrap();
        assert_eq!((r.generation, r.members.len()), (3, 1));
    }

    #[test]
    fn members_that_do_not_rejoin_are_dropped_at_the_rebalance_timeout() {
        let mut g = Group::new();
        let a = first_member(&mut g);
        let b = second_member(&mut g, &a, 0);
        // A third member joins; b never rejoins, a does.
        let c = join(&mut g, req("", None), 100)
            .try_recv()
            .unwrap()
            .member_id;
        let mut rc = join(&mut g, req(&c, None), 100);
        let mut ra = join(&mut g, req(&a, None), 200);
        // b heartbeats (and is told to rejoin) but never does.
        for t in [5_000, 10_000, 15_000, 20_000] {
            assert_eq!(
                g.heartbeat(&b, None, 2, t),
                ResponseError::RebalanceInProgress.code()
            );
            g.tick(t, &lim());
        }
        assert!(
            matches!(ra.try_recv(), Err(TryRecvError::Empty)),
            "still within the rebalance timeout"
        );
        g.tick(20_101, &lim());
        let ra = ra.try_recv().unwrap();
        assert_eq!(ra.generation, 3);
        assert_eq!(ra.members.len(), 2);
        assert_eq!(rc.try_recv().unwrap().generation, 3);
        assert!(!g.has_member(&b));
    }

    #[test]
    fn static_member_returns_without_a_rebalance_and_fences_its_old_self() {
        let mut g = Group::new();
        let r = join(&mut g, req("", Some("i1")), 0).try_recv().unwrap();
        assert_eq!(r.error, 0, "static members get their id at once");
        let old = r.member_id;
        sync(&mut g, &old, 1, vec![(old.as_str(), b"P0")], 0)
            .try_recv()
            .unwrap();
        let gen = g.generation();
        let r = join(&mut g, req("", Some("i1")), 5_000).try_recv().unwrap();
        assert_eq!(
            (r.error, r.generation),
            (0, gen),
            "same generation: no rebalance"
        );
        assert_ne!(r.member_id, old);
        assert_eq!(g.state(), State::Stable);
        let s = sync(&mut g, &r.member_id, gen, vec![], 5_000)
            .try_recv()
            .unwrap();
        assert_eq!(&s.assignment[..], b"P0", "the assignment is kept");
        assert_eq!(
            g.heartbeat(&old, Some("i1"), gen, 5_000),
            ResponseError::FencedInstanceId.code()
        );
        assert_eq!(g.leave("", Some("i1"), 6_000, &lim()), 0);
        assert!(g.is_empty());
    }

    #[test]
    fn size_and_assignment_limits() {
        let mut g = Group::new();
        let mut small = lim();
        small.max_size = 2;
        for i in 0..2 {
            let (tx, rx) = oneshot::channel();
            g.join(req("", None), i, &small, tx);
            assert_eq!(
                rx.blocking_recv().unwrap().error,
                ResponseError::MemberIdRequired.code()
            );
        }
        let (tx, rx) = oneshot::channel();
        g.join(req("", None), 3, &small, tx);
        assert_eq!(
            rx.blocking_recv().unwrap().error,
            ResponseError::GroupMaxSizeReached.code()
        );
        // Pending ids expire after the session timeout, freeing room.
        g.tick(20_000, &small);
        let (tx, rx) = oneshot::channel();
        g.join(req("", None), 20_001, &small, tx);
        assert_eq!(
            rx.blocking_recv().unwrap().error,
            ResponseError::MemberIdRequired.code()
        );

        let mut g = Group::new();
        let r = join(&mut g, req("", None), 0).try_recv().unwrap();
        let id = r.member_id;
        join(&mut g, req(&id, None), 0).try_recv().unwrap();
        let huge: &'static [u8] = Box::leak(vec![0u8; 4096].into_boxed_slice());
        let s = sync(&mut g, &id, 1, vec![(id.as_str(), huge)], 0)
            .try_recv()
            .unwrap();
        assert_eq!(
            s.error,
            ResponseError::UnknownServerError.code(),
            "as Kafka answers when it cannot store the group"
        );
        assert_eq!(g.state(), State::CompletingRebalance);
    }

    #[test]
    fn subscription_topics_are_read_from_consumer_metadata() {
        let mut m = vec![0u8, 1, 0, 0, 0, 2];
        for t in ["orders", "audit"] {
            m.extend_from_slice(&(t.len() as i16).to_be_bytes());
            m.extend_from_slice(t.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(consumer_subscription(&m), vec!["orders", "audit"]);
        assert!(
            consumer_subscription(&[0, 1, 0x7f, 0xff, 0xff, 0xff]).is_empty(),
            "truncated metadata is no subscription"
        );
    }
}
