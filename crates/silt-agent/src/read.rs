//! The read path: committed batches of one partition from an offset, served from the tail
//! cache when the object was written recently, else by a range GET of exactly the partition's
//! bytes in the flush object. Never returns an offset at or above the high watermark.

use bytes::{Bytes, BytesMut};
use object_store::path::Path;
use silt_meta::layout::index::IndexEntry;
use silt_storage::Storage;
use silt_wire::batch;

use crate::cache::ObjectCache;
use crate::error::PartitionError;
use crate::partition::Partition;

/// What a read found.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    /// Whole batches starting at or before the offset read, or `None` if none.
    pub records: Option<Bytes>,
    /// The high watermark when the read started.
    pub high_watermark: i64,
    /// The log start offset.
    pub log_start: i64,
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
    if let Some(d) = cache.get(&r.object, r.pos, r.len) {
        return Ok(d);
    }
    if let Some(blocks) = &cache.blocks {
        return Ok(blocks
            .read(storage, &r.object, r.pos..r.pos + r.len)
            .await?);
    }
    Ok(storage
        .get(&Path::from(r.object.as_str()), Some(r.pos..r.pos + r.len))
        .await?)
}

/// The bytes of `r` a read at `offset` of `max_bytes` needs: from the mark at or before the
/// offset (compacted ranges are large), a bounded window first, the rest only if no whole batch
/// fits in it. Also says whether the bytes run to the end of `r`: if not, the read must stop
/// after them, or it would skip the rest of `r`.
async fn range_from(
    storage: &Storage,
    cache: &ObjectCache,
    r: &IndexEntry,
    offset: i64,
    max_bytes: usize,
) -> Result<(Bytes, bool), PartitionError> {
    let skip = r.seek(offset).min(r.len);
    if skip == 0 && r.marks.is_empty() {
        return Ok((range_bytes(storage, cache, r).await?, true));
    }
    let window = (max_bytes as u64).max(1 << 20) * 2;
    let mut part = r.clone();
    part.pos = r.pos + skip;
    part.len = (r.len - skip).min(window);
    let data = range_bytes(storage, cache, &part).await?;
    if part.len < r.len - skip && batch::iter(&data).next().is_none() {
        part.len = r.len - skip;
        return Ok((range_bytes(storage, cache, &part).await?, true));
    }
    Ok((data, part.len == r.len - skip))
}

/// Reads up to `max_bytes` (at least one batch if any) from `offset`.
pub async fn read(
    storage: &Storage,
    cache: &ObjectCache,
    p: &Partition,
    offset: i64,
    max_bytes: usize,
) -> Result<ReadResult, PartitionError> {
    let (log_start, high_watermark) = check_offset(p, offset)?;
    let ranges = p.lock().locate(offset, max_bytes);
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
    let mut out = BytesMut::new();
    let mut single: Option<Bytes> = None;
    'ranges: for r in ranges {
        let (data, whole) = range_from(storage, cache, &r, offset, max_bytes).await?;
        for (h, range) in batch::iter(&data) {
            let last = h.base_offset + h.last_offset_delta as i64;
            if last < offset {
                continue;
            }
            if h.base_offset >= high_watermark {
                break 'ranges;
            }
            let taken = out.len() + single.as_ref().map_or(0, |b| b.len());
            if taken > 0 && taken + range.len() > max_bytes {
                break 'ranges;
            }
            // Avoid a copy for the common single-batch case.
            if taken == 0 {
                single = Some(data.slice(range));
            } else {
                if let Some(s) = single.take() {
                    out.extend_from_slice(&s);
                }
                out.extend_from_slice(&data[range]);
            }
        }
        if !whole {
            break 'ranges;
        }
    }
    let records = match single {
        Some(s) if out.is_empty() => Some(s),
        _ if out.is_empty() => None,
        _ => Some(out.freeze()),
    };
    Ok(ReadResult {
        records,
        high_watermark,
        log_start,
    })
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

    /// A compacted range far larger than one fetch: reads start at the mark before their
    /// offset, stop at the window's end, and successive reads see every offset once.
    #[tokio::test]
    async fn reads_of_a_large_compacted_range_never_skip_an_offset() {
        let storage = Storage::in_memory();
        let cache = ObjectCache::new(0);
        let mut data = BytesMut::new();
        let mut marks = Vec::new();
        for i in 0..4000 {
            // Sparse marks: a window from a mark can end before a read's budget does.
            if i % 1500 == 0 {
                marks.push((i, data.len() as u64));
            }
            data.extend_from_slice(&one_record_batch(i));
        }
        let len = data.len() as u64;
        assert!(len > 3 << 20, "larger than the read window");
        storage
            .put(&Path::from("segments/t/0/s/1.silt"), data.freeze())
            .await
            .unwrap();
        let p = Partition::new("t", uuid::Uuid::nil(), 0);
        p.lock().on_commit(IndexEntry {
            object: "segments/t/0/s/1.silt".into(),
            pos: 0,
            len,
            base_offset: 0,
            last_offset: 3999,
            max_timestamp: 0,
            producers: vec![],
            marks,
        });
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
        p.lock().on_commit(IndexEntry {
            object: "flush/0/s/2.silt".into(),
            pos: 0,
            len: tail_len,
            base_offset: 4000,
            last_offset: 4009,
            max_timestamp: 0,
            producers: vec![],
            marks: vec![],
        });
        let mut next = 0i64;
        let mut reads = 0;
        while next < 4010 {
            let r = read(&storage, &cache, &p, next, 700_000).await.unwrap();
            let data = r.records.expect("records");
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
}
