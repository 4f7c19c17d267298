//! Key compaction of `cleanup.policy=compact` topics, on each partition's leader: the latest
//! record of every key survives, older ones are taken out of their batches, and tombstones
//! (null values) go once they are older than `delete.retention.ms`. Offsets never change: a
//! batch keeps the offsets of the records it keeps (gaps appear, as in Kafka), and a batch left
//! with no record is dropped — or, when a whole run would be left with none, kept as one empty
//! batch that carries its offsets (Kafka's cleaner leaves such batches too; clients step over
//! them).
//!
//! A pass: when the part of the log not yet cleaned is at least `min.cleanable.dirty.ratio` of
//! it (or its oldest record is older than `max.compaction.lag.ms`), read the whole committed
//! log once to learn each key's latest offset (keys are kept as 128-bit digests, as Kafka's
//! cleaner keeps them), then rewrite the cleanable entries — all but the active segment (the
//! most recent `segment.bytes`, younger than `segment.ms`), and only entries whose records are
//! older than `min.compaction.lag.ms` — run by run through the segment machinery
//! ([`super::compaction::replace_run`]: one new object and one fenced transaction per run, with
//! the same crash points). A run in which nothing changes is left alone.
//!
//! On a topic also archived as Parquet, only what the archive already holds is compacted (the
//! archive keeps every record). Not compacted: partitions with transactions the index still tracks (open or aborted ones;
//! their records stay until retention takes them), transactional and control batches (kept
//! whole), and batches whose payload does not decode (kept whole). A pass stops (and says so)
//! past [`MAX_KEYS`] distinct keys.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};
use md5::{Digest, Md5};
use silt_meta::layout::index::IndexEntry;
use silt_wire::batch::{self, BatchHeader};

use super::compaction::{ProducerBudget, ENTRIES_PER_STEP};
use crate::broker::Broker;
use crate::error::PartitionError;
use crate::partition::Partition;

/// Distinct keys one pass may track (about 50 bytes of memory each).
pub const MAX_KEYS: usize = 4_000_000;

/// One batch's records decompress to at most this much during compaction.
const MAX_DECOMPRESSED: usize = 128 << 20;

/// A topic's key-compaction settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyRules {
    /// Tombstones older than this are removed (`delete.retention.ms`).
    pub delete_retention_ms: i64,
    /// Records younger than this are not compacted (`min.compaction.lag.ms`).
    pub min_lag_ms: i64,
    /// Records older than this are compacted whatever the dirty ratio (`max.compaction.lag.ms`).
    pub max_lag_ms: i64,
    /// Compaction starts once this share of the log is not yet cleaned
    /// (`min.cleanable.dirty.ratio`).
    pub min_dirty_ratio: f64,
    /// The most recent data, up to this many bytes (`segment.bytes`) ...
    pub segment_bytes: u64,
    /// ... and no older than this (`segment.ms`), is the active segment: never compacted.
    pub segment_ms: i64,
}

// The ratio is validated to lie in [0, 1] (never NaN), so equality is total.
impl Eq for KeyRules {}

impl Default for KeyRules {
    fn default() -> Self {
        Self {
            delete_retention_ms: 86_400_000,
            min_lag_ms: 0,
            max_lag_ms: i64::MAX,
            min_dirty_ratio: 0.5,
            segment_bytes: 1 << 30,
            segment_ms: 7 * 86_400_000,
        }
    }
}

type KeyId = [u8; 16];

fn key_id(key: &[u8]) -> KeyId {
    Md5::digest(key).into()
}

/// How many leading entries of `entries` may be cleaned now (0: none), given the offset the
/// last pass cleaned up to. As in Kafka, the active segment is never cleaned: here the most
/// recent entries, up to `segment.bytes` of them, none older than `segment.ms`.
pub fn cleanable(entries: &[IndexEntry], cleaned: Option<i64>, now: i64, r: &KeyRules) -> usize {
    let mut end = entries.len();
    let mut active = 0u64;
    while end > 0 {
        let e = &entries[end - 1];
        if active + e.len > r.segment_bytes || e.max_timestamp < now.saturating_sub(r.segment_ms) {
            break;
        }
        active += e.len;
        end -= 1;
    }
    let end = entries[..end]
        .iter()
        .position(|e| e.max_timestamp > now.saturating_sub(r.min_lag_ms))
        .unwrap_or(end);
    if end == 0 {
        return 0;
    }
    let total: u64 = entries.iter().map(|e| e.len).sum();
    let dirty: Vec<&IndexEntry> = entries[..end]
        .iter()
        .filter(|e| cleaned.is_none_or(|c| e.base_offset > c))
        .collect();
    let Some(oldest) = dirty.first() else {
        return 0;
    };
    let dirty_bytes: u64 = dirty.iter().map(|e| e.len).sum();
    let ratio = dirty_bytes as f64 / total.max(1) as f64;
    let overdue = oldest.max_timestamp < now.saturating_sub(r.max_lag_ms);
    if ratio >= r.min_dirty_ratio || overdue {
        end
    } else {
        0
    }
}

fn codec(attributes: i16) -> Compression {
    match batch::compression(attributes) {
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        _ => Compression::None,
    }
}

/// The records of one batch, or `None` if its payload does not decode (kept as it is).
fn decode(one: &Bytes) -> Option<Vec<Record>> {
    let d = silt_archive::decode::records(one, i64::MIN, i64::MAX, MAX_DECOMPRESSED).ok()?;
    d.quarantined.is_empty().then_some(d.records)
}

/// Adds the keys of `data`'s batches to `latest` (key -> its last offset). False past
/// [`MAX_KEYS`].
fn learn(data: &Bytes, latest: &mut HashMap<KeyId, i64>) -> bool {
    for (h, rg) in batch::iter(data) {
        if h.is_control() {
            continue;
        }
        let Some(records) = decode(&data.slice(rg)) else {
            continue;
        };
        for r in records {
            if let Some(k) = &r.key {
                latest.insert(key_id(k), r.offset);
            }
        }
        if latest.len() > MAX_KEYS {
            return false;
        }
    }
    true
}

/// What compaction makes of one batch.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Unchanged.
    Same,
    /// Every record superseded.
    Gone,
    /// Rewritten with the records that stay.
    Rewritten(Bytes),
}

/// Whether record `r` stays: it is its key's latest, and not a tombstone from before
/// `tombstones_before`. Records without a key stay (compacted topics refuse them anyway).
fn stays(r: &Record, latest: &HashMap<KeyId, i64>, tombstones_before: i64) -> bool {
    let Some(k) = &r.key else {
        return true;
    };
    if latest.get(&key_id(k)).is_some_and(|o| *o != r.offset) {
        return false;
    }
    !(r.value.is_none() && r.timestamp < tombstones_before)
}

/// Compacts one batch (`one`, headed `h`).
pub fn compact_batch(
    one: &Bytes,
    h: &BatchHeader,
    latest: &HashMap<KeyId, i64>,
    tombstones_before: i64,
) -> Outcome {
    if h.is_control() || h.is_transactional() {
        return Outcome::Same;
    }
    let Some(records) = decode(one) else {
        return Outcome::Same;
    };
    let kept: Vec<&Record> = records
        .iter()
        .filter(|r| stays(r, latest, tombstones_before))
        .collect();
    if kept.len() == records.len() {
        return Outcome::Same;
    }
    if kept.is_empty() {
        return Outcome::Gone;
    }
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: codec(h.attributes),
    };
    if RecordBatchEncoder::encode(&mut out, kept.iter().copied(), &options).is_err() {
        return Outcome::Same;
    }
    let mut out = out.to_vec();
    // What the encoder does not carry over: the timestamp type, and "no sequence".
    let attrs =
        i16::from_be_bytes([out[21], out[22]]) | (h.attributes & batch::ATTR_LOG_APPEND_TIME);
    out[21..23].copy_from_slice(&attrs.to_be_bytes());
    if h.base_sequence < 0 {
        out[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    }
    batch::reseal(&mut out);
    Outcome::Rewritten(Bytes::from(out))
}

/// An empty batch (no record) in place of `h`'s, carrying its offsets, producer and times.
fn empty_like(h: &BatchHeader) -> Bytes {
    let mut b = silt_wire::write::batch(
        silt_wire::write::Header {
            attributes: h.attributes & !0x07,
            timestamps: (h.base_timestamp, h.max_timestamp),
            producer: (h.producer_id, h.producer_epoch),
            base_sequence: h.base_sequence,
        },
        0,
        &[],
    )
    .to_vec();
    b[0..8].copy_from_slice(&h.base_offset.to_be_bytes());
    b[23..27].copy_from_slice(&h.last_offset_delta.to_be_bytes());
    batch::reseal(&mut b);
    Bytes::from(b)
}

/// Compacts the batches of one entry's bytes; `None` if nothing changed. `last` is the last
/// batch dropped so far in the run (to stand in for a run left empty).
fn compact_data(
    data: &Bytes,
    latest: &HashMap<KeyId, i64>,
    tombstones_before: i64,
    last: &mut Option<BatchHeader>,
    removed: &mut u64,
) -> Option<Bytes> {
    let mut out = BytesMut::new();
    let mut changed = false;
    for (h, rg) in batch::iter(data) {
        let one = data.slice(rg);
        match compact_batch(&one, &h, latest, tombstones_before) {
            Outcome::Same => out.extend_from_slice(&one),
            Outcome::Gone => {
                changed = true;
                *removed += h.record_count.max(0) as u64;
                *last = Some(h);
            }
            Outcome::Rewritten(b) => {
                changed = true;
                *removed += h.record_count.max(0) as u64;
                *removed -= batch::parse_header(&b).map_or(0, |n| n.record_count.max(0) as u64);
                out.extend_from_slice(&b);
            }
        }
    }
    changed.then(|| out.freeze())
}

/// One pass on one partition; returns whether it rewrote anything.
pub async fn step(b: &Broker, p: &Partition, rules: &KeyRules) -> Result<bool, PartitionError> {
    let _one_at_a_time = b.lifecycle_lock.lock().await;
    if p.is_closed() {
        return Ok(false);
    }
    let now = b.clock.now_ms();
    let (entries, cleaned) = {
        let st = p.lock();
        (st.segments.clone(), st.key_cleaned)
    };
    if entries.iter().any(|e| !e.txns.is_empty()) {
        return Ok(false);
    }
    let mut end = cleanable(&entries, cleaned, now, rules);
    // An archived topic is compacted only where the archive already holds every record.
    let archived = b
        .topics
        .get(&p.topic)
        .filter(|t| t.config.archive)
        .map(|_| b.archive.archived_offset(&p.topic, p.index).unwrap_or(0));
    while end > 0 && archived.is_some_and(|a| entries[end - 1].last_offset >= a) {
        end -= 1;
    }
    if end == 0 {
        return Ok(false);
    }
    // Every key's latest offset, over the whole committed log.
    let mut latest: HashMap<KeyId, i64> = HashMap::new();
    for e in &entries {
        let data = crate::read::range_bytes(&b.storage, &b.cache, e).await?;
        if !learn(&data, &mut latest) {
            tracing::warn!(topic = %p.topic, partition = p.index, keys = MAX_KEYS,
                "key compaction skipped: the partition has more distinct keys than one pass tracks");
            return Ok(false);
        }
    }
    let tombstones_before = now.saturating_sub(rules.delete_retention_ms);
    let l = &b.settings.lifecycle;
    let mut rewrote = false;
    let mut removed = 0u64;
    let mut i = 0;
    while i < end {
        // A run: consecutive entries within a segment's size and the fold's budgets.
        let mut j = i;
        let mut bytes = 0u64;
        let mut budget = ProducerBudget::default();
        while j < end
            && j - i < ENTRIES_PER_STEP
            && (j == i || bytes + entries[j].len <= l.segment_bytes)
            && budget.fits(&entries[j])
        {
            bytes += entries[j].len;
            budget.add(&entries[j]);
            j += 1;
        }
        let j = j.max(i + 1);
        let run = &entries[i..j];
        let mut datas = Vec::with_capacity(run.len());
        let mut changed = false;
        let mut last_gone = None;
        for e in run {
            let data = crate::read::range_bytes(&b.storage, &b.cache, e).await?;
            match compact_data(
                &data,
                &latest,
                tombstones_before,
                &mut last_gone,
                &mut removed,
            ) {
                Some(d) => {
                    changed = true;
                    datas.push(d);
                }
                None => datas.push(data),
            }
        }
        if changed {
            if datas.iter().all(|d| d.is_empty()) {
                if let Some(h) = last_gone {
                    datas = vec![empty_like(&h)];
                }
            }
            if p.is_closed() {
                return Ok(rewrote);
            }
            super::compaction::replace_run(b, p, run, &datas).await?;
            rewrote = true;
        }
        i = j;
    }
    p.lock().key_cleaned = Some(entries[end - 1].last_offset);
    let c = &b.compaction;
    c.key_passes.fetch_add(1, Ordering::Relaxed);
    c.key_records_removed.fetch_add(removed, Ordering::Relaxed);
    tracing::debug!(topic = %p.topic, partition = p.index, removed, keys = latest.len(),
        cleaned_through = entries[end - 1].last_offset, "key compaction pass");
    Ok(rewrote)
}

#[cfg(test)]
mod tests;
