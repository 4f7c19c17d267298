//! The read path: committed batches of one partition from an offset, served from the tail
//! cache when the object was written recently, else by a range GET of exactly the partition's
//! bytes in the flush object. Never returns an offset at or above the high watermark.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::path::Path;
use silt_meta::layout::index::IndexEntry;
use silt_storage::Storage;
use silt_wire::batch;
use silt_wire::rope::Rope;

use crate::cache::ObjectCache;
use crate::error::PartitionError;
use crate::partition::Partition;

/// What a read found.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    /// Whole batches starting at or before the offset read, or `None` if none: slices of the
    /// buffers they were read into (the tail cache's objects, the block cache's blocks).
    pub records: Option<Rope>,
    /// The high watermark when the read started.
    pub high_watermark: i64,
    /// The log start offset.
    pub log_start: i64,
    /// The last stable offset when the read started (read_committed reads stop there).
    pub last_stable: i64,
    /// For read_committed reads: the aborted transactions with records in what was read.
    pub aborted: Vec<crate::txn_index::Aborted>,
}

/// Which records a read may return (Kafka's `isolation_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Up to the high watermark.
    ReadUncommitted,
    /// Up to the last stable offset, with the aborted transactions listed.
    ReadCommitted,
}

/// Offsets a partition can be read at: `[log_start, high_watermark]`.
pub fn check_offset(p: &Partition, offset: i64) -> Result<(i64, i64), PartitionError> {
    let st = p.lock();
    if offset < st.log_start || offset > st.high_watermark {
        return Err(PartitionError::OffsetOutOfRange {
            offset,
            log_start: st.log_start,
            high_watermark: st.high_watermark,
        });
    }
    Ok((st.log_start, st.high_watermark))
}

/// The bytes of one committed range: from the tail cache, else through the block cache, else
/// one range GET.
pub async fn range_bytes(
    storage: &Storage,
    cache: &ObjectCache,
    r: &IndexEntry,
) -> Result<Bytes, PartitionError> {
    bytes_of(storage, cache, r, true).await
}

/// [`range_bytes`] for a caller that reads the range once (compaction): from the tail cache if
/// it is there, else straight from the object store, leaving the block cache to readers.
pub async fn range_bytes_uncached(
    storage: &Storage,
    cache: &ObjectCache,
    r: &IndexEntry,
) -> Result<Bytes, PartitionError> {
    bytes_of(storage, cache, r, false).await
}

/// A range's bytes, piece by piece (one piece: without a copy); stored bytes through the block
/// cache if `blocks`.
async fn bytes_of(
    storage: &Storage,
    cache: &ObjectCache,
    r: &IndexEntry,
    blocks: bool,
) -> Result<Bytes, PartitionError> {
    if r.pieces.is_empty() {
        return piece_bytes(storage, cache, r, blocks).await;
    }
    let mut all = BytesMut::with_capacity(r.len as usize);
    for piece in r.split() {
        all.extend_from_slice(&piece_bytes(storage, cache, &piece, blocks).await?);
    }
    Ok(all.freeze())
}

/// The bytes of a range in one object: from the tail cache, or stored (through the block cache
/// if `blocks`).
async fn piece_bytes(
    storage: &Storage,
    cache: &ObjectCache,
    r: &IndexEntry,
    blocks: bool,
) -> Result<Bytes, PartitionError> {
    if let Some(d) = cache.get(&r.object, r.pos, r.len) {
        return Ok(d);
    }
    if !blocks {
        let path = Path::from(r.object.as_str());
        return Ok(storage.get(&path, Some(r.pos..r.pos + r.len)).await?);
    }
    Ok(stored(storage, cache, r).await?.contiguous())
}

/// The bytes of one committed range from object storage, through the block cache if any (a
/// slice of each block it spans).
async fn stored(
    storage: &Storage,
    cache: &ObjectCache,
    r: &IndexEntry,
) -> Result<Rope, PartitionError> {
    if let Some(blocks) = &cache.blocks {
        return Ok(blocks
            .read(storage, &r.object, r.pos..r.pos + r.len)
            .await?);
    }
    Ok(storage
        .get(&Path::from(r.object.as_str()), Some(r.pos..r.pos + r.len))
        .await?
        .into())
}

/// The bytes a read at `offset` of `max_bytes` needs from `r`: they start with the batch that
/// holds `offset` (or the first after it) and hold at least that whole batch, whatever the
/// sizes of the range, the gaps between its marks and its batches. Also says whether the bytes
/// run to the end of `r`: if not, the read must stop after them, or it would skip the rest.
///
/// A range in the tail cache is sliced without a copy. Otherwise the read starts at the mark at
/// or before `offset` and fetches bounded windows, skipping whole batches that end before
/// `offset`; a batch larger than a window is fetched alone, by the length in its header. Empty
/// bytes (with `true`) mean nothing in `r` reaches `offset`.
async fn range_from(
    storage: &Storage,
    cache: &ObjectCache,
    r: &IndexEntry,
    offset: i64,
    max_bytes: usize,
) -> Result<(Rope, bool), PartitionError> {
    let holds = |h: &batch::BatchHeader| reaches(h, offset);
    let mut pos = r.seek(offset).min(r.len);
    if let Some(all) = cache.get(&r.object, r.pos, r.len) {
        return Ok((from_holding(all.slice(pos as usize..).into(), offset), true));
    }
    let window = (max_bytes as u64).max(1 << 20) * 2;
    if pos == 0 && r.len <= window {
        let all = stored(storage, cache, r).await?;
        return Ok((from_holding(all, offset), true));
    }
    let corrupt = |at: u64, reason: String| PartitionError::CorruptStored {
        object: r.object.clone(),
        pos: r.pos + at,
        reason,
    };
    while pos < r.len {
        let len = (r.len - pos).min(window);
        let data = stored(storage, cache, &sub_range(r, pos, len)).await?;
        // Read ahead inside the range too: a catch-up consumer's next fetch of this partition
        // starts where this window ends (a range can hold many fetches' worth).
        if let Some(blocks) = &cache.blocks {
            let next = pos + len;
            if blocks.read_ahead > 0 && next < r.len {
                let ahead = r.pos + next..r.pos + (next + window).min(r.len);
                blocks.prefetch(storage, &r.object, ahead);
            }
        }
        let mut consumed = 0usize;
        for (h, rg) in data.batches() {
            if holds(&h) {
                return Ok((data.slice(rg.start..data.len()), pos + len == r.len));
            }
            consumed = rg.end;
        }
        if consumed == 0 {
            // The first batch is larger than the window: fetch it alone.
            let h = data.header_at(0).map_err(|e| corrupt(pos, e.to_string()))?;
            let size = h.size as u64;
            if size <= len || size > r.len - pos {
                return Err(corrupt(
                    pos,
                    format!(
                        "a batch of {size} bytes does not fit the {} bytes left",
                        r.len - pos
                    ),
                ));
            }
            if holds(&h) {
                let one = stored(storage, cache, &sub_range(r, pos, size)).await?;
                return Ok((one, pos + size == r.len));
            }
            consumed = h.size;
        }
        pos += consumed as u64;
    }
    Ok((Rope::default(), true))
}

/// Whether the batch holds `offset` or follows it.
fn reaches(h: &batch::BatchHeader, offset: i64) -> bool {
    h.base_offset + h.last_offset_delta as i64 >= offset
}

/// The whole batches of `all` from the first that holds `offset` or follows it (empty if none).
fn from_holding(all: Rope, offset: i64) -> Rope {
    match all.batches().find(|(h, _)| reaches(h, offset)) {
        Some((_, rg)) => all.slice(rg.start..all.len()),
        None => Rope::default(),
    }
}

/// `len` bytes of `r` from `pos` (relative to `r`), as a range of its own.
fn sub_range(r: &IndexEntry, pos: u64, len: u64) -> IndexEntry {
    let mut part = r.clone();
    part.pos = r.pos + pos;
    part.len = len;
    part.marks = Vec::new();
    part.producers = Vec::new();
    part.pieces = Vec::new();
    part
}

/// Reads up to `max_bytes` (at least one batch if any) from `offset`, up to the high watermark.
pub async fn read(
    storage: &Storage,
    cache: &ObjectCache,
    p: &Partition,
    offset: i64,
    max_bytes: usize,
) -> Result<ReadResult, PartitionError> {
    read_isolated(
        storage,
        cache,
        p,
        offset,
        max_bytes,
        Isolation::ReadUncommitted,
    )
    .await
}

/// [`read`] at an isolation level: read_committed stops at the last stable offset (an offset
/// in `[LSO, HW]` reads nothing) and lists the aborted transactions among what it returns.
pub async fn read_isolated(
    storage: &Storage,
    cache: &ObjectCache,
    p: &Partition,
    offset: i64,
    max_bytes: usize,
    isolation: Isolation,
) -> Result<ReadResult, PartitionError> {
    let (log_start, high_watermark) = check_offset(p, offset)?;
    let last_stable = p.lock().txns.last_stable(high_watermark);
    let end = match isolation {
        Isolation::ReadUncommitted => high_watermark,
        Isolation::ReadCommitted => last_stable,
    };
    if offset >= end {
        return Ok(ReadResult {
            records: None,
            high_watermark,
            log_start,
            last_stable,
            aborted: Vec::new(),
        });
    }
    let ranges = bounded(p.lock().locate(offset, max_bytes), cache);
    // Read ahead: the next committed ranges, into the block cache, for catch-up readers.
    if let (Some(blocks), Some(last)) = (&cache.blocks, ranges.last()) {
        if blocks.read_ahead > 0 {
            let ahead = p
                .lock()
                .next_ranges(last.last_offset, blocks.read_ahead as usize);
            for r in &ahead {
                if !cache.holds(&r.object) {
                    // The start of each: a compacted range may be far larger than one fetch.
                    let len = r.len.min((max_bytes as u64).max(1 << 20) * 2);
                    blocks.prefetch(storage, &r.object, r.pos..r.pos + len);
                }
            }
        }
    }
    let mut out = Rope::default();
    // Key compaction leaves offsets without records, at the end of a range too: when the
    // located ranges hold nothing at or after `offset`, the next ones are located, so every
    // offset below the end reads the next batch there is.
    let mut ranges = ranges;
    while let Some(after) = ranges.last().map(|r| r.last_offset + 1) {
        let args = (offset, end, max_bytes);
        read_ranges(storage, cache, ranges, args, &mut out).await?;
        if !out.is_empty() || after >= end {
            break;
        }
        ranges = bounded(p.lock().locate(after, max_bytes), cache);
    }
    let records = (!out.is_empty()).then_some(out);
    let aborted = match (&records, isolation) {
        (Some(r), Isolation::ReadCommitted) => {
            let upto = r.batches().last().map_or(offset, |(h, _)| {
                h.base_offset + h.last_offset_delta as i64 + 1
            });
            p.lock().txns.aborted_between(offset, upto)
        }
        _ => Vec::new(),
    };
    Ok(ReadResult {
        records,
        high_watermark,
        log_start,
        last_stable,
        aborted,
    })
}

/// Ranges one read fetches from the object store at once.
const READ_CONCURRENCY: usize = 16;

/// Ranges not in the tail cache that one read may need: past them it returns what it has (the
/// consumer asks again from there), so a read of a partition spread thin over thousands of
/// objects answers in a few round trips, well inside the client's request timeout.
const MAX_STORED_RANGES: usize = 64;

/// The first of `ranges` up to the [`MAX_STORED_RANGES`]th not in the tail cache (at least one).
fn bounded(mut ranges: Vec<IndexEntry>, cache: &ObjectCache) -> Vec<IndexEntry> {
    let mut stored = 0;
    let keep = ranges
        .iter()
        .position(|r| {
            stored += usize::from(!cache.holds(&r.object));
            stored > MAX_STORED_RANGES
        })
        .unwrap_or(ranges.len());
    ranges.truncate(keep.max(1));
    ranges
}

/// Appends to `out` the whole batches of `ranges` from the one holding `offset`, below `end`,
/// within `max_bytes` (at least one batch): one slice of what each range read, no copy.
async fn read_ranges(
    storage: &Storage,
    cache: &ObjectCache,
    ranges: Vec<IndexEntry>,
    (offset, end, max_bytes): (i64, i64, usize),
    out: &mut Rope,
) -> Result<(), PartitionError> {
    // In order, READ_CONCURRENCY at a time: a catch-up read of ranges written by other agents
    // is one GET per range (a few hundred bytes each in a busy pool), and one after another
    // they would hold the fetch for seconds.
    let mut fetched = futures::stream::iter(ranges)
        .map(|r| async move { range_from(storage, cache, &r, offset, max_bytes).await })
        .buffered(READ_CONCURRENCY);
    while let Some(got) = fetched.next().await {
        let (data, whole) = got?;
        // The run of batches taken from `data`, and whether the read stops in it.
        let mut run: Option<std::ops::Range<usize>> = None;
        let mut stop = !whole;
        for (h, range) in data.batches() {
            let last = h.base_offset + h.last_offset_delta as i64;
            if last < offset {
                continue;
            }
            if h.base_offset >= end {
                stop = true;
                break;
            }
            let taken = out.len() + run.as_ref().map_or(0, |r| r.len());
            if taken > 0 && taken + range.len() > max_bytes {
                stop = true;
                break;
            }
            run = Some(run.map_or(range.clone(), |r| r.start..range.end));
        }
        if let Some(r) = run {
            out.append(data.slice(r));
        }
        if stop {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn one_record_batch(offset: i64) -> Bytes {
        let r = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: 0,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from(vec![b'x'; 1000])),
            headers: Default::default(),
        };
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &[r],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf.freeze()
    }

    use crate::test_batches::batch_of;

    /// A committed range of `object` holding offsets `first..=last`.
    fn entry(
        object: impl Into<String>,
        bytes: std::ops::Range<u64>,
        (first, last): (i64, i64),
        marks: Vec<(i64, u64)>,
    ) -> IndexEntry {
        IndexEntry {
            object: object.into(),
            pos: bytes.start,
            len: bytes.end - bytes.start,
            base_offset: first,
            last_offset: last,
            max_timestamp: 0,
            producers: vec![],
            marks,
            txns: vec![],
            pieces: Vec::new(),
        }
    }

    /// One-record batches of offsets `0..n` back to back, with a mark every `every` offsets.
    fn batches_with_marks(n: i64, every: i64) -> (Bytes, Vec<(i64, u64)>) {
        let mut data = BytesMut::new();
        let mut marks = Vec::new();
        for i in 0..n {
            if i % every == 0 {
                marks.push((i, data.len() as u64));
            }
            data.extend_from_slice(&one_record_batch(i));
        }
        (data.freeze(), marks)
    }

    /// splitmix64: a seeded generator for the shapes below.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// A partition spread over 400 objects written elsewhere (one small range each, as a busy
    /// pool's flushes leave it) read from offset 0 with a 1 MiB budget: the read fetches its
    /// ranges several at a time and stops after MAX_STORED_RANGES of them, returning whole
    /// batches from offset 0 in order (one GET after another, 400 GETs held a follower's fetch
    /// past the client's request timeout). The next read goes on from where it stopped.
    #[tokio::test]
    async fn a_read_over_many_stored_ranges_is_bounded_and_concurrent() {
        let storage = Storage::in_memory();
        storage
            .faults()
            .latency_ms
            .store(2, std::sync::atomic::Ordering::Relaxed);
        let cache = ObjectCache::new(64 << 20);
        let p = Partition::new("t", uuid::Uuid::nil(), 0);
        for i in 0..400i64 {
            let data = one_record_batch(i);
            let path = format!("flush/{i}");
            storage
                .put(&Path::from(path.as_str()), data.clone())
                .await
                .unwrap();
            p.lock()
                .on_commit(entry(path, 0..data.len() as u64, (i, i), Vec::new()));
        }
        let gets = |s: &Storage| s.stats().gets.load(std::sync::atomic::Ordering::Relaxed);
        let mut at = 0i64;
        let mut reads = 0;
        while at < 400 {
            let before = gets(&storage);
            let r = read(&storage, &cache, &p, at, 1 << 20).await.unwrap();
            let data = r
                .records
                .map(|r| r.contiguous())
                .expect("a batch at every offset");
            let offsets: Vec<i64> = batch::iter(&data).map(|(h, _)| h.base_offset).collect();
            assert_eq!(offsets[0], at, "from the offset asked for");
            assert!(
                offsets.windows(2).all(|w| w[1] == w[0] + 1),
                "in order, no gap"
            );
            assert!(
                offsets.len() <= MAX_STORED_RANGES,
                "one read takes at most {MAX_STORED_RANGES} stored ranges, took {}",
                offsets.len()
            );
            assert!(gets(&storage) - before <= MAX_STORED_RANGES as u64);
            at = offsets.last().unwrap() + 1;
            reads += 1;
        }
        assert_eq!(reads, 400usize.div_ceil(MAX_STORED_RANGES));
        let peak = storage
            .stats()
            .peak_in_flight
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            peak > 1 && peak <= READ_CONCURRENCY as u64 + 1,
            "GETs went out several at a time, bounded: peak {peak}"
        );
    }

    /// The same bound with the shapes mixed: 300 single-batch ranges, every third in the tail
    /// cache (free: it does not count), every 37th a 3 MiB batch (past the 1 MiB budget and the
    /// 2 MiB window). Every read starts at the offset asked for, reads consecutive batches,
    /// makes at most MAX_STORED_RANGES GETs, and the reads together cover every offset once.
    #[tokio::test]
    async fn the_bound_holds_with_cached_and_multi_mib_ranges() {
        let storage = Storage::in_memory();
        let cache = ObjectCache::new(256 << 20);
        let p = Partition::new("t", uuid::Uuid::nil(), 0);
        for i in 0..300i64 {
            let data = if i % 37 == 5 {
                batch_of(i, 1, 3 << 20)
            } else {
                one_record_batch(i)
            };
            let path = format!("flush/{i}");
            storage
                .put(&Path::from(path.as_str()), data.clone())
                .await
                .unwrap();
            if i % 3 == 0 {
                cache.insert(&path, data.clone());
            }
            p.lock()
                .on_commit(entry(path, 0..data.len() as u64, (i, i), Vec::new()));
        }
        let gets = |s: &Storage| s.stats().gets.load(std::sync::atomic::Ordering::Relaxed);
        let mut at = 0i64;
        while at < 300 {
            let before = gets(&storage);
            let r = read(&storage, &cache, &p, at, 1 << 20).await.unwrap();
            let data = r
                .records
                .map(|r| r.contiguous())
                .expect("a batch at every offset");
            let offsets: Vec<i64> = batch::iter(&data).map(|(h, _)| h.base_offset).collect();
            assert_eq!(offsets[0], at, "from the offset asked for");
            assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "no gap");
            let stored = offsets.iter().filter(|o| *o % 3 != 0).count();
            assert!(
                stored <= MAX_STORED_RANGES,
                "{stored} stored ranges in one read"
            );
            assert!(gets(&storage) - before <= MAX_STORED_RANGES as u64);
            at = offsets.last().unwrap() + 1;
        }
    }

    /// Rule: every offset in [log start, high watermark) reads at least the batch holding it,
    /// whatever the shapes: ranges of 1 to 60 batches, batches of 1 byte to 5 MiB, marks
    /// absent, only at the start, or sparse; ranges in the tail cache or only in the store;
    /// budgets from 1 byte to 1 MiB. Seeded; a failure names its seed.
    #[tokio::test]
    async fn every_offset_below_the_high_watermark_reads_its_batch() {
        for seed in 0..6u64 {
            let mut rng = Rng(seed);
            let storage = Storage::in_memory();
            let cache = ObjectCache::new(64 << 20);
            let p = Partition::new("t", uuid::Uuid::nil(), 0);
            let mut next = 0i64;
            for range in 0..5 {
                let pad = rng.below(3) as usize * 100;
                let mut data = BytesMut::from(&vec![0u8; pad][..]);
                let mut starts = Vec::new();
                let big_budget = rng.below(2) == 0;
                for _ in 0..1 + rng.below(60) {
                    let b = match rng.below(20) {
                        0 if big_budget => batch_of(next, 1, 1 + rng.below(5 << 20) as usize),
                        1..=3 => batch_of(next, 1, rng.below(2) as usize),
                        _ => batch_of(next, 1 + rng.below(40) as usize, rng.below(3000) as usize),
                    };
                    let h = batch::parse_header(&b).unwrap();
                    starts.push((next, (data.len() - pad) as u64));
                    next += h.last_offset_delta as i64 + 1;
                    data.extend_from_slice(&b);
                }
                let marks = match rng.below(3) {
                    0 => vec![],
                    1 => vec![starts[0]],
                    _ => starts
                        .iter()
                        .copied()
                        .enumerate()
                        .filter(|(i, _)| *i == 0 || rng.below(8) == 0)
                        .map(|(_, m)| m)
                        .collect(),
                };
                let len = (data.len() - pad) as u64;
                let path = format!("o/{seed}/{range}");
                let data = data.freeze();
                storage
                    .put(&Path::from(path.as_str()), data.clone())
                    .await
                    .unwrap();
                if rng.below(3) == 0 {
                    cache.insert(&path, data);
                }
                p.lock().on_commit(entry(
                    path,
                    pad as u64..pad as u64 + len,
                    (starts[0].0, next - 1),
                    marks,
                ));
            }
            let budgets = [1usize, 1000, 100_000, 1 << 20];
            for _ in 0..60 {
                let off = rng.below(next as u64) as i64;
                let max = budgets[rng.below(4) as usize];
                let r = read(&storage, &cache, &p, off, max).await.unwrap();
                let data = r
                    .records
                    .map(|r| r.contiguous())
                    .unwrap_or_else(|| panic!("seed {seed}: nothing read at {off} < {next}"));
                let (h, _) = batch::iter(&data).next().expect("a whole batch");
                let last = h.base_offset + h.last_offset_delta as i64;
                assert!(
                    h.base_offset <= off && off <= last,
                    "seed {seed}: read at {off} began with {}..={last}",
                    h.base_offset
                );
            }
            // A consumer reading from 0 sees every offset once, in order.
            let mut at = 0i64;
            while at < next {
                let max = budgets[rng.below(4) as usize];
                let r = read(&storage, &cache, &p, at, max).await.unwrap();
                let data = r
                    .records
                    .map(|r| r.contiguous())
                    .unwrap_or_else(|| panic!("seed {seed}: stalled at {at} < {next}"));
                for (h, _) in batch::iter(&data) {
                    let last = h.base_offset + h.last_offset_delta as i64;
                    assert!(
                        h.base_offset <= at && at <= last,
                        "seed {seed}: gap at {at}: batch {}..={last} (budget {max}), read: {:?}",
                        h.base_offset,
                        batch::iter(&data)
                            .map(|(h, _)| (h.base_offset, h.last_offset_delta))
                            .collect::<Vec<_>>()
                    );
                    at = last + 1;
                }
            }
        }
    }

    /// A compacted range far larger than one fetch: reads start at the mark before their
    /// offset, stop at the window's end, and successive reads see every offset once.
    #[tokio::test]
    async fn reads_of_a_large_compacted_range_never_skip_an_offset() {
        let storage = Storage::in_memory();
        let cache = ObjectCache::new(0);
        // Sparse marks: a window from a mark can end before a read's budget does.
        let (data, marks) = batches_with_marks(4000, 1500);
        let len = data.len() as u64;
        assert!(len > 3 << 20, "larger than the read window");
        storage
            .put(&Path::from("segments/t/0/s/1.silt"), data)
            .await
            .unwrap();
        let p = Partition::new("t", uuid::Uuid::nil(), 0);
        p.lock()
            .on_commit(entry("segments/t/0/s/1.silt", 0..len, (0, 3999), marks));
        // A small range after it: a read cut at the window must not jump to it.
        let mut tail = BytesMut::new();
        for i in 4000..4010 {
            tail.extend_from_slice(&one_record_batch(i));
        }
        let tail_len = tail.len() as u64;
        storage
            .put(&Path::from("flush/0/s/2.silt"), tail.freeze())
            .await
            .unwrap();
        p.lock().on_commit(entry(
            "flush/0/s/2.silt",
            0..tail_len,
            (4000, 4009),
            Vec::new(),
        ));
        let mut next = 0i64;
        let mut reads = 0;
        while next < 4010 {
            let r = read(&storage, &cache, &p, next, 700_000).await.unwrap();
            let data = r.records.map(|r| r.contiguous()).expect("records");
            assert!(data.len() <= 700_000 + 2_000, "bounded by max_bytes");
            let offsets: Vec<i64> = batch::iter(&data).map(|(h, _)| h.base_offset).collect();
            assert_eq!(offsets[0], next, "starts at the requested offset");
            assert!(
                offsets.windows(2).all(|w| w[1] == w[0] + 1),
                "no offset skipped within a read"
            );
            next = offsets[offsets.len() - 1] + 1;
            reads += 1;
        }
        assert!(reads >= 5, "{reads} reads");
        assert!(
            storage
                .stats()
                .get_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
                < 3 * len,
            "reads fetch windows, not the whole range each time"
        );
    }

    /// A catch-up consumer reading a range many fetches long finds each next window in the
    /// block cache: a read warms the window after its own inside the range, so after the
    /// first, no read waits for the object store, and no block is fetched twice.
    #[tokio::test]
    async fn a_read_warms_the_next_window_of_its_range() {
        use std::sync::atomic::Ordering::Relaxed;
        let storage = Storage::in_memory();
        let dir = tempfile::tempdir().unwrap();
        let mut cache = ObjectCache::new(0);
        let blocks = crate::blocks::BlockCache::open(64 << 20, 0, dir.path(), 1 << 20, 2)
            .await
            .unwrap();
        let stats = blocks.stats.clone();
        cache.blocks = Some(blocks);
        let (data, marks) = batches_with_marks(8000, 100);
        let len = data.len() as u64;
        assert!(len > 6 << 20, "many windows long");
        storage
            .put(&Path::from("flush/0/s/1.silt"), data)
            .await
            .unwrap();
        let p = Partition::new("t", uuid::Uuid::nil(), 0);
        p.lock()
            .on_commit(entry("flush/0/s/1.silt", 0..len, (0, 7999), marks));
        let mut next = 0i64;
        let mut reads = 0;
        while next < 8000 {
            let before = stats.fetches.load(Relaxed);
            let r = read(&storage, &cache, &p, next, 1 << 20).await.unwrap();
            let got = r.records.expect("records");
            if reads > 0 {
                assert_eq!(
                    stats.fetches.load(Relaxed),
                    before,
                    "read {reads} at {next} fetched from the object store"
                );
            }
            next = got.batches().last().map(|(h, _)| h.base_offset).unwrap() + 1;
            reads += 1;
            // The consumer handles what it got; the read-ahead lands meanwhile.
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(reads >= 6, "{reads} reads");
        let blocks_in_range = len.div_ceil(1 << 20);
        assert_eq!(
            stats.fetches.load(Relaxed),
            blocks_in_range,
            "every block fetched once"
        );
    }
}
