//! Writing record batches v2 that Silt makes itself (transaction markers, message sets converted
//! up from v0/v1): the record encoding and the batch header with its CRC, in one place; and the
//! varints they and hand-written response fields use.

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::{CRC_START, HEADER_LEN, LOG_OVERHEAD};

/// Appends a zigzag varint.
pub fn put_varint(b: &mut BytesMut, v: i64) {
    put_uvarint(b, ((v << 1) ^ (v >> 63)) as u64);
}

/// Appends an unsigned varint (the flexible versions' lengths and counts).
pub fn put_uvarint(b: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        b.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

/// Appends one record without headers, length-prefixed as a batch holds it.
pub fn put_record(
    out: &mut BytesMut,
    timestamp_delta: i64,
    offset_delta: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) {
    let mut r = BytesMut::new();
    r.put_i8(0); // record attributes
    put_varint(&mut r, timestamp_delta);
    put_varint(&mut r, offset_delta);
    for f in [key, value] {
        match f {
            Some(b) => {
                put_varint(&mut r, b.len() as i64);
                r.put_slice(b);
            }
            None => put_varint(&mut r, -1),
        }
    }
    put_varint(&mut r, 0); // headers
    put_varint(out, r.len() as i64);
    out.put_slice(&r);
}

/// The header fields of a batch to write (its base offset is set when it is appended).
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// Attribute bits (no compression).
    pub attributes: i16,
    /// First and largest timestamps.
    pub timestamps: (i64, i64),
    /// Producer id and epoch (-1 for none).
    pub producer: (i64, i16),
    /// Base sequence (-1 for none).
    pub base_sequence: i32,
}

/// One batch at base offset 0 holding `count` records already written by [`put_record`].
pub fn batch(h: Header, count: i32, records: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER_LEN + records.len());
    b.put_i64(0); // base offset
    b.put_i32((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32);
    b.put_i32(-1); // partition leader epoch
    b.put_i8(2);
    b.put_u32(0); // crc, below
    b.put_i16(h.attributes);
    b.put_i32(count - 1); // last offset delta
    b.put_i64(h.timestamps.0);
    b.put_i64(h.timestamps.1);
    b.put_i64(h.producer.0);
    b.put_i16(h.producer.1);
    b.put_i32(h.base_sequence);
    b.put_i32(count);
    b.put_slice(records);
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}
