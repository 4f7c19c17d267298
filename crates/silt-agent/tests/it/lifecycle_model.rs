//! A property test of the storage lifecycle: random interleavings of appends (flushes),
//! compaction steps, retention moves and garbage-collection passes (with no grace period, the
//! harshest setting) on a real agent over an in-memory object store and metadata store, with
//! index transactions now and then failing before they apply (unavailable) or after (applied,
//! unanswered). After every step: the leader's in-memory index and log start are the store's,
//! every object an index entry references still exists, and reading the partition from its log
//! start to its high watermark returns each offset exactly once, with the bytes that were
//! appended.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use silt_agent::partition::Partition;
use silt_agent::topics::NewTopic;
use silt_agent::Agent;
use silt_meta::faults::{Fault, FaultyKv};
use silt_meta::layout::index;
use silt_storage::Storage;

use crate::support::{batch, referenced_objects_exist, Rng};

async fn start() -> (Agent, Storage, Arc<FaultyKv>, tempfile::TempDir) {
    crate::support::start_lifecycle_agent(16 * 1024).await
}

async fn check(
    agent: &Agent,
    storage: &Storage,
    p: &Partition,
    sent: &BTreeMap<i64, String>,
) -> Result<(), String> {
    let b = agent.broker();
    // The leader remembers exactly what the store holds (garbage collection goes by the store).
    let stored = index::load_partition(b.meta.as_ref(), &p.topic_id, p.index)
        .await
        .map_err(|e| e.to_string())?;
    let stored_start = index::load_log_start(b.meta.as_ref(), &p.topic_id, p.index)
        .await
        .map_err(|e| e.to_string())?
        .offset;
    let (mine, my_start) = {
        let st = p.lock();
        (st.segments.clone(), st.log_start)
    };
    let key = |e: &index::IndexEntry| (e.base_offset, e.last_offset, e.object.clone());
    if stored.iter().map(key).ne(mine.iter().map(key)) {
        return Err(format!(
            "the leader's index differs from the store's: {:?} in memory, {:?} stored",
            mine.iter().map(key).collect::<Vec<_>>(),
            stored.iter().map(key).collect::<Vec<_>>()
        ));
    }
    if stored_start != my_start {
        return Err(format!(
            "the store's log start {stored_start} is not the leader's {my_start}"
        ));
    }
    let (log_start, hw) = referenced_objects_exist(storage, p).await?;
    let mut seen = Vec::new();
    let mut offset = log_start;
    while offset < hw {
        let r = silt_agent::read::read(&b.storage, &b.cache, p, offset, 1 << 20)
            .await
            .map_err(|e| format!("read at {offset}: {e}"))?;
        let mut data = r
            .records
            .map(|r| r.contiguous())
            .ok_or(format!("nothing at {offset} below {hw}"))?;
        let set = RecordBatchDecoder::decode(&mut data).map_err(|e| e.to_string())?;
        for rec in set.records {
            if rec.offset >= offset {
                seen.push((rec.offset, rec.value.unwrap()));
            }
        }
        offset = seen.last().map_or(offset, |(o, _)| o + 1);
    }
    let want: Vec<(i64, Bytes)> = sent
        .range(log_start..hw)
        .map(|(o, v)| (*o, Bytes::from(v.clone())))
        .collect();
    if seen != want {
        return Err(format!(
            "read {} records from {log_start} to {hw}, expected {}",
            seen.len(),
            want.len()
        ));
    }
    Ok(())
}

/// Applies the transactions held back so far, late: a lifecycle step's copy (it rewrites the
/// log-start key) is always refused, since the step was retried and answered meanwhile; a flush
/// commit's copy may apply only where it changes nothing (the check after the step says so).
/// Returns how many were applied late.
async fn apply_late(faults: &FaultyKv, log_start_prefix: &[u8], seed: u64, step: usize) -> usize {
    let held = faults.apply_delayed().await.unwrap();
    for (txn, applied) in &held {
        let lifecycle = txn.success.iter().any(
            |o| matches!(o, silt_meta::Op::Put { key, .. } if key.starts_with(log_start_prefix)),
        );
        assert!(
            !(lifecycle && *applied),
            "seed {seed}, step {step}: a lifecycle transaction applied after its step was retried"
        );
    }
    held.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_never_lose_or_duplicate_an_offset() {
    for seed in [1u64, 7, 42] {
        let (agent, storage, faults, _dir) = start().await;
        let b = agent.broker().clone();
        let topic = b
            .topics
            .create(&NewTopic {
                name: "model".into(),
                partitions: 1,
                replication_factor: -1,
                configs: Default::default(),
            })
            .await
            .unwrap();
        b.cluster.wait_led(&topic, Duration::from_secs(5)).await;
        let p = b.cluster.partition(&topic, 0).unwrap();
        let mut rng = Rng(seed);
        let mut sent: BTreeMap<i64, String> = BTreeMap::new();
        let mut since = HashMap::new();
        let mut n = 0u64;
        let mut late = 0;
        let log_start_prefix = format!("{}/log-start/", silt_meta::layout::ROOT).into_bytes();
        for step in 0..200 {
            let action = rng.below(10);
            // Now and then the next index transaction fails: before applying or after; or the
            // next lifecycle step's is held back, to be applied late (as etcd may apply a
            // proposal its client gave up on) once the step was retried and others followed.
            let fault = match rng.below(10) {
                0 => Some(Fault::Unavailable),
                1 => Some(Fault::Unanswered),
                2 => Some(Fault::Delayed),
                _ => None,
            };
            faults.cue(-1, 0, Fault::Unavailable); // a cue no transaction took is dropped
            if let Some(f) = fault {
                faults.cue(0, 1 + rng.below(2) as i64, f);
            }
            if rng.below(4) == 0 {
                late += apply_late(&faults, &log_start_prefix, seed, step).await;
            }
            let what = match action {
                0..=4 => {
                    let values: Vec<String> = (0..1 + rng.below(5))
                        .map(|_| {
                            n += 1;
                            format!("v{n}-{}", "x".repeat(rng.below(700) as usize))
                        })
                        .collect();
                    let data = batch(
                        &values
                            .iter()
                            .map(|v| Bytes::from(v.clone()))
                            .collect::<Vec<_>>(),
                    );
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
                    for (i, v) in values.into_iter().enumerate() {
                        sent.insert(base_offset + i as i64, v);
                    }
                    "append"
                }
                5..=6 => {
                    silt_agent::lifecycle::compaction::step(&b, &p)
                        .await
                        .unwrap();
                    "compaction"
                }
                7 => {
                    let (start, hw) = {
                        let st = p.lock();
                        (st.log_start, st.high_watermark)
                    };
                    if hw > start {
                        let to = start + rng.below((hw - start) as u64 / 3 + 1) as i64;
                        silt_agent::lifecycle::retention::move_log_start(&b, &p, to)
                            .await
                            .unwrap();
                    }
                    "retention"
                }
                _ => {
                    silt_agent::lifecycle::gc::pass(&b, &mut since)
                        .await
                        .unwrap();
                    "gc"
                }
            };
            if let Err(e) = check(&agent, &storage, &p, &sent).await {
                panic!("seed {seed}, step {step} ({what}): {e}");
            }
        }
        late += apply_late(&faults, &log_start_prefix, seed, 200).await;
        if let Err(e) = check(&agent, &storage, &p, &sent).await {
            panic!("seed {seed}, after the late transactions: {e}");
        }
        assert!(
            late > 0,
            "seed {seed}: no lifecycle transaction was applied late"
        );
        // Sessions publish what they finished once a second: one more pass after that.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        silt_agent::lifecycle::gc::pass(&b, &mut since)
            .await
            .unwrap();
        if let Err(e) = check(&agent, &storage, &p, &sent).await {
            panic!("seed {seed}, final GC: {e}");
        }
        assert!(
            faults.injected.load(std::sync::atomic::Ordering::SeqCst) > 10,
            "seed {seed}: index transactions failed"
        );
        let m = &b.compaction;
        assert!(
            m.segments.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "seed {seed}: compaction ran"
        );
        assert!(
            b.gc.deleted.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "seed {seed}: GC deleted something"
        );
        agent.shutdown().await;
    }
}
