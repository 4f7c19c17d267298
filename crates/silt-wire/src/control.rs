//! Transaction markers: the control batches that end a transaction in a partition's log.
//!
//! A marker is a batch with the transactional and control attribute bits, the producer's id and
//! epoch, no sequence, and one record whose key is `(version: i16 = 0, type: i16)` — 0 abort,
//! 1 commit — and whose value is `(version: i16 = 0, coordinator_epoch: i32)`, as Kafka writes
//! them. Consumers never see control records; read_committed consumers use commit and abort
//! markers (with the aborted-transactions list of a Fetch response) to drop aborted records.

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::{parse_header, BatchHeader, ATTR_CONTROL, ATTR_TRANSACTIONAL, HEADER_LEN};
use crate::write;

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
    // Key: (version 0, type); value: (version 0, coordinator epoch).
    let mut key = BytesMut::new();
    key.put_i16(0);
    key.put_i16(marker.code());
    let mut value = BytesMut::new();
    value.put_i16(0);
    value.put_i32(coordinator_epoch);
    let mut body = BytesMut::new();
    write::put_record(&mut body, 0, 0, Some(&key), Some(&value));
    write::batch(
        write::Header {
            attributes: ATTR_TRANSACTIONAL | ATTR_CONTROL,
            timestamps: (timestamp, timestamp),
            producer: (pid, epoch),
            base_sequence: -1,
        },
        1,
        &body,
    )
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
