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
