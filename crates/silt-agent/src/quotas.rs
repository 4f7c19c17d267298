//! The quota layer of the request pipeline (KIP-13, KIP-55, KIP-219): produce and fetch byte
//! rates per user and client id, measured per agent as Kafka measures them per broker.
//!
//! Quotas live in the metadata store (`/silt/quotas/…`, set with AlterClientQuotas) and every
//! agent follows them by a watch. A request's quota is the most specific entity that has one,
//! in Kafka's order: user and client id, user and default client, user, default user and client
//! id, default user and default client, default user, client id, default client. Bytes are
//! counted in one-second windows over the last [`WINDOWS`] seconds; a client over its rate gets
//! its response with `throttle_time_ms` and its connection is muted (not read from) for that
//! long, as Kafka does — so a client that ignores the hint is slowed down all the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
}

impl Kind {
    /// The quota key.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Produce => "producer_byte_rate",
            Kind::Fetch => "consumer_byte_rate",
        }
    }
}

/// The quota keys served.
pub const KEYS: [&str; 2] = ["producer_byte_rate", "consumer_byte_rate"];

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
        throttle(rate, quota)
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
}
