//! The agent's view of the topic catalog: topic records from the metadata store, their resolved
//! configs, and the loaded partitions. Creation and deletion go through the metadata store
//! first; this cache follows.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use silt_common::config::TopicDefaults;
use silt_common::Clock;
use silt_meta::layout::catalog::{self, TopicRecord};
use silt_meta::MetaKv;
use uuid::Uuid;

use crate::error::TopicError;
use crate::partition::Partition;
use crate::topic_config::{self, Resolved};

/// A topic and its partitions.
#[derive(Debug)]
pub struct Topic {
    /// The stored record.
    pub record: TopicRecord,
    /// Configs resolved over defaults.
    pub config: Resolved,
    /// Partitions, by index.
    pub partitions: Vec<Arc<Partition>>,
}

impl Topic {
    /// A partition by index.
    pub fn partition(&self, index: i32) -> Option<&Arc<Partition>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

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

    fn remove(&mut self, name: &str) {
        if let Some(t) = self.by_name.remove(name) {
            self.by_id.remove(&t.record.id);
        }
    }
}

/// The catalog cache.
#[derive(Debug)]
pub struct Topics {
    meta: Arc<dyn MetaKv>,
    clock: Arc<dyn Clock>,
    defaults: TopicDefaults,
    index: RwLock<Index>,
    admin: tokio::sync::Mutex<()>,
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
    /// Loads every topic and its partitions from the metadata store.
    pub async fn load(
        meta: Arc<dyn MetaKv>,
        clock: Arc<dyn Clock>,
        defaults: TopicDefaults,
    ) -> Result<Self, TopicError> {
        let mut index = Index::default();
        for record in catalog::list(meta.as_ref()).await? {
            let topic = Self::open(meta.as_ref(), record, &defaults).await?;
            index.insert(Arc::new(topic));
        }
        Ok(Self {
            meta,
            clock,
            defaults,
            index: RwLock::new(index),
            admin: tokio::sync::Mutex::new(()),
        })
    }

    async fn open(
        meta: &dyn MetaKv,
        record: TopicRecord,
        defaults: &TopicDefaults,
    ) -> Result<Topic, TopicError> {
        let mut partitions = Vec::with_capacity(record.partitions as usize);
        for i in 0..record.partitions {
            partitions.push(Arc::new(
                Partition::load(meta, &record.name, record.id, i).await?,
            ));
        }
        Ok(Topic {
            config: Resolved::from(&record.configs, defaults),
            record,
            partitions,
        })
    }

    /// The topic defaults.
    pub fn defaults(&self) -> &TopicDefaults {
        &self.defaults
    }

    /// A topic by name.
    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.read().by_name.get(name).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
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

    /// Validates a topic to create; returns the record it would become.
    pub fn plan(&self, t: &NewTopic) -> Result<TopicRecord, TopicError> {
        validate_name(&t.name)?;
        let partitions = match t.partitions {
            -1 => self.defaults.num_partitions,
            n if (1..=100_000).contains(&n) => n,
            n => return Err(TopicError::InvalidPartitions(n)),
        };
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
        if !catalog::create(self.meta.as_ref(), &record).await? {
            return Err(TopicError::AlreadyExists(t.name.clone()));
        }
        let topic = Arc::new(Self::open(self.meta.as_ref(), record, &self.defaults).await?);
        self.write().insert(topic.clone());
        tracing::info!(topic = %t.name, partitions = topic.partitions.len(), id = %topic.record.id, "topic created");
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

    /// Deletes a topic and its offset index.
    pub async fn delete(&self, name: &str) -> Result<TopicRecord, TopicError> {
        let _g = self.admin.lock().await;
        let deleted = catalog::delete(self.meta.as_ref(), name).await?;
        self.write().remove(name);
        let record = deleted.ok_or_else(|| TopicError::Unknown(name.to_owned()))?;
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
