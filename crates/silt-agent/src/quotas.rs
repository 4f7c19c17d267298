//! The quota layer of the request pipeline (KIP-13, KIP-55, KIP-124, KIP-219): produce and
//! fetch byte rates and request time per user and client id, measured per agent as Kafka
//! measures them per broker.
//!
//! Quotas live in the metadata store (`/silt/quotas/…`, set with AlterClientQuotas) and every
//! agent follows them by a watch. A request's quota is the most specific entity that has one,
//! in Kafka's order: user and client id, user and default client, user, default user and client
//! id, default user and default client, default user, client id, default client. Bytes are
//! counted in one-second windows over the last [`WINDOWS`] seconds; a client over its rate gets
//! its response with `throttle_time_ms` and its connection is muted (not read from) for that
//! long, as Kafka does — so a client that ignores the hint is slowed down all the same.
//!
//! Request time (`request_percentage`, KIP-124) is the time the agent spends working on a
//! client's requests — decoding, the handler's polls (not its waits for a flush or a long poll)
//! and encoding — as a percentage of one thread: 50 allows half a second of work per second.
//! A client over it has its next response throttled (Kafka throttles the one that crossed it; the
//! difference is one request).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use kafka_protocol::messages::{ApiKey, ResponseKind};

use silt_meta::layout::quotas::{self as layout, Entity, Values};
use silt_meta::mirror::Mirror;
use silt_meta::{MetaError, MetaKv};

/// One-second windows a rate is measured over (Kafka's `quota.window.num` + 1).
pub const WINDOWS: u64 = 11;
/// The longest throttle ever asked for.
pub const MAX_THROTTLE: Duration = Duration::from_secs(30);

/// Which rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Produce request bytes (`producer_byte_rate`).
    Produce,
    /// Fetch response bytes (`consumer_byte_rate`).
    Fetch,
    /// Microseconds of the agent's work (`request_percentage`, a percentage of one thread).
    Request,
}

impl Kind {
    /// The quota key.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Produce => "producer_byte_rate",
            Kind::Fetch => "consumer_byte_rate",
            Kind::Request => "request_percentage",
        }
    }

    /// A stored quota in the unit metered: request percentages become microseconds per second.
    fn per_second(self, quota: f64) -> f64 {
        match self {
            Kind::Request => quota * 10_000.0,
            _ => quota,
        }
    }
}

/// The quota keys served.
pub const KEYS: [&str; 3] = [
    "producer_byte_rate",
    "consumer_byte_rate",
    "request_percentage",
];

#[derive(Debug)]
struct Meter {
    started: Instant,
    last: Instant,
    /// (second since `started`, bytes in it), newest last.
    windows: Vec<(u64, u64)>,
}

impl Meter {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            last: now,
            windows: Vec::new(),
        }
    }

    /// Adds `bytes` at `now`; the rate over the measured span, in bytes per second.
    fn record(&mut self, now: Instant, bytes: u64) -> f64 {
        self.last = now;
        let sec = now.duration_since(self.started).as_secs();
        match self.windows.last_mut() {
            Some((s, b)) if *s == sec => *b += bytes,
            _ => self.windows.push((sec, bytes)),
        }
        self.windows.retain(|(s, _)| s + WINDOWS > sec);
        let total: u64 = self.windows.iter().map(|(_, b)| b).sum();
        // The span: the full windows behind this one plus the elapsed part of this one,
        // at least one second (a first burst is not divided by a tiny span).
        let elapsed = now.duration_since(self.started).as_secs_f64();
        let span = elapsed.min((WINDOWS - 1) as f64 + elapsed.fract()).max(1.0);
        total as f64 / span
    }
}

/// Kafka's throttle: how long the client must wait for its rate to come back to the quota.
fn throttle(rate: f64, quota: f64) -> Duration {
    if quota <= 0.0 || rate <= quota {
        return Duration::ZERO;
    }
    let window = (WINDOWS - 1) as f64;
    Duration::from_secs_f64(((rate - quota) / quota * window).min(MAX_THROTTLE.as_secs_f64()))
}

fn parse_key(k: &[u8]) -> Option<Entity> {
    layout::parse_key(k)
}

fn parse_value(k: &[u8], v: &[u8]) -> Option<Values> {
    layout::decode(k, v).ok()
}

/// Quotas of one agent.
#[derive(Debug)]
pub struct Quotas {
    mirror: Mirror<Entity, Values>,
    meters: Mutex<HashMap<(Kind, Entity), Meter>>,
}

impl Quotas {
    /// Starts following the stored quotas.
    pub async fn start(kv: Arc<dyn MetaKv>) -> Result<Self, MetaError> {
        Ok(Self {
            mirror: Mirror::start(kv, layout::prefix(), parse_key, parse_value).await?,
            meters: Mutex::new(HashMap::new()),
        })
    }

    /// Whether any quota is set (without one the layer does nothing).
    pub fn any(&self) -> bool {
        !self.mirror.snapshot().items.is_empty()
    }

    /// The entity whose quota applies to `user` and `client_id` for `kind`, and the quota.
    pub fn resolve(&self, kind: Kind, user: &str, client_id: &str) -> Option<(Entity, f64)> {
        let snap = self.mirror.snapshot();
        if snap.items.is_empty() {
            return None;
        }
        let u = || Some(Some(user.to_string()));
        let c = || Some(Some(client_id.to_string()));
        let order = [
            (u(), c()),
            (u(), Some(None)),
            (u(), None),
            (Some(None), c()),
            (Some(None), Some(None)),
            (Some(None), None),
            (None, c()),
            (None, Some(None)),
        ];
        order.into_iter().find_map(|(user, client_id)| {
            let e = Entity { user, client_id };
            let q = snap.items.get(&e)?.value.get(kind.key()).copied()?;
            Some((e, q))
        })
    }

    /// Counts `bytes` for the client; how long to throttle it (zero when within its quota or
    /// without one). Clients of one named entity share its rate; under a default entity each user
    /// (client id) is metered on its own, as in Kafka.
    pub fn record(&self, kind: Kind, user: &str, client_id: &str, bytes: u64) -> Duration {
        let Some((entity, quota)) = self.resolve(kind, user, client_id) else {
            return Duration::ZERO;
        };
        // A default entity's quota applies to each user (client id) on its own, as in Kafka:
        // the meter is the client's, not shared by everyone under the default.
        let metered = Entity {
            user: entity
                .user
                .map(|u| Some(u.unwrap_or_else(|| user.to_string()))),
            client_id: entity
                .client_id
                .map(|c| Some(c.unwrap_or_else(|| client_id.to_string()))),
        };
        let now = Instant::now();
        let mut meters = self.meters.lock().expect("quota meters");
        if meters.len() > 100_000 {
            // Client ids are chosen by clients: forget the meters idle longer than the window.
            meters.retain(|_, m| now.duration_since(m.last) < Duration::from_secs(WINDOWS));
        }
        let rate = meters
            .entry((kind, metered))
            .or_insert_with(|| Meter::new(now))
            .record(now, bytes);
        throttle(rate, kind.per_second(quota))
    }
}

/// Until when (ms since the connection opened) a throttled connection is not read from.
#[derive(Debug)]
pub struct Mute {
    until_ms: AtomicU64,
    opened: Instant,
}

impl Default for Mute {
    fn default() -> Self {
        Self {
            until_ms: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }
}

impl Mute {
    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// Mutes the connection for at least `d` from now.
    pub fn extend(&self, d: Duration) {
        let until = self.now_ms() + d.as_millis() as u64;
        self.until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// How long the connection stays muted.
    pub fn remaining(&self) -> Duration {
        let until = self.until_ms.load(Ordering::Relaxed);
        Duration::from_millis(until.saturating_sub(self.now_ms()))
    }
}

/// Who a request is charged to, kept until it is answered.
#[derive(Debug, Clone)]
pub struct Ticket {
    user: Arc<str>,
    client_id: Arc<str>,
    /// A fetch: its response bytes are charged when it is written.
    pub fetch: bool,
}

impl Ticket {
    /// Charges the agent's work on the request.
    pub fn spent(&self, q: &Quotas, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        q.record(Kind::Request, &self.user, &self.client_id, micros);
    }

    /// Charges a fetch response's bytes; how long to throttle the client.
    pub fn fetched(&self, q: &Quotas, bytes: u64) -> Duration {
        q.record(Kind::Fetch, &self.user, &self.client_id, bytes)
    }
}

fn millis(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

/// The quota layer for one request, after authentication and authorization: counts a produce
/// request's bytes and checks the client's request time; over either quota, the connection is
/// muted and the `throttle_time_ms` its response must carry is returned. No ticket when no quota
/// is set (the layer then costs nothing) and for the APIs a client needs before it is anyone
/// (ApiVersions, SASL).
pub fn admit(
    q: &Quotas,
    throttled: &AtomicU64,
    mute: &Mute,
    (user, client_id): (&str, &str),
    (api, request_bytes): (ApiKey, u64),
) -> (Option<i32>, Option<Ticket>) {
    if !q.any()
        || matches!(
            api,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        )
    {
        return (None, None);
    }
    let mut t = q.record(Kind::Request, user, client_id, 0);
    if api == ApiKey::Produce {
        t = t.max(q.record(Kind::Produce, user, client_id, request_bytes));
    }
    let throttle = if t.is_zero() {
        None
    } else {
        mute.extend(t);
        throttled.fetch_add(1, Ordering::Relaxed);
        Some(millis(t))
    };
    let ticket = Ticket {
        user: user.into(),
        client_id: client_id.into(),
        fetch: api == ApiKey::Fetch,
    };
    (throttle, Some(ticket))
}

/// Raises a response's `throttle_time_ms` to `ms` (responses without one are left alone).
pub fn set_throttle_time(r: &mut ResponseKind, ms: i32) {
    macro_rules! raise {
        ($($v:ident),* $(,)?) => {
            match r {
                $(ResponseKind::$v(x) => x.throttle_time_ms = x.throttle_time_ms.max(ms),)*
                _ => {}
            }
        };
    }
    raise!(
        AddOffsetsToTxn,
        AddPartitionsToTxn,
        DescribeTransactions,
        DescribeProducers,
        IncrementalAlterConfigs,
        AlterConfigs,
        CreatePartitions,
        DescribeLogDirs,
        ElectLeaders,
        ListPartitionReassignments,
        AlterPartitionReassignments,
        ListTransactions,
        EndTxn,
        TxnOffsetCommit,
        AlterClientQuotas,
        AlterUserScramCredentials,
        ApiVersions,
        CreateAcls,
        CreateTopics,
        DeleteAcls,
        DeleteGroups,
        DeleteRecords,
        DeleteTopics,
        DescribeAcls,
        DescribeClientQuotas,
        DescribeCluster,
        DescribeConfigs,
        DescribeGroups,
        DescribeUserScramCredentials,
        Fetch,
        FindCoordinator,
        Heartbeat,
        InitProducerId,
        JoinGroup,
        LeaveGroup,
        ListGroups,
        ListOffsets,
        Metadata,
        OffsetCommit,
        OffsetDelete,
        OffsetFetch,
        OffsetForLeaderEpoch,
        Produce,
        SyncGroup,
    );
}

/// Raises the leading `throttle_time_ms` of an encoded Fetch response (after the size and the
/// response header) to `ms`.
pub fn set_encoded_fetch_throttle(bytes: &mut bytes::BytesMut, version: i16, ms: i32) {
    let at = 4 + 4 + usize::from(ApiKey::Fetch.response_header_version(version) >= 1);
    if let Some(slot) = bytes.get_mut(at..at + 4) {
        let old = i32::from_be_bytes(slot.try_into().expect("4 bytes"));
        slot.copy_from_slice(&old.max(ms).to_be_bytes());
    }
}

/// A future and the time spent polling it: the agent's work on a request, not its waits.
pub struct Timed<F> {
    inner: F,
    spent: Duration,
}

impl<F> Timed<F> {
    /// Starts timing `inner`'s polls.
    pub fn new(inner: F) -> Self {
        Self {
            inner,
            spent: Duration::ZERO,
        }
    }
}

impl<F: Future + Unpin> Future for Timed<F> {
    type Output = (F::Output, Duration);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let started = Instant::now();
        let r = Pin::new(&mut self.inner).poll(cx);
        self.spent += started.elapsed();
        let spent = self.spent;
        r.map(|out| (out, spent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_is_zero_within_the_quota_and_grows_past_it() {
        assert_eq!(throttle(900.0, 1000.0), Duration::ZERO);
        assert_eq!(throttle(2000.0, 1000.0), Duration::from_secs(10));
        assert_eq!(throttle(1e12, 1.0), MAX_THROTTLE);
    }

    #[test]
    fn meters_average_over_the_windows() {
        let t0 = Instant::now();
        let mut m = Meter::new(t0);
        assert_eq!(
            m.record(t0, 500),
            500.0,
            "a first burst counts over one second"
        );
        let r = m.record(t0 + Duration::from_secs(4), 500);
        assert!((r - 250.0).abs() < 1.0, "{r}");
        // Past the windows, old bytes are forgotten.
        let r = m.record(t0 + Duration::from_secs(40), 100);
        assert!(r < 20.0, "{r}");
    }

    #[tokio::test]
    async fn the_most_specific_entity_applies() {
        let kv: Arc<dyn MetaKv> = Arc::new(silt_meta::embedded::EmbeddedKv::in_memory(Arc::new(
            silt_common::SystemClock,
        )));
        async fn set(
            kv: &dyn MetaKv,
            user: Option<Option<&str>>,
            client: Option<Option<&str>>,
            v: f64,
        ) {
            let e = Entity {
                user: user.map(|u| u.map(str::to_string)),
                client_id: client.map(|c| c.map(str::to_string)),
            };
            let values = [("producer_byte_rate".to_string(), v)].into();
            layout::set(kv, &e, &values).await.unwrap();
        }
        let kv2 = kv.as_ref();
        set(kv2, Some(None), None, 100.0).await;
        set(kv2, Some(Some("alice")), None, 200.0).await;
        set(kv2, Some(Some("alice")), Some(Some("app")), 300.0).await;
        set(kv2, None, Some(Some("tool")), 400.0).await;
        let q = Quotas::start(kv.clone()).await.unwrap();
        let rate = |u: &str, c: &str| q.resolve(Kind::Produce, u, c).map(|(_, v)| v);
        assert_eq!(rate("alice", "app"), Some(300.0));
        assert_eq!(rate("alice", "other"), Some(200.0));
        assert_eq!(
            rate("bob", "tool"),
            Some(100.0),
            "default user before client id"
        );
        assert_eq!(q.resolve(Kind::Fetch, "alice", "app"), None);
        assert_eq!(q.record(Kind::Produce, "bob", "x", 50), Duration::ZERO);
        assert!(q.record(Kind::Produce, "bob", "x", 5_000) > Duration::from_secs(1));
        // Under the default user quota, carol has her own meter: bob's bytes do not count.
        assert_eq!(q.record(Kind::Produce, "carol", "x", 50), Duration::ZERO);
    }

    #[tokio::test]
    async fn request_time_is_a_percentage_of_one_thread_and_waits_are_not_work() {
        let kv: Arc<dyn MetaKv> = Arc::new(silt_meta::embedded::EmbeddedKv::in_memory(Arc::new(
            silt_common::SystemClock,
        )));
        let e = Entity {
            user: None,
            client_id: Some(Some("busy".into())),
        };
        let values = [("request_percentage".to_string(), 1.0)].into();
        layout::set(kv.as_ref(), &e, &values).await.unwrap();
        let q = Quotas::start(kv).await.unwrap();
        // 1% of a thread is 10 ms of work per second.
        assert_eq!(q.record(Kind::Request, "u", "busy", 9_000), Duration::ZERO);
        assert!(q.record(Kind::Request, "u", "busy", 2_000) > Duration::ZERO);
        assert_eq!(
            q.record(Kind::Request, "u", "other", 1_000_000),
            Duration::ZERO
        );

        // A handler that waits 200 ms does little work.
        let fut: futures::future::BoxFuture<'static, u8> = Box::pin(async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            7
        });
        let (out, spent) = Timed::new(fut).await;
        assert_eq!(out, 7);
        assert!(spent < Duration::from_millis(50), "{spent:?}");

        let mut r = ResponseKind::Metadata(Default::default());
        set_throttle_time(&mut r, 250);
        set_throttle_time(&mut r, 100);
        let ResponseKind::Metadata(m) = r else {
            unreachable!()
        };
        assert_eq!(m.throttle_time_ms, 250, "the larger throttle wins");
    }
}
