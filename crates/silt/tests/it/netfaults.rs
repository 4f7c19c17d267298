//! Network faults: three agents, each in a network namespace of its own, over a real etcd and
//! SeaweedFS, under a load of idempotent producers (acks=all). Cuts are iptables DROP rules in
//! an agent's namespace — silent, as a real partition is: one agent cut from etcd only, one
//! from the object store only, one from its clients only, and then every agent cut from etcd
//! for 3× the lease TTL. After each cut heals, the time until the cluster acknowledges writes
//! again (and, for etcd cuts, until the cut agents serve again in the same process) is measured;
//! at the end every partition is read back: nothing acknowledged lost, nothing duplicated, no
//! late commit of a fenced session accepted.

use std::time::{Duration, Instant};

use crate::cluster::{Load, TestCluster};
use crate::harness::eventually;

const TTL: Duration = Duration::from_secs(3);

/// Waits until the agent serves again under a new session (after its lease expired).
fn resumed(c: &TestCluster, i: usize, since_log: usize) -> bool {
    let log = c.agents[i].log();
    log[since_log.min(log.len())..].contains("this agent serves again with a new session")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_cuts_lose_nothing_and_heal_in_process() {
    let mut c = TestCluster::start_in_netns(3, &[]);
    let b = c.bootstrap();
    let load = Load::start(&b, "cuts", 6, 3).await;
    load.progress(500).await;
    let etcd = c.etcd.port();
    let s3 = c.weed.s3_port;
    let mut report = Vec::new();

    // 1. Agent 1 cut from etcd only, for 3x the TTL: its lease lapses, its partitions move,
    // and its late commits are refused; healed, it serves again in the same process.
    let mark = c.agents[0].log().len();
    c.netns[0].cut_from(etcd);
    tokio::time::sleep(3 * TTL).await;
    c.netns[0].heal();
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || resumed(&c, 0, mark)
            .then_some(()))
        .is_some(),
        "agent 1 serves again after the etcd cut:\n{}",
        c.agents[0].log()
    );
    assert!(c.agents[0].ready(), "agent 1 is ready again");
    report.push(format!(
        "etcd cut of agent 1: serving again {:?} after healing",
        t.elapsed()
    ));
    load.progress(300).await;

    // 2. Agent 2 cut from the object store only: its flushes wait (writes back up, nothing is
    // acknowledged that is not durable) and go through once healed.
    c.netns[1].cut_from(s3);
    tokio::time::sleep(Duration::from_secs(10)).await;
    c.netns[1].heal();
    let t = Instant::now();
    load.progress(300).await;
    report.push(format!(
        "object-store cut of agent 2 (10 s): 300 more acknowledgements {:?} after healing",
        t.elapsed()
    ));

    // 3. Agent 3 cut from its clients only: it keeps its lease and partitions; clients wait
    // and retry, and carry on once healed.
    c.netns[2].cut_inbound(c.agents[2].port);
    tokio::time::sleep(Duration::from_secs(10)).await;
    c.netns[2].heal();
    let t = Instant::now();
    load.progress(300).await;
    report.push(format!(
        "client cut of agent 3 (10 s): 300 more acknowledgements {:?} after healing",
        t.elapsed()
    ));

    // 4. Every agent cut from etcd for 3x the TTL: the whole pool loses its leases; healed,
    // every agent serves again in the same process and the load goes on.
    let marks: Vec<usize> = c.agents.iter().map(|a| a.log().len()).collect();
    for ns in &c.netns {
        ns.cut_from(etcd);
    }
    tokio::time::sleep(3 * TTL).await;
    for ns in &c.netns {
        ns.heal();
    }
    let t = Instant::now();
    let all = eventually(Duration::from_secs(60), || {
        (0..3)
            .all(|i| resumed(&c, i, marks[i]) && c.agents[i].ready())
            .then_some(())
    });
    assert!(
        all.is_some(),
        "every agent serves again after the pool-wide etcd cut"
    );
    let pool = t.elapsed();
    load.progress(300).await;
    report.push(format!(
        "etcd cut of the whole pool: every agent serving again {pool:?} after healing, writes acknowledged {:?} after",
        t.elapsed()
    ));
    for (i, a) in c.agents.iter_mut().enumerate() {
        assert!(
            a.exited().is_none(),
            "agent {} is still the same process",
            i + 1
        );
    }
    let r = load.finish(&b).await;
    for line in &report {
        eprintln!("{line}");
    }
    r.assert_clean("network cuts");
}
