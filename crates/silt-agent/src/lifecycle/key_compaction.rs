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
use kafka_protocol::records::Compression;
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
    // An entry is dirty for the share of its offsets past what was cleaned (a fold may have
    // joined cleaned and new data in one entry).
    let c = cleaned.unwrap_or(i64::MIN);
    let dirty: Vec<&IndexEntry> = entries[..end]
        .iter()
        .filter(|e| e.last_offset > c)
        .collect();
    let Some(oldest) = dirty.first() else {
        return 0;
    };
    let dirty_bytes: u64 = dirty
        .iter()
        .map(|e| {
            let span = (e.last_offset - e.base_offset + 1).max(1) as u128;
            let new = (e.last_offset - e.base_offset.max(c.saturating_add(1)) + 1)
                .clamp(0, span as i64) as u128;
            (e.len as u128 * new / span) as u64
        })
        .sum();
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

/// What compaction reads of one record of a batch: where its frame lies in the records section,
/// its offset and timestamp delta, its key and whether its value is null.
struct RawRecord {
    frame: std::ops::Range<usize>,
    offset: i64,
    ts_delta: i64,
    key: Option<std::ops::Range<usize>>,
    tombstone: bool,
}

/// The records section of a batch, decompressed; `None` if it does not decompress within
/// [`MAX_DECOMPRESSED`].
fn records_section(one: &Bytes, h: &BatchHeader) -> Option<Bytes> {
    let body = one.get(batch::HEADER_LEN..h.size.min(one.len()))?;
    let body = one.slice_ref(body);
    match codec(h.attributes) {
        Compression::None => Some(body),
        c => silt_archive::decode::decompress_bounded(body, c, MAX_DECOMPRESSED).ok(),
    }
}

/// Walks the record frames of a records section. `None` unless every frame parses, there are
/// exactly as many as the header says, and their offsets strictly increase within the batch's
/// range (a batch Silt cannot read with certainty is kept as it is, and teaches no key).
fn walk(section: &[u8], h: &BatchHeader) -> Option<Vec<RawRecord>> {
    let last = h.base_offset.checked_add(h.last_offset_delta as i64)?;
    let mut out: Vec<RawRecord> = Vec::with_capacity(h.record_count.clamp(0, 4096) as usize);
    let mut rest = section;
    while !rest.is_empty() {
        let start = section.len() - rest.len();
        let len = usize::try_from(batch::varint(&mut rest)?).ok()?;
        let body_at = section.len() - rest.len();
        let body = rest.get(..len)?;
        rest = &rest[len..];
        let mut r = body.get(1..)?; // attributes
        let ts_delta = batch::varint(&mut r)?;
        let offset = h.base_offset.checked_add(batch::varint(&mut r)?)?;
        if offset > last || out.last().is_some_and(|p| p.offset >= offset) || offset < h.base_offset
        {
            return None;
        }
        let key_len = batch::varint(&mut r)?;
        let key = if key_len < 0 {
            None
        } else {
            let k = usize::try_from(key_len).ok()?;
            let at = body_at + (body.len() - r.len());
            r.get(..k)?;
            r = &r[k..];
            Some(at..at + k)
        };
        let value_len = batch::varint(&mut r)?;
        out.push(RawRecord {
            frame: start..body_at + len,
            offset,
            ts_delta,
            key,
            tombstone: value_len < 0,
        });
    }
    (out.len() == h.record_count.max(0) as usize).then_some(out)
}

/// Whether a batch's records count (`txn_free`: the partition has no open or aborted
/// transaction, so transactional records are committed ones).
fn counts(h: &BatchHeader, txn_free: bool) -> bool {
    !h.is_control() && (txn_free || !h.is_transactional())
}

/// Adds the keys of `data`'s batches to `latest` (key -> its last offset). False past
/// [`MAX_KEYS`].
fn learn(data: &Bytes, latest: &mut HashMap<KeyId, i64>, txn_free: bool) -> bool {
    for (h, rg) in batch::iter(data) {
        if !counts(&h, txn_free) {
            continue;
        }
        let one = data.slice(rg);
        let Some(section) = records_section(&one, &h) else {
            continue;
        };
        let Some(records) = walk(&section, &h) else {
            continue;
        };
        for r in records {
            if let Some(k) = &r.key {
                let e = latest
                    .entry(key_id(&section[k.clone()]))
                    .or_insert(r.offset);
                *e = (*e).max(r.offset);
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

/// Compacts one batch (`one`, headed `h`): the records that stay keep their bytes exactly
/// (headers, timestamps, offsets); the header keeps its base offset, last offset delta,
/// first timestamp, producer, sequence and attributes, with the record count (and, for
/// create-time batches, the max timestamp) of what stays.
pub fn compact_batch(
    one: &Bytes,
    h: &BatchHeader,
    latest: &HashMap<KeyId, i64>,
    tombstones_before: i64,
    txn_free: bool,
) -> Outcome {
    if !counts(h, txn_free) {
        return Outcome::Same;
    }
    let Some(section) = records_section(one, h) else {
        return Outcome::Same;
    };
    let Some(records) = walk(&section, h) else {
        return Outcome::Same;
    };
    let stays = |r: &RawRecord| {
        let Some(k) = &r.key else {
            return true; // compacted topics refuse keyless records; kept if any slipped in
        };
        if latest
            .get(&key_id(&section[k.clone()]))
            .is_some_and(|o| *o != r.offset)
        {
            return false;
        }
        !(r.tombstone && h.base_timestamp.saturating_add(r.ts_delta) < tombstones_before)
    };
    let kept: Vec<&RawRecord> = records.iter().filter(|r| stays(r)).collect();
    if kept.len() == records.len() {
        return Outcome::Same;
    }
    if kept.is_empty() {
        return Outcome::Gone;
    }
    let mut raw = BytesMut::new();
    for r in &kept {
        raw.extend_from_slice(&section[r.frame.clone()]);
    }
    let body = match codec(h.attributes) {
        Compression::None => raw.to_vec(),
        c => match compress(c, &raw) {
            Some(b) => b,
            None => return Outcome::Same,
        },
    };
    let mut out = one[..batch::HEADER_LEN].to_vec();
    out.extend_from_slice(&body);
    let length = (out.len() - batch::LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    if h.attributes & batch::ATTR_LOG_APPEND_TIME == 0 {
        let max_delta = kept.iter().map(|r| r.ts_delta).max().unwrap_or(0);
        let max_ts = h.base_timestamp.saturating_add(max_delta);
        out[35..43].copy_from_slice(&max_ts.to_be_bytes());
    }
    out[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    batch::reseal(&mut out);
    Outcome::Rewritten(Bytes::from(out))
}

/// Compresses a records section with the batch's codec (kafka-protocol's compressors, the
/// same producers' batches are read with).
fn compress(c: Compression, raw: &[u8]) -> Option<Vec<u8>> {
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
    let mut out = BytesMut::new();
    let put = |b: &mut BytesMut| {
        b.extend_from_slice(raw);
        Ok(())
    };
    let res = match c {
        Compression::Gzip => <Gzip as Compressor<BytesMut>>::compress(&mut out, put),
        Compression::Snappy => <Snappy as Compressor<BytesMut>>::compress(&mut out, put),
        Compression::Lz4 => <Lz4 as Compressor<BytesMut>>::compress(&mut out, put),
        Compression::Zstd => <Zstd as Compressor<BytesMut>>::compress(&mut out, put),
        Compression::None => {
            out.extend_from_slice(raw);
            Ok(())
        }
    };
    res.ok().map(|()| out.to_vec())
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
    txn_free: bool,
) -> Option<Bytes> {
    let mut out = BytesMut::new();
    let mut changed = false;
    for (h, rg) in batch::iter(data) {
        let one = data.slice(rg);
        match compact_batch(&one, &h, latest, tombstones_before, txn_free) {
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
    // With no open or aborted transaction tracked, transactional records are committed ones
    // and compact like the others; else they are kept whole and teach no key (an aborted
    // record must never supersede a committed one).
    let txn_free = entries.iter().all(|e| e.txns.is_empty());
    // The last entry is never rewritten: the log's tail always ends with a batch, so a reader
    // between the last kept record and the high watermark always has one to read.
    let mut end = cleanable(&entries, cleaned, now, rules).min(entries.len().saturating_sub(1));
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
        if !learn(&data, &mut latest, txn_free) {
            tracing::warn!(topic = %p.topic, partition = p.index, keys = MAX_KEYS,
                "key compaction skipped: the partition has more distinct keys than one pass tracks; it is tried again once as much new data is dirty");
            // Back off: not again until the partition is dirty again.
            p.lock().key_cleaned = Some(entries[end - 1].last_offset);
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
                txn_free,
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
            super::compaction::replace_run(b, p, run, Vec::new(), run, &datas, true).await?;
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
