//! Incremental fetch sessions (KIP-227), a layer of the request pipeline between
//! authentication and authorization: a client that fetches many partitions sends them once,
//! then only what changed, and gets back only the partitions with something new.
//!
//! The layer turns an incremental Fetch into the full request it stands for (every partition
//! in the session, at the offsets the client last sent) before authorization and the handler
//! see it, so both stay unaware of sessions; when the handler answers, it narrows the full
//! response to the incremental one (records, a changed high watermark, log start or last
//! stable offset, or an error) and remembers what it sent. The next request starts after the
//! last partition that returned records, so a response capped by `max_bytes` serves the others
//! next time. Expanding and narrowing walk the session in order (no hashing per partition);
//! only partitions the client sends or forgets are looked up.
//!
//! Sessions belong to the connection that made them (Kafka shares them across a broker's
//! connections; a client keeps one per broker connection, so it cannot tell): a session dies
//! with its connection, is never reachable by another principal, and its memory is bounded
//! per connection ([`MAX_SESSIONS`], [`MAX_PARTITIONS`]) and per agent
//! ([`Stats::cap`]). A full fetch that would go over a bound gets session id 0 — the
//! client goes on with full fetches, as with a Kafka broker whose session cache is full.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::ResponseError;
use uuid::Uuid;

/// Sessions one connection may keep; creating another drops its least recently used.
pub const MAX_SESSIONS: usize = 4;
/// Partitions one connection's sessions may hold between them.
pub const MAX_PARTITIONS: usize = 20_000;
/// Partitions all sessions of an agent may hold (about 150 bytes each).
pub const AGENT_PARTITIONS: usize = 500_000;

/// Session counters, shared by every connection of an agent (exported in `/metrics`).
#[derive(Debug)]
pub struct Stats {
    /// Sessions open now.
    pub open: AtomicI64,
    /// Partitions held by open sessions now.
    pub partitions: AtomicUsize,
    /// Sessions created since start.
    pub created: AtomicU64,
    /// Incremental fetches served since start.
    pub incremental: AtomicU64,
    /// Full fetches that asked for a session and got none (a bound was reached).
    pub refused: AtomicU64,
    /// Incremental fetches answered FETCH_SESSION_ID_NOT_FOUND or INVALID_FETCH_SESSION_EPOCH.
    pub errors: AtomicU64,
    /// The most partitions all sessions may hold.
    pub cap: usize,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            open: AtomicI64::new(0),
            partitions: AtomicUsize::new(0),
            created: AtomicU64::new(0),
            incremental: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            cap: AGENT_PARTITIONS,
        }
    }
}

/// A partition as the request names it: topic id (v13+) or name, and index.
type Key = (Uuid, TopicName, i32);

#[derive(Debug)]
struct Cached {
    key: Key,
    /// What the client last sent for it.
    part: FetchPartition,
    /// What the last response said (-1 after an error, so the partition is sent again).
    high_watermark: i64,
    log_start: i64,
    last_stable: i64,
}

#[derive(Debug)]
struct Session {
    id: i32,
    /// The epoch the next request must carry.
    epoch: i32,
    /// Partitions in the order they joined.
    parts: Vec<Cached>,
    /// Where each key is in `parts`.
    index: HashMap<Key, usize>,
    /// Where the next full request starts in `parts` (after the last partition that
    /// returned records).
    start: usize,
    used: u64,
}

/// One connection's sessions.
#[derive(Debug)]
pub struct FetchSessions {
    sessions: Vec<Session>,
    next_id: i32,
    clock: u64,
    stats: Arc<Stats>,
}

/// What the layer does with a Fetch request.
pub enum Plan {
    /// No session involved: the handler's response goes out as it is.
    Plain,
    /// Narrow the handler's response with [`narrow`] (a new session or an incremental fetch).
    Narrow(Narrowing),
    /// Answer this at once (an unknown session or a wrong epoch).
    Answer(FetchResponse),
}

/// How to turn a full response into the session's.
pub struct Narrowing {
    sessions: Arc<Mutex<FetchSessions>>,
    id: i32,
    incremental: bool,
}

const FINAL_EPOCH: i32 = -1;
const INITIAL_EPOCH: i32 = 0;

impl FetchSessions {
    /// A connection's (empty) sessions.
    pub fn new(stats: Arc<Stats>) -> Self {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            sessions: Vec::new(),
            next_id: (seed as i32 & 0x3fff_ffff).max(1),
            clock: 0,
            stats,
        }
    }

    fn remove(&mut self, id: i32) {
        if let Some(i) = self.sessions.iter().position(|s| s.id == id) {
            let s = self.sessions.swap_remove(i);
            self.stats.open.fetch_sub(1, Ordering::Relaxed);
            self.stats
                .partitions
                .fetch_sub(s.parts.len(), Ordering::Relaxed);
        }
    }

    fn held(&self) -> usize {
        self.sessions.iter().map(|s| s.parts.len()).sum()
    }

    /// Creates a session for a full request's partitions, or says why not.
    fn create(&mut self, topics: &[FetchTopic]) -> Option<i32> {
        let n: usize = topics.iter().map(|t| t.partitions.len()).sum();
        if self.sessions.len() >= MAX_SESSIONS {
            let lru = self.sessions.iter().min_by_key(|s| s.used).map(|s| s.id);
            if let Some(id) = lru {
                self.remove(id);
            }
        }
        if n == 0 || self.held() + n > MAX_PARTITIONS || !self.reserve(n) {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let id = self.next_id;
        self.next_id = if id >= i32::MAX - 1 { 1 } else { id + 1 };
        let mut s = Session {
            id,
            epoch: 1,
            parts: Vec::with_capacity(n),
            index: HashMap::with_capacity(n),
            start: 0,
            used: self.clock,
        };
        for t in topics {
            for p in &t.partitions {
                upsert(&mut s, key(t, p.partition), p);
            }
        }
        // Duplicates in the request count once.
        let extra = n - s.parts.len();
        self.stats.partitions.fetch_sub(extra, Ordering::Relaxed);
        self.sessions.push(s);
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats.created.fetch_add(1, Ordering::Relaxed);
        Some(id)
    }

    /// Takes `n` partitions of the agent's allowance.
    fn reserve(&self, n: usize) -> bool {
        let p = &self.stats.partitions;
        let mut cur = p.load(Ordering::Relaxed);
        loop {
            if cur + n > self.stats.cap {
                return false;
            }
            match p.compare_exchange_weak(cur, cur + n, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }
}

impl Drop for FetchSessions {
    fn drop(&mut self) {
        for id in self.sessions.iter().map(|s| s.id).collect::<Vec<_>>() {
            self.remove(id);
        }
    }
}

fn key(t: &FetchTopic, partition: i32) -> Key {
    (t.topic_id, t.topic.clone(), partition)
}

/// Adds or updates a partition; returns whether it is new.
fn upsert(s: &mut Session, k: Key, p: &FetchPartition) -> bool {
    match s.index.get(&k) {
        Some(&i) => {
            s.parts[i].part = p.clone();
            false
        }
        None => {
            s.index.insert(k.clone(), s.parts.len());
            s.parts.push(Cached {
                key: k,
                part: p.clone(),
                high_watermark: i64::MIN,
                log_start: i64::MIN,
                last_stable: i64::MIN,
            });
            true
        }
    }
}

/// Removes `keys` from a session; returns how many were in it.
fn forget(s: &mut Session, keys: &[Key]) -> usize {
    let gone: std::collections::HashSet<usize> = keys
        .iter()
        .filter_map(|k| s.index.get(k).copied())
        .collect();
    if gone.is_empty() {
        return 0;
    }
    let mut i = 0;
    s.parts.retain(|_| {
        i += 1;
        !gone.contains(&(i - 1))
    });
    s.index = s
        .parts
        .iter()
        .enumerate()
        .map(|(i, c)| (c.key.clone(), i))
        .collect();
    s.start = 0;
    gone.len()
}

fn error(e: ResponseError) -> Plan {
    Plan::Answer(
        FetchResponse::default()
            .with_error_code(e.code())
            .with_session_id(0),
    )
}

/// Applies a Fetch request's session fields: creates, closes or advances a session, and
/// rewrites an incremental request into the full one it stands for.
pub fn expand(this: &Arc<Mutex<FetchSessions>>, req: &mut FetchRequest, version: i16) -> Plan {
    if version < 7 {
        return Plan::Plain;
    }
    let mut me = this.lock().unwrap_or_else(|e| e.into_inner());
    me.clock += 1;
    let now = me.clock;
    let (id, epoch) = (req.session_id, req.session_epoch);
    if epoch == FINAL_EPOCH || epoch == INITIAL_EPOCH {
        if id != 0 {
            me.remove(id);
        }
        if epoch == FINAL_EPOCH {
            return Plan::Plain;
        }
        return match me.create(&req.topics) {
            Some(id) => Plan::Narrow(Narrowing {
                sessions: this.clone(),
                id,
                incremental: false,
            }),
            None => Plan::Plain,
        };
    }
    let stats = me.stats.clone();
    let held = me.held();
    let Some(s) = me.sessions.iter_mut().find(|s| s.id == id) else {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        return error(ResponseError::FetchSessionIdNotFound);
    };
    if s.epoch != epoch {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        return error(ResponseError::InvalidFetchSessionEpoch);
    }
    // Forgotten partitions leave; sent ones are added or updated.
    let forgotten: Vec<Key> = req
        .forgotten_topics_data
        .iter()
        .flat_map(|f| {
            f.partitions
                .iter()
                .map(move |&p| (f.topic_id, f.topic.clone(), p))
        })
        .collect();
    let removed = forget(s, &forgotten);
    stats.partitions.fetch_sub(removed, Ordering::Relaxed);
    let adding = req
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| key(t, p.partition)))
        .filter(|k| !s.index.contains_key(k))
        .count();
    if adding > 0 {
        let fits = held - removed + adding <= MAX_PARTITIONS && {
            let p = &stats.partitions;
            let cur = p.fetch_add(adding, Ordering::Relaxed);
            cur + adding <= stats.cap || {
                p.fetch_sub(adding, Ordering::Relaxed);
                false
            }
        };
        if !fits {
            // Too big to keep: the client starts again with full fetches.
            me.remove(id);
            stats.errors.fetch_add(1, Ordering::Relaxed);
            return error(ResponseError::FetchSessionIdNotFound);
        }
    }
    let mut added = 0usize;
    for t in &req.topics {
        for p in &t.partitions {
            if upsert(s, key(t, p.partition), p) {
                added += 1;
            }
        }
    }
    // Duplicates within the request were counted twice.
    stats
        .partitions
        .fetch_sub(adding - added, Ordering::Relaxed);
    s.epoch = if s.epoch == i32::MAX { 1 } else { s.epoch + 1 };
    s.used = now;
    // The full request: every partition of the session from `start` on, grouped by topic.
    let mut topics: Vec<FetchTopic> = Vec::new();
    let n = s.parts.len();
    for j in 0..n {
        let c = &s.parts[(s.start + j) % n];
        let k = &c.key;
        match topics.last_mut() {
            Some(t) if t.topic_id == k.0 && t.topic == k.1 => t.partitions.push(c.part.clone()),
            _ => topics.push(
                FetchTopic::default()
                    .with_topic(k.1.clone())
                    .with_topic_id(k.0)
                    .with_partitions(vec![c.part.clone()]),
            ),
        }
    }
    req.topics = topics;
    req.forgotten_topics_data = Vec::new();
    stats.incremental.fetch_add(1, Ordering::Relaxed);
    Plan::Narrow(Narrowing {
        sessions: this.clone(),
        id,
        incremental: true,
    })
}

/// Turns the handler's full response into the session's: sets the session id, remembers what
/// was sent, and (for an incremental fetch) leaves out partitions with nothing new.
pub fn narrow(n: &Narrowing, resp: &mut FetchResponse) {
    let mut me = n.sessions.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = me.sessions.iter_mut().find(|s| s.id == n.id) else {
        // Closed meanwhile (a later request on the connection): a full response, no session.
        resp.session_id = 0;
        return;
    };
    resp.session_id = n.id;
    if resp.error_code != 0 {
        return;
    }
    // The response lists the partitions in the order the expanded request did (from `start`);
    // anything else (refused topics added back by authorization) is looked up.
    let len = s.parts.len();
    let mut cursor = 0usize;
    let mut last_with_records: Option<usize> = None;
    for t in &mut resp.responses {
        t.partitions.retain(|pd| {
            let at = (s.start + cursor) % len.max(1);
            let slot = match s.parts.get(at) {
                Some(c)
                    if c.key.2 == pd.partition_index
                        && c.key.0 == t.topic_id
                        && c.key.1 == t.topic =>
                {
                    cursor += 1;
                    Some(at)
                }
                _ => s
                    .index
                    .get(&(t.topic_id, t.topic.clone(), pd.partition_index))
                    .copied(),
            };
            let Some(i) = slot else {
                return true;
            };
            let c = &mut s.parts[i];
            let has_records = pd.records.as_ref().is_some_and(|r| !r.is_empty());
            let error = pd.error_code != 0;
            let changed = c.high_watermark != pd.high_watermark
                || c.log_start != pd.log_start_offset
                || c.last_stable != pd.last_stable_offset;
            c.high_watermark = if error { -1 } else { pd.high_watermark };
            c.log_start = pd.log_start_offset;
            c.last_stable = pd.last_stable_offset;
            if has_records {
                last_with_records = Some(i);
            }
            !n.incremental || has_records || changed || error || pd.preferred_read_replica.0 >= 0
        });
    }
    resp.responses.retain(|t| !t.partitions.is_empty());
    if let Some(i) = last_with_records {
        s.start = (i + 1) % len.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::messages::fetch_request::ForgottenTopic;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::protocol::StrBytes;

    fn name(s: &str) -> TopicName {
        TopicName(StrBytes::from_string(s.to_string()))
    }

    fn part(i: i32, offset: i64) -> FetchPartition {
        FetchPartition::default()
            .with_partition(i)
            .with_fetch_offset(offset)
            .with_partition_max_bytes(1 << 20)
    }

    fn request(id: i32, epoch: i32, parts: &[(&str, i32, i64)]) -> FetchRequest {
        let mut topics: Vec<FetchTopic> = Vec::new();
        for (t, p, o) in parts {
            match topics.last_mut() {
                Some(ft) if ft.topic == name(t) => ft.partitions.push(part(*p, *o)),
                _ => topics.push(
                    FetchTopic::default()
                        .with_topic(name(t))
                        .with_partitions(vec![part(*p, *o)]),
                ),
            }
        }
        FetchRequest::default()
            .with_session_id(id)
            .with_session_epoch(epoch)
            .with_topics(topics)
    }

    /// What a handler would answer: `data` names the partitions with records; the high
    /// watermark of each is `hw(topic, partition)`.
    fn answer(req: &FetchRequest, data: &[i32], hw: impl Fn(&str, i32) -> i64) -> FetchResponse {
        FetchResponse::default().with_responses(
            req.topics
                .iter()
                .map(|t| {
                    FetchableTopicResponse::default()
                        .with_topic(t.topic.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    let records = if data.contains(&p.partition) {
                                        Bytes::from_static(b"records")
                                    } else {
                                        Bytes::new()
                                    };
                                    PartitionData::default()
                                        .with_partition_index(p.partition)
                                        .with_high_watermark(hw(&t.topic, p.partition))
                                        .with_last_stable_offset(hw(&t.topic, p.partition))
                                        .with_records(Some(records))
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }

    fn listed(resp: &FetchResponse) -> Vec<(String, i32)> {
        resp.responses
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.topic.0.to_string(), p.partition_index))
            })
            .collect()
    }

    fn narrowing(p: Plan) -> Narrowing {
        match p {
            Plan::Narrow(n) => n,
            Plan::Plain => panic!("expected a session, got none"),
            Plan::Answer(r) => panic!("expected a session, got error {}", r.error_code),
        }
    }

    fn sessions() -> (Arc<Stats>, Arc<Mutex<FetchSessions>>) {
        let stats = Arc::new(Stats::default());
        let s = Arc::new(Mutex::new(FetchSessions::new(stats.clone())));
        (stats, s)
    }

    #[test]
    fn an_incremental_fetch_answers_only_what_changed() {
        let (stats, s) = sessions();
        let mut r = request(0, 0, &[("a", 0, 0), ("a", 1, 0), ("b", 0, 5)]);
        let n = narrowing(expand(&s, &mut r, 12));
        let mut resp = answer(&r, &[], |_, _| 10);
        narrow(&n, &mut resp);
        let id = resp.session_id;
        assert_ne!(id, 0);
        assert_eq!(listed(&resp).len(), 3, "a new session's response is full");
        assert_eq!(stats.partitions.load(Ordering::Relaxed), 3);

        // Nothing sent, nothing changed: the request stands for all three; none come back.
        let mut r = request(id, 1, &[]);
        let n = narrowing(expand(&s, &mut r, 12));
        let offsets: Vec<i64> = r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.fetch_offset))
            .collect();
        assert_eq!(offsets, vec![0, 0, 5]);
        let mut resp = answer(&r, &[], |_, _| 10);
        narrow(&n, &mut resp);
        assert!(listed(&resp).is_empty());

        // Records in a/1 and a new high watermark in b/0.
        let mut r = request(id, 2, &[]);
        let n = narrowing(expand(&s, &mut r, 12));
        let mut resp = answer(&r, &[1], |t, p| if t == "a" && p == 0 { 10 } else { 11 });
        narrow(&n, &mut resp);
        let mut got = listed(&resp);
        got.sort();
        assert_eq!(got, vec![("a".into(), 1), ("b".into(), 0)]);

        // a/1 returned records, so the next request starts after it.
        let mut r = request(id, 3, &[("a", 1, 3)]);
        let _n = narrowing(expand(&s, &mut r, 12));
        let order: Vec<(String, i32, i64)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.topic.0.to_string(), p.partition, p.fetch_offset))
            })
            .collect();
        assert_eq!(
            order,
            vec![("b".into(), 0, 5), ("a".into(), 0, 0), ("a".into(), 1, 3)]
        );
    }

    #[test]
    fn wrong_epochs_unknown_ids_forgotten_and_closed_sessions() {
        let (stats, s) = sessions();
        let mut r = request(0, 0, &[("a", 0, 0), ("a", 1, 0)]);
        let n = narrowing(expand(&s, &mut r, 12));
        let mut resp = answer(&r, &[], |_, _| 0);
        narrow(&n, &mut resp);
        let id = resp.session_id;

        let code = |p: Plan| match p {
            Plan::Answer(r) => r.error_code,
            _ => 0,
        };
        assert_eq!(
            code(expand(&s, &mut request(id, 7, &[]), 12)),
            ResponseError::InvalidFetchSessionEpoch.code()
        );
        assert_eq!(
            code(expand(&s, &mut request(id + 1, 1, &[]), 12)),
            ResponseError::FetchSessionIdNotFound.code()
        );
        // A forgotten partition leaves the session.
        let mut r = request(id, 1, &[]);
        r.forgotten_topics_data = vec![ForgottenTopic::default()
            .with_topic(name("a"))
            .with_partitions(vec![0])];
        let _ = narrowing(expand(&s, &mut r, 12));
        assert_eq!(r.topics.len(), 1);
        assert_eq!(r.topics[0].partitions.len(), 1);
        assert_eq!(stats.partitions.load(Ordering::Relaxed), 1);
        // The final epoch closes it.
        assert!(matches!(
            expand(&s, &mut request(id, -1, &[("a", 1, 0)]), 12),
            Plan::Plain
        ));
        assert_eq!(
            code(expand(&s, &mut request(id, 2, &[]), 12)),
            ResponseError::FetchSessionIdNotFound.code()
        );
        assert_eq!(stats.open.load(Ordering::Relaxed), 0);
        assert_eq!(stats.partitions.load(Ordering::Relaxed), 0);
        // Versions before 7 have no sessions.
        assert!(matches!(
            expand(&s, &mut request(0, 0, &[("a", 0, 0)]), 6),
            Plan::Plain
        ));
    }

    #[test]
    fn sessions_are_bounded_per_connection_and_per_agent() {
        let (stats, s) = sessions();
        for _ in 0..MAX_SESSIONS + 2 {
            let _ = narrowing(expand(&s, &mut request(0, 0, &[("a", 0, 0)]), 12));
        }
        assert_eq!(stats.open.load(Ordering::Relaxed), MAX_SESSIONS as i64);
        let too_many: Vec<(&str, i32, i64)> = (0..MAX_PARTITIONS as i32 + 1)
            .map(|p| ("big", p, 0))
            .collect();
        assert!(matches!(
            expand(&s, &mut request(0, 0, &too_many), 12),
            Plan::Plain
        ));
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        drop(s);
        assert_eq!(stats.open.load(Ordering::Relaxed), 0);
        assert_eq!(stats.partitions.load(Ordering::Relaxed), 0);

        // The agent-wide cap.
        let stats = Arc::new(Stats {
            cap: 3,
            ..Stats::default()
        });
        let s = Arc::new(Mutex::new(FetchSessions::new(stats.clone())));
        let n = narrowing(expand(
            &s,
            &mut request(0, 0, &[("a", 0, 0), ("a", 1, 0)]),
            12,
        ));
        let mut r = request(0, 0, &[("a", 0, 0), ("a", 1, 0)]);
        let mut resp = answer(&r, &[], |_, _| 0);
        narrow(&n, &mut resp);
        assert!(matches!(
            expand(&s, &mut request(0, 0, &[("b", 0, 0), ("b", 1, 0)]), 12),
            Plan::Plain
        ));
        // Growing the session past the cap ends it.
        r = request(resp.session_id, 1, &[("c", 0, 0), ("c", 1, 0)]);
        assert!(matches!(expand(&s, &mut r, 12), Plan::Answer(_)));
        assert_eq!(stats.partitions.load(Ordering::Relaxed), 0);
    }
}
