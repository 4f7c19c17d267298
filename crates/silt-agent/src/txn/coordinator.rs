//! The transaction coordinator: the agent of a transactional id's group shard keeps the id's
//! record (`/silt/txns/{id}`) with writes fenced on that shard, like group offsets, so a
//! coordinator that lost the shard can no longer change it.
//!
//! Ending a transaction: the decision (PrepareCommit or PrepareAbort) is stored first; then one
//! marker request per partition is written (in as few metadata-store transactions as the
//! store's limits allow) for the partitions' leaders ([`super::markers`]), which write the
//! markers through their flush pipelines and delete the requests; when none is left the record
//! is completed. A coordinator taking over a shard finishes what its predecessor prepared (the
//! periodic [`TxnCoordinator::pass`]), which also aborts transactions past their timeout.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::ResponseError;
use silt_meta::layout::txns::{self, MarkerRequest, TxnRecord, TxnStatus};
use silt_meta::{Compare, Txn};

use super::state::{self, End, EndV2, Init, TxnError};
use crate::groups::GroupCoordinator;
use crate::producer_ids::ProducerIds;
use crate::topics::Topics;

/// What the coordinator uses of its agent (passed in, so it does not depend on the broker).
pub struct Deps<'a> {
    /// The metadata store.
    pub meta: &'a dyn silt_meta::MetaKv,
    /// Shard ownership and fencing (a transactional id lives on its group shard).
    pub groups: &'a GroupCoordinator,
    /// Producer id allocation.
    pub producer_ids: &'a ProducerIds,
    /// Topic names to ids (marker requests).
    pub topics: &'a Topics,
    /// Time.
    pub clock: &'a dyn silt_common::Clock,
    /// `transactions.max_timeout_ms`.
    pub max_timeout_ms: i32,
}

/// Marker requests written per metadata-store transaction (etcd allows 128 operations).
const MARKERS_PER_TXN: usize = 100;
/// How long EndTxn waits for the markers before answering CONCURRENT_TRANSACTIONS (the
/// client retries; the periodic pass completes the transaction meanwhile).
const MARKER_WAIT: Duration = Duration::from_secs(20);
/// A prepared transaction untouched this long is driven to completion by the periodic pass (its
/// coordinator moved or failed mid-way).
const STUCK_MS: i64 = 3_000;

/// Every this many passes, the pass reads every record (ids a previous coordinator of a shard
/// left open or prepared); in between only the ids it knows to be open or prepared.
const FULL_SCAN_EVERY: u64 = 30;

/// What the coordinator says of a transactional batch arriving at a partition (KIP-890 part 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The partition is in the producer's open transaction.
    Yes,
    /// It is not (the transaction ended, or never added the partition).
    No,
    /// A newer instance of the transactional id bumped the epoch past the batch's.
    Fenced {
        /// The current epoch.
        current: i16,
    },
}

/// The coordinator of the transactional ids of the shards this agent coordinates.
#[derive(Debug, Default)]
pub struct TxnCoordinator {
    /// One operation at a time per transactional id.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Ids whose record is open or prepared, as last stored or read here.
    active: Mutex<BTreeSet<String>>,
    /// Passes made.
    passes: AtomicU64,
}

fn meta_err(e: silt_meta::MetaError) -> ResponseError {
    tracing::warn!(error = %e, "transaction coordinator: metadata store error");
    ResponseError::CoordinatorNotAvailable
}

impl TxnCoordinator {
    fn lock_for(&self, tid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() > 10_000 {
            m.retain(|_, l| Arc::strong_count(l) > 1);
        }
        m.entry(tid.to_string()).or_default().clone()
    }

    /// The fence of the id's shard if this agent coordinates it.
    fn fence(b: &Deps<'_>, tid: &str) -> Result<Vec<Compare>, ResponseError> {
        b.groups.check(tid).map_err(|code| {
            if code == ResponseError::CoordinatorLoadInProgress.code() {
                ResponseError::CoordinatorLoadInProgress
            } else {
                ResponseError::NotCoordinator
            }
        })
    }

    /// Stores `r` if the record is still at `rev` (absent for `None`); the new revision.
    async fn store(
        &self,
        b: &Deps<'_>,
        tid: &str,
        r: &TxnRecord,
        rev: Option<i64>,
    ) -> Result<i64, ResponseError> {
        let mut compares = Self::fence(b, tid)?;
        let key = txns::key(tid);
        compares.push(match rev {
            Some(rev) => Compare::mod_revision(key, rev),
            None => Compare::absent(key),
        });
        let res = b
            .meta
            .txn(Txn {
                compares,
                success: vec![txns::put_op(tid, r)],
                failure: vec![],
            })
            .await
            .map_err(meta_err)?;
        if res.succeeded {
            self.track(tid, r.status);
            Ok(res.revision)
        } else {
            // Fenced (the shard moved) or changed meanwhile: the client retries either way.
            Self::fence(b, tid)?;
            Err(ResponseError::ConcurrentTransactions)
        }
    }

    /// Remembers whether `tid` is open or prepared (the pass looks at those).
    fn track(&self, tid: &str, status: TxnStatus) {
        let mut a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        match status {
            TxnStatus::Ongoing | TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                a.insert(tid.to_string());
            }
            _ => {
                a.remove(tid);
            }
        }
    }

    async fn load(b: &Deps<'_>, tid: &str) -> Result<Option<(TxnRecord, i64)>, ResponseError> {
        Self::fence(b, tid)?;
        txns::load(b.meta, tid).await.map_err(meta_err)
    }

    /// InitProducerId with a transactional id: the producer id and epoch to use.
    pub async fn init_producer_id(
        &self,
        b: &Deps<'_>,
        tid: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        principal: &str,
    ) -> Result<(i64, i16), ResponseError> {
        let lock = self.lock_for(tid);
        let _one = lock.lock().await;
        let current = Self::load(b, tid).await?;
        // A new producer id only when one is needed (a new id, or an exhausted epoch).
        let fresh = if state::needs_new_pid(current.as_ref().map(|c| &c.0)) {
            b.producer_ids.next(principal).await.map_err(meta_err)?
        } else {
            -1
        };
        let now = b.clock.now_ms();
        let max = b.max_timeout_ms;
        let plan = state::init(
            current.as_ref().map(|c| &c.0),
            || fresh,
            timeout_ms,
            max,
            expected,
            now,
        )
        .map_err(TxnError::code)?;
        let rev = current.as_ref().map(|c| c.1);
        match plan {
            Init::Ready(r) => {
                self.store(b, tid, &r, rev).await?;
                tracing::info!(
                    transactional_id = tid,
                    pid = r.pid,
                    epoch = r.epoch,
                    "transactional producer initialized"
                );
                Ok((r.pid, r.epoch))
            }
            Init::AbortFirst(r) => {
                let rev = self.store(b, tid, &r, rev).await?;
                tracing::info!(
                    transactional_id = tid,
                    pid = r.pid,
                    epoch = r.epoch,
                    "a new instance of the producer: aborting its open transaction first"
                );
                // The client retries on CONCURRENT_TRANSACTIONS until the abort is complete.
                let _ = self.finish(b, tid, r, rev).await;
                Err(ResponseError::ConcurrentTransactions)
            }
        }
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn.
    pub async fn add(
        &self,
        b: &Deps<'_>,
        tid: &str,
        producer: (i64, i16),
        partitions: &[(String, i32)],
        groups: &[String],
    ) -> Result<(), ResponseError> {
        let lock = self.lock_for(tid);
        let _one = lock.lock().await;
        let Some((r, rev)) = Self::load(b, tid).await? else {
            return Err(ResponseError::InvalidProducerIdMapping);
        };
        let next = state::add(&r, producer, partitions, groups, b.clock.now_ms())
            .map_err(TxnError::code)?;
        if next != r {
            self.store(b, tid, &next, Some(rev)).await?;
        }
        Ok(())
    }

    /// Whether `partition` is in `tid`'s open transaction of `producer`, or `producer` is fenced (KIP-890 part 1: a
    /// leader accepts a transaction's first batch only then). Read from the store, so any agent
    /// can answer.
    pub async fn verify(
        b: &Deps<'_>,
        tid: &str,
        producer: (i64, i16),
        partition: (&str, i32),
    ) -> Result<Verified, ResponseError> {
        let r = txns::load(b.meta, tid).await.map_err(meta_err)?;
        Ok(match r {
            // A newer instance with this transactional id bumped the epoch: this one is fenced
            // (INVALID_PRODUCER_EPOCH, which clients take as fatal, as Kafka answers).
            Some((r, _)) if r.pid == producer.0 && r.epoch > producer.1 => {
                Verified::Fenced { current: r.epoch }
            }
            // Its producer id was replaced when the epoch ran out (transaction version 2).
            Some((r, _))
                if r.pid != producer.0 && r.previous.is_some_and(|p| p.0 == producer.0) =>
            {
                Verified::Fenced { current: i16::MAX }
            }
            Some((r, _))
                if r.status == TxnStatus::Ongoing
                    && (r.pid, r.epoch) == producer
                    && r.partitions
                        .iter()
                        .any(|(t, p)| t == partition.0 && *p == partition.1) =>
            {
                Verified::Yes
            }
            _ => Verified::No,
        })
    }

    /// Whether `group` is in `tid`'s open transaction of `producer` (TxnOffsetCommit is
    /// accepted only then): the transaction record's key and revision as they were, for the
    /// offsets' write to compare, so offsets can never land in a transaction that ended (or a
    /// later one of a newer epoch) meanwhile. A newer epoch: INVALID_PRODUCER_EPOCH (the
    /// producer is fenced, as Kafka answers); no such open transaction: INVALID_TXN_STATE.
    pub async fn verify_offsets(
        b: &Deps<'_>,
        tid: &str,
        producer: (i64, i16),
        group: &str,
    ) -> Result<(String, i64), ResponseError> {
        match txns::load(b.meta, tid).await.map_err(meta_err)? {
            Some((r, _)) if r.pid == producer.0 && r.epoch > producer.1 => {
                Err(ResponseError::InvalidProducerEpoch)
            }
            Some((r, rev))
                if r.status == TxnStatus::Ongoing
                    && (r.pid, r.epoch) == producer
                    && r.groups.iter().any(|g| g == group) =>
            {
                Ok((txns::key(tid), rev))
            }
            Some((r, _)) if r.pid != producer.0 => Err(ResponseError::InvalidProducerIdMapping),
            None => Err(ResponseError::InvalidProducerIdMapping),
            Some(_) => Err(ResponseError::InvalidTxnState),
        }
    }

    /// EndTxn: the producer id and epoch the client continues with. Under transaction version 2
    /// (`v2`, EndTxn v5+) ending moves the producer on to the next epoch (KIP-890 part 2);
    /// before, the identity does not change.
    pub async fn end(
        &self,
        b: &Deps<'_>,
        tid: &str,
        producer: (i64, i16),
        commit: bool,
        v2: bool,
    ) -> Result<(i64, i16), ResponseError> {
        let lock = self.lock_for(tid);
        let _one = lock.lock().await;
        let Some((r, rev)) = Self::load(b, tid).await? else {
            return Err(ResponseError::InvalidProducerIdMapping);
        };
        let now = b.clock.now_ms();
        if !v2 {
            return match state::end(&r, producer, commit, now).map_err(TxnError::code)? {
                End::Done => Ok((r.pid, r.epoch)),
                End::Prepare(p) => {
                    let rev = self.store(b, tid, &p, Some(rev)).await?;
                    self.finish(b, tid, p, rev).await?;
                    Ok(producer)
                }
            };
        }
        let fresh = if state::end_needs_new_pid(&r) {
            b.producer_ids.next("").await.map_err(meta_err)?
        } else {
            -1
        };
        match state::end_v2(&r, producer, commit, now, || fresh).map_err(TxnError::code)? {
            EndV2::Done => Ok(state::client_identity(&r)),
            EndV2::Complete(c) => {
                self.store(b, tid, &c, Some(rev)).await?;
                Ok(state::client_identity(&c))
            }
            EndV2::Prepare(p) => {
                let rev = self.store(b, tid, &p, Some(rev)).await?;
                tracing::debug!(
                    transactional_id = tid,
                    pid = p.pid,
                    epoch = p.epoch,
                    "transaction ending at the next epoch (transaction version 2)"
                );
                self.finish(b, tid, p.clone(), rev).await?;
                Ok(state::client_identity(&state::complete(&p, now)))
            }
        }
    }

    /// Transaction version 2 (Produce v12+, TxnOffsetCommit v5+): adds `partitions` and
    /// `groups` to `tid`'s transaction of `producer` (opening one if none is) on behalf of the
    /// partition's leader or the group's coordinator, which may be another agent. Written with
    /// a compare on the record's revision, so it never overwrites a coordinator's change.
    pub async fn add_implicitly(
        &self,
        b: &Deps<'_>,
        tid: &str,
        producer: (i64, i16),
        partitions: &[(String, i32)],
        groups: &[String],
    ) -> Result<(), ResponseError> {
        for _ in 0..5 {
            let Some((r, rev)) = txns::load(b.meta, tid).await.map_err(meta_err)? else {
                return Err(ResponseError::InvalidProducerIdMapping);
            };
            if r.pid != producer.0 && r.previous.is_some_and(|(pid, _)| pid == producer.0) {
                // The producer id was replaced when its epoch ran out: this is a zombie.
                return Err(ResponseError::ProducerFenced);
            }
            let next = state::add(&r, producer, partitions, groups, b.clock.now_ms())
                .map_err(TxnError::code)?;
            if (next.status, &next.partitions, &next.groups) == (r.status, &r.partitions, &r.groups)
            {
                return Ok(());
            }
            let res = b
                .meta
                .txn(Txn {
                    compares: vec![Compare::mod_revision(txns::key(tid), rev)],
                    success: vec![txns::put_op(tid, &next)],
                    failure: vec![],
                })
                .await
                .map_err(meta_err)?;
            if res.succeeded {
                if b.groups.check(tid).is_ok() {
                    // Coordinated here: its timeout is watched from now (another agent's pass
                    // finds it by its periodic full scan).
                    self.track(tid, next.status);
                }
                return Ok(());
            }
        }
        Err(ResponseError::ConcurrentTransactions)
    }

    /// Writes the markers of a prepared transaction, waits for them, completes the record.
    async fn finish(
        &self,
        b: &Deps<'_>,
        tid: &str,
        r: TxnRecord,
        rev: i64,
    ) -> Result<(), ResponseError> {
        let commit = r.status == TxnStatus::PrepareCommit;
        let request = MarkerRequest {
            pid: r.pid,
            epoch: r.epoch,
            commit,
            coordinator_epoch: (rev & 0x7fff_ffff) as i32,
        };
        let mut keys = Vec::new();
        let mut puts = Vec::new();
        for (topic, p) in &r.partitions {
            // A topic deleted meanwhile needs no marker.
            if let Some(t) = b.topics.get(topic) {
                if t.has_partition(*p) {
                    keys.push(txns::marker_key(&t.record.id, *p, tid));
                    puts.push(txns::marker_put(&t.record.id, *p, tid, &request));
                }
            }
        }
        // The groups' coordinators make the offsets committed in the transaction the groups'
        // (or drop them).
        for g in &r.groups {
            let k = txns::group_marker_key(g, r.pid);
            puts.push(silt_meta::Op::put(
                k.clone(),
                if commit { "true" } else { "false" },
            ));
            keys.push(k);
        }
        for chunk in puts.chunks(MARKERS_PER_TXN) {
            let res = b
                .meta
                .txn(Txn {
                    compares: Self::fence(b, tid)?,
                    success: chunk.to_vec(),
                    failure: vec![],
                })
                .await
                .map_err(meta_err)?;
            if !res.succeeded {
                return Err(ResponseError::NotCoordinator);
            }
        }
        // Wait for the leaders to write them.
        let deadline = tokio::time::Instant::now() + MARKER_WAIT;
        let mut left = keys;
        let mut pause = Duration::from_millis(5);
        while !left.is_empty() {
            let mut still = Vec::with_capacity(left.len());
            for k in left {
                if b.meta.get(k.as_bytes()).await.map_err(meta_err)?.is_some() {
                    still.push(k);
                }
            }
            left = still;
            if left.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    transactional_id = tid,
                    waiting = left.len(),
                    "transaction markers not all written yet; the client retries"
                );
                return Err(ResponseError::ConcurrentTransactions);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        let done = state::complete(&r, b.clock.now_ms());
        self.store(b, tid, &done, Some(rev)).await?;
        tracing::debug!(
            transactional_id = tid,
            pid = r.pid,
            commit,
            partitions = r.partitions.len(),
            "transaction completed"
        );
        Ok(())
    }

    /// One pass over the open and prepared transactions of the shards coordinated here
    /// (every record, every [`FULL_SCAN_EVERY`] passes): aborts transactions past their
    /// timeout and completes prepared ones left behind.
    pub async fn pass(&self, b: &Deps<'_>) {
        let full = self
            .passes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(FULL_SCAN_EVERY);
        let candidates: Vec<(String, TxnRecord)> = if full {
            match b.meta.range_all(txns::prefix().as_bytes()).await {
                Ok(all) => all
                    .into_iter()
                    .filter_map(|kv| {
                        Some((
                            txns::parse_key(&kv.key)?,
                            txns::decode(&kv.key, &kv.value).ok()?,
                        ))
                    })
                    .collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "transaction pass: could not list transactions");
                    return;
                }
            }
        } else {
            let ids: Vec<String> = self
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                match txns::load(b.meta, &id).await {
                    Ok(Some((r, _))) => out.push((id, r)),
                    Ok(None) => self.track(&id, TxnStatus::Empty),
                    Err(_) => return,
                }
            }
            out
        };
        let now = b.clock.now_ms();
        for (tid, r) in candidates {
            if b.groups.check(&tid).is_err() {
                self.track(&tid, TxnStatus::Empty); // another agent's now
                continue;
            }
            self.track(&tid, r.status);
            let due = match r.status {
                TxnStatus::Ongoing => state::expire(&r, now, || -1).is_some(),
                TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => now - r.updated_ms > STUCK_MS,
                _ => false,
            };
            if !due {
                continue;
            }
            let lock = self.lock_for(&tid);
            let _one = lock.lock().await;
            // Read again under the lock: a client request may have moved it on.
            let Ok(Some((r, rev))) = Self::load(b, &tid).await else {
                continue;
            };
            let step = match r.status {
                TxnStatus::Ongoing => {
                    let fresh = if state::needs_new_pid(Some(&r)) {
                        match b.producer_ids.next("").await {
                            Ok(p) => p,
                            Err(_) => continue,
                        }
                    } else {
                        -1
                    };
                    match state::expire(&r, now, || fresh) {
                        Some(aborting) => {
                            tracing::info!(transactional_id = %tid, pid = r.pid,
                                timeout_ms = r.timeout_ms, "transaction timed out; aborting it and fencing its producer");
                            match self.store(b, &tid, &aborting, Some(rev)).await {
                                Ok(rev) => Some((aborting, rev)),
                                Err(_) => None,
                            }
                        }
                        None => None,
                    }
                }
                TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => Some((r, rev)),
                _ => None,
            };
            if let Some((r, rev)) = step {
                if let Err(e) = self.finish(b, &tid, r, rev).await {
                    tracing::debug!(transactional_id = %tid, error = ?e, "transaction pass: not finished yet");
                }
            }
        }
    }

    /// Every transactional id coordinated here with its record (DescribeTransactions,
    /// ListTransactions).
    pub async fn records(b: &Deps<'_>) -> Result<Vec<(String, TxnRecord)>, silt_meta::MetaError> {
        let all = b.meta.range_all(txns::prefix().as_bytes()).await?;
        Ok(all
            .into_iter()
            .filter_map(|kv| {
                let tid = txns::parse_key(&kv.key)?;
                let r = txns::decode(&kv.key, &kv.value).ok()?;
                b.groups.check(&tid).is_ok().then_some((tid, r))
            })
            .collect())
    }
}
