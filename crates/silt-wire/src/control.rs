//! Transaction markers: the control batches that end a transaction in a partition's log.
//!
//! A marker is a batch with the transactional and control attribute bits, the producer's id and
//! epoch, no sequence, and one record whose key is `(version: i16 = 0, type: i16)` — 0 abort,
//! 1 commit — and whose value is `(version: i16 = 0, coordinator_epoch: i32)`, as Kafka writes
//! them. Consumers never see control records; read_committed consumers use commit and abort
//! markers (with the aborted-transactions list of a Fetch response) to drop aborted records.

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::{
    parse_header, BatchHeader, ATTR_CONTROL, ATTR_TRANSACTIONAL, CRC_START, HEADER_LEN,
    LOG_OVERHEAD,
};

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Marker {
    /// Its records are dropped by read_committed consumers.
    Abort,
    /// Its records are visible.
    Commit,
}

impl Marker {
    /// The control record type.
    pub fn code(self) -> i16 {
        match self {
            Marker::Abort => 0,
            Marker::Commit => 1,
        }
    }
}

fn put_varint(b: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            b.put_u8(z as u8);
            return;
        }
        b.put_u8((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

fn get_varint(b: &[u8], pos: &mut usize) -> Option<i64> {
    let mut z = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        z |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    None
}

/// A marker batch for producer `pid`/`epoch` (its base offset is set when it is appended).
pub fn marker_batch(
    pid: i64,
    epoch: i16,
    marker: Marker,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Bytes {
    let mut record = BytesMut::new();
    record.put_i8(0); // record attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varint(&mut record, 4);
    record.put_i16(0);
    record.put_i16(marker.code());
    put_varint(&mut record, 6);
    record.put_i16(0);
    record.put_i32(coordinator_epoch);
    put_varint(&mut record, 0); // headers
    let mut body = BytesMut::new();
    put_varint(&mut body, record.len() as i64);
    body.extend_from_slice(&record);

    let mut b = BytesMut::with_capacity(HEADER_LEN + body.len());
    b.put_i64(0); // base offset
    b.put_i32((HEADER_LEN - LOG_OVERHEAD + body.len()) as i32);
    b.put_i32(-1); // partition leader epoch
    b.put_i8(2);
    b.put_u32(0); // crc
    b.put_i16(ATTR_TRANSACTIONAL | ATTR_CONTROL);
    b.put_i32(0); // last offset delta
    b.put_i64(timestamp);
    b.put_i64(timestamp);
    b.put_i64(pid);
    b.put_i16(epoch);
    b.put_i32(-1); // base sequence
    b.put_i32(1); // records
    b.extend_from_slice(&body);
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

/// The marker a control batch carries (`None` for other batches, or a control record Silt does
/// not know).
pub fn marker_of(batch: &[u8], h: &BatchHeader) -> Option<Marker> {
    if !h.is_control() || h.record_count < 1 {
        return None;
    }
    let mut pos = HEADER_LEN;
    get_varint(batch, &mut pos)?; // record length
    pos += 1; // attributes
    get_varint(batch, &mut pos)?; // timestamp delta
    get_varint(batch, &mut pos)?; // offset delta
    if get_varint(batch, &mut pos)? < 4 {
        return None;
    }
    let key = batch.get(pos..pos + 4)?;
    match i16::from_be_bytes([key[2], key[3]]) {
        0 => Some(Marker::Abort),
        1 => Some(Marker::Commit),
        _ => None,
    }
}

/// [`marker_of`] for a whole batch given as bytes.
pub fn marker_in(batch: &[u8]) -> Option<Marker> {
    let h = parse_header(batch).ok()?;
    marker_of(batch, &h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn markers_decode_as_kafka_control_batches() {
        for (m, want) in [(Marker::Commit, 1i16), (Marker::Abort, 0)] {
            let b = marker_batch(4242, 7, m, 3, 1_700_000_000_000);
            let h = crate::batch::validate_single(&b).expect("valid batch, CRC included");
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.record_count),
                (4242, 7, 1)
            );
            assert_eq!(marker_of(&b, &h), Some(m));
            let mut buf = b.clone();
            let set = RecordBatchDecoder::decode(&mut buf).unwrap();
            let r = &set.records[0];
            assert!(r.control);
            assert!(r.transactional);
            assert_eq!(r.producer_id, 4242);
            let key = r.key.as_ref().unwrap();
            assert_eq!(i16::from_be_bytes([key[2], key[3]]), want);
            let value = r.value.as_ref().unwrap();
            assert_eq!(
                i32::from_be_bytes([value[2], value[3], value[4], value[5]]),
                3
            );
        }
    }

    #[test]
    fn ordinary_batches_carry_no_marker() {
        let b = crate::batch::tests::batch(2, 5, 0);
        assert_eq!(marker_in(&b), None);
        assert_eq!(marker_in(&[1, 2, 3]), None);
        let mut m = marker_batch(1, 0, Marker::Commit, 0, 0).to_vec();
        m.truncate(HEADER_LEN + 3);
        assert_eq!(marker_in(&m), None, "truncated");
    }
}
