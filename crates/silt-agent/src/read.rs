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
                    blocks.prefetch(storage, &r.object, r.pos..r.pos + r.len);
                }
            }
        }
    }
    let mut out = BytesMut::new();
    let mut single: Option<Bytes> = None;
    'ranges: for r in ranges {
        let data = range_bytes(storage, cache, &r).await?;
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
