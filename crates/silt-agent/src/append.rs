//! Appending one produced batch to a partition: idempotence check, offset assignment, the
//! rewrite of the batch header, the transaction it opens, and handing it to the flush pipeline —
//! all under the partition's lock, so offsets are assigned and buffered in the same order.
//! [`append_marker`] ends a producer's transaction in the partition with a control batch.

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
    if header.is_control() {
        return Err(PartitionError::InvalidRecord(
            "control batches are written by the transaction coordinator, never by clients".into(),
        ));
    }
    if header.is_transactional() && !header.is_idempotent() {
        return Err(PartitionError::InvalidRecord(
            "a transactional batch needs a producer id and sequence".into(),
        ));
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
    let opens = header.is_transactional() && !st.txns.is_open(header.producer_id);
    let generation = flusher.push(Pending {
        partition: partition.clone(),
        base_offset,
        last_offset,
        max_timestamp: log_append_time.unwrap_or(header.max_timestamp),
        data: rewritten,
        producer,
        txn: opens.then_some(silt_meta::layout::index::TxnMark {
            pid: header.producer_id,
            first_offset: base_offset,
            end: None,
        }),
        permit,
    })?;
    if opens {
        st.txns.on_append(header.producer_id, base_offset);
    }
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

/// Ends producer `pid`'s transaction in the partition: a commit or abort marker, buffered like
/// any batch (durable once its flush generation commits). Returns the marker's offset and
/// generation.
pub fn append_marker(
    flusher: &Flusher,
    partition: &Arc<Partition>,
    (pid, epoch): (i64, i16),
    marker: silt_wire::control::Marker,
    coordinator_epoch: i32,
    now_ms: i64,
    permit: OwnedSemaphorePermit,
) -> Result<(i64, u64), PartitionError> {
    let data = silt_wire::control::marker_batch(pid, epoch, marker, coordinator_epoch, now_ms);
    let mut st = partition.lock();
    if partition.is_closed() {
        return Err(PartitionError::NotLeader(format!(
            "leadership of {}-{} moved to another agent",
            partition.topic, partition.index
        )));
    }
    let offset = st.next_offset;
    let rewritten = batch::rewrite(&data, offset, st.leader_epoch, None);
    let mark = st
        .txns
        .end_mark(pid, offset, marker == silt_wire::control::Marker::Commit);
    let generation = flusher.push(Pending {
        partition: partition.clone(),
        base_offset: offset,
        last_offset: offset,
        max_timestamp: now_ms,
        data: rewritten,
        producer: None,
        txn: Some(mark),
        permit,
    })?;
    st.txns.on_marker(pid);
    // A marker at a newer epoch (transaction version 2 ends every transaction at the next one)
    // moves the producer there: a late batch of the ended epoch is refused, as in Kafka.
    st.producers.on_marker(pid, epoch);
    st.next_offset = offset + 1;
    Ok((offset, generation))
}
