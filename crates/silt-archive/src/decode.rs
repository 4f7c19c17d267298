//! Record batches (any codec) to records, through kafka-protocol's decoder.

use bytes::Bytes;
use kafka_protocol::records::{Record, RecordBatchDecoder};

use crate::ArchiveError;

/// Decodes every record of the batches in `data` whose offset is in `from..until`. Control
/// records (transaction markers) are skipped.
pub fn records(data: &Bytes, from: i64, until: i64) -> Result<Vec<Record>, ArchiveError> {
    let mut buf = data.clone();
    let mut out = Vec::new();
    while !buf.is_empty() {
        let set = RecordBatchDecoder::decode(&mut buf)
            .map_err(|e| ArchiveError::Decode(e.to_string()))?;
        out.extend(
            set.records
                .into_iter()
                .filter(|r| !r.control && r.offset >= from && r.offset < until),
        );
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
            let got = records(&two.freeze(), 12, 17).unwrap();
            let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, vec![12, 13, 14, 15, 16], "{c:?}");
            assert_eq!(got[0].key.as_deref(), Some(&b"k2"[..]));
        }
    }
}
