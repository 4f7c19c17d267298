//! Placement by load on three agents over real etcd and SeaweedFS: a topic's partitions are
//! spread by count at first; the load then goes only to the partitions one agent leads. The
//! controller, reading the traffic every agent publishes, moves some of them to the others —
//! a few moves, no flapping afterwards — while idempotent producers lose and duplicate
//! nothing. Per-agent throughput before and after, the moves and the produce p99 during them
//! are printed (docs/benchmarks.md records a run).

use std::time::{Duration, Instant};

use crate::cluster::{metadata_view, Load, TestCluster};
use crate::harness::eventually;
use crate::kafka::create_topic;

const PARTITIONS: i32 = 12;

fn produce_rates(c: &TestCluster) -> Vec<f64> {
    c.agents
        .iter()
        .map(|a| {
            a.metrics()
                .get("silt_load_bytes_per_second{direction=\"produce\"}")
                .copied()
                .unwrap_or(0.0)
        })
        .collect()
}

fn load_moves(c: &TestCluster) -> f64 {
    c.agents
        .iter()
        .map(|a| {
            a.metrics()
                .get("silt_controller_load_moves_total")
                .copied()
                .unwrap_or(0.0)
        })
        .sum()
}

fn share_of_busiest(rates: &[f64]) -> f64 {
    let total: f64 = rates.iter().sum();
    rates.iter().copied().fold(0.0, f64::max) / total.max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_skewed_load_is_spread_over_the_pool_by_moving_partitions() {
    let c = TestCluster::start_with(
        3,
        &[
            ("SILT_LOAD__CAPACITY_BYTES_PER_SEC", "1000000"),
            ("SILT_LOAD__WINDOW_MS", "3000"),
        ],
    );
    let b = c.bootstrap();
    create_topic(&b, "skew", PARTITIONS, &[]).await;
    // Spread by count first: four partitions per agent.
    let leaders = eventually(Duration::from_secs(30), || {
        let (_, leaders) = metadata_view(&b, "skew");
        let mut per = [0; 4];
        for (_, l) in &leaders {
            per[(*l).clamp(0, 3) as usize] += 1;
        }
        (per[1..] == [4, 4, 4]).then_some(leaders)
    })
    .expect("partitions spread by count");
    let hot_agent = leaders[0].1;
    let hot: Vec<i32> = leaders
        .iter()
        .filter(|(_, l)| *l == hot_agent)
        .map(|(p, _)| *p)
        .collect();
    // About 220 KB/s, all to the partitions agent `hot_agent` leads.
    let load = Load::run_on(&b, "skew", PARTITIONS, Some(hot.clone()), 2, 100, 1000);
    let started = Instant::now();
    // The skew as first measured: the most lopsided sample of the first 3.5 s, the latest of
    // equals (the controller may already act within them, as soon as an agent publishes its
    // load).
    let mut before = produce_rates(&c);
    while started.elapsed() < Duration::from_millis(3500) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = produce_rates(&c);
        if now.iter().sum::<f64>() > 0.0
            && (before.iter().sum::<f64>() == 0.0
                || share_of_busiest(&now) > share_of_busiest(&before))
        {
            before = now;
        }
    }
    let moves_before = load_moves(&c);
    eprintln!("before: produce bytes/s per agent {before:?} (moves so far {moves_before})");
    assert!(
        share_of_busiest(&before) > 0.9,
        "the load starts on one agent: {before:?}"
    );

    // The controller spreads it.
    let mut first_move = None;
    let spread = eventually(Duration::from_secs(60), || {
        let m = load_moves(&c);
        if m > 0.0 && first_move.is_none() {
            first_move = Some(Instant::now());
        }
        let rates = produce_rates(&c);
        (m >= 2.0 && share_of_busiest(&rates) < 0.6).then_some(rates)
    });
    let spread_at = Instant::now();
    let after = spread.unwrap_or_else(|| {
        panic!(
            "the load was not spread: {:?}, {} moves",
            produce_rates(&c),
            load_moves(&c)
        )
    });
    let moves = load_moves(&c);
    // No flapping: nothing more moves while the load stays the same.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let settled = produce_rates(&c);
    assert_eq!(load_moves(&c), moves, "partitions kept moving: {settled:?}");
    assert!(share_of_busiest(&settled) < 0.6, "{settled:?}");
    let from = first_move.unwrap_or(started) - Duration::from_secs(1);
    let (p99_moves, n_moves) = load.p99_between(from, spread_at);
    let (p99_settled, n_settled) = load.p99_between(spread_at, Instant::now());
    eprintln!(
        "placement by load: before {before:?}, after {after:?}, settled {settled:?} bytes/s per agent; \
         {moves} moves, spread {:?} after the load began; produce p99 {p99_moves:?} during the moves \
         ({n_moves} records), {p99_settled:?} after ({n_settled} records)",
        spread_at - started
    );
    let report = load.finish(&b).await;
    report.assert_clean("placement by load");
    assert_eq!(report.failed, 0, "{report:?}");
}
