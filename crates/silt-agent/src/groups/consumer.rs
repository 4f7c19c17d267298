//! One KIP-848 consumer group (the "consumer" group protocol, ConsumerGroupHeartbeat): members
//! with epochs, a group epoch that moves on every change of membership, subscriptions or
//! subscribed topics, a target assignment computed on the server ([`super::assignors`]), and
//! each member reconciled towards its target without a stop-the-world rebalance:
//!
//! - a member first gives up what its target no longer holds (UNREVOKED_PARTITIONS: it is sent
//!   its assignment without them and keeps its epoch until it reports them gone);
//! - then it takes the group's target epoch and every partition of its target that no other
//!   member still holds (UNRELEASED_PARTITIONS until the rest are released);
//! - so a partition is never assigned to two members at once.
//!
//! Static members (an instance id) that leave with epoch -2 keep their assignment until their
//! session times out, and a new member with the same instance id takes it over. Members that
//! stop heartbeating for the session timeout, or do not revoke within their rebalance timeout,
//! are fenced (removed; their next heartbeat gets UNKNOWN_MEMBER_ID and they rejoin).
//!
//! The group's state (not its timers) round-trips through [`ConsumerGroup::stored`] and
//! [`ConsumerGroup::restore`]: the coordinator writes it to the metadata store before answering
//! a heartbeat that changed it, so a coordinator that takes the group over knows who holds what
//! and members carry on at their epochs.
//!
//! Classic members (JoinGroup, SyncGroup, Heartbeat) can be part of a consumer group, as in
//! Kafka 4.0's online migration ([`classic`]): they are assigned by the same target and
//! reconciliation, and told to rejoin when their assignment has to change.
//!
//! Time is a parameter (`now`, ms) and topics come through [`TopicView`]: nothing here reads a
//! clock or the catalog, so tests drive it directly.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::assignors::{self, MemberSpec, Parts};

/// What the group sees of the topic catalog.
pub trait TopicView {
    /// A topic's id and partition count.
    fn by_name(&self, name: &str) -> Option<(Uuid, i32)>;
    /// Every topic name (for regex subscriptions).
    fn names(&self) -> Vec<String>;
    /// A topic's name by id.
    fn name_of(&self, id: &Uuid) -> Option<String>;
}

/// Timeouts and sizes, from the `groups` settings.
#[derive(Debug, Clone)]
pub struct ConsumerLimits {
    /// How often members heartbeat (`group.consumer.heartbeat.interval.ms`).
    pub heartbeat_interval_ms: i32,
    /// A member silent this long is fenced (`group.consumer.session.timeout.ms`).
    pub session_timeout_ms: i32,
    /// Most members per group (`group.consumer.max.size`).
    pub max_size: usize,
}

/// One ConsumerGroupHeartbeat, decoded.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    /// Member id (client-generated from v1).
    pub member_id: String,
    /// 0 joins, -1 leaves, -2 leaves keeping a static member's assignment; else the epoch the
    /// member has.
    pub member_epoch: i32,
    /// Static membership instance id.
    pub instance_id: Option<String>,
    /// Rack.
    pub rack_id: Option<String>,
    /// -1 if unchanged.
    pub rebalance_timeout_ms: i32,
    /// `None` if unchanged.
    pub topic_names: Option<Vec<String>>,
    /// `None` if unchanged; `Some("")` clears it.
    pub topic_regex: Option<String>,
    /// `None` if unchanged.
    pub assignor: Option<String>,
    /// The partitions the member owns; `None` if unchanged since the last heartbeat.
    pub owned: Option<Parts>,
    /// Client id and host (for describes).
    pub client_id: String,
    /// Client host.
    pub client_host: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// Error code (0 for none).
    pub error: i16,
    /// Why, for errors a user can act on.
    pub message: Option<String>,
    /// The member's id.
    pub member_id: String,
    /// The member's epoch now.
    pub member_epoch: i32,
    /// Sent when it changed (or the member asked with a full request).
    pub assignment: Option<Parts>,
}

impl Reply {
    fn err(e: ResponseError, message: impl Into<String>) -> Self {
        Self {
            error: e.code(),
            message: Some(message.into()),
            member_epoch: -1,
            ..Default::default()
        }
    }
}

/// Where a member is in its reconciliation. Persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// At the target epoch with its whole target.
    Stable,
    /// Must give up partitions before it moves on.
    UnrevokedPartitions,
    /// At the target epoch, waiting for partitions other members still hold.
    UnreleasedPartitions,
}

/// A member. Persisted (but for its timers and what it was last sent): field names are stable.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Member {
    instance_id: Option<String>,
    rack_id: Option<String>,
    client_id: String,
    client_host: String,
    rebalance_timeout_ms: i32,
    names: BTreeSet<String>,
    #[serde(with = "stored_regex")]
    regex: Option<(String, regex::Regex)>,
    assignor: Option<String>,
    epoch: i32,
    previous_epoch: i32,
    state: MemberState,
    assigned: Parts,
    revoking: Parts,
    /// What the member was last sent.
    #[serde(skip)]
    sent: Option<Parts>,
    #[serde(skip)]
    last_seen_ms: i64,
    #[serde(skip)]
    revoke_deadline_ms: i64,
    /// Left with epoch -2: kept (with its assignment) for a successor until the session ends.
    left_static: bool,
    /// A classic member (JoinGroup, SyncGroup, Heartbeat) of this consumer group: its session
    /// timeout and protocols ([`classic`]). `None` for members of the consumer protocol.
    #[serde(default)]
    classic: Option<classic::ClassicMeta>,
}

impl Member {
    /// A member that just joined: epoch 0, nothing assigned, no subscription yet.
    fn joining(instance_id: Option<String>, rebalance_timeout_ms: i32, now: i64) -> Self {
        Self {
            instance_id,
            rack_id: None,
            client_id: String::new(),
            client_host: String::new(),
            rebalance_timeout_ms,
            names: BTreeSet::new(),
            regex: None,
            assignor: None,
            epoch: 0,
            previous_epoch: 0,
            state: MemberState::Stable,
            assigned: Parts::new(),
            revoking: Parts::new(),
            sent: None,
            last_seen_ms: now,
            revoke_deadline_ms: 0,
            left_static: false,
            classic: None,
        }
    }
}

/// A member as ConsumerGroupDescribe reports it.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    /// Id.
    pub member_id: String,
    /// Instance id.
    pub instance_id: Option<String>,
    /// Rack.
    pub rack_id: Option<String>,
    /// Epoch.
    pub epoch: i32,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Subscribed names.
    pub topic_names: Vec<String>,
    /// Subscribed regex.
    pub topic_regex: Option<String>,
    /// Current assignment.
    pub assigned: Parts,
    /// Target assignment.
    pub target: Parts,
    /// A classic member (JoinGroup/SyncGroup) rather than one of the consumer protocol.
    pub classic: bool,
}

/// A group as ConsumerGroupDescribe reports it.
#[derive(Debug, Clone)]
pub struct Described {
    /// Kafka's state name: Empty, Assigning, Reconciling, Stable.
    pub state: &'static str,
    /// Group epoch.
    pub group_epoch: i32,
    /// Epoch of the target assignment.
    pub assignment_epoch: i32,
    /// The assignor of the target assignment.
    pub assignor: String,
    /// Members.
    pub members: Vec<MemberInfo>,
}

/// One consumer group's membership. Persisted (but for the hold): field names are stable.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumerGroup {
    group_epoch: i32,
    assignment_epoch: i32,
    members: BTreeMap<String, Member>,
    target: BTreeMap<String, Parts>,
    /// Partition counts of the subscribed topics, as of the group epoch.
    topics_seen: BTreeMap<Uuid, i32>,
    assignor: String,
    /// Until then no partition is handed out: members of before a coordinator move may still
    /// hold them (their state was in the old coordinator's memory); each learns it is fenced at
    /// its next heartbeat and gives them up.
    #[serde(skip)]
    hold_until_ms: i64,
}

/// A regex subscription is stored as its source and compiled again on load.
mod stored_regex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        r: &Option<(String, regex::Regex)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match r {
            Some((src, _)) => s.serialize_some(src),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<(String, regex::Regex)>, D::Error> {
        let src: Option<String> = Option::deserialize(d)?;
        src.map(|r| {
            super::compile(&r)
                .map(|x| (r, x))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

/// A subscription regex, anchored at both ends as Kafka (RE2/J `matches`) applies it. The
/// pattern must compile on its own first (else `a)|(b` would pass, unanchored, once wrapped).
fn compile(r: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(r)?;
    regex::Regex::new(&format!("^(?:{r})$"))
}

fn subset(a: &Parts, b: &Parts) -> bool {
    a.iter()
        .all(|(t, ps)| ps.is_empty() || b.get(t).is_some_and(|q| ps.is_subset(q)))
}

fn minus(a: &Parts, b: &Parts) -> Parts {
    let mut out = Parts::new();
    for (t, ps) in a {
        let rest: BTreeSet<i32> = match b.get(t) {
            Some(q) => ps.difference(q).copied().collect(),
            None => ps.clone(),
        };
        if !rest.is_empty() {
            out.insert(*t, rest);
        }
    }
    out
}

fn intersect(a: &Parts, b: &Parts) -> Parts {
    let mut out = Parts::new();
    for (t, ps) in a {
        if let Some(q) = b.get(t) {
            let both: BTreeSet<i32> = ps.intersection(q).copied().collect();
            if !both.is_empty() {
                out.insert(*t, both);
            }
        }
    }
    out
}

fn union(a: &mut Parts, b: &Parts) {
    for (t, ps) in b {
        a.entry(*t).or_default().extend(ps.iter().copied());
    }
}

fn is_empty(p: &Parts) -> bool {
    p.values().all(BTreeSet::is_empty)
}

impl ConsumerGroup {
    /// A new group that hands out no partition before `hold_until_ms`.
    pub fn new(hold_until_ms: i64) -> Self {
        Self {
            assignor: assignors::NAMES[0].to_string(),
            hold_until_ms,
            ..Default::default()
        }
    }

    /// The group's state as the metadata store keeps it (`None` once it has no member).
    pub fn stored(&self) -> Option<Vec<u8>> {
        (!self.members.is_empty()).then(|| serde_json::to_vec(self).expect("a group serializes"))
    }

    /// A group taken over from the metadata store at `now`: every member's session and
    /// revocation deadline start again, and each is sent its assignment at its next heartbeat.
    pub fn restore(doc: &[u8], now: i64) -> Result<Self, serde_json::Error> {
        let mut g: Self = serde_json::from_slice(doc)?;
        for m in g.members.values_mut() {
            m.last_seen_ms = now;
            // A classic member's deadline is its rejoin deadline, armed only when it is told
            // to rejoin.
            m.revoke_deadline_ms = if m.classic.is_some() {
                0
            } else {
                now + i64::from(m.rebalance_timeout_ms)
            };
        }
        Ok(g)
    }

    /// Whether the group has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kafka's state name.
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.group_epoch > self.assignment_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.epoch != self.assignment_epoch || m.state != MemberState::Stable)
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// Group epoch.
    #[cfg(test)]
    pub fn group_epoch(&self) -> i32 {
        self.group_epoch
    }

    /// Topic names members subscribe to by name (OffsetDelete refuses their offsets).
    pub fn subscribed_names(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.names.iter().cloned())
            .collect()
    }

    /// Answers one heartbeat.
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        now: i64,
        lim: &ConsumerLimits,
        topics: &dyn TopicView,
    ) -> Reply {
        let mut hb = hb;
        if let Some(a) = &hb.assignor {
            if !assignors::NAMES.contains(&a.as_str()) {
                return Reply::err(
                    ResponseError::UnsupportedAssignor,
                    format!(
                        "assignor {a:?} is not served; use one of {:?} (group.remote.assignor)",
                        assignors::NAMES
                    ),
                );
            }
        }
        let regex = match hb.topic_regex.as_deref() {
            Some(r) if !r.is_empty() => match compile(r) {
                Ok(x) => Some(Some((r.to_string(), x))),
                Err(e) => {
                    return Reply::err(
                        ResponseError::InvalidRegularExpression,
                        format!("subscription regex {r:?} does not compile: {e}"),
                    )
                }
            },
            Some(_) => Some(None),
            None => None,
        };
        let before = self.group_epoch;
        let id = match self.member_for(&mut hb, now, lim) {
            Ok(Some(id)) => id,
            Ok(None) => {
                // Left.
                return Reply {
                    member_id: hb.member_id,
                    member_epoch: hb.member_epoch,
                    ..Default::default()
                };
            }
            Err(r) => return r,
        };
        // Subscription changes move the group epoch.
        let m = self.members.get_mut(&id).expect("member just found");
        m.last_seen_ms = now;
        m.client_id = hb.client_id.clone();
        m.client_host = hb.client_host.clone();
        let mut changed = false;
        if let Some(names) = hb.topic_names.take() {
            let names: BTreeSet<String> = names.into_iter().collect();
            changed |= names != m.names;
            m.names = names;
        }
        if let Some(r) = regex {
            changed |= r.as_ref().map(|x| &x.0) != m.regex.as_ref().map(|x| &x.0);
            m.regex = r;
        }
        if hb.assignor.is_some() && hb.assignor != m.assignor {
            m.assignor = hb.assignor.take();
            changed = true;
        }
        if hb.rebalance_timeout_ms > 0 {
            m.rebalance_timeout_ms = hb.rebalance_timeout_ms;
        }
        if hb.rack_id.is_some() {
            m.rack_id = hb.rack_id.take();
        }
        changed |= self.refresh_topics(topics);
        // One new group epoch per heartbeat, whatever changed.
        if changed && self.group_epoch == before {
            self.group_epoch += 1;
        }
        if self.group_epoch > self.assignment_epoch {
            self.compute_target(topics);
        }
        self.reconcile(&id, hb.owned.as_ref(), now);
        let m = self.members.get_mut(&id).expect("member");
        // The assignment goes out again whenever the member may not have it: on a join, when
        // what it says it owns differs, when it heartbeats at an older epoch (a lost response),
        // and while it has partitions to give up.
        let full = hb.member_epoch == 0
            || hb.member_epoch != m.epoch
            || m.state == MemberState::UnrevokedPartitions
            || hb.owned.as_ref().is_some_and(|o| *o != m.assigned);
        let assignment = if full || m.sent.as_ref() != Some(&m.assigned) {
            m.sent = Some(m.assigned.clone());
            Some(m.assigned.clone())
        } else {
            None
        };
        Reply {
            error: 0,
            message: None,
            member_id: id,
            member_epoch: m.epoch,
            assignment,
        }
    }

    /// Finds (or creates, on a join) the heartbeat's member; `None` when it left.
    fn member_for(
        &mut self,
        hb: &mut Heartbeat,
        now: i64,
        lim: &ConsumerLimits,
    ) -> Result<Option<String>, Reply> {
        if hb.member_id.is_empty() {
            if hb.member_epoch != 0 {
                return Err(Reply::err(
                    ResponseError::InvalidRequest,
                    "MemberId can't be empty after the first heartbeat",
                ));
            }
            hb.member_id = Uuid::new_v4().simple().to_string();
        }
        match hb.member_epoch {
            0 => self.join(hb, now, lim).map(Some),
            -1 => {
                if self.members.remove(&hb.member_id).is_none() {
                    return Err(Reply::err(
                        ResponseError::UnknownMemberId,
                        format!("member {} is not in the group", hb.member_id),
                    ));
                }
                self.target.remove(&hb.member_id);
                self.group_epoch += 1;
                Ok(None)
            }
            -2 => {
                if hb.instance_id.is_none() {
                    return Err(Reply::err(
                        ResponseError::InvalidRequest,
                        "member epoch -2 (static leave) needs an instance id",
                    ));
                }
                let Some(m) = self.members.get_mut(&hb.member_id) else {
                    return Err(Reply::err(
                        ResponseError::UnknownMemberId,
                        format!("member {} is not in the group", hb.member_id),
                    ));
                };
                if m.instance_id.is_none() {
                    // Not a static member: nobody could take its assignment over; it leaves.
                    self.members.remove(&hb.member_id);
                    self.target.remove(&hb.member_id);
                    self.group_epoch += 1;
                    return Ok(None);
                }
                m.left_static = true;
                m.last_seen_ms = now;
                Ok(None)
            }
            e if e < 0 => Err(Reply::err(
                ResponseError::InvalidRequest,
                format!("member epoch {e} is not valid (0 joins, -1 and -2 leave)"),
            )),
            e => {
                let Some(m) = self
                    .members
                    .get(&hb.member_id)
                    .filter(|m| m.classic.is_none())
                else {
                    return Err(Reply::err(
                        ResponseError::UnknownMemberId,
                        format!(
                            "member {} is not in the group (fenced or coordinator moved); rejoin",
                            hb.member_id
                        ),
                    ));
                };
                let stale_ok = e == m.previous_epoch
                    && hb.owned.as_ref().is_none_or(|o| subset(o, &m.assigned));
                if m.left_static || e > m.epoch || (e < m.epoch && !stale_ok) {
                    return Err(Reply::err(
                        ResponseError::FencedMemberEpoch,
                        format!("member epoch {e} is fenced (the group has {})", m.epoch),
                    ));
                }
                Ok(Some(hb.member_id.clone()))
            }
        }
    }

    fn join(&mut self, hb: &Heartbeat, now: i64, lim: &ConsumerLimits) -> Result<String, Reply> {
        if hb.topic_names.is_none() && hb.topic_regex.is_none() {
            return Err(Reply::err(
                ResponseError::InvalidRequest,
                "a joining member must send SubscribedTopicNames or SubscribedTopicRegex",
            ));
        }
        if hb.owned.as_ref().is_some_and(|o| !is_empty(o)) {
            return Err(Reply::err(
                ResponseError::InvalidRequest,
                "a joining member must own no partitions",
            ));
        }
        let fresh = Member::joining(
            hb.instance_id.clone(),
            if hb.rebalance_timeout_ms > 0 {
                hb.rebalance_timeout_ms
            } else {
                300_000
            },
            now,
        );
        // A static member replacing its predecessor takes over its assignment and epoch.
        if let Some(inst) = &hb.instance_id {
            let prior = self
                .members
                .iter()
                .find(|(_, m)| m.instance_id.as_ref() == Some(inst))
                .map(|(id, m)| (id.clone(), m.left_static));
            if let Some((old, left)) = prior {
                if old != hb.member_id && !left {
                    return Err(Reply::err(
                        ResponseError::UnreleasedInstanceId,
                        format!(
                            "instance id {inst} is still used by member {old}; it must leave first"
                        ),
                    ));
                }
                if old != hb.member_id {
                    let mut m = self.members.remove(&old).expect("found above");
                    m.left_static = false;
                    m.sent = None;
                    m.last_seen_ms = now;
                    if let Some(t) = self.target.remove(&old) {
                        self.target.insert(hb.member_id.clone(), t);
                    }
                    self.members.insert(hb.member_id.clone(), m);
                    return Ok(hb.member_id.clone());
                }
            }
        }
        if !self.members.contains_key(&hb.member_id) && self.members.len() >= lim.max_size {
            return Err(Reply::err(
                ResponseError::GroupMaxSizeReached,
                format!("the group has its maximum of {} members", lim.max_size),
            ));
        }
        // A member (re)joining with epoch 0 owns nothing: it starts over.
        self.members.insert(hb.member_id.clone(), fresh);
        self.group_epoch += 1;
        Ok(hb.member_id.clone())
    }

    /// The topics a member subscribes to: names that exist, and regex matches.
    fn member_topics(
        m: &Member,
        topics: &dyn TopicView,
        all: &mut Option<Vec<String>>,
    ) -> BTreeSet<Uuid> {
        let mut out: BTreeSet<Uuid> = m
            .names
            .iter()
            .filter_map(|n| topics.by_name(n).map(|x| x.0))
            .collect();
        if let Some((_, re)) = &m.regex {
            let names = all.get_or_insert_with(|| topics.names());
            out.extend(
                names
                    .iter()
                    .filter(|n| re.is_match(n))
                    .filter_map(|n| topics.by_name(n).map(|x| x.0)),
            );
        }
        out
    }

    /// Follows the subscribed topics; whether one appeared, grew or went away (which moves the
    /// group epoch).
    fn refresh_topics(&mut self, topics: &dyn TopicView) -> bool {
        let mut all = None;
        let mut now_seen = BTreeMap::new();
        for m in self.members.values() {
            let mut names: Vec<String> = m.names.iter().cloned().collect();
            if let Some((_, re)) = &m.regex {
                let every = all.get_or_insert_with(|| topics.names());
                names.extend(every.iter().filter(|n| re.is_match(n)).cloned());
            }
            for n in names {
                if let Some((id, parts)) = topics.by_name(&n) {
                    now_seen.insert(id, parts);
                }
            }
        }
        if now_seen == self.topics_seen {
            return false;
        }
        self.topics_seen = now_seen;
        true
    }

    fn compute_target(&mut self, topics: &dyn TopicView) {
        // The assignor most members ask for (ties: the first name), else the default.
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = &m.assignor {
                *votes.entry(a.as_str()).or_default() += 1;
            }
        }
        let chosen = votes
            .iter()
            .max_by_key(|(name, n)| (**n, std::cmp::Reverse(**name)))
            .map(|(name, _)| name.to_string())
            .unwrap_or_else(|| assignors::NAMES[0].to_string());
        let mut all = None;
        let specs: BTreeMap<String, MemberSpec> = self
            .members
            .iter()
            .map(|(id, m)| {
                (
                    id.clone(),
                    MemberSpec {
                        topics: Self::member_topics(m, topics, &mut all),
                        previous: self.target.get(id).cloned().unwrap_or_default(),
                    },
                )
            })
            .collect();
        self.target = assignors::assign(&chosen, &specs, &self.topics_seen);
        self.assignor = chosen;
        self.assignment_epoch = self.group_epoch;
    }

    /// Partitions held (assigned or being revoked) by members other than `id`.
    fn held_by_others(&self, id: &str) -> Parts {
        let mut out = Parts::new();
        for (other, m) in &self.members {
            if other != id {
                union(&mut out, &m.assigned);
                union(&mut out, &m.revoking);
            }
        }
        out
    }

    /// Moves member `id` towards its target (see the module docs).
    fn reconcile(&mut self, id: &str, owned: Option<&Parts>, now: i64) {
        let target = self.target.get(id).cloned().unwrap_or_default();
        let held = self.held_by_others(id);
        let assignment_epoch = self.assignment_epoch;
        let hold = now < self.hold_until_ms;
        let m = self.members.get_mut(id).expect("member");
        if m.state == MemberState::UnrevokedPartitions {
            match owned {
                Some(o) if intersect(o, &m.revoking).is_empty() => {
                    m.revoking.clear();
                }
                _ => return,
            }
        }
        if m.epoch == assignment_epoch && m.state == MemberState::Stable && !hold {
            return;
        }
        let keep = intersect(&m.assigned, &target);
        let revoke = minus(&m.assigned, &target);
        if !revoke.is_empty() {
            m.assigned = keep;
            m.revoking = revoke;
            m.state = MemberState::UnrevokedPartitions;
            m.revoke_deadline_ms = now + i64::from(m.rebalance_timeout_ms);
            return;
        }
        let mut assigned = keep;
        if !hold {
            let free = minus(&minus(&target, &assigned), &held);
            union(&mut assigned, &free);
        }
        let unreleased = minus(&target, &assigned);
        m.assigned = assigned;
        if m.epoch != assignment_epoch {
            m.previous_epoch = m.epoch;
            m.epoch = assignment_epoch;
        }
        m.state = if unreleased.is_empty() {
            MemberState::Stable
        } else {
            MemberState::UnreleasedPartitions
        };
    }

    /// Fences members past their session timeout or their revocation deadline; returns how
    /// many were removed.
    pub fn tick(&mut self, now: i64, lim: &ConsumerLimits) -> usize {
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| match &m.classic {
                // Classic members: their own session timeout, and the rebalance timeout to
                // rejoin once told to.
                Some(c) => {
                    now - m.last_seen_ms > i64::from(c.session_timeout_ms)
                        || (m.revoke_deadline_ms > 0 && now > m.revoke_deadline_ms)
                }
                None => {
                    now - m.last_seen_ms > i64::from(lim.session_timeout_ms)
                        || (m.state == MemberState::UnrevokedPartitions
                            && now > m.revoke_deadline_ms)
                }
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            tracing::info!(member = %id, "consumer group member fenced (session or rebalance timeout)");
            self.members.remove(id);
            self.target.remove(id);
        }
        if !gone.is_empty() {
            self.group_epoch += 1;
        }
        gone.len()
    }

    /// Whether an OffsetCommit (or an OffsetFetch naming a member) at `epoch` is accepted.
    pub fn check_member_epoch(&self, member_id: &str, epoch: i32) -> Result<(), i16> {
        if epoch < 0 && self.members.is_empty() {
            // The admin client, or a consumer not using group management (it may send its
            // member id): accepted while no member consumes, as Kafka accepts it.
            return Ok(());
        }
        let Some(m) = self.members.get(member_id) else {
            return Err(ResponseError::UnknownMemberId.code());
        };
        if epoch != m.epoch {
            // A classic member's epoch is its generation.
            return Err(if m.classic.is_some() {
                ResponseError::IllegalGeneration.code()
            } else {
                ResponseError::StaleMemberEpoch.code()
            });
        }
        Ok(())
    }

    /// For describes.
    pub fn describe(&self) -> Described {
        Described {
            state: self.state(),
            group_epoch: self.group_epoch,
            assignment_epoch: self.assignment_epoch,
            assignor: self.assignor.clone(),
            members: self
                .members
                .iter()
                .map(|(id, m)| MemberInfo {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    epoch: if m.left_static { -2 } else { m.epoch },
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    topic_names: m.names.iter().cloned().collect(),
                    topic_regex: m.regex.as_ref().map(|x| x.0.clone()),
                    assigned: m.assigned.clone(),
                    target: self.target.get(id).cloned().unwrap_or_default(),
                    classic: m.classic.is_some(),
                })
                .collect(),
        }
    }
}

mod classic;

#[cfg(test)]
mod test_catalog;
#[cfg(test)]
mod tests;
