//! The flush pipeline: the write path's heart.
//!
//! Produce handlers push validated, offset-assigned batches into one buffer shared by every
//! partition this agent leads. A single task turns the buffer into a flush every
//! `flush.interval_ms` or as soon as `flush.max_bytes` are buffered:
//!
//! 1. ONE object PUT holding every buffered partition's batches plus a footer;
//! 2. ONE metadata transaction adding an index entry per partition (several when a flush holds
//!    more than [`PARTITIONS_PER_TXN`] partitions: etcd caps a transaction at 128 operations),
//!    fenced on this agent's registration and on each partition's assignment, so a replaced
//!    agent or a deposed leader can never make its data visible, and on each partition's last
//!    lifecycle step, so a copy the store applies late cannot undo a later compaction or
//!    retention step;
//! 3. only then the high watermarks advance and `acks=all` producers are answered.
//!
//! Several flushes' PUTs may run at once (`flush.max_in_flight`), but commits are strictly
//! sequential in flush order, so offsets become visible in order. A failed PUT or commit
//! is retried (with backoff) until it succeeds; meanwhile the bounded buffer fills and producers
//! wait for room (backpressure). The buffer's byte budget is released only when a flush commits.
//! A partition whose leadership moved fails its commit alone: its batches are answered
//! NOT_LEADER_OR_FOLLOWER and the rest of the flush commits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use silt_common::config::FlushSettings;
use silt_meta::layout::index::{IndexEntry, ProducerBatch};
use silt_meta::layout::{assignment, index};
use silt_meta::{Compare, CompareTarget, MetaKv, Txn};
use silt_storage::object::ObjectBuilder;
use silt_storage::{paths, Storage};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cache::ObjectCache;
use crate::crash_points;
use crate::error::PartitionError;
use crate::partition::Partition;

/// A batch waiting to be flushed.
#[derive(Debug)]
pub struct Pending {
    /// Its partition.
    pub partition: Arc<Partition>,
    /// First offset.
    pub base_offset: i64,
    /// Last offset.
    pub last_offset: i64,
    /// Largest timestamp.
    pub max_timestamp: i64,
    /// The batch, already rewritten with its offsets.
    pub data: Bytes,
    /// Idempotence state to persist with it.
    pub producer: Option<ProducerBatch>,
    /// The transaction it opens or (a marker) ends in its partition.
    pub txn: Option<silt_meta::layout::index::TxnMark>,
    /// Its share of the buffer budget, released when the flush commits.
    pub permit: OwnedSemaphorePermit,
}

/// What waiters can observe about the flusher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlushProgress {
    /// Every flush generation up to and including this one is committed.
    pub committed: u64,
    /// The flusher stopped (shut down or fenced); nothing more will commit.
    pub stopped: bool,
}

#[derive(Debug, Default)]
struct Buffer {
    generation: u64,
    items: Vec<Pending>,
    bytes: usize,
    first_at: Option<Instant>,
    /// When the last batch was buffered (early flushes wait for a quiet spell after it).
    last_at: Option<Instant>,
    closed: bool,
    /// Something buffered is waited on by a transaction's commit: flush without waiting out
    /// the interval.
    urgent: bool,
}

/// Counters of the flush pipeline.
#[derive(Debug)]
pub struct FlushStats {
    /// Bytes of batches per committed flush.
    pub size: silt_common::metrics::Histogram,
    /// Time from a flush's start (buffer taken) to its commit.
    pub latency: silt_common::metrics::Histogram,
    /// Flushes committed.
    pub flushes: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Bytes of batches committed.
    pub bytes: AtomicU64,
    /// Metadata commits made.
    pub commits: AtomicU64,
    /// Commit transactions the metadata store refused for good (their writes failed).
    pub refused: AtomicU64,
}

impl Default for FlushStats {
    fn default() -> Self {
        Self {
            size: silt_common::metrics::Histogram::new(silt_common::metrics::SIZE_BUCKETS),
            latency: silt_common::metrics::Histogram::latency(),
            flushes: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }
}

/// Handle to the flush pipeline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Flusher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: FlushSettings,
    buffer: Mutex<Buffer>,
    wake: Notify,
    progress: watch::Sender<FlushProgress>,
    /// Set once with `progress.stopped`, for waiters that care only about the end (fetch
    /// long-polls, which partitions wake).
    halted: watch::Sender<bool>,
    budget: Arc<Semaphore>,
    storage: Storage,
    meta: Arc<dyn MetaKv>,
    cache: Arc<ObjectCache>,
    node_id: i32,
    session: String,
    /// This agent's registration compare.
    registered: Compare,
    /// Where a test may stop this pipeline as if the agent had crashed.
    crash: Arc<crate::crash_points::CrashPoints>,
    stats: FlushStats,
}

/// Index entries per commit transaction: each brings two compares (the partition's assignment
/// and its last lifecycle step) and one put, so with the registration compare 121 compares, inside
/// etcd's default `--max-txn-ops` of 128 (which bounds compares and operations separately).
pub const PARTITIONS_PER_TXN: usize = 60;

/// Bytes of index entries per commit transaction, well inside etcd's default request limit
/// (`--max-request-bytes`, 1.5 MiB): entries of many small idempotent batches are large.
pub const BYTES_PER_TXN: usize = 512 * 1024;

/// Most idempotent batches one index entry records: a flush of one partition that carries more
/// (thousands of producers in one flush interval) is recorded as several entries, so no entry
/// comes near the metadata store's request limit.
pub const PRODUCER_BATCHES_PER_ENTRY: usize = 1000;

/// A partition's batches in a flush object (from `pos`) as index entries of at most
/// [`PRODUCER_BATCHES_PER_ENTRY`] idempotent batches each, in offset order.
fn split_entries(object: &str, pos: u64, batches: &[&Pending]) -> Vec<IndexEntry> {
    let mut out: Vec<IndexEntry> = Vec::new();
    let mut at = pos;
    for b in batches {
        let full = out.last().is_none_or(|e| {
            e.producers.len() >= PRODUCER_BATCHES_PER_ENTRY && b.producer.is_some()
        });
        if full {
            out.push(IndexEntry {
                object: object.to_string(),
                pos: at,
                len: 0,
                base_offset: b.base_offset,
                last_offset: b.last_offset,
                max_timestamp: b.max_timestamp,
                producers: Vec::new(),
                marks: vec![],
                txns: vec![],
                pieces: Vec::new(),
            });
        }
        let e = out.last_mut().expect("an entry");
        e.len += b.data.len() as u64;
        e.last_offset = b.last_offset;
        e.max_timestamp = e.max_timestamp.max(b.max_timestamp);
        e.producers.extend(b.producer.clone());
        e.txns.extend(b.txn.clone());
        at += b.data.len() as u64;
    }
    out
}

/// Roughly the encoded size of an index entry.
fn entry_size(e: &IndexEntry) -> usize {
    200 + e.object.len() + 110 * e.producers.len() + 70 * e.txns.len()
}

impl Flusher {
    /// A flusher writing with `storage` and committing to `meta` as `node_id`/`session`, every
    /// commit carrying the agent's `registered` compare.
    pub fn new(
        settings: FlushSettings,
        storage: Storage,
        meta: Arc<dyn MetaKv>,
        cache: Arc<ObjectCache>,
        node_id: i32,
        session: String,
        registered: Compare,
    ) -> Self {
        let budget = Arc::new(Semaphore::new(settings.max_buffered_bytes));
        Self {
            inner: Arc::new(Inner {
                settings,
                buffer: Mutex::new(Buffer {
                    generation: 1,
                    ..Default::default()
                }),
                wake: Notify::new(),
                progress: watch::channel(FlushProgress::default()).0,
                halted: watch::channel(false).0,
                budget,
                storage,
                meta,
                cache,
                node_id,
                session,
                registered,
                crash: Default::default(),
                stats: FlushStats::default(),
            }),
        }
    }

    /// The crash points this pipeline stops at when a test arms them (before it is shared).
    pub fn with_crash_points(mut self, crash: Arc<crate::crash_points::CrashPoints>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("set before the flusher is shared")
            .crash = crash;
        self
    }

    /// Counters.
    pub fn stats(&self) -> &FlushStats {
        &self.inner.stats
    }

    /// Bytes buffered or in flight.
    pub fn buffered_bytes(&self) -> usize {
        self.inner.settings.max_buffered_bytes - self.inner.budget.available_permits()
    }

    /// Waits for `bytes` of buffer room, at most `timeout`.
    pub async fn reserve(
        &self,
        bytes: usize,
        timeout: Duration,
    ) -> Result<OwnedSemaphorePermit, PartitionError> {
        let n = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        match tokio::time::timeout(timeout, self.inner.budget.clone().acquire_many_owned(n)).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(PartitionError::NotLeader(
                "the agent is shutting down".into(),
            )),
            Err(_) => Err(PartitionError::Timeout(timeout.as_millis() as i32)),
        }
    }

    /// Adds a batch; returns the flush generation that will carry it.
    pub fn push(&self, p: Pending) -> Result<u64, PartitionError> {
        let mut b = self.inner.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if b.closed {
            return Err(PartitionError::NotLeader(
                "the agent is shutting down and takes no new writes".into(),
            ));
        }
        b.bytes += p.data.len();
        b.items.push(p);
        let now = Instant::now();
        let first = b.first_at.is_none();
        if first {
            b.first_at = Some(now);
        }
        b.last_at = Some(now);
        let full = b.bytes >= self.inner.settings.max_bytes;
        let gen = b.generation;
        drop(b);
        if first || full {
            self.inner.wake.notify_one();
        }
        Ok(gen)
    }

    /// Flushes what is buffered now instead of at the end of the interval (transaction markers:
    /// a producer's commit waits on them). Costs one flush — one object PUT — per call at most.
    pub fn expedite(&self) {
        let mut b = self.inner.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if b.items.is_empty() {
            return;
        }
        b.urgent = true;
        drop(b);
        self.inner.wake.notify_one();
    }

    /// A receiver of flush progress (acks wait on it).
    pub fn subscribe(&self) -> watch::Receiver<FlushProgress> {
        self.inner.progress.subscribe()
    }

    /// A receiver that turns true when the flusher stops: nothing more will commit.
    pub fn halted(&self) -> watch::Receiver<bool> {
        self.inner.halted.subscribe()
    }

    /// Marks the flusher stopped, for both kinds of waiter.
    fn halt(&self) {
        self.inner.progress.send_modify(|p| p.stopped = true);
        self.inner.halted.send_replace(true);
    }

    /// Waits until generation `gen` is done and says whether `partition`'s batches in it
    /// committed.
    pub async fn wait_committed(
        &self,
        gen: u64,
        partition: &Partition,
    ) -> Result<(), PartitionError> {
        let mut rx = self.subscribe();
        let res = rx.wait_for(|p| p.committed >= gen || p.stopped).await;
        if partition.is_durable(gen) {
            // Committed, even if a later part of the same flush was then refused.
            return Ok(());
        }
        match res {
            Ok(p) if p.committed >= gen => Err(PartitionError::NotLeader(format!(
                "leadership of {}-{} moved before the write became durable",
                partition.topic, partition.index
            ))),
            _ => Err(PartitionError::NotLeader(
                "the agent stopped before the write became durable".into(),
            )),
        }
    }

    /// Stops at once: no more writes, and every write not yet committed fails (its waiters are
    /// told now). For a session that lost its lease, whose commits would be refused anyway.
    pub fn abandon(&self) {
        self.close();
        self.halt();
    }

    /// Stops taking writes; the run loop flushes what is buffered and ends.
    pub fn close(&self) {
        self.inner
            .buffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.inner.wake.notify_one();
    }

    /// The flush loop. Returns when closed and drained, or when fenced.
    ///
    /// Up to `flush.max_in_flight` flushes have their objects PUT concurrently; a committer
    /// task commits them strictly in generation order, so offsets become visible in order.
    pub async fn run(self) {
        let interval = Duration::from_millis(self.inner.settings.interval_ms);
        let early = Early::new(&self.inner.settings);
        let mut last_start: Option<Instant> = None;
        let (tx, rx) = mpsc::channel(self.inner.settings.max_in_flight.max(1));
        let committer = tokio::spawn(self.clone().commit_loop(rx));
        loop {
            let (deadline, full, closed, empty) = {
                let b = self.inner.buffer.lock().unwrap_or_else(|e| e.into_inner());
                let regular = b.first_at.map(|t| t + interval);
                (
                    early.deadline(regular, b.last_at, last_start),
                    b.bytes >= self.inner.settings.max_bytes || b.urgent,
                    b.closed,
                    b.items.is_empty(),
                )
            };
            if empty {
                if closed {
                    break;
                }
                self.inner.wake.notified().await;
                continue;
            }
            if !full && !closed {
                if let Some(d) = deadline {
                    if Instant::now() < d {
                        tokio::select! {
                            _ = tokio::time::sleep_until(d) => {}
                            _ = self.inner.wake.notified() => {}
                        }
                        continue;
                    }
                }
            }
            let (gen, items) = {
                let mut b = self.inner.buffer.lock().unwrap_or_else(|e| e.into_inner());
                let gen = b.generation;
                b.generation += 1;
                b.bytes = 0;
                b.first_at = None;
                b.last_at = None;
                b.urgent = false;
                (gen, std::mem::take(&mut b.items))
            };
            last_start = Some(Instant::now());
            let prepared = self.prepare(gen, items);
            let put = tokio::spawn(put_until_written(
                self.inner.storage.clone(),
                prepared.path.clone(),
                prepared.object.clone(),
                self.inner.crash.clone(),
            ));
            if tx.send((prepared, put)).await.is_err() {
                break; // the committer stopped: fenced
            }
        }
        drop(tx);
        let _ = committer.await;
        self.halt();
        self.inner.budget.close();
    }

    async fn commit_loop(self, mut rx: mpsc::Receiver<(Prepared, JoinHandle<()>)>) {
        while let Some((prepared, put)) = rx.recv().await {
            if put.await.is_err() {
                tracing::error!("object PUT task failed; stopping the flush pipeline");
                self.halt();
                self.close();
                break;
            }
            let gen = prepared.gen;
            self.inner.crash.at(crash_points::FLUSH_AFTER_PUT).await;
            if let Err(e) = self.commit(prepared).await {
                tracing::error!(error = %e, "flush pipeline stopped: {e}");
                // Take no more writes, and let the builder loop see it.
                self.halt();
                self.close();
                break;
            }
            self.inner.progress.send_modify(|p| p.committed = gen);
        }
    }

    /// Groups a generation's batches by partition and builds its object.
    fn prepare(&self, gen: u64, items: Vec<Pending>) -> Prepared {
        let started = Instant::now();
        // Group by partition, keeping each partition's batches in offset order.
        let mut groups: Vec<(Arc<Partition>, Vec<&Pending>)> = Vec::new();
        // By term (Arc), not by partition id: a term that ended must not share a commit with
        // the next one.
        let mut slot: HashMap<*const Partition, usize> = HashMap::new();
        for it in &items {
            let key = Arc::as_ptr(&it.partition);
            let i = *slot.entry(key).or_insert_with(|| {
                groups.push((it.partition.clone(), Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(it);
        }
        let path = paths::flush_object(self.inner.node_id, &self.inner.session, gen);
        let data_bytes: usize = items.iter().map(|it| it.data.len()).sum();
        let mut builder = ObjectBuilder::with_capacity(data_bytes, groups.len());
        let mut entries = Vec::with_capacity(groups.len());
        let mut partitions = Vec::with_capacity(groups.len());
        for (p, batches) in &groups {
            let datas: Vec<Bytes> = batches.iter().map(|b| b.data.clone()).collect();
            let base = batches[0].base_offset;
            let last = batches[batches.len() - 1].last_offset;
            let max_ts = batches.iter().map(|b| b.max_timestamp).max().unwrap_or(-1);
            let f = builder.add(p.topic_id, p.index, &datas, base, last, max_ts);
            let parts = split_entries(path.as_ref(), f.pos, batches);
            let n = parts.len();
            for (i, e) in parts.into_iter().enumerate() {
                partitions.push((p.clone(), i + 1 == n));
                entries.push(e);
            }
        }
        let data_bytes = builder.data_len() as u64;
        Prepared {
            gen,
            path,
            object: builder.finish(),
            partitions,
            entries,
            items,
            data_bytes,
            started,
        }
    }

    /// Commits a written flush: fenced transactions (one per [`PARTITIONS_PER_TXN`]
    /// partitions), then visibility. Partitions whose leadership moved are left out and their
    /// waiters told; a lost registration stops the agent's writes altogether.
    async fn commit(&self, f: Prepared) -> Result<(), FlushError> {
        let put_ms = f.started.elapsed().as_millis() as u64;
        let mut live: Vec<((Arc<Partition>, bool), IndexEntry)> = f
            .partitions
            .iter()
            .cloned()
            .zip(f.entries.iter().cloned())
            .filter(|((p, _), _)| !p.is_closed())
            .collect();
        let mut committed = 0usize;
        loop {
            // A partition closed by a refused part of its range (or a move) commits nothing
            // more of this flush: a later entry must never land past a missing earlier one.
            live.retain(|((p, _), _)| !p.is_closed());
            if live.is_empty() {
                break;
            }
            let mut take = 0;
            let mut bytes = 0;
            while take < live.len().min(PARTITIONS_PER_TXN)
                && (take == 0 || bytes + entry_size(&live[take].1) <= BYTES_PER_TXN)
            {
                bytes += entry_size(&live[take].1);
                take += 1;
            }
            let mut chunk: Vec<((Arc<Partition>, bool), IndexEntry)> = live.drain(..take).collect();
            self.commit_chunk(&mut chunk).await?;
            for ((p, last_of_partition), e) in chunk {
                // A partition closed by an earlier refused part of its range stays failed.
                if p.is_closed() {
                    continue;
                }
                p.lock().on_commit(e);
                p.changed();
                // Waiters are answered once the partition's whole range in this flush is in.
                if last_of_partition {
                    p.mark_durable(f.gen);
                    committed += 1;
                }
            }
        }
        self.inner.cache.insert(f.path.as_ref(), f.object);
        let s = &self.inner.stats;
        s.flushes.fetch_add(1, Ordering::Relaxed);
        s.batches.fetch_add(f.items.len() as u64, Ordering::Relaxed);
        s.bytes.fetch_add(f.data_bytes, Ordering::Relaxed);
        s.size.observe(f.data_bytes as f64);
        s.latency.observe_duration(f.started.elapsed());
        tracing::debug!(generation = f.gen, path = %f.path, partitions = f.partitions.len(), committed,
            batches = f.items.len(), bytes = f.data_bytes, put_ms,
            elapsed_ms = f.started.elapsed().as_millis() as u64, "flush committed");
        drop(f.items); // releases the buffer budget
        Ok(())
    }

    /// Commits one chunk; on return, `chunk` holds exactly the partitions that committed.
    async fn commit_chunk(
        &self,
        chunk: &mut Vec<((Arc<Partition>, bool), IndexEntry)>,
    ) -> Result<(), FlushError> {
        let mut attempt = 0u32;
        let mut refused = 0u32;
        loop {
            chunk.retain(|((p, _), _)| !p.is_closed());
            if chunk.is_empty() {
                break;
            }
            let mut compares = Vec::with_capacity(chunk.len() + 1);
            compares.push(self.inner.registered.clone());
            // Each partition's lifecycle revision as it is now: a copy of this transaction the
            // store applies late, after a compaction or retention step went past the entries,
            // is refused rather than putting back an entry that step removed.
            compares.extend(
                chunk
                    .iter()
                    .flat_map(|((p, _), _)| [p.fence(), p.lifecycle_fence()]),
            );
            let txn = Txn {
                compares,
                success: chunk
                    .iter()
                    .map(|((p, _), e)| index::put_op(&p.topic_id, p.index, e))
                    .collect(),
                failure: vec![],
            };
            self.inner.crash.at(crash_points::FLUSH_BEFORE_COMMIT).await;
            match self.inner.meta.txn(txn).await {
                Ok(r) if r.succeeded => {
                    self.inner.stats.commits.fetch_add(1, Ordering::Relaxed);
                    self.inner.crash.at(crash_points::FLUSH_AFTER_COMMIT).await;
                    return Ok(());
                }
                Ok(_) => {
                    refused += 1;
                    let dropped = self.drop_moved(chunk).await?;
                    if dropped == 0 && refused >= 5 {
                        // Nothing identifiable moved, yet the store keeps refusing: give these
                        // writes up (producers retry) rather than spin.
                        for ((p, _), _) in chunk.drain(..) {
                            p.close();
                        }
                    } else if dropped == 0 {
                        // A lifecycle step of one of these partitions committed meanwhile:
                        // retry once the leader has taken in its new revision.
                        tokio::time::sleep(backoff(refused)).await;
                    }
                }
                Err(e) if e.is_transient() => {
                    attempt += 1;
                    tracing::error!(attempt, error = %e,
                        "flush commit failed; retrying (the object is written, its offsets are not yet visible)");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => {
                    // The store will never take this commit: fail these writes (their producers
                    // retry once the partitions are reloaded at their committed end) and move on,
                    // so one bad commit cannot wedge the pipeline.
                    tracing::error!(error = %e, partitions = chunk.len(),
                        "flush commit refused by the metadata store; failing these partitions' buffered writes (producers retry)");
                    self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                    for ((p, _), _) in chunk.drain(..) {
                        p.close();
                    }
                }
            }
        }
        Ok(())
    }

    /// After a refused commit: fails the whole agent if its registration is gone, else closes
    /// and removes the partitions whose assignment moved. Returns how many were removed.
    async fn drop_moved(
        &self,
        chunk: &mut Vec<((Arc<Partition>, bool), IndexEntry)>,
    ) -> Result<usize, FlushError> {
        let meta = self.inner.meta.as_ref();
        let reg = &self.inner.registered;
        let still = match meta.get(&reg.key).await {
            Ok(kv) => match (&reg.target, kv) {
                (CompareTarget::Value(v), Some(kv)) => kv.value == *v,
                _ => false,
            },
            Err(_) => return Ok(0),
        };
        if !still {
            return Err(FlushError::Fenced {
                node_id: self.inner.node_id,
            });
        }
        let before = chunk.len();
        let mut keep = Vec::with_capacity(chunk.len());
        for ((p, last), e) in chunk.drain(..) {
            let key = assignment::partition_key(&p.topic_id, p.index);
            let moved = match meta.get(key.as_bytes()).await {
                Ok(kv) => kv.map_or(0, |kv| kv.mod_revision) != p.fence_revision,
                Err(_) => false,
            };
            if moved {
                tracing::info!(topic = %p.topic, partition = p.index,
                    "leadership moved; this flush's batches of the partition are refused (producers retry on the new leader)");
                p.close();
            } else {
                keep.push(((p, last), e));
            }
        }
        *chunk = keep;
        Ok(before - chunk.len())
    }
}

/// When a flush starts before its interval is out: once the buffer has been quiet for
/// `flush.idle_ms` (every producer with a write here is waiting on its acknowledgement, so
/// nothing more comes until a flush commits), but never sooner than `flush.min_gap_ms` after
/// the previous flush started — the PUT budget that keeps the cost per GiB known.
#[derive(Debug, Clone, Copy)]
struct Early {
    idle: Option<Duration>,
    gap: Duration,
}

impl Early {
    fn new(s: &FlushSettings) -> Self {
        Self {
            idle: (s.idle_ms > 0).then(|| Duration::from_millis(s.idle_ms)),
            gap: Duration::from_millis(s.min_gap_ms.unwrap_or(20)),
        }
    }

    /// The flush deadline: the regular one (`first batch + interval`), or earlier once the
    /// buffer is quiet and the PUT budget allows.
    fn deadline(
        &self,
        regular: Option<Instant>,
        last_at: Option<Instant>,
        last_start: Option<Instant>,
    ) -> Option<Instant> {
        let (Some(idle), Some(last)) = (self.idle, last_at) else {
            return regular;
        };
        let mut early = last + idle;
        if let Some(started) = last_start {
            early = early.max(started + self.gap);
        }
        Some(regular.map_or(early, |r| r.min(early)))
    }
}

/// A flush whose object is built and being written.
struct Prepared {
    gen: u64,
    path: object_store::path::Path,
    object: Bytes,
    /// Beside each entry: its partition, and whether it is the partition's last entry.
    partitions: Vec<(Arc<Partition>, bool)>,
    entries: Vec<IndexEntry>,
    /// Held until the commit: their permits are the buffer budget.
    items: Vec<Pending>,
    data_bytes: u64,
    started: Instant,
}

/// Writes an object, retrying until object storage accepts it; meanwhile producers are held
/// back by the buffer budget.
async fn put_until_written(
    storage: Storage,
    path: object_store::path::Path,
    object: Bytes,
    crash: Arc<crate::crash_points::CrashPoints>,
) {
    crash.at(crash_points::FLUSH_PUT).await;
    let mut attempt = 0u32;
    while let Err(e) = storage.put(&path, object.clone()).await {
        attempt += 1;
        tracing::error!(%path, attempt, error = %e,
            "flush object could not be written; producers are held back until object storage accepts it");
        tokio::time::sleep(backoff(attempt)).await;
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(6)).min(3_000))
}

/// Why the flush pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The metadata store refused the commit for a reason retrying cannot fix.
    #[error("the metadata store refused a flush commit: {0}")]
    Meta(silt_meta::MetaError),
    /// This agent's registration is gone (its lease lapsed, or a restart took its node id).
    #[error("this agent's registration as node {node_id} is gone (its lease lapsed while it was unreachable or stalled, or another start took the node id); its commits are fenced and it stops writing")]
    Fenced {
        /// The node id.
        node_id: i32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use silt_common::ManualClock;
    use silt_meta::layout::agents::{self, Registration};
    use silt_meta::layout::assignment::{self, Assignment};
    use silt_meta::layout::index::load_partition;
    use silt_meta::EmbeddedKv;

    fn settings() -> FlushSettings {
        FlushSettings {
            interval_ms: 5,
            max_bytes: 1 << 20,
            max_in_flight: 4,
            max_buffered_bytes: 16 << 20,
            tail_cache_bytes: 1 << 20,
            idle_ms: 0,
            min_gap_ms: Some(0),
        }
    }

    #[test]
    fn early_flushes_wait_for_a_quiet_buffer_and_the_put_budget() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let off = Early::new(&settings());
        assert_eq!(
            off.deadline(Some(ms(100)), Some(ms(1)), None),
            Some(ms(100))
        );
        let on = Early::new(&FlushSettings {
            idle_ms: 2,
            min_gap_ms: Some(20),
            ..settings()
        });
        // Quiet for 2 ms after the last batch, the first flush ever: at once.
        assert_eq!(on.deadline(Some(ms(100)), Some(ms(5)), None), Some(ms(7)));
        // A flush started 1 ms ago: the budget holds the next one until 20 ms after it.
        assert_eq!(
            on.deadline(Some(ms(100)), Some(ms(5)), Some(ms(4))),
            Some(ms(24))
        );
        // Never later than the interval.
        assert_eq!(
            on.deadline(Some(ms(10)), Some(ms(9)), Some(ms(0))),
            Some(ms(10))
        );
        // Nothing buffered: no deadline.
        assert_eq!(on.deadline(None, None, Some(ms(0))), None);
    }

    #[tokio::test]
    async fn a_quiet_buffer_is_flushed_before_its_interval() {
        for (idle_ms, early) in [(3, true), (0, false)] {
            let quiet = FlushSettings {
                interval_ms: 60_000,
                idle_ms,
                min_gap_ms: Some(0),
                ..settings()
            };
            let (f, _meta, _storage, p) = setup_with("s1", quiet).await;
            let run = tokio::spawn(f.clone().run());
            let gen = push(&f, &p, 0, 1).await;
            let done =
                tokio::time::timeout(Duration::from_secs(5), f.wait_committed(gen, &p)).await;
            assert_eq!(done.is_ok(), early, "idle_ms {idle_ms}");
            f.abandon();
            let _ = run.await;
        }
    }

    async fn register(meta: &dyn MetaKv, session: &str) -> Compare {
        let lease = meta.grant_lease(Duration::from_secs(60)).await.unwrap();
        let reg = Registration {
            session: session.into(),
            host: "h".into(),
            port: 1,
            listeners: Default::default(),
            rack: None,
        };
        let (_, value) = agents::register(meta, 7, &reg, lease)
            .await
            .unwrap()
            .unwrap();
        agents::registered(7, &value)
    }

    async fn setup(session: &str) -> (Flusher, Arc<dyn MetaKv>, Storage, Arc<Partition>) {
        setup_with(session, settings()).await
    }

    async fn setup_with(
        session: &str,
        settings: FlushSettings,
    ) -> (Flusher, Arc<dyn MetaKv>, Storage, Arc<Partition>) {
        let meta: Arc<dyn MetaKv> = Arc::new(EmbeddedKv::in_memory(ManualClock::new(0)));
        let registered = register(meta.as_ref(), session).await;
        let storage = Storage::in_memory().with_max_attempts(1);
        let f = Flusher::new(
            settings,
            storage.clone(),
            meta.clone(),
            Arc::new(ObjectCache::new(1 << 20)),
            7,
            session.into(),
            registered,
        );
        let p = Arc::new(Partition::new("t", uuid::Uuid::new_v4(), 0));
        (f, meta, storage, p)
    }

    /// A partition led by node 7 under a written assignment.
    async fn assigned(meta: &dyn MetaKv, index: i32) -> Arc<Partition> {
        let id = uuid::Uuid::new_v4();
        let key = assignment::partition_key(&id, index);
        let a = Assignment {
            leader: 7,
            epoch: 0,
        };
        let rev = meta
            .txn(Txn {
                success: vec![assignment::put_op(key, &a)],
                ..Default::default()
            })
            .await
            .unwrap()
            .revision;
        Arc::new(Partition::load(meta, "t", id, index, 0, rev).await.unwrap())
    }

    async fn push(f: &Flusher, p: &Arc<Partition>, base: i64, n: i64) -> u64 {
        let permit = f.reserve(100, Duration::from_secs(5)).await.unwrap();
        f.push(Pending {
            partition: p.clone(),
            base_offset: base,
            last_offset: base + n - 1,
            max_timestamp: base,
            data: Bytes::from(vec![base as u8; 100]),
            producer: None,
            txn: None,
            permit,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn failed_puts_are_retried_and_commits_stay_in_order() {
        let (f, meta, storage, p) = setup("s1").await;
        storage.faults().fail_puts.store(3, Ordering::SeqCst);
        let run = tokio::spawn(f.clone().run());
        let mut last = 0;
        for i in 0..20 {
            last = push(&f, &p, i * 2, 2).await;
            if i % 5 == 0 {
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
        }
        f.wait_committed(last, &p).await.unwrap();
        assert_eq!(p.lock().high_watermark, 40);
        let entries = load_partition(meta.as_ref(), &p.topic_id, 0).await.unwrap();
        let mut next = 0;
        for e in &entries {
            assert_eq!(
                e.base_offset, next,
                "index entries are contiguous and ordered"
            );
            next = e.last_offset + 1;
        }
        assert_eq!(next, 40);
        assert!(
            storage.stats().errors.load(Ordering::Relaxed) >= 3,
            "the injected failures happened"
        );
        assert_eq!(
            f.stats().flushes.load(Ordering::Relaxed),
            storage.stats().puts.load(Ordering::Relaxed)
        );
        f.close();
        run.await.unwrap();
        assert_eq!(f.buffered_bytes(), 0, "every permit was released");
    }

    #[tokio::test]
    async fn a_fenced_agent_never_commits() {
        let (f, meta, _storage, p) = setup("old").await;
        let run = tokio::spawn(f.clone().run());
        let g = push(&f, &p, 0, 1).await;
        f.wait_committed(g, &p).await.unwrap();
        // The node restarts: its new session takes over and fences the old one.
        register(meta.as_ref(), "new").await;
        let g = push(&f, &p, 1, 1).await;
        assert!(
            f.wait_committed(g, &p).await.is_err(),
            "waiters learn the write failed"
        );
        run.await.unwrap();
        let entries = load_partition(meta.as_ref(), &p.topic_id, 0).await.unwrap();
        assert_eq!(entries.len(), 1, "no commit after fencing");
        assert_eq!(p.lock().high_watermark, 1);
        assert!(f.subscribe().borrow().stopped);
        let refused = f.push(Pending {
            partition: p.clone(),
            base_offset: 2,
            last_offset: 2,
            max_timestamp: 0,
            data: Bytes::new(),
            producer: None,
            txn: None,
            permit: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
        });
        assert!(
            matches!(refused, Err(PartitionError::NotLeader(_))),
            "a fenced agent takes no writes"
        );
    }

    #[tokio::test]
    async fn a_moved_partition_fails_alone_and_big_flushes_commit_in_chunks() {
        let (f, meta, _storage, _) = setup("s").await;
        let mut parts = Vec::new();
        for i in 0..130 {
            parts.push(assigned(meta.as_ref(), i).await);
        }
        let run = tokio::spawn(f.clone().run());
        let mut gens = Vec::new();
        for p in &parts {
            gens.push(push(&f, p, 0, 1).await);
        }
        for (p, g) in parts.iter().zip(&gens) {
            f.wait_committed(*g, p).await.unwrap();
        }
        let flushes = f.stats().flushes.load(Ordering::Relaxed);
        let commits = f.stats().commits.load(Ordering::Relaxed);
        assert!(
            commits <= flushes * 130_u64.div_ceil(PARTITIONS_PER_TXN as u64),
            "{commits} commits for {flushes} flushes"
        );
        assert!(
            commits > flushes,
            "130 partitions need several transactions"
        );
        // The controller moves partition 5 away; the others keep committing.
        let moved = &parts[5];
        meta.txn(Txn {
            success: vec![assignment::put_op(
                assignment::partition_key(&moved.topic_id, 5),
                &Assignment {
                    leader: 8,
                    epoch: 1,
                },
            )],
            ..Default::default()
        })
        .await
        .unwrap();
        let g_moved = push(&f, moved, 1, 1).await;
        let g_kept = push(&f, &parts[6], 1, 1).await;
        assert!(matches!(
            f.wait_committed(g_moved, moved).await,
            Err(PartitionError::NotLeader(_))
        ));
        f.wait_committed(g_kept, &parts[6]).await.unwrap();
        assert!(moved.is_closed());
        let n = load_partition(meta.as_ref(), &moved.topic_id, 5)
            .await
            .unwrap();
        assert_eq!(n.len(), 1, "the deposed leader's late write is not visible");
        let n = load_partition(meta.as_ref(), &parts[6].topic_id, 6)
            .await
            .unwrap();
        assert_eq!(n.len(), 2);
        assert!(!f.subscribe().borrow().stopped, "the agent keeps writing");
        f.close();
        run.await.unwrap();
    }

    /// Rule (issue 11.2): 20 000 idempotent producers each sending one batch to one partition
    /// within one flush interval commit (as several index entries, each within the store's
    /// limits), are acknowledged, and the index rebuilds every producer's state. On the old code
    /// the single entry was over etcd's request limit and the commit was retried forever.
    #[tokio::test]
    async fn twenty_thousand_producers_in_one_flush_commit_within_the_store_limits() {
        let (f, meta, _storage, _) = setup("s").await;
        let p = assigned(meta.as_ref(), 0).await;
        let mut s = settings();
        s.interval_ms = 60_000;
        s.max_bytes = 64 << 20;
        let f = Flusher::new(
            s,
            Storage::in_memory(),
            meta.clone(),
            Arc::new(ObjectCache::new(1 << 20)),
            7,
            "s".into(),
            f.inner.registered.clone(),
        );
        let mut gen = 0;
        for pid in 0..20_000i64 {
            let permit = f.reserve(100, Duration::from_secs(5)).await.unwrap();
            gen = f
                .push(Pending {
                    partition: p.clone(),
                    base_offset: pid,
                    last_offset: pid,
                    max_timestamp: pid,
                    data: Bytes::from(vec![1u8; 100]),
                    producer: Some(ProducerBatch {
                        pid: 1_000_000 + pid,
                        epoch: 0,
                        first_seq: 0,
                        last_seq: 0,
                        base_offset: pid,
                    }),
                    txn: None,
                    permit,
                })
                .unwrap();
        }
        f.close(); // flushes what is buffered, in one generation
        let run = tokio::spawn(f.clone().run());
        f.wait_committed(gen, &p).await.unwrap();
        run.await.unwrap();
        assert_eq!(f.stats().flushes.load(Ordering::Relaxed), 1, "one flush");
        let entries = load_partition(meta.as_ref(), &p.topic_id, 0).await.unwrap();
        assert_eq!(entries.len(), 20, "1000 idempotent batches per entry");
        assert!(entries
            .windows(2)
            .all(|w| w[1].base_offset == w[0].last_offset + 1));
        assert!(entries.windows(2).all(|w| w[1].pos == w[0].pos + w[0].len));
        let producers: usize = entries.iter().map(|e| e.producers.len()).sum();
        assert_eq!(producers, 20_000);
        assert_eq!(p.lock().high_watermark, 20_000);
        let reloaded = Partition::load(meta.as_ref(), "t", p.topic_id, 0, 0, p.fence_revision)
            .await
            .unwrap();
        assert_eq!(reloaded.lock().high_watermark, 20_000);
    }

    /// Rule (issue 11.2): a commit the store refuses for good fails its writes (the partition
    /// is closed, to be reloaded at its committed end) and the pipeline goes on. The old code
    /// stopped the whole pipeline on any error but "unavailable".
    #[tokio::test]
    async fn a_commit_refused_for_good_fails_its_writes_and_the_pipeline_moves_on() {
        let (f0, meta, _storage, _) = setup("s").await;
        let p = assigned(meta.as_ref(), 0).await;
        let q = assigned(meta.as_ref(), 1).await;
        let faulty = silt_meta::faults::FaultyKv::new(meta.clone());
        *faulty.refuse_prefix.lock().unwrap() =
            Some(index::partition_prefix(&p.topic_id, 0).into_bytes());
        let refusing: Arc<dyn MetaKv> = Arc::new(faulty);
        let f = Flusher::new(
            settings(),
            Storage::in_memory(),
            refusing,
            Arc::new(ObjectCache::new(1 << 20)),
            7,
            "s".into(),
            f0.inner.registered.clone(),
        );
        let run = tokio::spawn(f.clone().run());
        let g = push(&f, &p, 0, 1).await;
        assert!(matches!(
            f.wait_committed(g, &p).await,
            Err(PartitionError::NotLeader(_))
        ));
        assert!(
            p.is_closed(),
            "reloaded at its committed end before taking writes again"
        );
        let g2 = push(&f, &q, 0, 1).await;
        f.wait_committed(g2, &q).await.unwrap();
        assert!(!f.subscribe().borrow().stopped, "the pipeline goes on");
        assert!(f.stats().refused.load(Ordering::Relaxed) >= 1);
        assert_eq!(q.lock().high_watermark, 1);
        f.close();
        run.await.unwrap();
    }

    /// Rule (issue 11.3): a flush racing a topic's deletion is refused once the deletion lands
    /// (the assignment goes in the same transaction as the catalog record), so no index key of
    /// the deleted topic is left behind. On the old code the commit succeeded after the
    /// deletion and its key kept its object from garbage collection forever.
    #[tokio::test]
    async fn a_flush_after_its_topic_was_deleted_leaves_no_key() {
        use silt_meta::layout::catalog::{self, TopicRecord};
        let (f, meta, _storage, _) = setup("s").await;
        let p = assigned(meta.as_ref(), 0).await;
        let record = TopicRecord {
            name: "doomed".into(),
            id: p.topic_id,
            partitions: 1,
            configs: Default::default(),
            created_ms: 0,
        };
        assert!(catalog::create(meta.as_ref(), &record).await.unwrap());
        let run = tokio::spawn(f.clone().run());
        let g = push(&f, &p, 0, 1).await;
        f.wait_committed(g, &p).await.unwrap();
        assert!(catalog::delete(meta.as_ref(), "doomed")
            .await
            .unwrap()
            .is_some());
        assert!(load_partition(meta.as_ref(), &p.topic_id, 0)
            .await
            .unwrap()
            .is_empty());
        // The agent has not noticed yet and flushes another batch of the partition.
        let g = push(&f, &p, 1, 1).await;
        assert!(f.wait_committed(g, &p).await.is_err(), "refused");
        assert!(
            load_partition(meta.as_ref(), &p.topic_id, 0)
                .await
                .unwrap()
                .is_empty(),
            "no index key of the deleted topic"
        );
        assert!(meta
            .get(assignment::partition_key(&p.topic_id, 0).as_bytes())
            .await
            .unwrap()
            .is_none());
        assert!(!f.subscribe().borrow().stopped, "the agent keeps writing");
        f.close();
        run.await.unwrap();
    }

    /// When one transaction of a flush is refused for good, a partition whose range continues in
    /// a later transaction commits nothing more: a later entry never lands past a missing
    /// earlier one (found in review: the gap made offsets vanish and retries misfire).
    #[tokio::test]
    async fn a_partition_refused_in_one_chunk_commits_nothing_in_the_next() {
        let (f0, meta, _storage, _) = setup("s").await;
        let mut others = Vec::new();
        for i in 0..59 {
            others.push(assigned(meta.as_ref(), i).await);
        }
        let p = assigned(meta.as_ref(), 99).await;
        let faulty = silt_meta::faults::FaultyKv::new(meta.clone());
        *faulty.refuse_prefix.lock().unwrap() =
            Some(index::partition_prefix(&others[0].topic_id, 0).into_bytes());
        let mut s = settings();
        s.interval_ms = 60_000;
        s.max_bytes = 64 << 20;
        let f = Flusher::new(
            s,
            Storage::in_memory(),
            Arc::new(faulty),
            Arc::new(ObjectCache::new(1 << 20)),
            7,
            "s".into(),
            f0.inner.registered.clone(),
        );
        for q in &others {
            push(&f, q, 0, 1).await;
        }
        // 1 500 idempotent batches: two entries, the second in the next transaction.
        let mut gen = 0;
        for i in 0..1500i64 {
            let permit = f.reserve(100, Duration::from_secs(5)).await.unwrap();
            gen = f
                .push(Pending {
                    partition: p.clone(),
                    base_offset: i,
                    last_offset: i,
                    max_timestamp: 0,
                    data: Bytes::from(vec![1u8; 100]),
                    producer: Some(ProducerBatch {
                        pid: 5_000 + i,
                        epoch: 0,
                        first_seq: 0,
                        last_seq: 0,
                        base_offset: i,
                    }),
                    txn: None,
                    permit,
                })
                .unwrap();
        }
        f.close();
        let run = tokio::spawn(f.clone().run());
        assert!(f.wait_committed(gen, &p).await.is_err(), "refused");
        run.await.unwrap();
        assert!(p.is_closed());
        assert!(
            load_partition(meta.as_ref(), &p.topic_id, 99)
                .await
                .unwrap()
                .is_empty(),
            "no entry of the partition past its refused first one"
        );
    }

    /// Transactional batches open a transaction in their partition and markers end it; the
    /// committed index gives the last stable offset and the aborted transactions, and a reload
    /// from the metadata store gives the same.
    #[tokio::test]
    async fn transactions_bound_the_last_stable_offset_and_aborts_are_listed() {
        use crate::append::{append, append_marker};
        use silt_wire::control::Marker;
        let (f, meta, storage, _) = setup("s").await;
        let p = assigned(meta.as_ref(), 0).await;
        let run = tokio::spawn(f.clone().run());
        let cache = ObjectCache::new(0);
        let read = |isolation| {
            let (storage, cache, p) = (&storage, &cache, &p);
            async move {
                crate::read::read_isolated(storage, cache, p, 0, 1 << 20, isolation)
                    .await
                    .unwrap()
            }
        };
        use crate::read::Isolation::{ReadCommitted, ReadUncommitted};
        let add = |data: Bytes| {
            let f = f.clone();
            let p = p.clone();
            async move {
                let h = silt_wire::batch::validate_single(&data).unwrap();
                let permit = f.reserve(h.size, Duration::from_secs(5)).await.unwrap();
                match append(&f, &p, &data, &h, None, 0, permit).unwrap() {
                    crate::append::Appended::Buffered { generation, .. } => generation,
                    d => panic!("{d:?}"),
                }
            }
        };
        let marker = |m: Marker| {
            let f = f.clone();
            let p = p.clone();
            async move {
                let permit = f.reserve(100, Duration::from_secs(5)).await.unwrap();
                append_marker(&f, &p, (9, 0), m, 0, 0, permit).unwrap().1
            }
        };
        let lso = |p: &Partition| {
            let st = p.lock();
            (st.txns.last_stable(st.high_watermark), st.high_watermark)
        };
        // pid 9 writes 3 records (offsets 0-2) in a transaction; a plain batch follows (3-4).
        let g = add(crate::test_batches::txn_batch(9, 0, 0, 3)).await;
        let g2 = add(crate::test_batches::batch_of(0, 2, 10)).await;
        f.wait_committed(g.max(g2), &p).await.unwrap();
        assert_eq!(
            lso(&p),
            (0, 5),
            "the open transaction holds the LSO at its start"
        );
        assert!(
            read(ReadCommitted).await.records.is_none(),
            "nothing is stable yet"
        );
        let r = read(ReadUncommitted).await;
        assert_eq!(
            silt_wire::batch::iter(&r.records.as_ref().unwrap().contiguous()).count(),
            2
        );
        // Aborted at 5.
        let g = marker(Marker::Abort).await;
        f.wait_committed(g, &p).await.unwrap();
        assert_eq!(lso(&p), (6, 6));
        let aborted = p.lock().txns.aborted_between(0, 6);
        assert_eq!(aborted.len(), 1);
        assert_eq!((aborted[0].first_offset, aborted[0].last_offset), (0, 5));
        let r = read(ReadCommitted).await;
        let batches: Vec<i64> = silt_wire::batch::iter(&r.records.as_ref().unwrap().contiguous())
            .map(|(h, _)| h.base_offset)
            .collect();
        assert_eq!(batches, vec![0, 3, 5], "records, then the abort marker");
        assert_eq!(
            r.aborted, aborted,
            "the aborted transaction is listed to the reader"
        );
        assert_eq!(r.last_stable, 6);
        // A second transaction (6-7), committed at 8.
        let g = add(crate::test_batches::txn_batch(9, 0, 3, 2)).await;
        f.wait_committed(g, &p).await.unwrap();
        assert_eq!(lso(&p), (6, 8));
        let g = marker(Marker::Commit).await;
        f.wait_committed(g, &p).await.unwrap();
        assert_eq!(lso(&p), (9, 9));
        // A new leader rebuilds the same from the index.
        let again = Partition::load(meta.as_ref(), "t", p.topic_id, 0, 1, p.fence_revision)
            .await
            .unwrap();
        assert_eq!(lso(&again), (9, 9));
        assert_eq!(again.lock().txns.aborted_between(0, 9), aborted);
        assert!(!again.lock().txns.is_open(9));
        f.close();
        run.await.unwrap();
    }
}
