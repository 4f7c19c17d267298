//! Writing transaction markers on partition leaders. Every agent follows the marker requests
//! (`/silt/txn-markers/…`) coordinators write; for each partition it leads it appends the marker
//! through the flush pipeline (batched with everything else in the next flush, so a commit
//! costs no metadata-store transaction per partition for the marker itself), waits until it is
//! durable, then deletes the requests it wrote, in one transaction per round, fenced on each
//! partition's leadership. A request left by a leader that died is written by the next one (a
//! marker may then be written twice; a second marker of an ended transaction ends an empty
//! one and changes nothing a reader sees).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use silt_meta::layout::txns::{self, MarkerRequest};
use silt_meta::mirror::Mirror;
use silt_meta::{Compare, MetaError, MetaKv, Op, Txn};
use silt_wire::control::Marker;

use crate::broker::Broker;

fn parse_key(k: &[u8]) -> Option<Vec<u8>> {
    txns::parse_marker_key(k).map(|_| k.to_vec())
}

fn parse_value(k: &[u8], v: &[u8]) -> Option<MarkerRequest> {
    txns::decode_marker(k, v).ok()
}

fn parse_group_key(k: &[u8]) -> Option<Vec<u8>> {
    txns::parse_group_marker_key(k).map(|_| k.to_vec())
}

fn parse_commit(_k: &[u8], v: &[u8]) -> Option<bool> {
    match v {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    }
}

/// The marker requests, followed.
#[derive(Debug)]
pub struct MarkerRequests {
    mirror: Mirror<Vec<u8>, MarkerRequest>,
    /// Requests to end transactional offsets of groups: commit (true) or abort.
    groups: Mirror<Vec<u8>, bool>,
}

impl MarkerRequests {
    /// Starts following the requests.
    pub async fn start(meta: Arc<dyn MetaKv>) -> Result<Self, MetaError> {
        Ok(Self {
            mirror: Mirror::start(meta.clone(), txns::markers_prefix(), parse_key, parse_value)
                .await?,
            groups: Mirror::start(
                meta,
                txns::group_markers_prefix(),
                parse_group_key,
                parse_commit,
            )
            .await?,
        })
    }
}

/// The job that writes the markers of partitions led here and ends the transactional offsets
/// of groups coordinated here.
pub struct MarkerJob {
    b: Arc<Broker>,
    requests: MarkerRequests,
    /// Requests (key, revision) this job carried out: the mirror may still show one for a
    /// moment after its deletion, and it must not be carried out twice.
    done: HashSet<(Vec<u8>, i64)>,
    /// Markers written whose requests could not be deleted yet: retried, never rewritten.
    undeleted: Vec<(Vec<u8>, i64, Arc<crate::partition::Partition>)>,
}

impl MarkerJob {
    /// The job of an agent.
    pub fn new(b: Arc<Broker>, requests: MarkerRequests) -> Self {
        Self {
            b,
            requests,
            done: HashSet::new(),
            undeleted: Vec::new(),
        }
    }
}

impl crate::tasks::Periodic for MarkerJob {
    fn name(&self) -> &'static str {
        "txn-markers"
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(10)
    }

    async fn step(&mut self) {
        let b = self.b.clone();
        let partitions = self.requests.mirror.snapshot();
        let groups = self.requests.groups.snapshot();
        // Forget what the store no longer shows.
        self.done.retain(|(k, rev)| {
            partitions.items.get(k).map(|i| i.mod_revision) == Some(*rev)
                || groups.items.get(k).map(|i| i.mod_revision) == Some(*rev)
        });
        for (key, item) in &groups.items {
            let Some((group, pid)) = txns::parse_group_marker_key(key) else {
                continue;
            };
            if b.groups.check(&group).is_err()
                || self.done.contains(&(key.clone(), item.mod_revision))
            {
                continue;
            }
            let k = String::from_utf8_lossy(key).into_owned();
            match b
                .groups
                .end_txn_offsets(&group, pid, item.value, (&k, item.mod_revision))
                .await
            {
                Ok(()) => {
                    self.done.insert((key.clone(), item.mod_revision));
                }
                Err(code) => {
                    tracing::debug!(group = %group, pid, code, "transactional offsets not ended yet; retried")
                }
            }
        }
        // Append every marker of partitions led here, then wait for the flushes that carry them.
        let mut written = Vec::new();
        for (key, item) in &partitions.items {
            if self.done.contains(&(key.clone(), item.mod_revision)) {
                continue;
            }
            let Some((topic_id, index)) = txns::parse_marker_key(key) else {
                continue;
            };
            let Some(topic) = b.topics.get_by_id(&topic_id) else {
                continue;
            };
            let Ok(p) = b.cluster.partition(&topic, index) else {
                continue; // not led here
            };
            let m = &item.value;
            let marker = if m.commit {
                Marker::Commit
            } else {
                Marker::Abort
            };
            let res = match b.flusher.reserve(100, Duration::from_secs(10)).await {
                Ok(permit) => crate::append::append_marker(
                    &b.flusher,
                    &p,
                    (m.pid, m.epoch),
                    marker,
                    m.coordinator_epoch,
                    b.clock.now_ms(),
                    permit,
                ),
                Err(e) => Err(e),
            };
            match res {
                Ok((offset, gen)) => written.push((key.clone(), item.mod_revision, p, offset, gen)),
                Err(e) => {
                    tracing::debug!(topic = %p.topic, partition = p.index, error = %e, "transaction marker not appended; retried")
                }
            }
        }
        if !written.is_empty() {
            // A producer's commit waits on these: no need to wait out the flush interval.
            b.flusher.expedite();
        }
        let mut durable = std::mem::take(&mut self.undeleted);
        for (key, rev, p, offset, gen) in written {
            if b.flusher.wait_committed(gen, &p).await.is_ok() {
                tracing::debug!(topic = %p.topic, partition = p.index, offset, "transaction marker written");
                self.done.insert((key.clone(), rev));
                durable.push((key, rev, p));
            }
        }
        // Delete the requests carried out, fenced on each partition's leadership. A request
        // left behind (a failed delete) is carried out again by this partition's next leader.
        for chunk in durable.chunks(60) {
            let mut compares = vec![b.cluster.registered()];
            let mut success = Vec::new();
            for (key, rev, p) in chunk {
                compares.push(p.fence());
                compares.push(Compare::mod_revision(key.clone(), *rev));
                success.push(Op::delete(key.clone()));
            }
            let res = b
                .meta
                .txn(Txn {
                    compares,
                    success,
                    failure: vec![],
                })
                .await;
            if let Err(e) = &res {
                tracing::warn!(error = %e, "transaction marker requests not deleted yet; retried");
                // Only while this agent still leads the partition: a next leader writes the
                // marker again (a second marker ends an empty transaction).
                self.undeleted
                    .extend(chunk.iter().filter(|(_, _, p)| !p.is_closed()).cloned());
            }
        }
    }
}
