//! Message sets v0 and v1 (magic 0 and 1): the record format of Produce v0–2 and Fetch v0–3,
//! which Kafka 3.9 still serves for clients from before 0.11. Silt stores record batches v2
//! only, as Kafka 3.x does: a produced message set is parsed (every CRC and length checked, no
//! allocation sized from the wire) and rebuilt as one uncompressed v2 batch
//! ([`batch_v2`]); a fetched range is written back as messages ([`write`]) by the read path.
//! Decompressing a compressed wrapper message is the caller's (the codecs live with the
//! archive's bounded decompressor); [`lz4_fix_header`] repairs the frame header checksum that
//! magic-0 LZ4 gets wrong (KAFKA-1493).

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::ATTR_LOG_APPEND_TIME;
use crate::write;

/// The smallest message: offset, size, CRC, magic, attributes, two null lengths.
const MIN_V0: usize = 8 + 4 + 4 + 1 + 1 + 4 + 4;

/// One message of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its offset (relative inside a magic-1 compressed wrapper).
    pub offset: i64,
    /// 0 or 1.
    pub magic: i8,
    /// Codec (low 3 bits) and, for magic 1, the timestamp type (bit 3).
    pub attributes: i8,
    /// Magic 1 only; -1 for magic 0 (no timestamp).
    pub timestamp: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value (for a compressed wrapper: the compressed inner message set).
    pub value: Option<Bytes>,
}

impl Message {
    /// 0 none, 1 gzip, 2 snappy, 3 lz4 (4, zstd, is not allowed before record batches v2).
    pub fn codec(&self) -> u8 {
        (self.attributes & 0x07) as u8
    }

    /// Whether a magic-1 message carries the broker's append time.
    pub fn log_append_time(&self) -> bool {
        self.magic >= 1 && self.attributes & 0x08 != 0
    }
}

/// Why a message set was refused (Kafka answers CORRUPT_MESSAGE).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message set: {0}")]
pub struct SetError(pub String);

fn bad<T>(why: impl Into<String>) -> Result<T, SetError> {
    Err(SetError(why.into()))
}

/// Parses every message of `set`; a truncated last message, a bad CRC, an unknown magic or a
/// length that lies is an error.
pub fn parse(set: &Bytes) -> Result<Vec<Message>, SetError> {
    let mut out = Vec::with_capacity(set.len() / MIN_V0);
    let mut pos = 0usize;
    while pos < set.len() {
        if set.len() - pos < 12 {
            return bad(format!(
                "{} bytes left, too few for a message",
                set.len() - pos
            ));
        }
        let offset = i64::from_be_bytes(set[pos..pos + 8].try_into().expect("8 bytes"));
        let size = i32::from_be_bytes(set[pos + 8..pos + 12].try_into().expect("4 bytes"));
        let start = pos + 12;
        let Some(end) = usize::try_from(size)
            .ok()
            .and_then(|s| start.checked_add(s))
            .filter(|e| *e <= set.len() && *e >= start + MIN_V0 - 12)
        else {
            return bad(format!(
                "message at offset {offset} claims {size} bytes; {} are left",
                set.len() - start
            ));
        };
        let m = set.slice(start..end);
        let crc = u32::from_be_bytes(m[0..4].try_into().expect("4 bytes"));
        if crc32fast::hash(&m[4..]) != crc {
            return bad(format!("message at offset {offset} fails its CRC"));
        }
        let magic = m[4] as i8;
        let attributes = m[5] as i8;
        let mut at = 6usize;
        let timestamp = match magic {
            0 => -1,
            1 => {
                if m.len() < at + 8 + 8 {
                    return bad(format!("message at offset {offset} is too short"));
                }
                at += 8;
                i64::from_be_bytes(m[6..14].try_into().expect("8 bytes"))
            }
            other => return bad(format!("message at offset {offset} has magic {other}")),
        };
        let key = field(&m, &mut at, offset)?;
        let value = field(&m, &mut at, offset)?;
        if at != m.len() {
            return bad(format!(
                "message at offset {offset} has {} bytes after its value",
                m.len() - at
            ));
        }
        out.push(Message {
            offset,
            magic,
            attributes,
            timestamp,
            key,
            value,
        });
        pos = end;
    }
    Ok(out)
}

/// A length-prefixed (i32, -1 null) field of message `m` at `at`.
fn field(m: &Bytes, at: &mut usize, offset: i64) -> Result<Option<Bytes>, SetError> {
    if m.len() < *at + 4 {
        return bad(format!("message at offset {offset} ends inside a length"));
    }
    let n = i32::from_be_bytes(m[*at..*at + 4].try_into().expect("4 bytes"));
    *at += 4;
    if n < 0 {
        return Ok(None);
    }
    let n = n as usize;
    if m.len() - *at < n {
        return bad(format!(
            "message at offset {offset} has a field past its end"
        ));
    }
    let v = m.slice(*at..*at + n);
    *at += n;
    Ok(Some(v))
}

/// Appends one uncompressed message of `magic` (0 or 1; magic 0 has no timestamp).
pub fn write(
    out: &mut BytesMut,
    magic: i8,
    offset: i64,
    (timestamp, log_append_time): (i64, bool),
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) {
    let body_len = 1
        + 1
        + if magic >= 1 { 8 } else { 0 }
        + 4
        + key.map_or(0, <[u8]>::len)
        + 4
        + value.map_or(0, <[u8]>::len);
    out.reserve(12 + 4 + body_len);
    out.put_i64(offset);
    out.put_i32((4 + body_len) as i32);
    let crc_at = out.len();
    out.put_u32(0);
    let body_at = out.len();
    out.put_i8(magic);
    out.put_i8(if magic >= 1 && log_append_time {
        0x08
    } else {
        0
    });
    if magic >= 1 {
        out.put_i64(timestamp);
    }
    for f in [key, value] {
        match f {
            Some(b) => {
                out.put_i32(b.len() as i32);
                out.put_slice(b);
            }
            None => out.put_i32(-1),
        }
    }
    let crc = crc32fast::hash(&out[body_at..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
}

/// One record of an up-converted batch: timestamp (-1: none), key, value.
pub type Plain = (i64, Option<Bytes>, Option<Bytes>);

/// One uncompressed record batch v2 holding `records` at offsets 0.. (the log assigns the
/// real ones), without a producer id; `log_append_time` sets the batch's timestamp type.
pub fn batch_v2(records: &[Plain], log_append_time: bool) -> Bytes {
    let base_ts = records.first().map_or(-1, |r| r.0);
    let max_ts = records.iter().map(|r| r.0).max().unwrap_or(-1);
    let mut body = BytesMut::new();
    for (i, (ts, key, value)) in records.iter().enumerate() {
        let delta = if base_ts < 0 { 0 } else { ts - base_ts };
        write::put_record(&mut body, delta, i as i64, key.as_deref(), value.as_deref());
    }
    write::batch(
        write::Header {
            attributes: if log_append_time {
                ATTR_LOG_APPEND_TIME
            } else {
                0
            },
            timestamps: (base_ts, max_ts),
            producer: (-1, -1),
            base_sequence: -1,
        },
        records.len() as i32,
        &body,
    )
}

/// Rewrites the header checksum of an LZ4 frame to the correct one. Magic-0 producers compute
/// it over the magic number too (KAFKA-1493), so a standard decoder refuses their frames.
pub fn lz4_fix_header(frame: &[u8]) -> Option<Vec<u8>> {
    if frame.len() < 7 || frame[0..4] != [0x04, 0x22, 0x4d, 0x18] {
        return None;
    }
    let flg = frame[4];
    let descriptor_end =
        6 + if flg & 0x08 != 0 { 8 } else { 0 } + if flg & 0x01 != 0 { 4 } else { 0 };
    if frame.len() <= descriptor_end {
        return None;
    }
    let mut out = frame.to_vec();
    out[descriptor_end] = ((xxh32(&frame[4..descriptor_end], 0) >> 8) & 0xff) as u8;
    Some(out)
}

/// XXH32 (used only for the LZ4 frame header checksum above).
fn xxh32(input: &[u8], seed: u32) -> u32 {
    const P1: u32 = 0x9E37_79B1;
    const P2: u32 = 0x85EB_CA77;
    const P3: u32 = 0xC2B2_AE3D;
    const P4: u32 = 0x27D4_EB2F;
    const P5: u32 = 0x1656_67B1;
    let round = |acc: u32, lane: u32| {
        acc.wrapping_add(lane.wrapping_mul(P2))
            .rotate_left(13)
            .wrapping_mul(P1)
    };
    let word = |b: &[u8]| u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
    let mut rest = input;
    let mut h = if input.len() >= 16 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 16 {
            for (i, lane) in v.iter_mut().enumerate() {
                *lane = round(*lane, word(&rest[i * 4..]));
            }
            rest = &rest[16..];
        }
        v[0].rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18))
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(input.len() as u32);
    while rest.len() >= 4 {
        h = h
            .wrapping_add(word(rest).wrapping_mul(P3))
            .rotate_left(17)
            .wrapping_mul(P4);
        rest = &rest[4..];
    }
    for &byte in rest {
        h = h
            .wrapping_add(u32::from(byte).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_messages_parse_back_for_both_magics() {
        let mut set = BytesMut::new();
        write(&mut set, 0, 5, (-1, false), Some(b"k"), Some(b"v0"));
        write(&mut set, 1, 6, (1_700, true), None, Some(b""));
        write(&mut set, 1, 7, (1_800, false), Some(b"k2"), None);
        let got = parse(&set.freeze()).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].offset, got[0].magic, got[0].timestamp), (5, 0, -1));
        assert_eq!(got[0].key.as_deref(), Some(&b"k"[..]));
        assert!(got[1].log_append_time() && got[1].key.is_none());
        assert_eq!(got[1].value.as_deref(), Some(&b""[..]));
        assert_eq!((got[2].timestamp, got[2].value.clone()), (1_800, None));
        assert_eq!(got[2].codec(), 0);
    }

    #[test]
    fn bad_sets_are_errors_never_panics() {
        let mut set = BytesMut::new();
        write(&mut set, 1, 0, (1, false), Some(b"key"), Some(b"value"));
        let good = set.freeze();
        // Every truncation and every flipped byte is refused (or, for the offset field that
        // the CRC does not cover, parsed).
        for cut in 0..good.len() {
            assert!(parse(&good.slice(..cut)).is_err() || cut == 0, "cut {cut}");
        }
        for i in 0..good.len() {
            let mut b = good.to_vec();
            b[i] ^= 0x5a;
            let r = parse(&Bytes::from(b));
            assert!(i < 8 || r.is_err(), "flipped byte {i}: {r:?}");
        }
        // A size that lies.
        let mut b = good.to_vec();
        b[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(parse(&Bytes::from(b)).is_err());
    }

    #[test]
    fn an_up_converted_batch_is_a_valid_v2_batch() {
        let recs = vec![
            (
                1_000,
                Some(Bytes::from_static(b"a")),
                Some(Bytes::from_static(b"1")),
            ),
            (1_005, None, None),
        ];
        let b = batch_v2(&recs, false);
        let h = crate::batch::parse_header(&b).unwrap();
        assert_eq!(
            (h.record_count, h.base_timestamp, h.max_timestamp),
            (2, 1_000, 1_005)
        );
        assert_eq!(h.last_offset_delta, 1);
        let mut buf = b.clone();
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).unwrap();
        assert_eq!(set.records.len(), 2);
        assert_eq!(set.records[1].timestamp, 1_005);
        assert_eq!(set.records[0].key.as_deref(), Some(&b"a"[..]));
        // Magic 0: no timestamps.
        let b = batch_v2(&[(-1, None, Some(Bytes::from_static(b"x")))], false);
        let h = crate::batch::parse_header(&b).unwrap();
        assert_eq!((h.base_timestamp, h.max_timestamp), (-1, -1));
    }

    #[test]
    fn xxh32_matches_the_reference_vectors() {
        assert_eq!(xxh32(b"", 0), 0x02CC_5D05);
        assert_eq!(xxh32(b"a", 0), 0x550D_7456);
        assert_eq!(xxh32(b"abc", 0), 0x32D1_53FF);
        assert_eq!(
            xxh32(b"Nobody inspects the spammish repetition", 0),
            0xE229_3B2F
        );
    }
}
