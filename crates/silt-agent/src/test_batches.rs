//! Record batches for unit tests.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// A batch at `offset` of `records` records of `value_len` bytes each.
pub(crate) fn batch_of(offset: i64, records: usize, value_len: usize) -> Bytes {
    let rs: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: offset + i as i64,
            sequence: i as i32,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from(vec![b'v'; value_len])),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &rs,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encodable");
    buf.freeze()
}

/// A transactional batch of producer `pid`/`epoch` from sequence `seq`: `records` records.
pub(crate) fn txn_batch(pid: i64, epoch: i16, seq: i32, records: usize) -> Bytes {
    let rs: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: true,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: seq + i as i32,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from_static(b"in a transaction")),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &rs,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encodable");
    buf.freeze()
}
