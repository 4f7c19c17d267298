//! The raw log's lifecycle: retention (`retention.ms`, `retention.bytes`, DeleteRecords) moves
//! a partition's log start and deletes the index entries below it ([`retention`]); compaction
//! folds small committed ranges into segment objects ([`compaction`]); key compaction keeps the
//! latest record of each key of compacted topics ([`key_compaction`]); garbage collection
//! deletes objects no index entry references any more ([`gc`]).

pub mod compaction;
pub mod gc;
pub mod key_compaction;
pub mod retention;

use std::time::Duration;

use silt_meta::layout::index;
use silt_meta::{MetaError, Txn};

use crate::broker::Broker;
use crate::error::PartitionError;
use crate::partition::Partition;

/// Commits a fenced lifecycle transaction (this agent's registration, the partition's
/// assignment, and the partition's last lifecycle step: `txn` must rewrite the partition's
/// log-start key, which this adds the compare of) and returns only with a definite answer.
///
/// A transaction the store did not answer may have applied, and the leader's in-memory index
/// must never differ from the store's — garbage collection deletes every object the store no
/// longer references, so a leader that still pointed at one would fail its reads for good. So an
/// unanswered transaction is retried until the store says yes or no (a store that stays away
/// ends the agent's lease, after which the fences answer no). A "no" after an unanswered attempt
/// is resolved by reading the log-start key back under the same fences: moved past the step this
/// leader knew of means the unanswered attempt applied (nothing else writes it while the fences
/// hold). Each step compares the revision the step before it left, so an attempt the store
/// applies late — after this leader gave up on it and went on — is refused instead of undoing
/// later steps. When the outcome cannot be learned the partition is closed, as if its
/// leadership moved, so nothing is served from what it remembers.
pub(crate) async fn commit_answered(
    b: &Broker,
    p: &Partition,
    mut txn: Txn,
    what: &str,
) -> Result<(), PartitionError> {
    let known = p.lock().lifecycle_revision;
    txn.compares
        .push(index::log_start_unchanged(&p.topic_id, p.index, known));
    let mut unanswered = false;
    let mut attempt = 0u32;
    loop {
        match b.meta.txn(txn.clone()).await {
            Ok(r) if r.succeeded => {
                p.lock().lifecycle_revision = r.revision;
                return Ok(());
            }
            Ok(_) => {
                if unanswered {
                    match learn_outcome(b, p, known).await {
                        Some(Some(revision)) => {
                            p.lock().lifecycle_revision = revision;
                            return Ok(());
                        }
                        // Not applied and still the leader: try again (a late copy of the
                        // unanswered attempt is refused by the lifecycle compare, or is the
                        // one that applied, which the next answer tells).
                        Some(None) if attempt < 20 => {
                            attempt += 1;
                            continue;
                        }
                        _ => {}
                    }
                }
                p.close();
                return Err(PartitionError::NotLeader(format!(
                    "leadership of {}-{} moved during {what}",
                    p.topic, p.index
                )));
            }
            Err(e) if e.is_transient() => {
                unanswered |= matches!(e, MetaError::Unanswered { .. });
                attempt += 1;
                tracing::warn!(topic = %p.topic, partition = p.index, attempt, error = %e,
                    "{what}: the metadata store did not answer; retrying until it does (the partition's lifecycle waits)");
                tokio::time::sleep(Duration::from_millis((50u64 << attempt.min(6)).min(3_000)))
                    .await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// After a refusal that followed an unanswered attempt: `Some(Some(revision))` if that attempt
/// applied (the log-start key moved past `known` while this leader's fences still hold),
/// `Some(None)` if it did not and this is still the leader, `None` if it cannot be told.
async fn learn_outcome(b: &Broker, p: &Partition, known: i64) -> Option<Option<i64>> {
    let key = index::log_start_key(&p.topic_id, p.index);
    let now = b
        .meta
        .get(key.as_bytes())
        .await
        .ok()?
        .map_or(0, |kv| kv.mod_revision);
    let check = Txn {
        compares: vec![
            b.cluster.registered(),
            p.fence(),
            index::log_start_unchanged(&p.topic_id, p.index, now),
        ],
        success: vec![],
        failure: vec![],
    };
    match b.meta.txn(check).await {
        Ok(r) if r.succeeded => Some((now != known).then_some(now)),
        _ => None,
    }
}
