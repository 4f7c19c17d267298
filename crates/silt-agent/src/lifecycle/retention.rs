//! Retention on each partition's leader, and DeleteRecords. Moving the log start is one fenced
//! metadata transaction (this agent's registration, the partition's assignment) per at most
//! [`DELETES_PER_TXN`] index entries: the entries wholly below the new start are deleted and the
//! start recorded, so a crash at any point leaves a consistent, resumable state. Reads below the
//! start get OFFSET_OUT_OF_RANGE, as from Kafka (or, on a topic with `silt.archive.serve`,
//! batches rebuilt from the archive, whose files retention never reaches: it only moves the raw
//! log start, and never past what is archived); the objects are left to [`super::gc`].

use std::sync::Arc;
use std::time::Duration;

use silt_meta::layout::index::{self, IndexEntry};
use silt_meta::Txn;

use crate::broker::Broker;
use crate::error::PartitionError;
use crate::partition::Partition;

/// Index entries deleted per transaction (etcd allows 128 operations).
pub const DELETES_PER_TXN: usize = 100;

/// Where retention moves the log start of a partition of a topic with `config` now, if
/// anywhere. With `cleanup.policy=compact` alone records go by key compaction, never by age or
/// size (DeleteRecords still moves the log start, as in Kafka).
pub fn target(
    config: &crate::topic_config::Resolved,
    segments: &[IndexEntry],
    high_watermark: i64,
    now_ms: i64,
) -> Option<i64> {
    if !config.deletes {
        return None;
    }
    due(
        segments,
        high_watermark,
        now_ms,
        config.retention_ms,
        config.retention_bytes,
    )
}

/// The log start retention asks for: past every leading range whose newest record is older
/// than `retention_ms`, and past leading ranges while the rest still holds `retention_bytes`.
/// `None` when nothing is due.
pub fn due(
    segments: &[IndexEntry],
    high_watermark: i64,
    now_ms: i64,
    retention_ms: i64,
    retention_bytes: i64,
) -> Option<i64> {
    let mut keep_from = 0;
    if retention_ms >= 0 {
        let cutoff = now_ms.saturating_sub(retention_ms);
        keep_from = segments
            .iter()
            .position(|s| s.max_timestamp >= cutoff)
            .unwrap_or(segments.len());
    }
    if retention_bytes >= 0 {
        let mut total: u64 = segments[keep_from..].iter().map(|s| s.len).sum();
        while keep_from < segments.len()
            && total.saturating_sub(segments[keep_from].len) >= retention_bytes as u64
        {
            total -= segments[keep_from].len;
            keep_from += 1;
        }
    }
    if keep_from == 0 {
        return None;
    }
    Some(
        segments
            .get(keep_from)
            .map_or(high_watermark, |s| s.base_offset),
    )
}

/// Retention as a periodic job: every `lifecycle.retention_interval_ms`, each partition led
/// here whose oldest data is past `retention.ms` or `retention.bytes` has its log start moved.
pub struct RetentionJob(pub Arc<Broker>);

impl crate::tasks::Periodic for RetentionJob {
    fn name(&self) -> &'static str {
        "retention"
    }

    fn first_step_at_once(&self) -> bool {
        false
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.0.settings.lifecycle.retention_interval_ms)
    }

    async fn step(&mut self) {
        let b = &self.0;
        for p in b.cluster.local_partitions() {
            let Some(topic) = b.topics.get_by_id(&p.topic_id) else {
                continue;
            };
            let target = {
                let st = p.lock();
                target(
                    &topic.config,
                    &st.segments,
                    st.high_watermark,
                    b.clock.now_ms(),
                )
            };
            // A topic serving its archive keeps raw data until it is archived.
            let target = match target {
                Some(t) if topic.config.archive_serve => {
                    crate::archiver::visible_until(b, &p).map(|a| t.min(a))
                }
                t => t,
            };
            if let Some(t) = target {
                if let Err(e) = move_log_start(b, &p, t).await {
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %e,
                        "applying retention failed; retrying at the next interval");
                }
            }
        }
    }
}

/// Moves the log start of `p` to `offset` (clamped to the last stable offset; never backwards) and
/// deletes the index entries wholly below it. Returns the new log start.
pub async fn move_log_start(b: &Broker, p: &Partition, offset: i64) -> Result<i64, PartitionError> {
    let _one_at_a_time = b.lifecycle_lock.lock().await;
    let (target, doomed) = {
        let st = p.lock();
        // Never past an open transaction's first batch: its start mark must stay in the index
        // (a new leader rebuilds the last stable offset from it).
        let target = offset.min(st.txns.last_stable(st.high_watermark));
        if target <= st.log_start {
            return Ok(st.log_start);
        }
        let doomed: Vec<IndexEntry> = st
            .segments
            .iter()
            .take_while(|s| s.last_offset < target)
            .cloned()
            .collect();
        (target, doomed)
    };
    let mut chunks = doomed.chunks(DELETES_PER_TXN).peekable();
    if chunks.peek().is_none() {
        commit(b, p, &[], target).await?;
        b.crash_points
            .at(crate::crash_points::RETENTION_AFTER_COMMIT)
            .await;
    }
    while let Some(chunk) = chunks.next() {
        // Intermediate steps start at the next entry still there, so each step is a log
        // start consistent with the entries left.
        let step = match chunks.peek() {
            Some(next) => next[0].base_offset,
            None => target,
        };
        commit(b, p, chunk, step).await?;
        b.crash_points
            .at(crate::crash_points::RETENTION_AFTER_COMMIT)
            .await;
        p.lock().truncate_before(step);
        p.changed();
    }
    p.lock().truncate_before(target);
    p.changed();
    tracing::info!(topic = %p.topic, partition = p.index, log_start = target,
        entries_deleted = doomed.len(), "log start moved");
    Ok(target)
}

async fn commit(
    b: &Broker,
    p: &Partition,
    entries: &[IndexEntry],
    log_start: i64,
) -> Result<(), PartitionError> {
    let mut success: Vec<_> = entries
        .iter()
        .map(|e| index::delete_op(&p.topic_id, p.index, e.base_offset))
        .collect();
    success.push(index::log_start_op(&p.topic_id, p.index, log_start));
    let txn = Txn {
        compares: vec![b.cluster.registered(), p.fence()],
        success,
        failure: vec![],
    };
    super::commit_answered(b, p, txn, "moving the log start").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_only_topics_keep_their_records_whatever_their_age() {
        let segs = vec![seg(0, 9, 1, 100), seg(10, 19, 2, 100)];
        let config = |policy: &str| {
            crate::topic_config::Resolved::from(
                &[
                    ("cleanup.policy".to_string(), policy.to_string()),
                    ("retention.ms".to_string(), "1".to_string()),
                ]
                .into(),
                &Default::default(),
                &Default::default(),
            )
        };
        assert_eq!(target(&config("compact"), &segs, 20, 1_000), None);
        assert!(target(&config("compact,delete"), &segs, 20, 1_000).is_some());
        assert!(target(&config("delete"), &segs, 20, 1_000).is_some());
    }

    fn seg(base: i64, last: i64, ts: i64, len: u64) -> IndexEntry {
        IndexEntry {
            object: "o".into(),
            pos: 0,
            len,
            base_offset: base,
            last_offset: last,
            max_timestamp: ts,
            producers: vec![],
            marks: vec![],
            txns: vec![],
            pieces: Vec::new(),
        }
    }

    #[test]
    fn time_and_size_retention() {
        let s = vec![
            seg(0, 9, 100, 10),
            seg(10, 19, 200, 10),
            seg(20, 29, 300, 10),
        ];
        assert_eq!(due(&s, 30, 1000, -1, -1), None, "keep forever");
        assert_eq!(
            due(&s, 30, 350, 200, -1),
            Some(10),
            "the first range is too old"
        );
        assert_eq!(due(&s, 30, 10_000, 100, -1), Some(30), "everything expired");
        // Kafka's rule: drop a leading range while what stays still holds retention.bytes.
        assert_eq!(
            due(&s, 30, 0, -1, 15),
            Some(10),
            "15 bytes: two ranges stay"
        );
        assert_eq!(
            due(&s, 30, 0, -1, 10),
            Some(20),
            "10 bytes: one range stays"
        );
        assert_eq!(due(&s, 30, 0, -1, 30), None);
        assert_eq!(due(&[], 0, 0, 0, 0), None);
    }
}
