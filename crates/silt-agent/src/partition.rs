//! One partition's state on its leader: offsets assigned, the committed high watermark, the
//! committed offset index (which object holds which range), idempotent-producer state and
//! transactions (open ones bound the last stable offset; aborted ones are listed to readers).
//!
//! The state is rebuilt from the metadata store when the partition is loaded; nothing here is
//! durable by itself. Offsets at or above the high watermark are never read.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use silt_meta::layout::assignment;
use silt_meta::layout::index::{self, IndexEntry};
use silt_meta::{Compare, MetaError, MetaKv};
use uuid::Uuid;

use crate::producer::ProducerStates;

/// A partition led by this agent, for one term of leadership: a move away and back makes a
/// new `Partition`, loaded afresh.
#[derive(Debug)]
pub struct Partition {
    /// Topic name.
    pub topic: String,
    /// Topic id.
    pub topic_id: Uuid,
    /// Partition index.
    pub index: i32,
    /// The assignment key's mod revision this term began at; every commit compares it.
    pub fence_revision: i64,
    /// Set when leadership is gone: appends are refused and nothing more commits.
    closed: AtomicBool,
    /// The last flush generation whose batches of this partition committed.
    durable_gen: AtomicU64,
    state: Mutex<PartitionState>,
    /// Fetches long-polling this partition: told of every commit, new log start and the end
    /// of leadership ([`Partition::changed`]), and of nothing else.
    readers: Arc<Notify>,
    /// Record-batch bytes produced to and fetched from it here (the load placement reads).
    pub traffic: Traffic,
}

/// Bytes through a partition on this agent, counted without its lock.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Record-batch bytes accepted.
    pub produced: AtomicU64,
    /// Record-batch bytes returned to consumers.
    pub fetched: AtomicU64,
}

impl Traffic {
    /// Both directions together.
    pub fn total(&self) -> u64 {
        self.produced.load(std::sync::atomic::Ordering::Relaxed)
            + self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The mutable part of a partition.
#[derive(Debug, Default)]
pub struct PartitionState {
    /// Next offset to assign (buffered batches included).
    pub next_offset: i64,
    /// One past the last committed offset; the visible end of the log.
    pub high_watermark: i64,
    /// First offset still in the log.
    pub log_start: i64,
    /// Current leader epoch.
    pub leader_epoch: i32,
    /// Committed ranges in offset order.
    pub segments: Vec<IndexEntry>,
    /// Idempotent producers (includes batches not yet committed).
    pub producers: ProducerStates,
    /// Open and aborted transactions.
    pub txns: crate::txn_index::TxnIndex,
    /// Revision the partition's log-start key was last written at: the next lifecycle step
    /// compares it ([`index::log_start_unchanged`]) and moves it.
    pub lifecycle_revision: i64,
    /// Key compaction (on this leader) has cleaned the log up to this offset.
    pub key_cleaned: Option<i64>,
}

impl Partition {
    /// An empty partition (tests; real ones are [`Partition::load`]ed).
    pub fn new(topic: &str, topic_id: Uuid, index: i32) -> Self {
        Self {
            topic: topic.to_owned(),
            topic_id,
            index,
            fence_revision: 0,
            closed: AtomicBool::new(false),
            durable_gen: AtomicU64::new(0),
            state: Mutex::new(PartitionState::default()),
            readers: Arc::new(Notify::new()),
            traffic: Traffic::default(),
        }
    }

    /// Loads a partition's committed state from the offset index, for a term of leadership
    /// that began at assignment revision `fence_revision` with `epoch`.
    pub async fn load(
        meta: &dyn MetaKv,
        topic: &str,
        topic_id: Uuid,
        index: i32,
        epoch: i32,
        fence_revision: i64,
    ) -> Result<Self, MetaError> {
        let entries = index::load_partition(meta, &topic_id, index).await?;
        let stored = index::load_log_start(meta, &topic_id, index).await?;
        Ok(Self::from_index(
            topic,
            topic_id,
            index,
            epoch,
            fence_revision,
            entries,
            stored,
        ))
    }

    /// A partition led from `fence_revision` at `epoch`, rebuilt from its index `entries` (in
    /// offset order) and its stored log start: high watermark and idempotent-producer state.
    pub fn from_index(
        topic: &str,
        topic_id: Uuid,
        index: i32,
        epoch: i32,
        fence_revision: i64,
        entries: Vec<IndexEntry>,
        stored: index::LogStart,
    ) -> Self {
        let stored_start = stored.offset;
        let mut p = Self::new(topic, topic_id, index);
        p.fence_revision = fence_revision;
        {
            let mut st = p.lock();
            st.leader_epoch = epoch;
            for e in entries {
                for b in &e.producers {
                    st.producers.replay(b);
                }
                st.on_commit(e);
            }
            st.txns.reset_buffered();
            st.lifecycle_revision = stored.revision;
            // With every entry deleted by retention, the log ends where it starts.
            st.high_watermark = st.high_watermark.max(stored_start);
            st.next_offset = st.high_watermark;
            st.log_start = st
                .segments
                .first()
                .map_or(stored_start, |s| s.base_offset.max(stored_start));
        }
        p
    }

    /// The compare a commit of this partition carries: leadership has not moved.
    pub fn fence(&self) -> Compare {
        Compare::mod_revision(
            assignment::partition_key(&self.topic_id, self.index),
            self.fence_revision,
        )
    }

    /// The compare a lifecycle step carries: no other step applied since the last this leader
    /// knows of.
    pub fn lifecycle_fence(&self) -> Compare {
        index::log_start_unchanged(&self.topic_id, self.index, self.lock().lifecycle_revision)
    }

    /// Ends this term of leadership: no more appends; buffered batches fail their commit.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed();
    }

    /// Wakes the fetches waiting on this partition: its high watermark or log start moved, or
    /// leadership is gone. Callers change the state first.
    pub fn changed(&self) {
        self.readers.notify_waiters();
    }

    /// A wait for the next [`Self::changed`], armed now: a change after this call wakes it
    /// even if it is first polled later.
    pub fn next_change(&self) -> Pin<Box<OwnedNotified>> {
        let mut wait = Box::pin(self.readers.clone().notified_owned());
        wait.as_mut().enable();
        wait
    }

    /// Whether leadership of this term is gone.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Records that flush generation `gen` committed this partition's batches.
    pub fn mark_durable(&self, gen: u64) {
        self.durable_gen.fetch_max(gen, Ordering::SeqCst);
    }

    /// Whether this partition's batches of generation `gen` committed.
    pub fn is_durable(&self, gen: u64) -> bool {
        self.durable_gen.load(Ordering::SeqCst) >= gen
    }

    /// Locks the state. Never held across an await.
    pub fn lock(&self) -> MutexGuard<'_, PartitionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The one-object ranges of `s` that hold `offset` or follow it.
fn split_from(s: &IndexEntry, offset: i64) -> Vec<IndexEntry> {
    if s.pieces.is_empty() {
        return vec![s.clone()];
    }
    let mut pieces = s.split();
    pieces.retain(|p| p.last_offset >= offset);
    pieces
}

impl PartitionState {
    /// Makes a committed range visible.
    pub fn on_commit(&mut self, entry: IndexEntry) {
        debug_assert!(entry.base_offset >= self.high_watermark);
        self.high_watermark = entry.last_offset + 1;
        self.next_offset = self.next_offset.max(self.high_watermark);
        self.txns.apply(&entry.txns);
        self.segments.push(entry);
    }

    /// Moves the log start to `offset` (never backwards, never past the high watermark) and
    /// forgets the ranges wholly below it.
    pub fn truncate_before(&mut self, offset: i64) {
        let offset = offset.min(self.high_watermark);
        if offset <= self.log_start {
            return;
        }
        self.log_start = offset;
        self.segments.retain(|s| s.last_offset >= offset);
        self.txns.truncate_before(offset);
    }

    /// The committed ranges to read for a fetch at `offset` of up to `max_bytes`, each in one
    /// object (a range of several pieces is read piece by piece, from the one holding `offset`).
    pub fn locate(&self, offset: i64, max_bytes: usize) -> Vec<IndexEntry> {
        let start = self.segments.partition_point(|s| s.last_offset < offset);
        let mut out = Vec::new();
        let mut bytes = 0u64;
        'ranges: for s in &self.segments[start..] {
            for piece in split_from(s, offset) {
                if !out.is_empty() && bytes >= max_bytes as u64 {
                    break 'ranges;
                }
                bytes += piece.len;
                out.push(piece);
            }
        }
        out
    }

    /// Up to `n` committed ranges (pieces, as [`Self::locate`] gives them) after the one
    /// holding `offset`.
    pub fn next_ranges(&self, offset: i64, n: usize) -> Vec<IndexEntry> {
        let start = self.segments.partition_point(|s| s.last_offset <= offset);
        self.segments[start..]
            .iter()
            .flat_map(|s| split_from(s, offset + 1))
            .take(n)
            .collect()
    }

    /// Segments whose max timestamp is at least `ts`, from the first such one.
    pub fn first_segment_at_or_after(&self, ts: i64) -> Option<IndexEntry> {
        self.segments
            .iter()
            .find(|s| s.max_timestamp >= ts)
            .cloned()
    }

    /// The segment holding the largest timestamp (the last one on ties).
    pub fn max_timestamp_segment(&self) -> Option<IndexEntry> {
        self.segments
            .iter()
            .rev()
            .max_by_key(|s| s.max_timestamp)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_armed_before_a_change_sees_it() {
        use futures::FutureExt;
        let p = Partition::new("t", Uuid::nil(), 0);
        let early = p.next_change();
        // Nothing changed yet: not ready.
        let mut pending = p.next_change();
        assert!((&mut pending).now_or_never().is_none());
        p.changed();
        // Armed before the change, first polled after it: woken.
        assert!(early.now_or_never().is_some());
        assert!(pending.now_or_never().is_some());
        // A wait armed after the change waits for the next one; closing is one.
        let late = p.next_change();
        p.close();
        assert!(late.now_or_never().is_some());
    }

    fn entry(base: i64, last: i64, len: u64) -> IndexEntry {
        IndexEntry {
            object: "o".into(),
            pos: 0,
            len,
            base_offset: base,
            last_offset: last,
            max_timestamp: base * 10,
            producers: vec![],
            marks: vec![],
            txns: vec![],
            pieces: Vec::new(),
        }
    }

    #[test]
    fn commits_advance_the_high_watermark_and_locate_finds_ranges() {
        let mut st = PartitionState::default();
        st.on_commit(entry(0, 9, 100));
        st.on_commit(entry(10, 19, 100));
        st.on_commit(entry(20, 29, 100));
        assert_eq!(st.high_watermark, 30);
        let got: Vec<i64> = st.locate(15, 1).iter().map(|e| e.base_offset).collect();
        assert_eq!(got, vec![10], "at least one range even when over budget");
        let got: Vec<i64> = st.locate(5, 150).iter().map(|e| e.base_offset).collect();
        assert_eq!(got, vec![0, 10]);
        assert!(st.locate(30, 100).is_empty());
        assert_eq!(st.first_segment_at_or_after(101).unwrap().base_offset, 20);
        assert_eq!(st.max_timestamp_segment().unwrap().base_offset, 20);
    }
}
