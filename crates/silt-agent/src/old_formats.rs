//! Message formats v0 and v1, for clients from before Kafka 0.11 (Produce v0–2, Fetch v0–3):
//! Silt stores record batches v2 only, as Kafka 3.x does. A produced message set is converted
//! up to one uncompressed v2 batch (compressed wrapper messages are decompressed, bounded;
//! magic-0 messages have no timestamp, so their records carry none), then takes the normal
//! produce path. A fetched range is converted down to messages of the magic the request's
//! version reads (headers, producer ids and transaction markers dropped, as Kafka drops them),
//! unless the topic sets `message.downconversion.enable=false`.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Compression, TimestampType};
use silt_wire::message_set::{self, Message, Plain};

use crate::error::PartitionError;

/// The most bytes a compressed wrapper message may decompress to.
const MAX_DECOMPRESSED: usize = 64 << 20;

fn corrupt(why: impl std::fmt::Display) -> PartitionError {
    PartitionError::CorruptMessage(format!("message set (Produce v0-2): {why}"))
}

/// A Produce v0–2 message set as one record batch v2.
pub fn up_convert(set: &Bytes) -> Result<Bytes, PartitionError> {
    let outer = message_set::parse(set).map_err(corrupt)?;
    if outer.is_empty() {
        return Err(corrupt("no messages"));
    }
    let mut plain: Vec<Plain> = Vec::with_capacity(outer.len());
    for m in outer {
        match m.codec() {
            0 => plain.push((m.timestamp, m.key, m.value)),
            4 => {
                return Err(PartitionError::UnsupportedCompression(
                    "zstd needs record batches v2 (Produce v3 or later; v7 for zstd), as in Kafka"
                        .into(),
                ))
            }
            1..=3 => unwrap(&m, &mut plain)?,
            other => return Err(corrupt(format!("unknown compression codec {other}"))),
        }
    }
    Ok(message_set::batch_v2(&plain, false))
}

/// The inner messages of a compressed wrapper message.
fn unwrap(m: &Message, plain: &mut Vec<Plain>) -> Result<(), PartitionError> {
    let Some(data) = m.value.clone() else {
        return Err(corrupt("a compressed message without a value"));
    };
    let codec = match m.codec() {
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        _ => Compression::Lz4,
    };
    let out = match silt_archive::decode::decompress_bounded(data.clone(), codec, MAX_DECOMPRESSED)
    {
        Ok(out) => out,
        // Magic-0 LZ4 frames carry a header checksum computed the wrong way (KAFKA-1493).
        Err(_) if codec == Compression::Lz4 && m.magic == 0 => {
            let fixed =
                message_set::lz4_fix_header(&data).ok_or_else(|| corrupt("not an LZ4 frame"))?;
            silt_archive::decode::decompress_bounded(Bytes::from(fixed), codec, MAX_DECOMPRESSED)
                .map_err(corrupt)?
        }
        Err(e) => return Err(corrupt(e)),
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
    Ok(())
}

/// The records of `batches` from offset `from` on, as messages of `magic` (0 for Fetch v0–1,
/// 1 for Fetch v2–3).
pub fn down_convert(batches: &Bytes, from: i64, magic: i8) -> Bytes {
    let decoded = match silt_archive::decode::records(
        batches,
        from,
        i64::MAX,
        silt_archive::decode::DEFAULT_MAX_DECOMPRESSED,
    ) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "could not convert stored batches to a message set for an old fetch");
            return Bytes::new();
        }
    };
    let mut out = BytesMut::new();
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
            let batch = up_convert(&plain).unwrap();
            let ts = |i: i64| if magic == 0 { -1 } else { 1_000 + i };
            let want: Vec<(i64, i64, String)> =
                (0..3).map(|i| (i, ts(i), format!("v{i}"))).collect();
            assert_eq!(records(&batch), want, "magic {magic}");

            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&plain).unwrap();
            let batch = up_convert(&wrapped(magic, 1, &gz.finish().unwrap())).unwrap();
            assert_eq!(records(&batch), want, "gzip, magic {magic}");

            // Down again, from offset 1.
            let down = down_convert(&batch, 1, magic);
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
    fn bad_sets_get_kafkas_errors() {
        assert!(matches!(
            up_convert(&Bytes::new()),
            Err(PartitionError::CorruptMessage(_))
        ));
        let zstd = wrapped(1, 4, b"whatever");
        assert!(matches!(
            up_convert(&zstd),
            Err(PartitionError::UnsupportedCompression(_))
        ));
        let garbage = wrapped(1, 1, b"not gzip");
        assert!(matches!(
            up_convert(&garbage),
            Err(PartitionError::CorruptMessage(_))
        ));
        // Nested compression.
        let inner = wrapped(1, 1, b"x");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&inner).unwrap();
        let nested = wrapped(1, 1, &gz.finish().unwrap());
        assert!(matches!(
            up_convert(&nested),
            Err(PartitionError::CorruptMessage(_))
        ));
    }
}
