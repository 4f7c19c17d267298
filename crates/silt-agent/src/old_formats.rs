//! Message formats v0 and v1, for clients from before Kafka 0.11 (Produce v0–2, Fetch v0–3):
//! Silt stores record batches v2 only, as Kafka 3.x does. A produced message set is converted
//! up to one uncompressed v2 batch (compressed wrapper messages are decompressed, all of them
//! together within the topic's `max.message.bytes`; magic-0 messages have no timestamp, so their
//! records carry none), then takes the normal produce path. A fetched range is converted down,
//! one stored batch at a time and up to the fetch's size, to messages of the magic the
//! request's version reads (headers, producer ids and transaction markers dropped, as Kafka drops
//! them), unless the topic sets `message.downconversion.enable=false`.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Compression, TimestampType};
use silt_wire::message_set::{self, Message, Plain};

use crate::error::PartitionError;

fn corrupt(why: impl std::fmt::Display) -> PartitionError {
    PartitionError::CorruptMessage(format!("message set (Produce v0-2): {why}"))
}

/// A Produce v0–2 message set as one record batch v2; the messages inside compressed wrappers
/// may decompress to `max_bytes` in all (the batch they become may not be larger).
pub fn up_convert(set: &Bytes, max_bytes: usize) -> Result<Bytes, PartitionError> {
    let outer = message_set::parse(set).map_err(corrupt)?;
    if outer.is_empty() {
        return Err(corrupt("no messages"));
    }
    let mut plain: Vec<Plain> = Vec::with_capacity(outer.len());
    let mut left = max_bytes;
    for m in outer {
        match m.codec() {
            0 => plain.push((m.timestamp, m.key, m.value)),
            4 => {
                return Err(PartitionError::UnsupportedCompression(
                    "zstd needs record batches v2 (Produce v3 or later; v7 for zstd), as in Kafka"
                        .into(),
                ))
            }
            1..=3 => left -= unwrap(&m, &mut plain, left)?,
            other => return Err(corrupt(format!("unknown compression codec {other}"))),
        }
    }
    Ok(message_set::batch_v2(&plain, false))
}

/// Adds the inner messages of a compressed wrapper message, which may decompress to `max`
/// bytes; returns how many they took.
fn unwrap(m: &Message, plain: &mut Vec<Plain>, max: usize) -> Result<usize, PartitionError> {
    let Some(data) = m.value.clone() else {
        return Err(corrupt("a compressed message without a value"));
    };
    let codec = match m.codec() {
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        _ => Compression::Lz4,
    };
    let bounded = |e: &dyn std::fmt::Display| {
        corrupt(format!(
            "{e} (a compressed message set may hold at most max.message.bytes = {max} bytes)"
        ))
    };
    let out = match silt_archive::decode::decompress_bounded(data.clone(), codec, max) {
        Ok(out) => out,
        // Magic-0 LZ4 frames carry a header checksum computed the wrong way (KAFKA-1493).
        Err(_) if codec == Compression::Lz4 && m.magic == 0 => {
            let fixed =
                message_set::lz4_fix_header(&data).ok_or_else(|| corrupt("not an LZ4 frame"))?;
            silt_archive::decode::decompress_bounded(Bytes::from(fixed), codec, max)
                .map_err(|e| bounded(&e))?
        }
        Err(e) => return Err(bounded(&e)),
    };
    for inner in message_set::parse(&out).map_err(corrupt)? {
        if inner.codec() != 0 {
            return Err(corrupt("a compressed message inside a compressed message"));
        }
        if inner.magic != m.magic {
            return Err(corrupt(format!(
                "magic {} inside a magic {} wrapper",
                inner.magic, m.magic
            )));
        }
        // A wrapper with LogAppendTime carries the time of all its messages.
        let ts = if m.log_append_time() {
            m.timestamp
        } else {
            inner.timestamp
        };
        plain.push((ts, inner.key, inner.value));
    }
    Ok(out.len())
}

/// The records of `batches` from offset `from` on, as messages of `magic` (0 for Fetch v0–1,
/// 1 for Fetch v2–3): one stored batch decoded at a time, stopping once `max_bytes` are written
/// (at least one message, as a fetch returns at least one batch).
pub fn down_convert(batches: &Bytes, from: i64, magic: i8, max_bytes: usize) -> Bytes {
    let mut out = BytesMut::new();
    for (_, range) in silt_wire::batch::iter(batches) {
        if !out.is_empty() && out.len() >= max_bytes {
            break;
        }
        let one = batches.slice(range);
        let decoded = match silt_archive::decode::records(
            &one,
            from,
            i64::MAX,
            silt_archive::decode::DEFAULT_MAX_DECOMPRESSED,
        ) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "could not convert a stored batch to a message set for an old fetch");
                break;
            }
        };
        for r in decoded.records {
            message_set::write(
                &mut out,
                magic,
                r.offset,
                (r.timestamp, r.timestamp_type == TimestampType::LogAppend),
                r.key.as_deref(),
                r.value.as_deref(),
            );
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn set(magic: i8, n: usize) -> BytesMut {
        let mut b = BytesMut::new();
        for i in 0..n {
            message_set::write(
                &mut b,
                magic,
                i as i64,
                (1_000 + i as i64, false),
                Some(format!("k{i}").as_bytes()),
                Some(format!("v{i}").as_bytes()),
            );
        }
        b
    }

    /// A compressed wrapper message around `inner`.
    fn wrapped(magic: i8, codec: u8, inner: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        message_set::write(&mut b, magic, 2, (1_002, false), None, Some(inner));
        // Set the codec bits and fix the CRC (written uncompressed above).
        b[17] |= codec;
        let crc = crc32fast::hash(&b[16..]);
        b[12..16].copy_from_slice(&crc.to_be_bytes());
        b.freeze()
    }

    fn records(batch: &Bytes) -> Vec<(i64, i64, String)> {
        let mut b = batch.clone();
        kafka_protocol::records::RecordBatchDecoder::decode(&mut b)
            .unwrap()
            .records
            .iter()
            .map(|r| {
                (
                    r.offset,
                    r.timestamp,
                    String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn plain_and_gzip_sets_convert_up_and_back_down() {
        for magic in [0i8, 1] {
            let plain = set(magic, 3).freeze();
            let batch = up_convert(&plain, 1 << 20).unwrap();
            let ts = |i: i64| if magic == 0 { -1 } else { 1_000 + i };
            let want: Vec<(i64, i64, String)> =
                (0..3).map(|i| (i, ts(i), format!("v{i}"))).collect();
            assert_eq!(records(&batch), want, "magic {magic}");

            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&plain).unwrap();
            let batch = up_convert(&wrapped(magic, 1, &gz.finish().unwrap()), 1 << 20).unwrap();
            assert_eq!(records(&batch), want, "gzip, magic {magic}");

            // Down again, from offset 1.
            let down = down_convert(&batch, 1, magic, 1 << 20);
            let msgs = message_set::parse(&down).unwrap();
            assert_eq!(msgs.len(), 2);
            assert_eq!(
                (msgs[0].offset, msgs[0].magic, msgs[0].timestamp),
                (1, magic, ts(1))
            );
            assert_eq!(msgs[1].value.as_deref(), Some(&b"v2"[..]));
        }
    }

    #[test]
    fn compressed_sets_decompress_within_max_message_bytes_in_all() {
        // One wrapper: 1 MiB of messages compressed to a few KiB.
        let inner = set(1, 1);
        let mut big = BytesMut::new();
        message_set::write(&mut big, 1, 0, (1, false), None, Some(&vec![0u8; 1 << 20]));
        let gz = |data: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        let one = wrapped(1, 1, &gz(&big));
        assert!(one.len() < 8 << 10, "{} bytes", one.len());
        assert!(up_convert(&one, 2 << 20).is_ok());
        assert!(matches!(
            up_convert(&one, 512 << 10),
            Err(PartitionError::CorruptMessage(_))
        ));
        // Forty of them in one small set: the budget is for all together, not per wrapper.
        let mut many = BytesMut::new();
        for _ in 0..40 {
            many.extend_from_slice(&one);
        }
        assert!(many.len() < 512 << 10);
        let e = up_convert(&many.freeze(), 8 << 20).unwrap_err();
        assert!(e.to_string().contains("max.message.bytes"), "{e}");
        assert!(up_convert(&wrapped(1, 1, &gz(&inner)), 1 << 10).is_ok());
    }

    #[test]
    fn down_conversion_stops_at_the_fetch_size_after_one_message() {
        let mut stored = BytesMut::new();
        for i in 0..3 {
            let value = vec![b'x'; 10_000];
            let mut b = BytesMut::from(
                &message_set::batch_v2(&[(i, None, Some(Bytes::from(value)))], false)[..],
            );
            b[0..8].copy_from_slice(&i.to_be_bytes());
            stored.extend_from_slice(&b);
        }
        let stored = stored.freeze();
        let count = |max| {
            message_set::parse(&down_convert(&stored, 0, 1, max))
                .unwrap()
                .len()
        };
        assert_eq!(count(1 << 20), 3);
        assert_eq!(count(15_000), 2, "stops once the size is reached");
        assert_eq!(count(1), 1, "at least one message");
    }

    #[test]
    fn bad_sets_get_kafkas_errors() {
        assert!(matches!(
            up_convert(&Bytes::new(), 1 << 20),
            Err(PartitionError::CorruptMessage(_))
        ));
        let zstd = wrapped(1, 4, b"whatever");
        assert!(matches!(
            up_convert(&zstd, 1 << 20),
            Err(PartitionError::UnsupportedCompression(_))
        ));
        let garbage = wrapped(1, 1, b"not gzip");
        assert!(matches!(
            up_convert(&garbage, 1 << 20),
            Err(PartitionError::CorruptMessage(_))
        ));
        // Nested compression.
        let inner = wrapped(1, 1, b"x");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&inner).unwrap();
        let nested = wrapped(1, 1, &gz.finish().unwrap());
        assert!(matches!(
            up_convert(&nested, 1 << 20),
            Err(PartitionError::CorruptMessage(_))
        ));
    }
}
