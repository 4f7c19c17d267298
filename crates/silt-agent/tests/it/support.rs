//! Helpers shared by the agent's integration tests: a seeded generator and record batches.

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// splitmix64: a tiny deterministic generator, so a failing seed can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// One uncompressed batch of records with these values, timestamped now.
pub fn batch(values: &[Bytes]) -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: now,
            key: None,
            value: Some(v.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

/// The partition's log start and high watermark, after checking that every object its index
/// entries reference still exists (Err names the first entry that does not).
pub async fn referenced_objects_exist(
    storage: &silt_storage::Storage,
    p: &silt_agent::partition::Partition,
) -> Result<(i64, i64), String> {
    let objects: BTreeSet<String> = storage
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|(p, _)| p.to_string())
        .collect();
    let (segments, log_start, hw) = {
        let st = p.lock();
        (st.segments.clone(), st.log_start, st.high_watermark)
    };
    match segments.iter().find(|e| !objects.contains(&e.object)) {
        Some(e) => Err(format!("entry {e:?} references a deleted object")),
        None => Ok((log_start, hw)),
    }
}
