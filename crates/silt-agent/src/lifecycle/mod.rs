//! The raw log's lifecycle: retention (`retention.ms`, `retention.bytes`, DeleteRecords) moves
//! a partition's log start and deletes the index entries below it ([`retention`]); compaction
//! folds small committed ranges into segment objects ([`compaction`]); garbage collection
//! deletes objects no index entry references any more ([`gc`]).

pub mod compaction;
pub mod gc;
pub mod retention;

use std::time::Duration;

use silt_meta::{MetaError, Txn};

use crate::broker::Broker;
use crate::error::PartitionError;
use crate::partition::Partition;

/// Commits a fenced lifecycle transaction (this agent's registration, the partition's
/// assignment) and returns only with a definite answer: a transaction the store did not answer
/// may have applied, and the leader's in-memory index must never differ from the store's —
/// garbage collection deletes every object the store no longer references, so a leader that
/// still pointed at one would fail its reads for good. Lifecycle transactions are safe to apply
/// twice (deletes, and puts of the same values under the same fences), so they are retried until
/// the store says yes or no; a store that stays away ends the agent's lease, after which the
/// fences answer no. A refusal after an unanswered attempt leaves the outcome unknown: the
/// partition is closed, as its leadership moved, so nothing is served from what it remembers.
pub(crate) async fn commit_answered(
    b: &Broker,
    p: &Partition,
    txn: Txn,
    what: &str,
) -> Result<(), PartitionError> {
    let mut unanswered = false;
    let mut attempt = 0u32;
    loop {
        match b.meta.txn(txn.clone()).await {
            Ok(r) if r.succeeded => return Ok(()),
            Ok(_) => {
                if unanswered {
                    p.close();
                }
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
