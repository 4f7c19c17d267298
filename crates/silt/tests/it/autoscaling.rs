//! Autoscaling on Silt's own signal: a pool on real etcd and SeaweedFS, driven by a supervisor
//! that applies the Kubernetes HPA's rule to the agents' `silt_load_ratio` (the metric the KEDA
//! manifest in deploy/kubernetes/keda scales on): desired agents = ceil(sum of ratios / target),
//! one agent started when more are desired for `UP_AFTER`, one stopped with SIGTERM (the
//! drain) when fewer are desired for `DOWN_AFTER`. Under a load that rises 1× → 4× → 1× the pool
//! grows and shrinks, and idempotent producers lose nothing and duplicate nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::cluster::{Load, TestCluster};

const TARGET: f64 = 0.7;
const UP_AFTER: Duration = Duration::from_secs(3);
const DOWN_AFTER: Duration = Duration::from_secs(6);
const MAX_AGENTS: usize = 3;
/// Bytes per second one agent is meant to carry here; 1× is about half of it.
const CAPACITY: &str = "200000";
const PRODUCERS: usize = 2;
/// Records per second per producer at 1× (each about 1 KiB).
const BASE_RATE: u64 = 50;

/// The supervisor: which agents run, and when the signal last agreed with their number.
struct Supervisor {
    live: BTreeSet<usize>,
    more_since: Option<Instant>,
    fewer_since: Option<Instant>,
    started: Vec<(Instant, usize)>,
    stopped: usize,
    max_live: usize,
}

impl Supervisor {
    fn ratios(&self, c: &TestCluster) -> Vec<f64> {
        self.live
            .iter()
            .map(|&i| {
                c.agents[i]
                    .metrics()
                    .get("silt_load_ratio")
                    .copied()
                    .unwrap_or(0.0)
            })
            .collect()
    }

    /// One look at the signal; starts or stops at most one agent.
    fn step(&mut self, c: &mut TestCluster) {
        let ratios = self.ratios(c);
        let sum: f64 = ratios.iter().sum();
        let desired = ((sum / TARGET).ceil() as usize).clamp(1, MAX_AGENTS);
        let now = Instant::now();
        let live = self.live.len();
        self.more_since = (desired > live).then(|| self.more_since.unwrap_or(now));
        self.fewer_since = (desired < live).then(|| self.fewer_since.unwrap_or(now));
        if self.more_since.is_some_and(|t| t.elapsed() >= UP_AFTER) {
            let i = c.add();
            eprintln!("autoscaler: ratios {ratios:.2?}, desired {desired}: started agent {i}");
            self.live.insert(i);
            self.started.push((now, i));
            self.more_since = None;
        } else if self.fewer_since.is_some_and(|t| t.elapsed() >= DOWN_AFTER) {
            let i = *self.live.iter().next_back().expect("an agent");
            eprintln!("autoscaler: ratios {ratios:.2?}, desired {desired}: SIGTERM to agent {i}");
            let status = c.agents[i].terminate();
            assert!(
                status.success(),
                "agent {i} drained and exited cleanly: {status}"
            );
            self.live.remove(&i);
            self.stopped += 1;
            self.fewer_since = None;
        }
        self.max_live = self.max_live.max(self.live.len());
    }

    /// Runs the rule every half second until `done` or `limit`.
    async fn run(
        &mut self,
        c: &mut TestCluster,
        limit: Duration,
        mut done: impl FnMut(&Self, &TestCluster) -> bool,
    ) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            self.step(c);
            if done(self, c) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }
}

fn bootstrap(c: &TestCluster, live: &BTreeSet<usize>) -> String {
    live.iter()
        .map(|&i| c.agents[i].bootstrap())
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pool_follows_its_load_signal_up_and_down() {
    let mut c = TestCluster::start_with(
        1,
        &[
            ("SILT_LOAD__CAPACITY_BYTES_PER_SEC", CAPACITY),
            ("SILT_LOAD__WINDOW_MS", "3000"),
        ],
    );
    let mut s = Supervisor {
        live: BTreeSet::from([0]),
        more_since: None,
        fewer_since: None,
        started: Vec::new(),
        stopped: 0,
        max_live: 1,
    };
    let load = Load::start_paced(&c.bootstrap(), "elastic", 12, PRODUCERS, BASE_RATE, 1000).await;

    // 1×: one agent carries it.
    s.run(&mut c, Duration::from_secs(10), |_, _| false).await;
    let steady = s.ratios(&c);
    assert_eq!(s.live.len(), 1, "1× needs one agent (ratio {steady:?})");
    assert!(steady[0] > 0.2, "the signal sees the load: {steady:?}");

    // 4×: the pool grows; a new agent takes writes.
    load.set_rate(4 * BASE_RATE);
    let rise = Instant::now();
    let mut first_traffic = None;
    let grew = s
        .run(&mut c, Duration::from_secs(60), |s, c| {
            for &(_, i) in &s.started {
                let wrote = c.agents[i]
                    .metrics()
                    .get("silt_produced_bytes_total{topic=\"elastic\"}")
                    .copied()
                    .unwrap_or(0.0);
                if wrote > 0.0 && first_traffic.is_none() {
                    first_traffic = Some(rise.elapsed());
                }
            }
            s.live.len() >= 2 && first_traffic.is_some()
        })
        .await;
    assert!(
        grew,
        "the pool did not grow and take traffic at 4× ({} agents)",
        s.live.len()
    );
    // Let it settle at 4× (it may grow further).
    s.run(&mut c, Duration::from_secs(10), |_, _| false).await;
    let peak = s.max_live;
    let started_after = s.started[0].0 - rise;

    // 1× again: the pool shrinks, draining agents with SIGTERM.
    load.set_rate(BASE_RATE);
    let fall = Instant::now();
    let shrank = s
        .run(&mut c, Duration::from_secs(60), |s, _| s.live.len() == 1)
        .await;
    let shrink_took = fall.elapsed();
    assert!(
        shrank,
        "the pool did not shrink back at 1× ({} agents)",
        s.live.len()
    );
    assert!(s.stopped >= 1);

    let b = bootstrap(&c, &s.live);
    load.progress(20).await;
    let report = load.finish(&b).await;
    eprintln!(
        "autoscaling: peak {peak} agents; load rise to an agent started {started_after:?}, to a new agent taking writes {:?}; back to one agent {shrink_took:?} after the load fell; {} stopped",
        first_traffic.expect("traffic"),
        s.stopped
    );
    report.assert_clean("autoscaling 1x-4x-1x");
    assert_eq!(report.failed, 0, "deliveries failed: {report:?}");
}
