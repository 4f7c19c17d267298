//! The read path's costs, counted with the agent's own object-store counters: consumers at the
//! tail cost no GET; ten consumers replaying the same data cost about as many GETs as one,
//! because blocks go through the shared block cache.

use crate::harness::AgentProc;
use crate::kafka::{consume, create_topic, producer, send};

fn gets(agent: &AgentProc) -> f64 {
    agent.metrics()["silt_object_gets_total"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reads_cost_no_get_and_replays_share_blocks() {
    // No compaction during the test: the objects stay as written.
    let mut agent = AgentProc::start(&[("SILT_LIFECYCLE__COMPACT_MIN_ENTRIES", "100000")]);
    let b = agent.bootstrap();
    let value = vec![7u8; 1024];
    for topic in ["tail", "one", "ten"] {
        create_topic(&b, topic, 1, &[]).await;
        // Twenty rounds: the data spans about twenty objects.
        let p = producer(&b, &[("linger.ms", "5")]);
        for _ in 0..20 {
            let futs: Vec<_> = (0..20).map(|_| send(&p, topic, 0, b"k", &value)).collect();
            futures::future::join_all(futs).await;
        }
    }
    // At the tail: everything is served from the objects just written.
    let before = gets(&agent);
    assert_eq!(consume(&b, "tail", 1, 400).len(), 400);
    assert_eq!(gets(&agent) - before, 0.0, "tail reads need no GET");

    // After a restart the tail cache is empty: reads go through the block cache.
    agent.restart();
    let b = agent.bootstrap();
    let before = gets(&agent);
    assert_eq!(consume(&b, "one", 1, 400).len(), 400);
    let one = gets(&agent) - before;
    assert!(
        one >= 1.0,
        "a replay after a restart reads the object store"
    );
    let before = gets(&agent);
    let readers: Vec<_> = (0..10)
        .map(|_| {
            let b = b.clone();
            tokio::task::spawn_blocking(move || consume(&b, "ten", 1, 400).len())
        })
        .collect();
    for r in readers {
        assert_eq!(r.await.unwrap(), 400);
    }
    let ten = gets(&agent) - before;
    eprintln!("GETs: one consumer {one}, ten consumers {ten}");
    assert!(
        ten <= one + 2.0,
        "ten replaying consumers cost {ten} GETs, one cost {one}"
    );
    let m = agent.metrics_strict();
    assert!(m["silt_cache_hits_total{tier=\"memory\"}"] > 0.0);
    assert_eq!(
        m["silt_block_cache_fetches_total"], m["silt_object_gets_total"],
        "every GET is a block fetch"
    );
}

/// Rule (issue 11.1): every offset below the high watermark reads, after compaction folded
/// multi-MiB flush ranges into a segment and a restart emptied the tail cache. Flushes of a
/// second gather ranges of about 4 MiB of one partition; on the old code a consumer replaying
/// from 0 stalled for good about 2 MB into the first folded range (a read started at the mark
/// before its offset, found only batches before it in its bounded window, and returned nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_read_every_offset_of_compacted_multi_mib_ranges() {
    let mut agent = AgentProc::start(&[
        ("SILT_FLUSH__INTERVAL_MS", "1000"),
        ("SILT_LIFECYCLE__COMPACT_INTERVAL_MS", "300"),
        ("SILT_LIFECYCLE__COMPACT_MIN_ENTRIES", "2"),
    ]);
    let b = agent.bootstrap();
    create_topic(&b, "big", 1, &[]).await;
    let p = producer(
        &b,
        &[
            ("linger.ms", "50"),
            ("batch.size", "1000000"),
            ("queue.buffering.max.kbytes", "65536"),
        ],
    );
    let value = vec![5u8; 1024];
    const N: usize = 24_000;
    for round in 0..4 {
        let futs: Vec<_> = (0..N / 4)
            .map(|_| send(&p, "big", 0, b"k", &value))
            .collect();
        let offsets = futures::future::join_all(futs).await;
        assert_eq!(offsets.len(), N / 4, "round {round}");
    }
    let folded = crate::harness::eventually(std::time::Duration::from_secs(30), || {
        let m = agent.metrics();
        (m["silt_compaction_segments_total"] >= 1.0).then_some(())
    });
    assert!(folded.is_some(), "compaction folded the flush ranges");
    agent.restart();
    let got = consume(&agent.bootstrap(), "big", 1, N);
    assert_eq!(got.len(), N, "every record is read back after compaction");
    assert!(
        got.iter().enumerate().all(|(i, g)| g.offset == i as i64),
        "offsets are dense and in order"
    );
}
