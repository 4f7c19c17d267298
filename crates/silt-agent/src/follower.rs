//! Reads of partitions this agent does not lead, for consumers pointed here by KIP-392
//! (`client.rack`: fetch from the agent in the consumer's zone). Any agent can serve them:
//! every committed batch is in the object store and indexed in the metadata store. A read-only
//! copy of the partition's committed state (segments, high watermark, log start, transaction
//! marks) is loaded from the offset index on demand and loaded again once older than the
//! caller's bound, so it trails the leader's high watermark by at most that much; copies unused
//! for [`IDLE`] are dropped. Producers still write to the leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use silt_meta::MetaKv;

use crate::cluster::PartitionKey;
use crate::error::PartitionError;
use crate::partition::Partition;
use crate::topics::Topic;

/// Copies unused this long are dropped.
pub const IDLE: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Copy {
    part: Arc<Partition>,
    epoch: i32,
    loaded: Instant,
    used: Instant,
}

/// The read-only copies of partitions led elsewhere.
#[derive(Debug, Default)]
pub struct FollowerReads {
    copies: Mutex<HashMap<PartitionKey, Copy>>,
    /// One load at a time per partition.
    loading: Mutex<HashMap<PartitionKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl FollowerReads {
    fn fresh(&self, key: PartitionKey, epoch: i32, max_age: Duration) -> Option<Arc<Partition>> {
        let mut m = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        let c = m.get_mut(&key)?;
        if c.epoch != epoch || c.loaded.elapsed() > max_age {
            return None;
        }
        c.used = Instant::now();
        Some(c.part.clone())
    }

    /// A copy of partition `index` of `topic`, led elsewhere at `epoch`, at most `max_age` old.
    pub async fn get(
        &self,
        meta: &dyn MetaKv,
        topic: &Topic,
        index: i32,
        epoch: i32,
        max_age: Duration,
    ) -> Result<Arc<Partition>, PartitionError> {
        let key = (topic.record.id, index);
        if let Some(p) = self.fresh(key, epoch, max_age) {
            return Ok(p);
        }
        let lock = {
            let mut l = self.loading.lock().unwrap_or_else(|e| e.into_inner());
            l.entry(key).or_default().clone()
        };
        let _one = lock.lock().await;
        // Loaded by another fetch meanwhile?
        if let Some(p) = self.fresh(key, epoch, max_age) {
            return Ok(p);
        }
        let part =
            Arc::new(Partition::load(meta, &topic.record.name, key.0, index, epoch, 0).await?);
        let now = Instant::now();
        let mut m = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, c| c.used.elapsed() < IDLE);
        m.insert(
            key,
            Copy {
                part: part.clone(),
                epoch,
                loaded: now,
                used: now,
            },
        );
        Ok(part)
    }

    /// Copies held now.
    pub fn len(&self) -> usize {
        self.copies.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no copy is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
