//! Appending one produced batch to a partition: idempotence check, offset assignment, the
//! rewrite of the batch header, and handing it to the flush pipeline — all under the
//! partition's lock, so offsets are assigned and buffered in the same order.

use std::sync::Arc;

use bytes::Bytes;
use silt_meta::layout::index::ProducerBatch;
use silt_wire::batch::{self, BatchHeader};
use tokio::sync::OwnedSemaphorePermit;

use crate::error::PartitionError;
use crate::flush::{Flusher, Pending};
use crate::partition::Partition;
use crate::producer::{SeenBatch, Verdict};

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Buffered; durable once flush generation `generation` commits.
    Buffered {
        /// Offset of the first record.
        base_offset: i64,
        /// Flush generation carrying it.
        generation: u64,
    },
    /// A retry of a batch appended before; durable once the high watermark passes it.
    Duplicate(SeenBatch),
}

/// Appends a validated batch.
pub fn append(
    flusher: &Flusher,
    partition: &Arc<Partition>,
    data: &Bytes,
    header: &BatchHeader,
    log_append_time: Option<i64>,
    now_ms: i64,
    permit: OwnedSemaphorePermit,
) -> Result<Appended, PartitionError> {
    if header.is_transactional() || header.is_control() {
        return Err(PartitionError::TransactionsUnsupported);
    }
    let mut st = partition.lock();
    if partition.is_closed() {
        return Err(PartitionError::NotLeader(format!(
            "leadership of {}-{} moved to another agent",
            partition.topic, partition.index
        )));
    }
    let idempotent = header.is_idempotent();
    if idempotent {
        let verdict = st.producers.check(
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
            header.last_sequence(),
        )?;
        if let Verdict::Duplicate(seen) = verdict {
            return Ok(Appended::Duplicate(seen));
        }
    }
    let base_offset = st.next_offset;
    let last_offset = base_offset + header.last_offset_delta as i64;
    let rewritten = batch::rewrite(data, base_offset, st.leader_epoch, log_append_time);
    let producer = idempotent.then(|| ProducerBatch {
        pid: header.producer_id,
        epoch: header.producer_epoch,
        first_seq: header.base_sequence,
        last_seq: header.last_sequence(),
        base_offset,
    });
    let generation = flusher.push(Pending {
        partition: partition.clone(),
        base_offset,
        last_offset,
        max_timestamp: log_append_time.unwrap_or(header.max_timestamp),
        data: rewritten,
        producer,
        permit,
    })?;
    st.next_offset = last_offset + 1;
    if idempotent {
        st.producers.record(
            header.producer_id,
            header.producer_epoch,
            SeenBatch {
                first_seq: header.base_sequence,
                last_seq: header.last_sequence(),
                base_offset,
                last_offset,
            },
            now_ms,
        );
    }
    Ok(Appended::Buffered {
        base_offset,
        generation,
    })
}
