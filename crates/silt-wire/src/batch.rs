//! The v2 record batch ("magic 2") header: parsing, validation and the two rewrites Silt makes.
//!
//! ```text
//!  0 baseOffset i64         27 baseTimestamp i64
//!  8 batchLength i32        35 maxTimestamp i64
//! 12 partitionLeaderEpoch   43 producerId i64
//! 16 magic i8 (= 2)         51 producerEpoch i16
//! 17 crc u32 (CRC-32C of bytes 21..end)   53 baseSequence i32
//! 21 attributes i16         57 recordCount i32
//! 23 lastOffsetDelta i32    61 records…
//! ```
//!
//! Records are never decompressed: only the header is read, and only the base offset, leader
//! epoch and (for log-append time) the attributes and max timestamp are rewritten.

use bytes::{Buf, Bytes, BytesMut};

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 61;
/// Bytes before the batch-length-covered part (baseOffset + batchLength).
pub const LOG_OVERHEAD: usize = 12;
/// Where the CRC-covered part of a batch starts (the attributes).
pub(crate) const CRC_START: usize = 21;
/// Attribute bit: timestamps are log-append time.
pub const ATTR_LOG_APPEND_TIME: i16 = 0x08;
/// Attribute bit: the batch belongs to a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 0x10;
/// Attribute bit: the batch is a control batch.
pub const ATTR_CONTROL: i16 = 0x20;

/// The parsed header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Base offset.
    pub base_offset: i64,
    /// Total size including the 12-byte log overhead.
    pub size: usize,
    /// Magic byte.
    pub magic: i8,
    /// Attributes (compression, timestamp type, transactional, control).
    pub attributes: i16,
    /// Offset delta of the last record.
    pub last_offset_delta: i32,
    /// First record's timestamp.
    pub base_timestamp: i64,
    /// Largest timestamp.
    pub max_timestamp: i64,
    /// Producer id, -1 if none.
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// First sequence, -1 if none.
    pub base_sequence: i32,
    /// Number of records.
    pub record_count: i32,
}

impl BatchHeader {
    /// Last sequence number of the batch (sequences wrap at `i32::MAX`).
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        let last = self.base_sequence as i64 + self.last_offset_delta as i64;
        (last % (i32::MAX as i64 + 1)) as i32
    }

    /// Whether the batch is idempotent (carries a producer id and sequence).
    pub fn is_idempotent(&self) -> bool {
        self.producer_id >= 0 && self.base_sequence >= 0
    }

    /// Whether the batch is a transactional batch.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// Whether the batch is a control batch.
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

/// Why a batch was refused; the caller maps these to Kafka error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Framing or checksum is broken.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// Well-formed but not acceptable (wrong magic, several batches, bad counts).
    #[error("invalid record batch: {0}")]
    Invalid(String),
}

/// Parses the header of the batch at the start of `buf` without checking the CRC.
pub fn parse_header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    if buf.len() < HEADER_LEN {
        return Err(BatchError::Corrupt(format!(
            "{} bytes is shorter than a batch header",
            buf.len()
        )));
    }
    let mut b = buf;
    let base_offset = b.get_i64();
    let batch_length = b.get_i32();
    let _leader_epoch = b.get_i32();
    let magic = b.get_i8();
    let _crc = b.get_u32();
    let attributes = b.get_i16();
    let last_offset_delta = b.get_i32();
    let base_timestamp = b.get_i64();
    let max_timestamp = b.get_i64();
    let producer_id = b.get_i64();
    let producer_epoch = b.get_i16();
    let base_sequence = b.get_i32();
    let record_count = b.get_i32();
    if batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(BatchError::Corrupt(format!(
            "batch length {batch_length} is smaller than a batch header"
        )));
    }
    Ok(BatchHeader {
        base_offset,
        size: batch_length as usize + LOG_OVERHEAD,
        magic,
        attributes,
        last_offset_delta,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        record_count,
    })
}

/// Validates a produce payload: exactly one complete magic-2 batch whose CRC matches and whose
/// counts agree. Returns its header.
pub fn validate_single(records: &[u8]) -> Result<BatchHeader, BatchError> {
    if records.len() >= 17 && records[16] != 2 {
        return Err(BatchError::Invalid(format!(
            "magic {} is not supported; produce v3+ requires magic 2 batches",
            records[16] as i8
        )));
    }
    let h = parse_header(records)?;
    if h.size > records.len() {
        return Err(BatchError::Corrupt(format!(
            "batch declares {} bytes but {} were sent",
            h.size,
            records.len()
        )));
    }
    if h.size < records.len() {
        return Err(BatchError::Invalid(
            "produce requests may carry exactly one record batch per partition".into(),
        ));
    }
    let crc = u32::from_be_bytes(records[17..21].try_into().expect("4 bytes"));
    let actual = crc32c::crc32c(&records[CRC_START..h.size]);
    if crc != actual {
        return Err(BatchError::Corrupt(format!(
            "CRC mismatch: header says {crc:#010x}, contents give {actual:#010x}"
        )));
    }
    if h.record_count <= 0 || h.last_offset_delta != h.record_count - 1 {
        return Err(BatchError::Invalid(format!(
            "record count {} does not match last offset delta {}",
            h.record_count, h.last_offset_delta
        )));
    }
    Ok(h)
}

/// Returns the batch with Silt's rewrites: its base offset, the partition leader epoch, and for
/// log-append-time topics the timestamp type and max timestamp (then the CRC is recomputed).
pub fn rewrite(
    batch: &Bytes,
    base_offset: i64,
    leader_epoch: i32,
    log_append_time: Option<i64>,
) -> Bytes {
    let mut b = BytesMut::from(&batch[..]);
    b[0..8].copy_from_slice(&base_offset.to_be_bytes());
    b[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    if let Some(now) = log_append_time {
        let attrs = i16::from_be_bytes([b[21], b[22]]) | ATTR_LOG_APPEND_TIME;
        b[21..23].copy_from_slice(&attrs.to_be_bytes());
        b[35..43].copy_from_slice(&now.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
    }
    b.freeze()
}

/// Iterates over the batches of a buffer of concatenated batches (as stored), yielding each
/// header and its byte range. Stops at the first incomplete batch.
pub fn iter(buf: &[u8]) -> impl Iterator<Item = (BatchHeader, std::ops::Range<usize>)> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let h = parse_header(buf.get(pos..)?).ok()?;
        let end = pos.checked_add(h.size)?;
        if end > buf.len() {
            return None;
        }
        let range = pos..end;
        pos = end;
        Some((h, range))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::BufMut;

    /// A minimal valid batch with `n` empty-ish records (record bytes are opaque here).
    pub fn batch(n: i32, pid: i64, seq: i32) -> Bytes {
        let body = vec![0u8; 10 * n as usize];
        let mut b = BytesMut::new();
        b.put_i64(0);
        b.put_i32((HEADER_LEN - LOG_OVERHEAD + body.len()) as i32);
        b.put_i32(-1);
        b.put_i8(2);
        b.put_u32(0);
        b.put_i16(0);
        b.put_i32(n - 1);
        b.put_i64(1000);
        b.put_i64(1000 + n as i64);
        b.put_i64(pid);
        b.put_i16(0);
        b.put_i32(seq);
        b.put_i32(n);
        b.put_slice(&body);
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b.freeze()
    }

    #[test]
    fn valid_batch_parses() {
        let b = batch(3, 7, 10);
        let h = validate_single(&b).unwrap();
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_sequence(), 12);
        assert!(h.is_idempotent());
        assert_eq!(h.size, b.len());
    }

    #[test]
    fn corruption_and_framing_are_caught() {
        let b = batch(3, -1, -1);
        let mut bad = b.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(validate_single(&bad), Err(BatchError::Corrupt(_))));
        assert!(matches!(
            validate_single(&b[..b.len() - 1]),
            Err(BatchError::Corrupt(_))
        ));
        let mut two = b.to_vec();
        two.extend_from_slice(&b);
        assert!(matches!(validate_single(&two), Err(BatchError::Invalid(_))));
        let mut magic1 = b.to_vec();
        magic1[16] = 1;
        assert!(matches!(
            validate_single(&magic1),
            Err(BatchError::Invalid(_))
        ));
        assert!(matches!(
            validate_single(&[0u8; 5]),
            Err(BatchError::Corrupt(_))
        ));
    }

    #[test]
    fn rewrite_keeps_crc_valid() {
        let b = batch(2, -1, -1);
        let r = rewrite(&b, 42, 3, None);
        assert_eq!(validate_single(&r).unwrap().base_offset, 42);
        assert_eq!(&r[16..], &b[16..], "only offset and epoch change");
        let t = rewrite(&b, 42, 3, Some(99_999));
        let h = validate_single(&t).unwrap();
        assert_eq!(h.max_timestamp, 99_999);
        assert_ne!(h.attributes & ATTR_LOG_APPEND_TIME, 0);
    }

    #[test]
    fn iter_walks_concatenated_batches() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&rewrite(&batch(2, -1, -1), 0, 0, None));
        buf.extend_from_slice(&rewrite(&batch(3, -1, -1), 2, 0, None));
        let offs: Vec<i64> = iter(&buf).map(|(h, _)| h.base_offset).collect();
        assert_eq!(offs, vec![0, 2]);
        assert_eq!(iter(&buf[..buf.len() - 1]).count(), 1);
    }
}

/// Recomputes the CRC of one batch v2 (after its header fields were changed in place).
pub fn reseal(batch: &mut [u8]) {
    if batch.len() >= HEADER_LEN {
        let crc = crc32c::crc32c(&batch[CRC_START..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Compression codec bits of the attributes (0 = none).
pub fn compression(attributes: i16) -> i16 {
    attributes & 0x07
}

/// Reads one zigzag varint (a record field), advancing `buf`; `None` if it runs out.
pub fn varint(buf: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

/// What Silt reads of one record of an uncompressed batch without touching its value.
struct RecordHead {
    /// Timestamp delta from the batch's base timestamp.
    ts_delta: i64,
    /// The key is null (length -1).
    null_key: bool,
}

/// The head of each record of an uncompressed batch; `None` when the batch is compressed
/// (Silt never decompresses on this path) or its records do not parse.
fn record_heads(batch: &[u8], h: &BatchHeader) -> Option<Vec<RecordHead>> {
    if compression(h.attributes) != 0 || batch.len() < HEADER_LEN {
        return None;
    }
    let mut rest = &batch[HEADER_LEN..h.size.min(batch.len())];
    let mut out = Vec::with_capacity(h.record_count.clamp(0, 4096) as usize);
    while !rest.is_empty() {
        let len = varint(&mut rest)?;
        let len = usize::try_from(len).ok()?;
        let record = rest.get(..len)?;
        rest = &rest[len..];
        let mut r = record.get(1..)?; // skip attributes
        let ts_delta = varint(&mut r)?;
        let _offset_delta = varint(&mut r)?;
        let key_len = varint(&mut r)?;
        out.push(RecordHead {
            ts_delta,
            null_key: key_len < 0,
        });
    }
    Some(out)
}

/// Offset and timestamp of each record of an uncompressed batch; `None` when the batch is
/// compressed or its records do not parse.
fn record_times(batch: &[u8], h: &BatchHeader) -> Option<Vec<(i64, i64)>> {
    let last = h.base_offset.saturating_add(h.last_offset_delta as i64);
    let heads = record_heads(batch, h)?;
    // The offset comes from the record's position (clamped to the batch), never from its
    // unvalidated delta.
    Some(
        heads
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let offset = h.base_offset.saturating_add(i as i64).min(last);
                (offset, h.base_timestamp.saturating_add(r.ts_delta))
            })
            .collect(),
    )
}

/// The positions in the batch of its records without a key; `None` when the batch is compressed
/// (the caller decodes it) or its records do not parse.
pub fn null_key_indices(batch: &[u8], h: &BatchHeader) -> Option<Vec<i32>> {
    let heads = record_heads(batch, h)?;
    Some(
        heads
            .iter()
            .enumerate()
            .filter(|(_, r)| r.null_key)
            .map(|(i, _)| i as i32)
            .collect(),
    )
}

/// The first record at or after `target` ms: its offset and timestamp. Exact for uncompressed
/// batches; for compressed ones the batch's base offset and max timestamp.
pub fn first_at_or_after(batch: &[u8], h: &BatchHeader, target: i64) -> Option<(i64, i64)> {
    if h.max_timestamp < target {
        return None;
    }
    if h.attributes & ATTR_LOG_APPEND_TIME != 0 {
        return Some((h.base_offset, h.max_timestamp));
    }
    match record_times(batch, h) {
        Some(times) => times
            .into_iter()
            .find(|(_, ts)| *ts >= target)
            .or(Some((h.base_offset, h.max_timestamp))),
        None => Some((h.base_offset, h.max_timestamp)),
    }
}

/// The offset of the record holding the batch's max timestamp (the first such record). Exact for
/// uncompressed batches; the batch's last offset for compressed ones.
pub fn max_timestamp_offset(batch: &[u8], h: &BatchHeader) -> i64 {
    let last = h.base_offset + h.last_offset_delta as i64;
    if h.attributes & ATTR_LOG_APPEND_TIME != 0 {
        return h.base_offset;
    }
    record_times(batch, h)
        .and_then(|t| {
            t.into_iter()
                .find(|(_, ts)| *ts == h.max_timestamp)
                .map(|(o, _)| o)
        })
        .unwrap_or(last)
}

#[cfg(test)]
mod time_tests {
    use super::*;
    use bytes::BufMut;

    fn zigzag(buf: &mut BytesMut, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            if z < 0x80 {
                buf.put_u8(z as u8);
                return;
            }
            buf.put_u8((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
    }

    /// An uncompressed batch with records at base_ts + deltas.
    fn timed_batch(base_offset: i64, base_ts: i64, deltas: &[i64]) -> Bytes {
        let mut records = BytesMut::new();
        for (i, d) in deltas.iter().enumerate() {
            let mut r = BytesMut::new();
            r.put_i8(0);
            zigzag(&mut r, *d);
            zigzag(&mut r, i as i64);
            if i % 2 == 1 {
                zigzag(&mut r, 1); // a one-byte key on odd records
                r.put_u8(b'k');
            } else {
                zigzag(&mut r, -1); // null key
            }
            zigzag(&mut r, 1);
            r.put_u8(b'v');
            zigzag(&mut r, 0); // headers
            zigzag(&mut records, r.len() as i64);
            records.extend_from_slice(&r);
        }
        let n = deltas.len() as i32;
        let mut b = BytesMut::new();
        b.put_i64(base_offset);
        b.put_i32((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32);
        b.put_i32(0);
        b.put_i8(2);
        b.put_u32(0);
        b.put_i16(0);
        b.put_i32(n - 1);
        b.put_i64(base_ts);
        b.put_i64(base_ts + deltas.iter().max().unwrap());
        b.put_i64(-1);
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i32(n);
        b.put_slice(&records);
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b.freeze()
    }

    #[test]
    fn timestamps_are_found_per_record_in_uncompressed_batches() {
        let b = timed_batch(100, 1_000, &[0, 5, 50, 20]);
        let h = validate_single(&b).unwrap();
        assert_eq!(first_at_or_after(&b, &h, 0), Some((100, 1_000)));
        assert_eq!(first_at_or_after(&b, &h, 1_006), Some((102, 1_050)));
        assert_eq!(first_at_or_after(&b, &h, 1_051), None);
        assert_eq!(max_timestamp_offset(&b, &h), 102);
    }

    #[test]
    fn keyless_records_are_found_in_uncompressed_batches_only() {
        let b = timed_batch(100, 1_000, &[0, 5, 50, 20, 7]);
        let h = validate_single(&b).unwrap();
        assert_eq!(null_key_indices(&b, &h), Some(vec![0, 2, 4]));
        let gzip = BatchHeader { attributes: 1, ..h };
        assert_eq!(
            null_key_indices(&b, &gzip),
            None,
            "compressed: the caller decodes"
        );
    }
}
