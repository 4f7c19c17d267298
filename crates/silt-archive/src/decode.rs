//! Record batches (any codec) to records, through kafka-protocol's decoder, one batch at a
//! time and with bounded decompression. A batch whose CRC was valid when produced but whose
//! payload does not decode, or decompresses past the bound (a decompression bomb), is
//! quarantined: its offsets yield no records, the caller is told which, and decoding moves on
//! to the next batch. Memory stays within the bound per batch.

use std::io::Read;

use bytes::Bytes;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};

use crate::ArchiveError;

/// Default bound on one batch's decompressed size.
pub const DEFAULT_MAX_DECOMPRESSED: usize = 128 << 20;

/// A batch left out of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Its first offset.
    pub base_offset: i64,
    /// Its last offset.
    pub last_offset: i64,
    /// Why it could not be decoded.
    pub reason: String,
}

/// What decoding a range found.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Records of the decodable batches, in offset order.
    pub records: Vec<Record>,
    /// Batches whose records could not be decoded, in offset order.
    pub quarantined: Vec<Quarantined>,
    /// Offsets of control records (transaction markers) left out, in order.
    pub control: Vec<i64>,
}

/// Decodes every record of the batches in `data` whose offset is in `from..until`. Control
/// records (transaction markers) are skipped. A batch whose payload does not decode or
/// decompresses past `max_decompressed` bytes is quarantined (see the module docs); bytes that
/// are not batches at all are an error.
pub fn records(
    data: &Bytes,
    from: i64,
    until: i64,
    max_decompressed: usize,
) -> Result<Decoded, ArchiveError> {
    let mut out = Decoded::default();
    let mut pos = 0usize;
    while pos < data.len() {
        let (base, last, size) = frame(&data[pos..])?;
        let one = data.slice(pos..pos + size);
        pos += size;
        if last < from || base >= until {
            continue;
        }
        let mut buf = one.clone();
        let count = i32::from_be_bytes(one[57..61].try_into().expect("4 bytes"));
        // Decompress within the bound, then walk the records without allocating before the
        // decoder sizes vectors from their counts.
        let bounded = |b: &mut Bytes, c: Compression| {
            let out = decompress(b, c, max_decompressed)?;
            check_records(&out, count)?;
            Ok(out)
        };
        match RecordBatchDecoder::decode_with_custom_compression(&mut buf, Some(bounded)) {
            Ok(set) => {
                for r in set.records {
                    if r.offset < from || r.offset >= until {
                        continue;
                    }
                    if r.control {
                        out.control.push(r.offset);
                    } else {
                        out.records.push(r);
                    }
                }
            }
            Err(e) => out.quarantined.push(Quarantined {
                base_offset: base,
                last_offset: last,
                reason: format!("{e:#}"),
            }),
        }
    }
    Ok(out)
}

/// (base offset, last offset, size) of the batch at the start of `buf`.
fn frame(buf: &[u8]) -> Result<(i64, i64, usize), ArchiveError> {
    if buf.len() < 61 {
        return Err(ArchiveError::Decode(format!(
            "{} bytes left, shorter than a batch header",
            buf.len()
        )));
    }
    let base = i64::from_be_bytes(buf[0..8].try_into().expect("8 bytes"));
    let len = i32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
    let delta = i32::from_be_bytes(buf[23..27].try_into().expect("4 bytes"));
    let size = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(12))
        .filter(|s| *s >= 61 && *s <= buf.len())
        .ok_or_else(|| {
            ArchiveError::Decode(format!(
                "batch at offset {base} claims {len} bytes, {} are left",
                buf.len() - 12
            ))
        })?;
    Ok((base, base + delta.max(0) as i64, size))
}

/// A zigzag varint (Kafka's record fields), advancing `b`.
fn varint(b: &mut &[u8]) -> anyhow::Result<i64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let Some((&byte, rest)) = b.split_first() else {
            anyhow::bail!("a record field runs past the batch");
        };
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
    }
    anyhow::bail!("a varint longer than 10 bytes")
}

/// Skips `n` bytes of `b` (`-1`: a null field).
fn skip(b: &mut &[u8], n: i64) -> anyhow::Result<()> {
    if n == -1 {
        return Ok(());
    }
    let n = usize::try_from(n).map_err(|_| anyhow::anyhow!("a negative field length {n}"))?;
    if n > b.len() {
        anyhow::bail!("a field of {n} bytes runs past the batch");
    }
    *b = &b[n..];
    Ok(())
}

/// Walks `count` records in `buf` without allocating: every length and count must fit in the
/// bytes that are there, so the decoder never sizes a vector from a forged count.
fn check_records(buf: &[u8], count: i32) -> anyhow::Result<()> {
    // The smallest record takes 7 bytes.
    if count < 0 || count as usize > buf.len() / 7 {
        anyhow::bail!("{count} records cannot fit in {} bytes", buf.len());
    }
    let mut b = buf;
    for _ in 0..count {
        let len = varint(&mut b)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= b.len())
            .ok_or_else(|| anyhow::anyhow!("a record of {len} bytes runs past the batch"))?;
        let (mut r, rest) = b.split_at(len);
        b = rest;
        skip(&mut r, 1)?; // attributes
        varint(&mut r)?; // timestamp delta
        varint(&mut r)?; // offset delta
        let k = varint(&mut r)?;
        skip(&mut r, k)?;
        let v = varint(&mut r)?;
        skip(&mut r, v)?;
        let headers = varint(&mut r)?;
        if headers < 0 || headers as usize > r.len() / 2 {
            anyhow::bail!("{headers} headers cannot fit in {} bytes", r.len());
        }
        for _ in 0..headers {
            let hk = varint(&mut r)?;
            if hk < 0 {
                anyhow::bail!("a header with a null key");
            }
            skip(&mut r, hk)?;
            let hv = varint(&mut r)?;
            skip(&mut r, hv)?;
        }
    }
    Ok(())
}

/// Decompresses `input` compressed with `codec`, refusing to produce more than `max` bytes
/// (snappy in Kafka's xerial framing or raw; LZ4 as a frame).
pub fn decompress_bounded(input: Bytes, codec: Compression, max: usize) -> anyhow::Result<Bytes> {
    let mut b = input;
    decompress(&mut b, codec, max)
}

/// Decompresses a batch's records, refusing to produce more than `max` bytes.
fn decompress(b: &mut Bytes, c: Compression, max: usize) -> anyhow::Result<Bytes> {
    let input = std::mem::take(b);
    let out = match c {
        Compression::None => {
            if input.len() > max {
                anyhow::bail!(
                    "{} bytes of records exceed the {max}-byte bound",
                    input.len()
                );
            }
            return Ok(input);
        }
        Compression::Gzip => capped(flate2::read::GzDecoder::new(&input[..]), max)?,
        Compression::Zstd => capped(zstd::stream::read::Decoder::new(&input[..])?, max)?,
        Compression::Lz4 => capped(lz4::Decoder::new(&input[..])?, max)?,
        Compression::Snappy => snappy(&input, max)?,
    };
    Ok(Bytes::from(out))
}

/// Reads `r` to its end, failing past `max` bytes.
fn capped(r: impl Read, max: usize) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(max as u64 + 1).read_to_end(&mut out)?;
    if out.len() > max {
        anyhow::bail!("decompresses past the {max}-byte bound (a decompression bomb?)");
    }
    Ok(out)
}

/// Kafka's snappy: xerial framing (a magic header, then length-prefixed raw blocks) or raw.
fn snappy(input: &[u8], max: usize) -> anyhow::Result<Vec<u8>> {
    const MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
    let mut out = Vec::new();
    let block = |raw: &[u8], out: &mut Vec<u8>| -> anyhow::Result<()> {
        let n = snap::raw::decompress_len(raw)?;
        if out.len() + n > max {
            anyhow::bail!("decompresses past the {max}-byte bound (a decompression bomb?)");
        }
        out.extend_from_slice(&snap::raw::Decoder::new().decompress_vec(raw)?);
        Ok(())
    };
    if input.len() >= 16 && &input[..8] == MAGIC {
        let mut rest = &input[16..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                anyhow::bail!("truncated snappy block length");
            }
            let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            let raw = rest
                .get(4..4 + len)
                .ok_or_else(|| anyhow::anyhow!("truncated snappy block"))?;
            block(raw, &mut out)?;
            rest = &rest[4 + len..];
        }
    } else {
        block(input, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    pub(crate) fn batch(base: i64, n: i64, compression: Compression) -> Bytes {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: 7,
                producer_epoch: 1,
                timestamp_type: TimestampType::Creation,
                offset: base + i,
                sequence: i as i32,
                timestamp: 1_700_000_000_000 + i,
                key: Some(Bytes::from(format!("k{i}"))),
                value: (i % 3 != 0).then(|| Bytes::from(format!("{{\"n\":{i}}}"))),
                headers: [(
                    StrBytes::from_static_str("h"),
                    Some(Bytes::from_static(b"v")),
                )]
                .into_iter()
                .collect(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.freeze()
    }

    #[test]
    fn every_codec_decodes_and_the_range_is_respected() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut two = BytesMut::from(&batch(10, 5, c)[..]);
            two.extend_from_slice(&batch(15, 5, c));
            let got = records(&two.freeze(), 12, 17, DEFAULT_MAX_DECOMPRESSED)
                .unwrap()
                .records;
            let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, vec![12, 13, 14, 15, 16], "{c:?}");
            assert_eq!(got[0].key.as_deref(), Some(&b"k2"[..]));
        }
    }

    /// `b` with its records payload replaced by `payload` and the CRC recomputed, as a producer
    /// could send it (the agent checks CRCs, never payloads).
    fn with_payload(b: &Bytes, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::from(&b[..61]);
        out.extend_from_slice(payload);
        let len = (out.len() - 12) as i32;
        out[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out.freeze()
    }

    /// Rule (issue 11.6): a batch with a valid CRC whose compressed payload does not decode,
    /// and one that decompresses past the bound, are quarantined by offset; the batches around
    /// them decode. On the old code the first error stopped the whole range.
    #[test]
    fn poison_batches_are_quarantined_and_decoding_moves_on() {
        for c in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let good = batch(0, 5, c);
            let garbage = with_payload(&batch(5, 5, c), &[0xAB; 40]);
            let mut all = BytesMut::from(&good[..]);
            all.extend_from_slice(&garbage);
            all.extend_from_slice(&batch(10, 5, c));
            let got = records(&all.freeze(), 0, 100, DEFAULT_MAX_DECOMPRESSED).unwrap();
            let offsets: Vec<i64> = got.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, vec![0, 1, 2, 3, 4, 10, 11, 12, 13, 14], "{c:?}");
            assert_eq!(got.quarantined.len(), 1, "{c:?}");
            assert_eq!(
                (
                    got.quarantined[0].base_offset,
                    got.quarantined[0].last_offset
                ),
                (5, 9)
            );
        }
        // A bomb: 16 MiB of zeros in a small zstd batch, against a 1 MiB bound.
        let r = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: 0,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from(vec![0u8; 16 << 20])),
            headers: Default::default(),
        };
        let mut bomb = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut bomb,
            &[r],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::Zstd,
            },
        )
        .unwrap();
        assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
        let got = records(&bomb.freeze(), 0, 100, 1 << 20).unwrap();
        assert!(got.records.is_empty());
        assert!(
            got.quarantined[0].reason.contains("bound"),
            "{:?}",
            got.quarantined
        );
    }

    /// Forged counts (a record count or a header count far beyond the bytes there) are
    /// quarantined before the decoder sizes a vector from them.
    #[test]
    fn forged_counts_are_quarantined_without_allocating() {
        let good = batch(0, 3, Compression::None);
        let mut huge_count = BytesMut::from(&good[..]);
        huge_count[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let crc = crc32c::crc32c(&huge_count[21..]);
        huge_count[17..21].copy_from_slice(&crc.to_be_bytes());
        let got = records(&huge_count.freeze(), 0, 100, DEFAULT_MAX_DECOMPRESSED).unwrap();
        assert!(got.records.is_empty());
        assert!(
            got.quarantined[0].reason.contains("cannot fit"),
            "{:?}",
            got.quarantined
        );
        // One record whose header count varint says i32::MAX.
        let mut rec = BytesMut::new();
        let body: Vec<u8> = vec![0, 0, 0, 1, 1, 0xfe, 0xff, 0xff, 0xff, 0x0f];
        rec.extend_from_slice(&[(body.len() as u8) << 1]);
        rec.extend_from_slice(&body);
        let forged = with_payload(&batch(0, 1, Compression::None), &rec);
        let got = records(&forged, 0, 100, DEFAULT_MAX_DECOMPRESSED).unwrap();
        assert!(got.records.is_empty());
        assert!(
            got.quarantined[0].reason.contains("headers"),
            "{:?}",
            got.quarantined
        );
        // Well-formed batches still pass the walk.
        for c in [Compression::None, Compression::Zstd] {
            let ok = records(&batch(0, 5, c), 0, 100, DEFAULT_MAX_DECOMPRESSED).unwrap();
            assert_eq!(ok.records.len(), 5);
            assert!(ok.quarantined.is_empty());
        }
    }
}
