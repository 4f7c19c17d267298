//! The agent's view of the topic catalog: topic records followed live from the metadata store
//! (a [`Mirror`] of `/silt/topics/`, so a topic created through any agent is seen by all) and
//! their resolved configs, which also follow the cluster-wide broker configs changed at run time
//! (a second mirror, of `/silt/broker-configs/`). Creation, config changes, partition growth and
//! deletion go through the metadata store first; this view (and every other agent's) follows. Which partitions this agent leads is `cluster`'s business.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use silt_common::config::TopicDefaults;
use silt_common::Clock;
use silt_meta::layout::broker_configs;
use silt_meta::layout::catalog::{self, TopicRecord};
use silt_meta::mirror::{Mirror, Snapshot};
use silt_meta::MetaKv;
use uuid::Uuid;

use crate::error::TopicError;
use crate::topic_config::{self, Resolved};

/// A topic.
#[derive(Debug)]
pub struct Topic {
    /// The stored record.
    pub record: TopicRecord,
    /// Configs resolved over defaults.
    pub config: Resolved,
}

impl Topic {
    /// Whether `index` is one of the topic's partitions.
    pub fn has_partition(&self, index: i32) -> bool {
        (0..self.record.partitions).contains(&index)
    }
}

/// How long create and delete wait for this agent's view to show their effect.
const FOLLOW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    /// Name.
    pub name: String,
    /// Partitions; -1 for the default.
    pub partitions: i32,
    /// Replication factor; accepted and ignored (object storage provides durability).
    pub replication_factor: i16,
    /// Explicit configs.
    pub configs: BTreeMap<String, String>,
}

/// Topics by name and by id (Fetch v13+ and Metadata address topics by id), kept together.
#[derive(Debug, Default)]
struct Index {
    by_name: HashMap<String, Arc<Topic>>,
    by_id: HashMap<Uuid, Arc<Topic>>,
}

impl Index {
    fn insert(&mut self, t: Arc<Topic>) {
        self.by_id.insert(t.record.id, t.clone());
        self.by_name.insert(t.record.name.clone(), t);
    }
}

type CatalogMirror = Mirror<String, TopicRecord>;
type BrokerConfigMirror = Mirror<String, broker_configs::Values>;

/// The catalog view.
#[derive(Debug)]
pub struct Topics {
    meta: Arc<dyn MetaKv>,
    clock: Arc<dyn Clock>,
    defaults: TopicDefaults,
    mirror: CatalogMirror,
    /// Cluster-wide broker configs changed at run time.
    dynamic: BrokerConfigMirror,
    /// The index built from the catalog and broker-config snapshots of the given versions.
    index: RwLock<((u64, u64), Arc<Index>)>,
    admin: tokio::sync::Mutex<()>,
}

fn decode_record(key: &[u8], value: &[u8]) -> Option<TopicRecord> {
    catalog::decode(key, value).ok()
}

fn decode_broker_configs(key: &[u8], value: &[u8]) -> Option<broker_configs::Values> {
    broker_configs::decode(key, value).ok()
}

/// The cluster-wide values in a broker-config snapshot.
fn dynamic_of(s: &Snapshot<String, broker_configs::Values>) -> broker_configs::Values {
    s.items
        .get(broker_configs::DEFAULT)
        .map(|i| i.value.clone())
        .unwrap_or_default()
}

/// Checks a topic name the way Kafka does.
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    let bad = |reason| {
        Err(TopicError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

impl Topics {
    /// Starts following the catalog.
    pub async fn load(
        meta: Arc<dyn MetaKv>,
        clock: Arc<dyn Clock>,
        defaults: TopicDefaults,
    ) -> Result<Self, TopicError> {
        let mirror = Mirror::start(
            meta.clone(),
            catalog::prefix(),
            catalog::parse_key,
            decode_record,
        )
        .await?;
        let dynamic = Mirror::start(
            meta.clone(),
            broker_configs::prefix(),
            broker_configs::parse_key,
            decode_broker_configs,
        )
        .await?;
        Ok(Self {
            meta,
            clock,
            defaults,
            mirror,
            dynamic,
            index: RwLock::new(((0, 0), Arc::default())),
            admin: tokio::sync::Mutex::new(()),
        })
    }

    /// Changes of the catalog (the leadership reactor and the controller follow them).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Snapshot<String, TopicRecord>>> {
        self.mirror.subscribe()
    }

    /// The index for the current catalog snapshot, rebuilt when the catalog changed (keeping
    /// the `Topic`s of unchanged records).
    fn read(&self) -> Arc<Index> {
        let snap = self.mirror.snapshot();
        let dynamic = self.dynamic.snapshot();
        let version = (snap.version, dynamic.version);
        {
            let cur = self.index.read().unwrap_or_else(|p| p.into_inner());
            if cur.0 == version {
                return cur.1.clone();
            }
        }
        let mut cur = self.index.write().unwrap_or_else(|p| p.into_inner());
        if cur.0 != version {
            let same_defaults = cur.0 .1 == dynamic.version;
            let defaults = dynamic_of(&dynamic);
            let mut next = Index::default();
            for item in snap.items.values() {
                let r = &item.value;
                let t = match cur.1.by_id.get(&r.id) {
                    Some(t) if same_defaults && t.record == *r => t.clone(),
                    _ => Arc::new(Topic {
                        config: Resolved::from(&r.configs, &self.defaults, &defaults),
                        record: r.clone(),
                    }),
                };
                next.insert(t);
            }
            *cur = (version, Arc::new(next));
        }
        cur.1.clone()
    }

    /// Waits until this agent's view satisfies `f` (or the timeout).
    async fn follow(&self, f: impl Fn(&Snapshot<String, TopicRecord>) -> bool) {
        let mut rx = self.mirror.subscribe();
        let _ = tokio::time::timeout(FOLLOW_TIMEOUT, rx.wait_for(|s| f(s))).await;
    }

    /// The topic defaults.
    pub fn defaults(&self) -> &TopicDefaults {
        &self.defaults
    }

    /// The cluster-wide broker configs changed at run time (broker names), as this agent sees
    /// them now.
    pub fn dynamic_defaults(&self) -> broker_configs::Values {
        dynamic_of(&self.dynamic.snapshot())
    }

    /// Changes the cluster-wide broker configs with `change` (a compare-and-swap, tried again
    /// if another agent changed them meanwhile) unless `validate_only`; every agent follows and
    /// re-resolves its topics' configs. Returns the configs as changed.
    pub async fn alter_dynamic_defaults(
        &self,
        validate_only: bool,
        change: impl Fn(&broker_configs::Values) -> Result<broker_configs::Values, TopicError>,
    ) -> Result<broker_configs::Values, TopicError> {
        let _g = self.admin.lock().await;
        for _ in 0..20 {
            let (cur, revision) =
                broker_configs::get(self.meta.as_ref(), broker_configs::DEFAULT).await?;
            let next = change(&cur)?;
            if validate_only || next == cur {
                return Ok(next);
            }
            if broker_configs::replace(self.meta.as_ref(), broker_configs::DEFAULT, &next, revision)
                .await?
            {
                let mut rx = self.dynamic.subscribe();
                let _ =
                    tokio::time::timeout(FOLLOW_TIMEOUT, rx.wait_for(|s| dynamic_of(s) == next))
                        .await;
                tracing::info!(configs = ?next, "cluster-wide broker configs changed");
                return Ok(next);
            }
        }
        Err(TopicError::Busy(
            "the cluster-wide broker configs kept changing while this change was being applied; try again".into(),
        ))
    }

    /// A topic by name.
    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.read().by_name.get(name).cloned()
    }

    /// A topic by id.
    pub fn get_by_id(&self, id: &Uuid) -> Option<Arc<Topic>> {
        self.read().by_id.get(id).cloned()
    }

    /// Every topic, sorted by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self.read().by_name.values().cloned().collect();
        v.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        v
    }

    /// Partitions of every topic together (the `topics.max_partitions_total` budget).
    fn partitions_total(&self) -> i64 {
        self.all().iter().map(|x| x.record.partitions as i64).sum()
    }

    /// Validates a topic to create; returns the record it would become.
    pub fn plan(&self, t: &NewTopic) -> Result<TopicRecord, TopicError> {
        validate_name(&t.name)?;
        let partitions = match t.partitions {
            -1 => self.defaults.num_partitions,
            n if n >= 1 => n,
            n => return Err(TopicError::InvalidPartitions(n)),
        };
        if partitions > self.defaults.max_partitions_per_topic {
            return Err(TopicError::TooManyPartitions {
                requested: partitions,
                limit: self.defaults.max_partitions_per_topic,
            });
        }
        if t.replication_factor == 0 || t.replication_factor < -1 {
            return Err(TopicError::InvalidReplicationFactor(t.replication_factor));
        }
        for (k, v) in &t.configs {
            topic_config::validate(k, v)?;
        }
        Ok(TopicRecord {
            name: t.name.clone(),
            id: Uuid::new_v4(),
            partitions,
            configs: t.configs.clone(),
            created_ms: self.clock.now_ms(),
        })
    }

    /// Creates a topic.
    pub async fn create(&self, t: &NewTopic) -> Result<Arc<Topic>, TopicError> {
        let record = self.plan(t)?;
        let _g = self.admin.lock().await;
        if self.get(&t.name).is_some() {
            return Err(TopicError::AlreadyExists(t.name.clone()));
        }
        let total = self.partitions_total() + record.partitions as i64;
        if total > self.defaults.max_partitions_total {
            return Err(TopicError::PartitionBudget {
                requested: record.partitions,
                total,
                limit: self.defaults.max_partitions_total,
            });
        }
        if !catalog::create(self.meta.as_ref(), &record).await? {
            return Err(TopicError::AlreadyExists(t.name.clone()));
        }
        let id = record.id;
        self.follow(|s| s.items.get(&t.name).is_some_and(|i| i.value.id == id))
            .await;
        let topic = self
            .get(&t.name)
            .filter(|x| x.record.id == id)
            .ok_or_else(|| TopicError::Unknown(t.name.clone()))?;
        tracing::info!(topic = %t.name, partitions = topic.record.partitions, %id, "topic created");
        Ok(topic)
    }

    /// The topic, created with defaults if it does not exist.
    pub async fn get_or_create(&self, name: &str) -> Result<Arc<Topic>, TopicError> {
        if let Some(t) = self.get(name) {
            return Ok(t);
        }
        match self
            .create(&NewTopic {
                name: name.to_owned(),
                partitions: -1,
                replication_factor: -1,
                configs: BTreeMap::new(),
            })
            .await
        {
            Ok(t) => Ok(t),
            Err(TopicError::AlreadyExists(_)) => self
                .get(name)
                .ok_or_else(|| TopicError::Unknown(name.to_owned())),
            Err(e) => Err(e),
        }
    }

    /// Changes topic `name`'s record with `change` (a compare-and-swap on the stored record,
    /// tried again if another agent changed it meanwhile) unless `validate_only`; every agent's
    /// catalog follows. Returns the record as changed.
    pub async fn alter(
        &self,
        name: &str,
        validate_only: bool,
        change: impl Fn(&TopicRecord) -> Result<TopicRecord, TopicError>,
    ) -> Result<TopicRecord, TopicError> {
        let _g = self.admin.lock().await;
        for _ in 0..20 {
            let Some((cur, revision)) = catalog::get(self.meta.as_ref(), name).await? else {
                return Err(TopicError::Unknown(name.to_owned()));
            };
            let next = change(&cur)?;
            if validate_only || next == cur {
                return Ok(next);
            }
            if catalog::replace(self.meta.as_ref(), &next, revision).await? {
                self.follow(|s| s.items.get(name).is_some_and(|i| i.value == next))
                    .await;
                tracing::info!(topic = %name, partitions = next.partitions, configs = ?next.configs, "topic changed");
                return Ok(next);
            }
        }
        Err(TopicError::Busy(format!(
            "topic {name} kept changing while this change was being applied; try again"
        )))
    }

    /// Grows topic `name` to `count` partitions (CreatePartitions); fewer or as many as it has
    /// is refused, as Kafka refuses it, as is growing past the partition limits.
    pub async fn add_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<TopicRecord, TopicError> {
        let per_topic = self.defaults.max_partitions_per_topic;
        let budget = self.defaults.max_partitions_total;
        self.alter(name, validate_only, |rec| {
            // Counted under the admin lock `alter` holds, as creation counts it.
            let total = self.partitions_total();
            if count <= rec.partitions {
                return Err(TopicError::CannotShrink {
                    topic: name.to_owned(),
                    current: rec.partitions,
                    requested: count,
                });
            }
            if count > per_topic {
                return Err(TopicError::TooManyPartitions {
                    requested: count,
                    limit: per_topic,
                });
            }
            let after = total + (count - rec.partitions) as i64;
            if after > budget {
                return Err(TopicError::PartitionBudget {
                    requested: count - rec.partitions,
                    total: after,
                    limit: budget,
                });
            }
            let mut next = rec.clone();
            next.partitions = count;
            Ok(next)
        })
        .await
    }

    /// Deletes a topic and its offset index.
    pub async fn delete(&self, name: &str) -> Result<TopicRecord, TopicError> {
        let _g = self.admin.lock().await;
        let deleted = catalog::delete(self.meta.as_ref(), name).await?;
        let record = deleted.ok_or_else(|| TopicError::Unknown(name.to_owned()))?;
        let id = record.id;
        self.follow(|s| s.items.get(name).is_none_or(|i| i.value.id != id))
            .await;
        tracing::info!(topic = %name, id = %record.id, "topic deleted");
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_kafka() {
        assert!(validate_name("orders.v1_x-2").is_ok());
        for bad in ["", ".", "..", "a b", "ü", &"x".repeat(250)] {
            assert!(validate_name(bad).is_err(), "{bad:?} must be rejected");
        }
    }
}
