//! Compaction on each partition's leader: runs of small committed ranges (one index entry per
//! flush) are folded into one segment object per run, so objects and index keys per partition
//! stay bounded whatever the uptime.
//!
//! A step: pick the oldest run of at least two consecutive entries (up to
//! `lifecycle.segment_bytes`, at most [`ENTRIES_PER_STEP`]), read their bytes, write them
//! unchanged as one segment object, then ONE fenced transaction (this agent's registration, the
//! partition's assignment) replaces the run's entries with one entry for the segment. Offsets
//! and batch bytes are unchanged, so a consumer sees each offset exactly once whether it read
//! before or after; a crash before the commit leaves an unreferenced segment (garbage), after
//! it the old flush objects (garbage once nothing else references them). Idempotent and
//! resumable: the next pass starts from whatever is committed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use silt_meta::layout::index::{self, IndexEntry, ProducerBatch};
use silt_meta::Txn;
use silt_storage::object::ObjectBuilder;
use silt_storage::paths;
use silt_wire::batch;

use crate::broker::Broker;
use crate::error::PartitionError;
use crate::partition::Partition;

/// Entries folded per step (etcd allows 128 operations per transaction).
pub const ENTRIES_PER_STEP: usize = 100;
/// Recent entries left alone: consumers at the tail read them from the cache.
const KEEP_RECENT: usize = 4;
/// Idempotent batches kept per producer in a folded entry (what state rebuilds need).
const BATCHES_PER_PRODUCER: usize = 5;

pub use crate::service_state::CompactionStats;

/// The run to fold next: indices `[from, to)` of `segments`, or `None`.
pub fn plan(
    segments: &[IndexEntry],
    min_entries: usize,
    segment_bytes: u64,
) -> Option<(usize, usize)> {
    if segments.len() < min_entries.max(2) + KEEP_RECENT {
        return None;
    }
    let candidates = segments.len() - KEEP_RECENT;
    // The oldest start from which at least two entries fit in one segment, and whose first
    // entry is no larger than what joins it: a grown segment is rewritten only when as much new
    // data joins it, which keeps rewriting to a few times the data (size-tiered), not once per
    // step.
    (0..candidates).find_map(|start| {
        let mut end = start;
        let mut bytes = 0u64;
        let mut kept = ProducerBudget::default();
        let mut txn_marks = 0usize;
        while end < candidates
            && end - start < ENTRIES_PER_STEP
            && bytes + segments[end].len <= segment_bytes
            && kept.fits(&segments[end])
            && txn_marks + segments[end].txns.len() <= MAX_FOLDED_TXN_MARKS
        {
            txn_marks += segments[end].txns.len();
            bytes += segments[end].len;
            kept.add(&segments[end]);
            end += 1;
        }
        let joining = bytes.saturating_sub(segments[start].len);
        (end - start >= 2 && segments[start].len <= joining.max(1) * 2).then_some((start, end))
    })
}

/// Most idempotent batches a folded entry may record (about 110 bytes each), keeping its
/// transaction far inside the metadata store's request limit.
pub const MAX_FOLDED_PRODUCER_BATCHES: usize = 2000;

/// Most transaction starts and ends a fold may take in (about 60 bytes each).
pub const MAX_FOLDED_TXN_MARKS: usize = 4000;

/// The transaction marks a folded entry keeps: a transaction that both starts and commits inside
/// the run needs nothing (read_committed shows it whole); an abort keeps its end (which names
/// its first offset, for the aborted-transactions list); a start without its end in the run
/// (still open, or ended later) and an end whose start lies before the run are kept as they are.
pub fn fold_txns(entries: &[IndexEntry]) -> Vec<index::TxnMark> {
    let all: Vec<&index::TxnMark> = entries.iter().flat_map(|e| e.txns.iter()).collect();
    let ended_here: std::collections::HashSet<(i64, i64)> = all
        .iter()
        .filter(|m| m.end.is_some())
        .map(|m| (m.pid, m.first_offset))
        .collect();
    let started_here: std::collections::HashSet<(i64, i64)> = all
        .iter()
        .filter(|m| m.end.is_none())
        .map(|m| (m.pid, m.first_offset))
        .collect();
    all.into_iter()
        .filter(|m| match m.end {
            None => !ended_here.contains(&(m.pid, m.first_offset)),
            Some((_, true)) => !started_here.contains(&(m.pid, m.first_offset)),
            Some((_, false)) => true,
        })
        .cloned()
        .collect()
}

/// Counts the idempotent batches a fold would keep ([`BATCHES_PER_PRODUCER`] per producer).
#[derive(Default)]
pub(crate) struct ProducerBudget {
    per_producer: HashMap<i64, usize>,
    kept: usize,
}

impl ProducerBudget {
    /// Whether adding `e` keeps the fold within [`MAX_FOLDED_PRODUCER_BATCHES`].
    pub(crate) fn fits(&self, e: &IndexEntry) -> bool {
        let mut extra = 0usize;
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for b in &e.producers {
            let n = seen
                .entry(b.pid)
                .or_insert_with(|| self.per_producer.get(&b.pid).copied().unwrap_or(0));
            if *n < BATCHES_PER_PRODUCER {
                *n += 1;
                extra += 1;
            }
        }
        self.kept + extra <= MAX_FOLDED_PRODUCER_BATCHES
    }

    pub(crate) fn add(&mut self, e: &IndexEntry) {
        for b in &e.producers {
            let n = self.per_producer.entry(b.pid).or_default();
            if *n < BATCHES_PER_PRODUCER {
                *n += 1;
                self.kept += 1;
            }
        }
    }
}

/// Most marks kept in a folded entry.
const MAX_MARKS: usize = 256;
/// Marks are at least this many bytes apart (a read window is at least 2 MiB).
const MIN_MARK_SPACING: u64 = 256 << 10;

/// Marks for a segment made of `datas` (the folded ranges' bytes, in order): batch starts
/// about `len / MAX_MARKS` (at least [`MIN_MARK_SPACING`]) bytes apart, so a read starting at
/// the mark before its offset skips at most that much plus one batch, however the folded
/// ranges were sized.
fn fold_marks(datas: &[Bytes]) -> Vec<(i64, u64)> {
    let total: u64 = datas.iter().map(|d| d.len() as u64).sum();
    let spacing = (total / MAX_MARKS as u64).max(MIN_MARK_SPACING);
    let mut out: Vec<(i64, u64)> = Vec::new();
    let mut at = 0u64;
    for d in datas {
        for (h, rg) in batch::iter(d) {
            let pos = at + rg.start as u64;
            if out.last().is_none_or(|(_, last)| pos - last >= spacing) {
                out.push((h.base_offset, pos));
            }
        }
        at += d.len() as u64;
    }
    out
}

/// Keeps the last few idempotent batches of each producer, in offset order.
fn fold_producers(entries: &[IndexEntry]) -> Vec<ProducerBatch> {
    let all: Vec<&ProducerBatch> = entries.iter().flat_map(|e| &e.producers).collect();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut keep = vec![false; all.len()];
    for (i, b) in all.iter().enumerate().rev() {
        let n = seen.entry(b.pid).or_default();
        if *n < BATCHES_PER_PRODUCER {
            keep[i] = true;
            *n += 1;
        }
    }
    all.into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(b, _)| b.clone())
        .collect()
}

/// Compaction as a periodic job: every `lifecycle.compact_interval_ms`, a few steps on each
/// partition led here, so none starves the others.
pub struct CompactionJob(pub Arc<Broker>);

impl crate::tasks::Periodic for CompactionJob {
    fn name(&self) -> &'static str {
        "compaction"
    }

    fn first_step_at_once(&self) -> bool {
        false
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.0.settings.lifecycle.compact_interval_ms)
    }

    async fn step(&mut self) {
        let b = &self.0;
        for p in b.cluster.local_partitions() {
            for _ in 0..4 {
                match step(b, &p).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        b.compaction.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic = %p.topic, partition = p.index, error = %e,
                            "compaction step failed; retrying at the next interval");
                        break;
                    }
                }
            }
            // Compacted topics: the latest record of each key.
            let rules = b
                .topics
                .get(&p.topic)
                .filter(|t| t.config.compacted)
                .map(|t| t.config.key_rules);
            if let Some(rules) = rules {
                if let Err(e) = super::key_compaction::step(b, &p, &rules).await {
                    b.compaction.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %e,
                        "key compaction failed; retrying at the next interval");
                }
            }
        }
    }
}

/// One step on one partition; returns whether it folded anything.
pub async fn step(b: &Broker, p: &Partition) -> Result<bool, PartitionError> {
    let l = &b.settings.lifecycle;
    let _one_at_a_time = b.lifecycle_lock.lock().await;
    if p.is_closed() {
        return Ok(false);
    }
    let run: Vec<IndexEntry> = {
        let st = p.lock();
        match plan(&st.segments, l.compact_min_entries, l.segment_bytes) {
            Some((from, to)) => st.segments[from..to].to_vec(),
            None => return Ok(false),
        }
    };
    let mut datas: Vec<Bytes> = Vec::with_capacity(run.len());
    for e in &run {
        datas.push(crate::read::range_bytes(&b.storage, &b.cache, e).await?);
    }
    let bytes = replace_run(b, p, &run, &datas, false).await?;
    let (first, last) = (&run[0], &run[run.len() - 1]);
    let c = &b.compaction;
    c.segments.fetch_add(1, Ordering::Relaxed);
    c.entries_folded
        .fetch_add(run.len() as u64 - 1, Ordering::Relaxed);
    c.bytes.fetch_add(bytes, Ordering::Relaxed);
    tracing::debug!(topic = %p.topic, partition = p.index, base = first.base_offset,
        last = last.last_offset, entries = run.len(), bytes, "compacted");
    Ok(true)
}

/// Writes `datas` (the batches of the consecutive committed entries `run`, as they are or —
/// `rewritten` — with records taken out by key compaction) as one segment object and replaces `run` with one entry
/// for it: one fenced transaction, then the leader's index. Returns the segment's size.
pub(crate) async fn replace_run(
    b: &Broker,
    p: &Partition,
    run: &[IndexEntry],
    datas: &[Bytes],
    rewritten: bool,
) -> Result<u64, PartitionError> {
    let first = &run[0];
    let last = &run[run.len() - 1];
    let folded_max = run.iter().map(|e| e.max_timestamp).max().unwrap_or(-1);
    // Key compaction may have taken the newest records out: the largest timestamp left.
    let max_ts = if rewritten {
        datas
            .iter()
            .flat_map(|d| batch::iter(d).map(|(h, _)| h.max_timestamp))
            .max()
            .unwrap_or(folded_max)
            .min(folded_max)
    } else {
        folded_max
    };
    let mut builder = ObjectBuilder::new();
    let f = builder.add(
        p.topic_id,
        p.index,
        datas,
        first.base_offset,
        last.last_offset,
        max_ts,
    );
    let n = b.compaction.started.fetch_add(1, Ordering::SeqCst) + 1;
    let path = paths::segment_object(
        &p.topic_id,
        p.index,
        n,
        first.base_offset,
        last.last_offset,
        &b.session,
    );
    let marks = fold_marks(datas);
    let object = builder.finish();
    let bytes = f.len;
    let res = commit_segment(b, p, run, &path, object, (f.pos, f.len), max_ts, marks).await;
    // Steps run one at a time (the lifecycle lock), so step n is done when this returns.
    b.compaction.finished.store(n, Ordering::SeqCst);
    let folded = res?;
    b.crash_points
        .at(crate::crash_points::COMPACTION_AFTER_COMMIT)
        .await;
    let mut st = p.lock();
    let at = st
        .segments
        .iter()
        .position(|s| s.base_offset == first.base_offset);
    if let Some(i) = at {
        let k = run.len().min(st.segments.len() - i);
        st.segments.splice(i..i + k, [folded]);
    }
    Ok(bytes)
}

/// Writes the segment and commits it, with a definite outcome ([`super::commit_answered`]):
/// garbage collection relies on a finished step having one.
#[allow(clippy::too_many_arguments)]
async fn commit_segment(
    b: &Broker,
    p: &Partition,
    run: &[IndexEntry],
    path: &object_store::path::Path,
    object: Bytes,
    (pos, len): (u64, u64),
    max_ts: i64,
    marks: Vec<(i64, u64)>,
) -> Result<IndexEntry, PartitionError> {
    let (first, last) = (&run[0], &run[run.len() - 1]);
    b.storage.put(path, object).await?;
    b.crash_points
        .at(crate::crash_points::COMPACTION_AFTER_PUT)
        .await;
    let folded = IndexEntry {
        object: path.to_string(),
        pos,
        len,
        base_offset: first.base_offset,
        last_offset: last.last_offset,
        max_timestamp: max_ts,
        producers: fold_producers(run),
        marks,
        txns: fold_txns(run),
    };
    let mut success: Vec<_> = run
        .iter()
        .map(|e| index::delete_op(&p.topic_id, p.index, e.base_offset))
        .collect();
    // The folded entry takes the first one's key: delete-then-put of one key is not allowed
    // in one etcd transaction, so that key is only put.
    success.remove(0);
    success.push(index::put_op(&p.topic_id, p.index, &folded));
    // The log start is unchanged; rewriting it moves the partition's lifecycle revision.
    let log_start = p.lock().log_start;
    success.push(index::log_start_op(&p.topic_id, p.index, log_start));
    let txn = Txn {
        compares: vec![b.cluster.registered(), p.fence()],
        success,
        failure: vec![],
    };
    super::commit_answered(b, p, txn, "compaction (the segment is garbage if refused)").await?;
    Ok(folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(base: i64, len: u64) -> IndexEntry {
        IndexEntry {
            object: format!("o{base}"),
            pos: 0,
            len,
            base_offset: base,
            last_offset: base,
            max_timestamp: base,
            producers: vec![ProducerBatch {
                pid: 1,
                epoch: 0,
                first_seq: base as i32,
                last_seq: base as i32,
                base_offset: base,
            }],
            marks: vec![],
            txns: vec![],
        }
    }

    #[test]
    fn marks_are_spaced_batch_starts() {
        use crate::test_batches::batch_of;
        // Three ranges of 2 000 one-KiB batches each (about 6 MB): marks every 256 KiB.
        let mut next = 0;
        let datas: Vec<Bytes> = (0..3)
            .map(|_| {
                let mut d = bytes::BytesMut::new();
                for _ in 0..2000 {
                    d.extend_from_slice(&batch_of(next, 1, 1000));
                    next += 1;
                }
                d.freeze()
            })
            .collect();
        let marks = fold_marks(&datas);
        let total: u64 = datas.iter().map(|d| d.len() as u64).sum();
        assert_eq!(marks[0], (0, 0));
        assert!(marks.len() <= MAX_MARKS + 1);
        assert!(marks.len() as u64 >= total / (MIN_MARK_SPACING + 2000));
        let size = batch_of(0, 1, 1000).len() as u64;
        for w in marks.windows(2) {
            let gap = w[1].1 - w[0].1;
            assert!(
                (MIN_MARK_SPACING..MIN_MARK_SPACING + size).contains(&gap),
                "{w:?}"
            );
            assert_eq!(w[1].1, w[1].0 as u64 * size, "a mark is its batch's start");
        }
    }

    #[test]
    fn runs_are_planned_within_bounds() {
        let small: Vec<IndexEntry> = (0..10).map(|i| e(i, 10)).collect();
        assert_eq!(plan(&small, 32, 1000), None, "below the threshold");
        assert_eq!(
            plan(&small, 4, 1000),
            Some((0, 6)),
            "the recent four are left"
        );
        assert_eq!(
            plan(&small, 4, 35),
            Some((0, 3)),
            "segment size bounds the run"
        );
        let mut mixed = vec![e(0, 1000)];
        mixed.extend((1..12).map(|i| e(i, 10)));
        assert_eq!(
            plan(&mixed, 4, 1000),
            Some((1, 8)),
            "a full segment is skipped"
        );
        let many: Vec<IndexEntry> = (0..300).map(|i| e(i, 1)).collect();
        let (a, z) = plan(&many, 4, 1 << 20).unwrap();
        assert_eq!(z - a, ENTRIES_PER_STEP);
    }

    #[test]
    fn a_large_entry_does_not_stall_compaction() {
        let mut stuck = vec![e(0, 400), e(1, 900)];
        stuck.extend((2..12).map(|i| e(i, 10)));
        assert_eq!(plan(&stuck, 4, 1000), Some((2, 8)), "the small ones fold");
        let mut big_first = vec![e(0, 990)];
        big_first.extend((1..12).map(|i| e(i, 10)));
        assert_eq!(
            plan(&big_first, 4, 1000),
            Some((1, 8)),
            "a grown segment is not rewritten for a little new data"
        );
        let mut grown = vec![e(0, 300)];
        grown.extend((1..12).map(|i| e(i, 40)));
        assert_eq!(
            plan(&grown, 4, 1000),
            Some((0, 8)),
            "but is once as much joins"
        );
    }

    /// Rule (issue 11.2): a run whose folded entry would record more idempotent batches than
    /// the budget is cut short, so no compaction transaction nears the store's request limit.
    #[test]
    fn runs_are_cut_at_the_producer_budget() {
        let many = |base: i64, pids: std::ops::Range<i64>| {
            let mut x = e(base, 10);
            x.producers = pids
                .map(|pid| ProducerBatch {
                    pid,
                    epoch: 0,
                    first_seq: 0,
                    last_seq: 0,
                    base_offset: base,
                })
                .collect();
            x
        };
        // Twelve entries of 800 distinct producers each: only two fit one fold.
        let entries: Vec<IndexEntry> = (0..12).map(|i| many(i, i * 800..(i + 1) * 800)).collect();
        let (a, z) = plan(&entries, 4, 1 << 30).unwrap();
        assert_eq!(z - a, 2);
        let folded = fold_producers(&entries[a..z]);
        assert!(folded.len() <= MAX_FOLDED_PRODUCER_BATCHES);
        let txn_bytes = silt_meta::Txn {
            success: vec![index::put_op(
                &uuid::Uuid::nil(),
                0,
                &IndexEntry {
                    producers: folded,
                    ..entries[0].clone()
                },
            )],
            ..Default::default()
        }
        .encoded_len();
        assert!(
            txn_bytes < silt_meta::LIMITS.max_request_bytes / 4,
            "{txn_bytes}"
        );
        // One producer writing many batches folds without limit (five are kept).
        let one: Vec<IndexEntry> = (0..120).map(|i| many(i, 7..8)).collect();
        let (a, z) = plan(&one, 4, 1 << 30).unwrap();
        assert_eq!(z - a, ENTRIES_PER_STEP);
    }

    #[test]
    fn folded_entries_keep_the_last_batches_per_producer() {
        let run: Vec<IndexEntry> = (0..20).map(|i| e(i, 1)).collect();
        let kept = fold_producers(&run);
        assert_eq!(
            kept.iter().map(|b| b.base_offset).collect::<Vec<_>>(),
            vec![15, 16, 17, 18, 19]
        );
    }
}
