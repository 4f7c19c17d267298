//! Compaction on each partition's leader: runs of small committed ranges (one index entry per
//! flush) are folded into one segment object per run, so objects and index keys per partition
//! stay bounded whatever the uptime.
//!
//! A step: pick the oldest run of at least two consecutive entries (up to
//! `lifecycle.segment_bytes` and [`MAX_PIECES`] objects, at most [`ENTRIES_PER_STEP`]). Its
//! flush ranges are read and written unchanged as one new segment object; the segments already
//! in it are taken **by reference**, as pieces of the new entry ([`IndexEntry::pieces`]), never
//! copied again — so every byte is rewritten once, when its flush range is folded (write
//! amplification 1×), and a run of segments only is folded without reading or writing data.
//! Then ONE fenced transaction (this agent's registration, the partition's assignment) replaces
//! the run's entries with one entry for the result. Offsets and batch bytes are unchanged, so a
//! consumer sees each offset exactly once whether it read before or after; a crash before the
//! commit leaves an unreferenced segment (garbage), after it the old flush objects (garbage
//! once nothing else references them). Idempotent and resumable: the next pass starts from
//! whatever is committed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use silt_meta::layout::index::{self, IndexEntry, Piece, ProducerBatch};
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

/// The run to fold next: indices `[from, to)` of `segments`, or `None`. A run's leading pieces
/// of segments of at least [`min_piece`] bytes are kept by reference; from its first flush
/// range or small piece on, everything is copied into one new object, which never takes a
/// large piece in again.
pub fn plan(
    segments: &[IndexEntry],
    min_entries: usize,
    segment_bytes: u64,
) -> Option<(usize, usize)> {
    if segments.len() < min_entries.max(2) + KEEP_RECENT {
        return None;
    }
    let candidates = segments.len() - KEEP_RECENT;
    let min = min_piece(segment_bytes);
    // The oldest start from which at least two entries fit in one entry.
    (0..candidates).find_map(|start| {
        let mut end = start;
        let mut bytes = 0u64;
        let mut kept_pieces = 0usize;
        let mut copying = false;
        let mut copy_bytes = 0u64;
        let mut kept = ProducerBudget::default();
        let mut txn_marks = 0usize;
        while end < candidates {
            let e = &segments[end];
            let (mut k, mut c, mut cb) = (kept_pieces, copying, copy_bytes);
            let mut fits = true;
            for piece in e.as_pieces() {
                if is_segment(e) && piece.len >= min {
                    if c {
                        fits = false; // a large piece is never copied again
                        break;
                    }
                    k += 1;
                } else {
                    c = true;
                    cb += piece.len;
                }
            }
            // What a step copies is held in memory: at most COPY_PER_STEP (or one range).
            if cb > COPY_PER_STEP && copy_bytes > 0 {
                fits = false;
            }
            if !fits
                || end - start >= ENTRIES_PER_STEP
                || bytes + e.len > segment_bytes
                || k + usize::from(c) > MAX_PIECES
                || !kept.fits(e)
                || txn_marks + e.txns.len() > MAX_FOLDED_TXN_MARKS
            {
                break;
            }
            (kept_pieces, copying, copy_bytes) = (k, c, cb);
            txn_marks += e.txns.len();
            bytes += e.len;
            kept.add(e);
            end += 1;
        }
        (end - start >= 2).then_some((start, end))
    })
}

/// Most bytes one step reads and writes (a single larger flush range is copied alone): the
/// step holds them in memory, outside the produce buffer's budget.
pub const COPY_PER_STEP: u64 = 16 << 20;

/// The smallest piece a folded range keeps by reference: smaller ones are copied again with
/// the flush ranges after them, so a range never reads from many tiny objects.
pub fn min_piece(segment_bytes: u64) -> u64 {
    segment_bytes / MAX_PIECES as u64
}

/// The pieces of `run` a fold keeps by reference (the leading large pieces of segments), and
/// the ranges it copies into one new object, in order.
pub(crate) fn split_run(run: &[IndexEntry], segment_bytes: u64) -> (Vec<Piece>, Vec<IndexEntry>) {
    let min = min_piece(segment_bytes);
    let mut kept = Vec::new();
    let mut copied = Vec::new();
    for e in run {
        if !is_segment(e) {
            copied.push(e.clone());
            continue;
        }
        for (piece, one) in e.as_pieces().into_iter().zip(e.split()) {
            if copied.is_empty() && piece.len >= min {
                kept.push(piece);
            } else {
                copied.push(one);
            }
        }
    }
    (kept, copied)
}

/// Whether `e` is compaction's output (a segment, kept by reference when folded again) rather
/// than a flush range (copied into a new segment when folded).
pub(crate) fn is_segment(e: &IndexEntry) -> bool {
    !e.pieces.is_empty() || e.object.starts_with("segments/")
}

/// Most objects one folded entry reads from (its pieces), keeping entries small in the store.
pub const MAX_PIECES: usize = 64;

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

/// Most steps on one partition per pass: enough to fold what a partition taking tens of MB/s
/// flushed since the last pass (a step folds up to `segment_bytes`), few enough that none
/// starves the others.
const STEPS_PER_PASS: usize = 64;

/// Compaction as a periodic job: every `lifecycle.compact_interval_ms`, up to
/// [`STEPS_PER_PASS`] steps on each partition led here.
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
            for _ in 0..STEPS_PER_PASS {
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
    // Large pieces of segments are taken by reference; only the rest is read and copied.
    let (kept, copied) = split_run(&run, l.segment_bytes);
    let mut datas: Vec<Bytes> = Vec::with_capacity(copied.len());
    for e in &copied {
        // Read once and written on: kept out of the block cache, which is for readers.
        datas.push(crate::read::range_bytes_uncached(&b.storage, &b.cache, e).await?);
    }
    let bytes = replace_run(b, p, &run, kept, &copied, &datas, false).await?;
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

/// Replaces the consecutive committed entries `run` with one entry: the `kept` pieces by
/// reference, then the `copied` ranges that follow them as `datas` — their batches, as they are
/// or (`rewritten`) with records taken out by key compaction — written as one new segment
/// object. One fenced transaction, then the leader's index. Returns the bytes written.
pub(crate) async fn replace_run(
    b: &Broker,
    p: &Partition,
    run: &[IndexEntry],
    kept: Vec<Piece>,
    copied: &[IndexEntry],
    datas: &[Bytes],
    rewritten: bool,
) -> Result<u64, PartitionError> {
    let first = &run[0];
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
    let mut pieces = kept;
    let n = b.compaction.started.fetch_add(1, Ordering::SeqCst) + 1;
    let mut written = None;
    let mut bytes = 0;
    if let (Some(from), Some(to)) = (copied.first(), copied.last()) {
        let copied_max = copied
            .iter()
            .map(|e| e.max_timestamp)
            .max()
            .unwrap_or(-1)
            .min(max_ts);
        // The batches as they were read, and a footer: no copy into one buffer.
        let (chunks, f) = ObjectBuilder::chunks(
            p.topic_id,
            p.index,
            datas,
            from.base_offset,
            to.last_offset,
            copied_max,
        );
        let path = paths::segment_object(
            &p.topic_id,
            p.index,
            n,
            from.base_offset,
            to.last_offset,
            &b.session,
        );
        pieces.push(Piece {
            object: path.to_string(),
            pos: f.pos,
            len: f.len,
            base_offset: from.base_offset,
            last_offset: to.last_offset,
            marks: fold_marks(datas),
        });
        bytes = f.len;
        written = Some((path, chunks));
    }
    let res = commit_segment(b, p, run, written, pieces, max_ts).await;
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

/// Marks kept per piece of an entry made of several: a segment's [`MAX_MARKS`] thinned to
/// this many (a 64 MiB segment's marks 1 MiB apart, within a 2 MiB read window), so the largest
/// entry stays far inside the metadata store's request limit.
const PIECE_MARKS: usize = 64;

/// Every `ceil(n / max)`-th of `marks`, starting with the first.
fn thin_marks(marks: &mut Vec<(i64, u64)>, max: usize) {
    if marks.len() > max {
        let step = marks.len().div_ceil(max);
        let mut i = 0;
        marks.retain(|_| {
            i += 1;
            (i - 1) % step == 0
        });
    }
}

/// The entry that replaces `run`: its bytes are `pieces` (one: a plain range with the piece's
/// marks; several: a pieced range, each piece's marks thinned to [`PIECE_MARKS`]).
fn folded_entry(run: &[IndexEntry], mut pieces: Vec<Piece>, max_ts: i64) -> IndexEntry {
    let (first, last) = (&run[0], &run[run.len() - 1]);
    let mut folded = IndexEntry {
        object: pieces[0].object.clone(),
        pos: pieces[0].pos,
        len: pieces.iter().map(|x| x.len).sum(),
        base_offset: first.base_offset,
        last_offset: last.last_offset,
        max_timestamp: max_ts,
        producers: fold_producers(run),
        marks: Vec::new(),
        txns: fold_txns(run),
        pieces: Vec::new(),
    };
    if pieces.len() == 1 {
        folded.marks = pieces.pop().map(|x| x.marks).unwrap_or_default();
    } else {
        for piece in &mut pieces {
            thin_marks(&mut piece.marks, PIECE_MARKS);
        }
        folded.pieces = pieces;
    }
    folded
}

/// Writes the new segment object, if any, and commits the folded entry, with a definite
/// outcome ([`super::commit_answered`]): garbage collection relies on a finished step having
/// one.
async fn commit_segment(
    b: &Broker,
    p: &Partition,
    run: &[IndexEntry],
    written: Option<(object_store::path::Path, Vec<Bytes>)>,
    pieces: Vec<Piece>,
    max_ts: i64,
) -> Result<IndexEntry, PartitionError> {
    if let Some((path, chunks)) = written {
        b.storage.put_chunks(&path, chunks).await?;
        b.crash_points
            .at(crate::crash_points::COMPACTION_AFTER_PUT)
            .await;
    }
    let folded = folded_entry(run, pieces, max_ts);
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
            pieces: Vec::new(),
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
        assert_eq!(plan(&stuck, 4, 1000), Some((1, 8)), "what fits folds");
        let mut full = vec![seg(0, 1000, 1)];
        full.extend((1..12).map(|i| e(i, 10)));
        assert_eq!(plan(&full, 4, 1000), Some((1, 8)), "a full segment is left");
    }

    /// A segment compaction wrote is never copied again: it joins a later run by reference, as
    /// pieces, and only flush ranges are read and written.
    fn seg(base: i64, len: u64, pieces: usize) -> IndexEntry {
        let mut x = e(base, len);
        x.object = format!("segments/t/0/s/{base}.silt");
        if pieces > 1 {
            x.pieces = (0..pieces)
                .map(|i| Piece {
                    object: format!("segments/t/0/s/{base}-{i}.silt"),
                    pos: 0,
                    len: len / pieces as u64,
                    base_offset: base,
                    last_offset: base,
                    marks: vec![],
                })
                .collect();
        }
        x
    }

    #[test]
    fn segments_join_runs_by_reference_and_first() {
        // Pieces of at least segment_bytes / 64 are large: kept by reference.
        let mut grown = vec![seg(0, 990, 3)];
        grown.extend((1..12).map(|i| e(i, 10)));
        assert_eq!(
            plan(&grown, 4, 1000),
            Some((0, 2)),
            "a grown segment takes new data in"
        );
        let (kept, copied) = split_run(&grown[0..2], 1000);
        assert_eq!(
            (kept.len(), copied.len()),
            (3, 1),
            "only the flush range is copied"
        );
        let mut mixed = vec![e(0, 10), seg(1, 10, 1), seg(2, 10, 2)];
        mixed.extend((3..12).map(|i| e(i, 10)));
        assert_eq!(
            plan(&mixed, 4, 640),
            Some((1, 8)),
            "a large piece is never copied again: it leads a run"
        );
        let (kept, copied) = split_run(&mixed[1..8], 640);
        assert_eq!(
            (kept.len(), copied.len()),
            (1, 7),
            "small pieces are copied with the flush ranges after them"
        );
        let many: Vec<IndexEntry> = (0..80).map(|i| seg(i, 10, 1)).collect();
        let (a, z) = plan(&many, 4, 640).unwrap();
        assert_eq!((a, z - a), (0, MAX_PIECES), "pieces per entry are bounded");
        let mut tiny = vec![seg(0, 100, 10)];
        tiny.extend((1..12).map(|i| e(i, 10)));
        assert_eq!(plan(&tiny, 4, 6400), Some((0, 8)));
        let (kept, copied) = split_run(&tiny[0..8], 6400);
        assert_eq!(
            (kept.len(), copied.len()),
            (0, 17),
            "tiny pieces are copied again"
        );
        // A step holds what it copies in memory: at most COPY_PER_STEP, or one larger range.
        let mib: Vec<IndexEntry> = (0..40).map(|i| e(i, 1 << 20)).collect();
        let (a, z) = plan(&mib, 4, 64 << 20).unwrap();
        assert_eq!(z - a, (COPY_PER_STEP >> 20) as usize);
        let huge: Vec<IndexEntry> = (0..8).map(|i| e(i, 40 << 20)).collect();
        assert_eq!(
            plan(&huge, 2, 1 << 30),
            None,
            "ranges that large stay as they are"
        );
    }

    /// Issue 14: compaction's write amplification. A partition taking flush ranges of a given
    /// size every 100 ms, compacted every `interval` (as many steps per pass as the job takes),
    /// with retention dropping what is older than `retention` seconds: the bytes compaction
    /// writes, per byte written, and the most index entries the partition had.
    fn amplification(range: u64, interval: u32, retention: u32, seconds: u32) -> (f64, usize) {
        let mut segments: Vec<(IndexEntry, u32)> = Vec::new();
        let (mut written, mut copied, mut most) = (0u64, 0u64, 0usize);
        for tick in 1..=seconds * 10 {
            segments.push((e(tick as i64, range), tick));
            written += range;
            while segments.len() > 1 && segments[0].1 + retention * 10 < tick {
                segments.remove(0);
            }
            if tick % (interval * 10) == 0 {
                for _ in 0..STEPS_PER_PASS {
                    let entries: Vec<IndexEntry> = segments.iter().map(|x| x.0.clone()).collect();
                    let Some((a, z)) = plan(&entries, 32, 64 << 20) else {
                        break;
                    };
                    let run = &entries[a..z];
                    let (mut pieces, copies) = split_run(run, 64 << 20);
                    let len: u64 = copies.iter().map(|x| x.len).sum();
                    copied += len;
                    if let Some(first) = copies.first() {
                        pieces.push(seg(first.base_offset, len, 1).as_pieces().remove(0));
                    }
                    let mut folded = seg(run[0].base_offset, run.iter().map(|x| x.len).sum(), 1);
                    folded.last_offset = run[run.len() - 1].last_offset;
                    if pieces.len() > 1 {
                        folded.pieces = pieces;
                    }
                    let newest = segments[z - 1].1;
                    segments.splice(a..z, [(folded, newest)]);
                }
            }
            most = most.max(segments.len());
        }
        (copied as f64 / written as f64, most)
    }

    #[test]
    fn every_byte_is_rewritten_once_and_entries_stay_few() {
        // (flush range bytes, compaction interval s, retention s): the long run's shape (25 KB
        // ranges every 100 ms, compaction every 10 s, 10 minutes' retention), the defaults
        // (30 s), and larger ranges.
        for (range, interval, retention) in [
            (25_000, 10, 600),
            (25_000, 30, 3_600),
            (100_000, 30, 3_600),
            (1_000_000, 30, 3_600),
        ] {
            let (amp, most) = amplification(range, interval, retention, 3_600);
            // Every byte is copied once when its flush range is folded, and a small piece
            // again (the target of issue 14: at most 1.5x).
            assert!((0.9..=1.5).contains(&amp), "{range} B ranges: {amp:.3}x");
            // Bounded by the data kept (segment_bytes per entry, MAX_PIECES objects), not by
            // the flushes: at most a pass's new ranges, the recent ones, and the segments.
            let data = range * 10 * retention as u64;
            let segments = (data / (64 << 20)) as usize
                + data as usize / (range as usize * 28 * MAX_PIECES)
                + 2;
            assert!(
                most <= interval as usize * 10 + KEEP_RECENT + 32 + segments,
                "{range} B ranges: {most} entries"
            );
            eprintln!("{range} B ranges every 100 ms, compaction every {interval} s: {amp:.3}x, at most {most} entries");
        }
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

    /// Issue 11.2 at the largest entry a fold can write: [`MAX_PIECES`] segment pieces with
    /// [`MAX_MARKS`] marks each, [`MAX_FOLDED_PRODUCER_BATCHES`] producer batches and
    /// [`MAX_FOLDED_TXN_MARKS`] transaction marks, every number at its widest, plus the deletes
    /// of [`ENTRIES_PER_STEP`] entries: the transaction fits etcd's request limit (1.5 MiB)
    /// and operation limit (128), with room to spare.
    #[test]
    fn the_largest_fold_fits_the_metadata_store_limits() {
        let wide = i64::MAX / 3;
        let path = |i: u64| {
            silt_storage::paths::segment_object(
                &uuid::Uuid::from_u128(u128::MAX - 7),
                i32::MAX,
                u64::MAX - i,
                wide,
                wide + 1,
                &"f".repeat(32),
            )
            .to_string()
        };
        let marks: Vec<(i64, u64)> = (0..MAX_MARKS as i64)
            .map(|i| (wide + i, u64::MAX / 5))
            .collect();
        let pieces: Vec<Piece> = (0..MAX_PIECES as u64)
            .map(|i| Piece {
                object: path(i),
                pos: u64::MAX / 5,
                len: 1 << 57,
                base_offset: wide,
                last_offset: wide,
                marks: marks.clone(),
            })
            .collect();
        let run = [e(wide, 10), e(wide + 10, 10)];
        let mut entry = folded_entry(&run, pieces, wide);
        assert!(entry.pieces.iter().all(|p| p.marks.len() <= PIECE_MARKS));
        entry = IndexEntry {
            object: path(999),
            pos: u64::MAX / 5,
            len: u64::MAX / 5,
            base_offset: wide,
            last_offset: wide,
            max_timestamp: wide,
            producers: (0..MAX_FOLDED_PRODUCER_BATCHES as i64)
                .map(|i| ProducerBatch {
                    pid: wide + i,
                    epoch: i16::MAX,
                    first_seq: i32::MAX - 1,
                    last_seq: i32::MAX,
                    base_offset: wide,
                })
                .collect(),
            marks: marks.clone(),
            txns: (0..MAX_FOLDED_TXN_MARKS as i64)
                .map(|i| silt_meta::layout::index::TxnMark {
                    pid: wide + i,
                    first_offset: wide,
                    end: Some((wide, true)),
                })
                .collect(),
            ..entry
        };
        let id = uuid::Uuid::from_u128(u128::MAX - 7);
        let mut success: Vec<_> = (0..ENTRIES_PER_STEP as i64)
            .map(|i| index::delete_op(&id, i32::MAX, wide + i))
            .collect();
        success.push(index::put_op(&id, i32::MAX, &entry));
        success.push(index::log_start_op(&id, i32::MAX, wide));
        let txn = silt_meta::Txn {
            success,
            ..Default::default()
        };
        let (bytes, ops) = (txn.encoded_len(), txn.success.len() + 2);
        assert!(
            bytes < silt_meta::LIMITS.max_request_bytes * 3 / 4,
            "{bytes} bytes against {}",
            silt_meta::LIMITS.max_request_bytes
        );
        assert!(ops <= 128, "{ops} operations");
        eprintln!("largest fold: {bytes} bytes, {ops} operations");
    }

    #[test]
    fn thinned_marks_keep_the_first_and_stay_evenly_spread() {
        for n in [0usize, 1, 63, 64, 65, 128, 255, 256] {
            let mut m: Vec<(i64, u64)> = (0..n as i64).map(|i| (i, i as u64 * 10)).collect();
            thin_marks(&mut m, PIECE_MARKS);
            assert!(
                m.len() <= PIECE_MARKS && m.len() >= n.min(PIECE_MARKS) / 2,
                "{n}: {}",
                m.len()
            );
            assert_eq!(m.first().map(|x| x.0), (n > 0).then_some(0));
            let gaps: Vec<i64> = m.windows(2).map(|w| w[1].0 - w[0].0).collect();
            assert!(
                gaps.windows(2).all(|g| g[0] == g[1]),
                "{n}: uneven {gaps:?}"
            );
        }
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
