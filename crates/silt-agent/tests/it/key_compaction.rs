//! Key compaction (`cleanup.policy=compact`) as a seeded property test on a real agent over
//! in-memory stores: keyed updates and tombstones in batches of every codec, interleaved with
//! segment folds, key-compaction passes, GC passes and index transactions that fail before or
//! after they apply. After every step:
//!
//! - the leader's index is the store's and every object it references exists;
//! - reading from the log start to the high watermark never stalls (every offset reads the
//!   next batch there is, also inside the gaps compaction leaves) and returns records in offset
//!   order, each exactly as it was written at its offset;
//! - every key's latest record is there (tombstones until `delete.retention.ms`);
//! - below what compaction has cleaned, no record is superseded.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use silt_agent::partition::Partition;
use silt_agent::topics::NewTopic;
use silt_agent::Agent;
use silt_meta::faults::{Fault, FaultyKv};
use silt_meta::layout::index;
use silt_storage::Storage;

use crate::support::{referenced_objects_exist, Rng};

type Value = Option<Bytes>;

async fn start() -> (Agent, Storage, Arc<FaultyKv>, tempfile::TempDir) {
    crate::support::start_lifecycle_agent(8 * 1024).await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One batch of keyed records (a `None` value is a tombstone), with `codec`.
fn keyed_batch(records: &[(Bytes, Value)], codec: Compression, ts: i64) -> Bytes {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: ts,
            key: Some(k.clone()),
            value: v.clone(),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: codec,
        },
    )
    .unwrap();
    buf.freeze()
}

/// Reads the partition from its log start to its high watermark, batch by batch.
async fn read_all(agent: &Agent, p: &Partition) -> Result<Vec<(i64, Bytes, Value)>, String> {
    let b = agent.broker();
    let (log_start, hw) = {
        let st = p.lock();
        (st.log_start, st.high_watermark)
    };
    let mut out = Vec::new();
    let mut offset = log_start;
    while offset < hw {
        let budget = [1usize, 700, 1 << 20][(offset % 3) as usize];
        let r = silt_agent::read::read(&b.storage, &b.cache, p, offset, budget)
            .await
            .map_err(|e| format!("read at {offset}: {e}"))?;
        let data = r
            .records
            .map(|r| r.contiguous())
            .ok_or(format!("nothing at {offset} below the high watermark {hw}"))?;
        let mut next = offset;
        for (h, rg) in silt_wire::batch::iter(&data) {
            let mut one = data.slice(rg);
            let set = RecordBatchDecoder::decode(&mut one).map_err(|e| e.to_string())?;
            for rec in set.records {
                if rec.offset >= offset {
                    if out.last().is_some_and(|(o, _, _)| *o >= rec.offset) {
                        return Err(format!("offset {} read twice or out of order", rec.offset));
                    }
                    out.push((rec.offset, rec.key.unwrap(), rec.value));
                }
            }
            next = next.max(h.base_offset + h.last_offset_delta as i64 + 1);
        }
        if next <= offset {
            return Err(format!("no progress reading at {offset}"));
        }
        offset = next;
    }
    Ok(out)
}

async fn check(
    agent: &Agent,
    storage: &Storage,
    p: &Partition,
    sent: &BTreeMap<i64, (Bytes, Value, i64)>,
    retention_ms: i64,
    cleaned: Option<(i64, i64)>,
) -> Result<(), String> {
    let b = agent.broker();
    let stored = index::load_partition(b.meta.as_ref(), &p.topic_id, p.index)
        .await
        .map_err(|e| e.to_string())?;
    let mine = p.lock().segments.clone();
    let key = |e: &index::IndexEntry| (e.base_offset, e.last_offset, e.object.clone());
    if stored.iter().map(key).ne(mine.iter().map(key)) {
        return Err("the leader's index differs from the store's".into());
    }
    referenced_objects_exist(storage, p).await?;
    let read = read_all(agent, p).await?;
    for (o, k, v) in &read {
        match sent.get(o) {
            Some((sk, sv, _)) if sk == k && sv == v => {}
            other => {
                return Err(format!(
                    "offset {o} reads {k:?}={v:?}, was written {other:?}"
                ))
            }
        }
    }
    let read_at: HashMap<i64, ()> = read.iter().map(|(o, _, _)| (*o, ())).collect();
    let mut latest: HashMap<&Bytes, i64> = HashMap::new();
    for (o, (k, _, _)) in sent {
        latest.insert(k, *o);
    }
    let now = now_ms();
    for (k, o) in &latest {
        let (_, v, ts) = &sent[o];
        let expired_tombstone = v.is_none() && *ts < now - retention_ms;
        if !read_at.contains_key(o) && !expired_tombstone {
            return Err(format!("key {k:?}: its latest record (offset {o}) is gone"));
        }
    }
    // Superseded as of the last pass (by a record below the high watermark it saw).
    if let Some((cleaned, bound)) = cleaned {
        let mut latest_then: HashMap<&Bytes, i64> = HashMap::new();
        for (o, (k, _, _)) in sent.range(..bound) {
            latest_then.insert(k, *o);
        }
        for (o, k, _) in &read {
            if *o <= cleaned && latest_then.get(k).is_some_and(|l| l != o) {
                return Err(format!(
                    "offset {o} (key {k:?}) is superseded by {} but still read below the cleaned offset {cleaned}",
                    latest_then[k]
                ));
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_topics_keep_each_keys_latest_record_and_never_stall_a_reader() {
    let codecs = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    for seed in [1u64, 2, 3] {
        let (agent, storage, faults, _dir) = start().await;
        let b = agent.broker().clone();
        // Seed 2 removes tombstones at once; the others keep them a day.
        let retention_ms: i64 = if seed == 2 { 0 } else { 86_400_000 };
        let topic = b
            .topics
            .create(&NewTopic {
                name: "changelog".into(),
                partitions: 1,
                replication_factor: -1,
                configs: [
                    ("cleanup.policy".to_string(), "compact".to_string()),
                    ("min.cleanable.dirty.ratio".into(), "0.01".into()),
                    ("delete.retention.ms".into(), retention_ms.to_string()),
                    ("segment.bytes".into(), "2000".into()),
                ]
                .into(),
            })
            .await
            .unwrap();
        b.cluster.wait_led(&topic, Duration::from_secs(5)).await;
        let p = b.cluster.partition(&topic, 0).unwrap();
        let rules = b.topics.get("changelog").unwrap().config.key_rules;
        let mut rng = Rng(seed);
        let mut sent: BTreeMap<i64, (Bytes, Value, i64)> = BTreeMap::new();
        let mut since = HashMap::new();
        let keys = 5 + rng.below(40);
        let mut n = 0u64;
        let mut passes = 0;
        let mut cleaned: Option<(i64, i64)> = None;
        for step in 0..160 {
            faults.cue(-1, 0, Fault::Unavailable);
            match rng.below(10) {
                0 => faults.cue(0, 1, Fault::Unavailable),
                1 => faults.cue(0, 1, Fault::Unanswered),
                _ => {}
            }
            let what = match rng.below(10) {
                0..=5 => {
                    let ts = now_ms();
                    let records: Vec<(Bytes, Value)> = (0..1 + rng.below(6))
                        .map(|_| {
                            n += 1;
                            let k = Bytes::from(format!("k{}", rng.below(keys)));
                            let v = (!rng.chance(8)).then(|| {
                                Bytes::from(format!("v{n}-{}", "x".repeat(rng.below(300) as usize)))
                            });
                            (k, v)
                        })
                        .collect();
                    let codec = codecs[rng.below(codecs.len() as u64) as usize];
                    let data = keyed_batch(&records, codec, ts);
                    let header = silt_wire::batch::validate_single(&data).unwrap();
                    let permit = b
                        .flusher
                        .reserve(header.size, Duration::from_secs(5))
                        .await
                        .unwrap();
                    let appended =
                        silt_agent::append::append(&b.flusher, &p, &data, &header, None, 0, permit)
                            .unwrap();
                    let silt_agent::append::Appended::Buffered {
                        base_offset,
                        generation,
                    } = appended
                    else {
                        panic!("not idempotent: never a duplicate");
                    };
                    b.flusher.wait_committed(generation, &p).await.unwrap();
                    for (i, (k, v)) in records.into_iter().enumerate() {
                        sent.insert(base_offset + i as i64, (k, v, ts));
                    }
                    "append"
                }
                6 => {
                    let _ = silt_agent::lifecycle::compaction::step(&b, &p).await;
                    "fold"
                }
                7..=8 => {
                    let before = p.lock().key_cleaned;
                    let hw = p.lock().high_watermark;
                    if silt_agent::lifecycle::key_compaction::step(&b, &p, &rules)
                        .await
                        .unwrap_or(false)
                    {
                        passes += 1;
                    }
                    let after = p.lock().key_cleaned;
                    if after != before {
                        cleaned = after.map(|c| (c, hw));
                    }
                    "key compaction"
                }
                _ => {
                    silt_agent::lifecycle::gc::pass(&b, &mut since)
                        .await
                        .unwrap();
                    "gc"
                }
            };
            faults.cue(-1, 0, Fault::Unavailable);
            if let Err(e) = check(&agent, &storage, &p, &sent, retention_ms, cleaned).await {
                panic!("seed {seed}, step {step} ({what}): {e}");
            }
        }
        // A last pass over everything but the recent entries: what stays is little more than
        // one record per key.
        p.lock().key_cleaned = None;
        let hw = p.lock().high_watermark;
        silt_agent::lifecycle::key_compaction::step(&b, &p, &rules)
            .await
            .unwrap();
        let cleaned = p.lock().key_cleaned.map(|c| (c, hw));
        assert!(cleaned.is_some(), "seed {seed}: the final pass ran");
        check(&agent, &storage, &p, &sent, retention_ms, cleaned)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}, final pass: {e}"));
        let read = read_all(&agent, &p).await.unwrap();
        assert!(passes > 0, "seed {seed}: key compaction rewrote nothing");
        assert!(
            read.len() < sent.len() / 2,
            "seed {seed}: {} of {} records left for {keys} keys",
            read.len(),
            sent.len()
        );
        assert!(
            b.compaction
                .key_records_removed
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
        agent.shutdown().await;
    }
}
