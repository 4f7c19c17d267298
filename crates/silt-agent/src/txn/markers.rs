//! Writing transaction markers on partition leaders. Every agent follows the marker requests
//! (`/silt/txn-markers/…`) coordinators write; for each partition it leads it appends the marker
//! through the flush pipeline (batched with everything else in the next flush, so a commit
//! costs no metadata-store transaction per partition for the marker itself), waits until it is
//! durable, then deletes the requests it wrote, in one transaction per round, fenced on each
//! partition's leadership. A request left by a leader that died is written by the next one (a
//! marker may then be written twice; a second marker of an ended transaction ends an empty
//! one and changes nothing a reader sees).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
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
    /// Requests being written by this agent.
    in_flight: Mutex<HashSet<Vec<u8>>>,
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
            in_flight: Mutex::default(),
        })
    }
}

/// The job that writes the markers of partitions led here.
pub struct MarkerJob(pub Arc<Broker>);

impl crate::tasks::Periodic for MarkerJob {
    fn name(&self) -> &'static str {
        "txn-markers"
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(10)
    }

    async fn step(&mut self) {
        let b = &self.0;
        // Groups coordinated here: end transactional offsets.
        let groups = b.markers.groups.snapshot();
        for (key, item) in &groups.items {
            let Some((escaped, pid)) = txns::parse_group_marker_key(key) else {
                continue;
            };
            let group = super::coordinator::unescape(&escaped);
            if b.groups.check(&group).is_err() {
                continue;
            }
            let key = String::from_utf8_lossy(key).into_owned();
            if let Err(code) = b
                .groups
                .end_txn_offsets(&group, pid, item.value, (&key, item.mod_revision))
                .await
            {
                tracing::debug!(group = %group, pid, code, "transactional offsets not ended yet; retried");
            }
        }
        let snap = b.markers.mirror.snapshot();
        if snap.items.is_empty() {
            return;
        }
        let mut batch = Vec::new();
        for (key, item) in &snap.items {
            let Some((topic_id, index)) = txns::parse_marker_key(key) else {
                continue;
            };
            let Some(topic) = b.topics.get_by_id(&topic_id) else {
                continue;
            };
            let Ok(p) = b.cluster.partition(&topic, index) else {
                continue; // not led here
            };
            {
                let mut busy = b
                    .markers
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if !busy.insert(key.clone()) {
                    continue;
                }
            }
            batch.push((key.clone(), item.mod_revision, item.value.clone(), p));
        }
        if batch.is_empty() {
            return;
        }
        // Append every marker, then wait for the flushes that carry them.
        let mut written = Vec::new();
        for (key, rev, m, p) in batch {
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
                Ok((offset, gen)) => written.push((key, rev, p, offset, gen)),
                Err(e) => {
                    tracing::debug!(topic = %p.topic, partition = p.index, error = %e, "transaction marker not appended; retried");
                    b.markers
                        .in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                }
            }
        }
        let mut done = Vec::new();
        for (key, rev, p, offset, gen) in written {
            if b.flusher.wait_committed(gen, &p).await.is_ok() {
                tracing::debug!(topic = %p.topic, partition = p.index, offset, "transaction marker written");
                done.push((key, rev, p));
            } else {
                b.markers
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
            }
        }
        for chunk in done.chunks(60) {
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
                tracing::warn!(error = %e, "transaction marker requests not deleted; they are written again");
            }
            let mut busy = b
                .markers
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (key, _, _) in chunk {
                busy.remove(key);
            }
        }
    }
}
