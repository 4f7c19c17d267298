//! Archive rows back into Kafka record batches, for consumers that fetch offsets the raw log no
//! longer holds (`silt.archive.serve`).
//!
//! A rebuilt batch carries the archived offsets, timestamps and timestamp type, keys, values,
//! headers and producer id and epoch. It is an uncompressed v2 batch with a valid CRC; its base
//! sequence is -1 (sequence numbers are not archived) and it is never transactional (the archive
//! holds committed records only). Consecutive rows share a batch while they share a producer and
//! timestamp type (and, for `LogAppendTime`, the timestamp, which such a batch carries once), up to
//! [`MAX_BATCH_BYTES`]. Offsets the archive does not hold (transaction markers, aborted records,
//! quarantined batches) are gaps, as in a compacted Kafka log.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int16Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, RecordBatch};
use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::ArchiveError;

/// Largest rebuilt batch (a single larger record still gets a batch of its own).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Where the base sequence lies in a v2 batch header, and where the CRC-covered part starts.
const BASE_SEQUENCE: std::ops::Range<usize> = 53..57;
const CRC: std::ops::Range<usize> = 17..21;
const CRC_FROM: usize = 21;
const ATTRIBUTES: std::ops::Range<usize> = 21..23;
/// The attributes bit of `LogAppendTime` (kafka-protocol's encoder never sets it).
const LOG_APPEND_TIME: i16 = 1 << 3;

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, ArchiveError> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| ArchiveError::Parquet(format!("archive file has no column {name:?}")))
}

/// The records of `batch` (rows read from an archive file) whose offset is at least `from`.
pub fn records(batch: &RecordBatch, from: i64) -> Result<Vec<Record>, ArchiveError> {
    let offsets = column(batch, "offset")?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| ArchiveError::Parquet("offset is not int64".into()))?;
    let ts = column(batch, "timestamp")?
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| ArchiveError::Parquet("timestamp is not a millisecond timestamp".into()))?;
    let ts_type = column(batch, "timestamp_type")?
        .as_string_opt::<i32>()
        .ok_or_else(|| ArchiveError::Parquet("timestamp_type is not a string".into()))?;
    let key = column(batch, "key")?
        .as_binary_opt::<i32>()
        .ok_or_else(|| ArchiveError::Parquet("key is not binary".into()))?;
    let value = column(batch, "value")?
        .as_binary_opt::<i32>()
        .ok_or_else(|| ArchiveError::Parquet("value is not binary".into()))?;
    let headers = column(batch, "headers")?
        .as_list_opt::<i32>()
        .ok_or_else(|| ArchiveError::Parquet("headers is not a list".into()))?;
    let header_fields = headers
        .values()
        .as_struct_opt()
        .ok_or_else(|| ArchiveError::Parquet("a header is not a struct".into()))?;
    let (hkey, hvalue) = match (
        header_fields.column(0).as_string_opt::<i32>(),
        header_fields.column(1).as_binary_opt::<i32>(),
    ) {
        (Some(k), Some(v)) => (k, v),
        _ => {
            return Err(ArchiveError::Parquet(
                "headers are not (string, binary)".into(),
            ))
        }
    };
    let pid = column(batch, "producer_id")?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| ArchiveError::Parquet("producer_id is not int64".into()))?;
    let pepoch = column(batch, "producer_epoch")?
        .as_primitive_opt::<Int16Type>()
        .ok_or_else(|| ArchiveError::Parquet("producer_epoch is not int16".into()))?;
    let bytes = |a: &arrow_array::BinaryArray, i: usize| {
        (!a.is_null(i)).then(|| Bytes::copy_from_slice(a.value(i)))
    };
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let offset = offsets.value(i);
        if offset < from {
            continue;
        }
        let (producer_id, producer_epoch) = if pid.is_null(i) {
            (-1, -1)
        } else {
            (pid.value(i), pepoch.value(i))
        };
        let hs = headers.value_offsets();
        let (h0, h1) = (hs[i] as usize, hs[i + 1] as usize);
        out.push(Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: if ts_type.value(i) == "LogAppendTime" {
                TimestampType::LogAppend
            } else {
                TimestampType::Creation
            },
            offset,
            sequence: -1,
            timestamp: ts.value(i),
            key: bytes(key, i),
            value: bytes(value, i),
            headers: (h0..h1)
                .map(|h| {
                    (
                        StrBytes::from_string(hkey.value(h).to_string()),
                        bytes(hvalue, h),
                    )
                })
                .collect(),
        });
    }
    Ok(out)
}

/// The `offset` column of `batch`.
pub fn offsets(batch: &RecordBatch) -> Result<Vec<i64>, ArchiveError> {
    Ok(column(batch, "offset")?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| ArchiveError::Parquet("offset is not int64".into()))?
        .values()
        .to_vec())
}

/// `(offset, timestamp)` of each row of `batch`.
pub fn columns_offset_time(batch: &RecordBatch) -> Result<Vec<(i64, i64)>, ArchiveError> {
    let ts = column(batch, "timestamp")?
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| ArchiveError::Parquet("timestamp is not a millisecond timestamp".into()))?;
    Ok(offsets(batch)?
        .into_iter()
        .zip(ts.values().iter().copied())
        .collect())
}

fn size(r: &Record) -> usize {
    let h: usize = r
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()) + 8)
        .sum();
    24 + r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len()) + h
}

fn same_batch(a: &Record, b: &Record) -> bool {
    a.producer_id == b.producer_id
        && a.producer_epoch == b.producer_epoch
        && a.timestamp_type == b.timestamp_type
        && (a.timestamp_type == TimestampType::Creation || a.timestamp == b.timestamp)
}

/// Encodes `records` (ascending offsets) as consecutive v2 batches (see the module docs).
pub fn encode(records: &mut [Record]) -> Result<Bytes, ArchiveError> {
    let mut out = BytesMut::with_capacity(records.iter().map(size).sum::<usize>() + 128);
    let mut start = 0;
    while start < records.len() {
        let mut end = start + 1;
        let mut bytes = size(&records[start]);
        while end < records.len()
            && same_batch(&records[start], &records[end])
            && bytes + size(&records[end]) <= MAX_BATCH_BYTES
        {
            bytes += size(&records[end]);
            end += 1;
        }
        let group = &mut records[start..end];
        // The encoder keeps records in one batch while `offset - sequence` is constant.
        let first = group[0].offset;
        for r in group.iter_mut() {
            r.sequence = (r.offset - first) as i32;
        }
        let at = out.len();
        RecordBatchEncoder::encode(
            &mut out,
            group.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|e| ArchiveError::Decode(format!("re-encoding archived records: {e}")))?;
        let log_append = group[0].timestamp_type == TimestampType::LogAppend;
        let b = &mut out[at..];
        if log_append {
            let a = i16::from_be_bytes(b[ATTRIBUTES].try_into().expect("2 bytes"));
            b[ATTRIBUTES].copy_from_slice(&(a | LOG_APPEND_TIME).to_be_bytes());
        }
        b[BASE_SEQUENCE].copy_from_slice(&(-1i32).to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_FROM..]);
        b[CRC].copy_from_slice(&crc.to_be_bytes());
        start = end;
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn rec(offset: i64, pid: i64, ts_type: TimestampType, len: usize) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: pid,
            producer_epoch: if pid >= 0 { 3 } else { -1 },
            timestamp_type: ts_type,
            offset,
            sequence: 0,
            timestamp: 1_700_000_000_000 + offset / 7,
            key: (offset % 5 != 0).then(|| Bytes::from(format!("k{offset}"))),
            value: (offset % 11 != 0).then(|| Bytes::from(vec![(offset % 251) as u8; len])),
            headers: (0..(offset % 3))
                .map(|h| {
                    (
                        StrBytes::from_string(format!("h{h}")),
                        (h != 1).then(|| Bytes::from(format!("v{offset}"))),
                    )
                })
                .collect(),
        }
    }

    /// A seeded mix of producers, timestamp types, sizes and offset gaps: archived, read back,
    /// rebuilt and decoded, every field matches, every CRC checks and batches stay bounded.
    #[test]
    fn archived_records_rebuild_into_the_same_batches_a_consumer_would_read() {
        for seed in 1..=8u64 {
            let mut x = seed;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let mut offset = 100;
            let mut input = Vec::new();
            for _ in 0..400 {
                offset += 1 + (next() % 4 == 0) as i64 * (next() % 5) as i64;
                let pid = [-1, 7, 9][(next() % 3) as usize];
                let tt = if next() % 6 == 0 {
                    TimestampType::LogAppend
                } else {
                    TimestampType::Creation
                };
                let len = [0, 1, 100, 40_000, 300_000][(next() % 5) as usize];
                input.push(rec(offset, pid, tt, len));
            }
            let built = crate::writer::build(0, &input, None).unwrap();
            let rows: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(built.parquet)
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect();
            let from = input[37].offset;
            let mut back: Vec<Record> = rows
                .iter()
                .flat_map(|b| records(b, from).unwrap())
                .collect();
            let encoded = encode(&mut back).unwrap();
            let mut buf = encoded.clone();
            let mut decoded = Vec::new();
            let mut batches = 0;
            while !buf.is_empty() {
                let len = i32::from_be_bytes(buf[8..12].try_into().unwrap()) as usize + 12;
                let one = buf.split_to(len);
                let stored = u32::from_be_bytes(one[CRC].try_into().unwrap());
                assert_eq!(stored, crc32c::crc32c(&one[CRC_FROM..]), "seed {seed}: CRC");
                assert_eq!(&one[BASE_SEQUENCE], &(-1i32).to_be_bytes());
                assert!(
                    len <= MAX_BATCH_BYTES + 400_000,
                    "seed {seed}: batch of {len}"
                );
                let set = RecordBatchDecoder::decode(&mut one.clone()).unwrap();
                decoded.extend(set.records);
                batches += 1;
            }
            let want = &input[37..];
            assert_eq!(decoded.len(), want.len(), "seed {seed}");
            assert!(
                batches > 1 && batches < want.len(),
                "seed {seed}: {batches} batches"
            );
            for (d, w) in decoded.iter().zip(want) {
                assert_eq!(
                    (d.offset, d.timestamp, d.timestamp_type, &d.key, &d.value),
                    (w.offset, w.timestamp, w.timestamp_type, &w.key, &w.value),
                    "seed {seed}"
                );
                assert_eq!(
                    (d.producer_id, d.producer_epoch),
                    (w.producer_id, w.producer_epoch)
                );
                assert_eq!(d.headers, w.headers, "seed {seed}");
                assert!(!d.transactional && !d.control);
            }
        }
    }
}
