//! Helpers shared by the agent's integration tests: a seeded generator and record batches.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use silt_agent::{Agent, Components};
use silt_common::{Settings, SystemClock};
use silt_meta::faults::FaultyKv;
use silt_meta::{EmbeddedKv, MetaKv};
use silt_storage::Storage;

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
    match segments
        .iter()
        .find(|e| e.objects().iter().any(|o| !objects.contains(*o)))
    {
        Some(e) => Err(format!("entry {e:?} references a deleted object")),
        None => Ok((log_start, hw)),
    }
}

/// A real agent over an in-memory object store and a fault-injecting in-memory metadata store
/// (faults aimed at the index: entries and log starts), with its background lifecycle passes
/// off (tests drive them), no GC grace and segments of `segment_bytes`.
pub async fn start_lifecycle_agent(
    segment_bytes: u64,
) -> (Agent, Storage, Arc<FaultyKv>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings {
        listen: "127.0.0.1:0".into(),
        admin_listen: None,
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    s.flush.interval_ms = 1;
    s.cache.memory_bytes = 1 << 20;
    s.cache.disk_bytes = Some(0);
    s.cache.block_bytes = 4096;
    // Background passes are driven by the test instead.
    s.lifecycle.retention_interval_ms = 1 << 40;
    s.lifecycle.compact_interval_ms = 1 << 40;
    s.lifecycle.gc_interval_ms = 1 << 40;
    s.lifecycle.gc_grace_ms = 0;
    s.lifecycle.compact_min_entries = 4;
    s.lifecycle.segment_bytes = segment_bytes;
    let clock = Arc::new(SystemClock);
    let storage = Storage::in_memory();
    let inner: Arc<dyn MetaKv> = Arc::new(EmbeddedKv::in_memory(clock.clone()));
    let meta = Arc::new(FaultyKv::new(inner));
    // Faults are aimed at the index (entries and log starts) only.
    *meta.only_prefixes.lock().unwrap() = vec![
        format!("{}/index/", silt_meta::layout::ROOT).into_bytes(),
        format!("{}/log-start/", silt_meta::layout::ROOT).into_bytes(),
    ];
    let agent = Agent::start(
        s,
        Components {
            meta: meta.clone(),
            storage: storage.clone(),
            clock,
            log_levels: None,
            crash_points: Default::default(),
        },
    )
    .await
    .unwrap();
    (agent, storage, meta, dir)
}
