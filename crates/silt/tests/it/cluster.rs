//! Cluster mode: several real agents on one real etcd and one real SeaweedFS bucket, driven by
//! librdkafka. A checker produces unique values with several idempotent producers (acks=all)
//! while a scenario faults the cluster, then reads every partition back and counts
//! acknowledged, lost, duplicated and out-of-order records. Every scenario must end with
//! nothing lost and nothing duplicated.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use silt_testkit::{Etcd, Weed};

use crate::harness::{eventually, AgentProc};
use crate::kafka::{config, create_topic};

const TTL_MS: &str = "3000";

/// etcd, SeaweedFS and agents with node ids 1, 2, 3...
pub struct TestCluster {
    pub etcd: Etcd,
    pub weed: Weed,
    pub agents: Vec<AgentProc>,
    extra: Vec<(String, String)>,
    /// With network namespaces: agent i runs in `netns[i]`.
    pub netns: Vec<silt_testkit::NetNs>,
    in_netns: bool,
    /// Held by a cluster in network namespaces for its whole life (dropped last): namespaces
    /// are numbered from 200, so two such clusters at once would replace each other's. Across
    /// processes, nextest runs these tests one at a time (`.config/nextest.toml`).
    _netns_lock: Option<std::sync::MutexGuard<'static, ()>>,
}

/// See [`TestCluster::_netns_lock`].
static NETNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl TestCluster {
    pub fn start(n: usize) -> Self {
        Self::start_with(n, &[])
    }

    /// `n` agents with extra `SILT_*` settings.
    pub fn start_with(n: usize, extra: &[(&str, &str)]) -> Self {
        Self::build(n, extra, false)
    }

    /// `n` agents, each in a network namespace of its own (so a test can cut it from etcd, the
    /// object store or its clients); etcd and SeaweedFS listen on every interface.
    pub fn start_in_netns(n: usize, extra: &[(&str, &str)]) -> Self {
        Self::build(n, extra, true)
    }

    fn build(n: usize, extra: &[(&str, &str)], in_netns: bool) -> Self {
        let lock = in_netns.then(|| NETNS.lock().unwrap_or_else(|p| p.into_inner()));
        let mut c = Self {
            etcd: Etcd::start_with(in_netns),
            weed: Weed::start_with("silt", in_netns),
            agents: Vec::new(),
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            netns: Vec::new(),
            in_netns,
            _netns_lock: lock,
        };
        for _ in 0..n {
            c.add();
        }
        c
    }

    fn env(&self, node_id: usize) -> Vec<(String, String)> {
        // From a namespace, this side is its veth address.
        let (etcd, s3) = match self.netns.get(node_id - 1) {
            Some(ns) if self.in_netns => (
                format!("http://{}:{}", ns.host_ip, self.etcd.port()),
                format!("http://{}:{}", ns.host_ip, self.weed.s3_port),
            ),
            _ => (self.etcd.url.clone(), self.weed.endpoint()),
        };
        let mut env: Vec<(String, String)> = [
            ("SILT_NODE_ID", node_id.to_string()),
            ("SILT_METADATA__KIND", "etcd".into()),
            ("SILT_METADATA__ETCD_ENDPOINTS", format!("[\"{etcd}\"]")),
            ("SILT_METADATA__LEASE_TTL_MS", TTL_MS.into()),
            ("SILT_OBJECT_STORE__KIND", "s3".into()),
            ("SILT_OBJECT_STORE__S3__BUCKET", "silt".into()),
            ("SILT_OBJECT_STORE__S3__ENDPOINT", s3),
            ("SILT_OBJECT_STORE__S3__REGION", "us-east-1".into()),
            ("SILT_OBJECT_STORE__S3__ACCESS_KEY_ID", "silt".into()),
            ("SILT_OBJECT_STORE__S3__SECRET_ACCESS_KEY", "silt".into()),
            ("SILT_OBJECT_STORE__S3__ALLOW_HTTP", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.push(("SILT_TOPICS__NUM_PARTITIONS".into(), "6".into()));
        env.extend(self.extra.iter().cloned());
        env
    }

    /// Starts one more agent; returns its index.
    pub fn add(&mut self) -> usize {
        self.add_with(&[])
    }

    /// Starts one more agent with extra settings of its own; returns its index.
    pub fn add_with(&mut self, own: &[(&str, &str)]) -> usize {
        let i = self.agents.len();
        if self.in_netns && self.netns.len() == i {
            self.netns.push(silt_testkit::NetNs::create(200 + i as u8));
        }
        let mut env = self.env(i + 1);
        env.extend(own.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let agent = match self.netns.get(i) {
            Some(ns) => AgentProc::start_in(ns, &refs),
            None => AgentProc::start(&refs),
        };
        self.agents.push(agent);
        i
    }

    /// Every agent's address: clients bootstrap from all of them, as they would in production.
    pub fn bootstrap(&self) -> String {
        self.agents
            .iter()
            .map(AgentProc::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Partitions each agent leads, from its metrics.
    pub fn leads(&self) -> Vec<f64> {
        self.agents
            .iter()
            .map(|a| a.metrics().get("silt_partitions").copied().unwrap_or(-1.0))
            .collect()
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub acknowledged: usize,
    pub failed: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
    pub misplaced: usize,
    pub read: usize,
    /// The longest time no producer got an acknowledgement: what clients saw of a failover.
    pub max_stall: Duration,
}

impl Report {
    pub fn assert_clean(&self, scenario: &str) {
        eprintln!("{scenario}: {self:?}");
        assert!(
            self.acknowledged > 0,
            "{scenario}: nothing was acknowledged"
        );
        assert_eq!(
            self.lost, 0,
            "{scenario}: acknowledged records lost: {self:?}"
        );
        assert_eq!(self.duplicated, 0, "{scenario}: duplicates: {self:?}");
        assert_eq!(self.out_of_order, 0, "{scenario}: reordered: {self:?}");
        assert_eq!(
            self.misplaced, 0,
            "{scenario}: acknowledged at another offset: {self:?}"
        );
        assert!(self.read >= self.acknowledged, "{scenario}: {self:?}");
    }
}

/// Idempotent producers writing unique values `p{producer}-{seq}` until finished.
pub struct Load {
    topic: String,
    partitions: i32,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashMap<String, (i32, i64)>>>,
    failed: Arc<AtomicU64>,
    last_ack: Arc<Mutex<(Instant, Duration)>>,
    /// Records per second per producer; 0 for as fast as acknowledgements come.
    rate: Arc<AtomicU64>,
    /// When each record was acknowledged and how long after it was sent.
    latencies: Arc<Mutex<Vec<(Instant, Duration)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub async fn start(bootstrap: &str, topic: &str, partitions: i32, producers: usize) -> Self {
        Self::start_paced(bootstrap, topic, partitions, producers, 0, 0).await
    }

    /// Producers sending `rate` records per second each (0: as fast as they can), each record's
    /// value padded with `pad` bytes after a `#`.
    pub async fn start_paced(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        producers: usize,
        rate: u64,
        pad: usize,
    ) -> Self {
        create_topic(bootstrap, topic, partitions, &[]).await;
        Self::run_on(bootstrap, topic, partitions, None, producers, rate, pad)
    }

    /// Like [`Load::start_paced`], on an existing topic, writing only to `targets` (all
    /// partitions if `None`).
    pub fn run_on(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        targets: Option<Vec<i32>>,
        producers: usize,
        rate: u64,
        pad: usize,
    ) -> Self {
        let targets: Vec<i32> = targets.unwrap_or_else(|| (0..partitions).collect());
        let l = Self {
            topic: topic.into(),
            partitions,
            stop: Arc::default(),
            acked: Arc::default(),
            failed: Arc::default(),
            last_ack: Arc::new(Mutex::new((Instant::now(), Duration::ZERO))),
            rate: Arc::new(AtomicU64::new(rate)),
            latencies: Arc::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for k in 0..producers {
            let p: FutureProducer = config(
                bootstrap,
                &[
                    ("enable.idempotence", "true"),
                    ("acks", "all"),
                    ("linger.ms", "5"),
                    ("message.timeout.ms", "180000"),
                    ("retry.backoff.ms", "50"),
                    ("topic.metadata.refresh.interval.ms", "1000"),
                ],
            )
            .create()
            .expect("producer");
            let (topic, stop, acked, failed, last, rate, latencies, targets) = (
                l.topic.clone(),
                l.stop.clone(),
                l.acked.clone(),
                l.failed.clone(),
                l.last_ack.clone(),
                l.rate.clone(),
                l.latencies.clone(),
                targets.clone(),
            );
            let padding = format!("#{}", "x".repeat(pad));
            tasks.push(tokio::spawn(async move {
                let mut inflight = FuturesUnordered::new();
                let mut seq = 0u64;
                // Sends allowed now when paced (refilled at the rate, at most 100 ms' worth).
                let (mut tokens, mut refilled) = (0f64, Instant::now());
                loop {
                    let per_sec = rate.load(Ordering::Relaxed);
                    if per_sec > 0 {
                        let t = refilled.elapsed().as_secs_f64();
                        tokens =
                            (tokens + t * per_sec as f64).min((per_sec as f64 / 10.0).max(1.0));
                        refilled = Instant::now();
                    }
                    while !stop.load(Ordering::Relaxed)
                        && inflight.len() < 32
                        && (per_sec == 0 || tokens >= 1.0)
                    {
                        tokens -= 1.0;
                        let value = format!("p{k}-{seq:09}");
                        let payload = if pad > 0 {
                            format!("{value}{padding}")
                        } else {
                            value.clone()
                        };
                        let part = targets[(seq % targets.len() as u64) as usize];
                        seq += 1;
                        let p = p.clone();
                        let topic = topic.clone();
                        let sent = Instant::now();
                        inflight.push(async move {
                            let r = p
                                .send(
                                    FutureRecord::to(&topic)
                                        .partition(part)
                                        .key(&value)
                                        .payload(&payload),
                                    Duration::from_secs(180),
                                )
                                .await;
                            (
                                value,
                                r.map(|d| (d.partition, d.offset)).map_err(|(e, _)| e),
                                sent.elapsed(),
                            )
                        });
                    }
                    let paced = per_sec > 0 && !stop.load(Ordering::Relaxed);
                    if paced && inflight.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    let next = if paced {
                        match tokio::time::timeout(Duration::from_millis(5), inflight.next()).await
                        {
                            Ok(n) => n,
                            Err(_) => continue, // time to send more
                        }
                    } else {
                        inflight.next().await
                    };
                    let Some((value, r, took)) = next else {
                        break;
                    };
                    match r {
                        Ok(at) => {
                            acked.lock().unwrap().insert(value, at);
                            latencies.lock().unwrap().push((Instant::now(), took));
                            let mut l = last.lock().unwrap();
                            let gap = l.0.elapsed();
                            l.1 = l.1.max(gap);
                            l.0 = Instant::now();
                        }
                        Err(e) => {
                            eprintln!("delivery of {value} failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        Self { tasks, ..l }
    }

    /// The 99th percentile of produce latency (send to acknowledgement) of records
    /// acknowledged between `from` and `to`, and how many there were.
    pub fn p99_between(&self, from: Instant, to: Instant) -> (Duration, usize) {
        let mut v: Vec<Duration> = self
            .latencies
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|(_, d)| *d)
            .collect();
        v.sort();
        let p99 = v
            .get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default();
        (p99, v.len())
    }

    /// Sets the pace: records per second per producer (0: as fast as they can).
    pub fn set_rate(&self, per_producer: u64) {
        self.rate.store(per_producer, Ordering::Relaxed);
    }

    /// Acknowledgements so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` more records are acknowledged (or 120 s).
    pub async fn progress(&self, n: usize) {
        let target = self.acked() + n;
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.acked() < target {
            assert!(
                Instant::now() < deadline,
                "producers stalled at {} acknowledged",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops producing, waits for every outstanding delivery, reads everything back and
    /// compares.
    pub async fn finish(self, bootstrap: &str) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let max_stall = self.last_ack.lock().unwrap().1;
        let (topic, partitions, b) = (self.topic.clone(), self.partitions, bootstrap.to_string());
        let seen = tokio::task::spawn_blocking(move || read_all(&b, &topic, partitions))
            .await
            .unwrap();
        let mut report = Report {
            acknowledged: acked.len(),
            failed: self.failed.load(Ordering::Relaxed) as usize,
            read: seen.len(),
            max_stall,
            ..Default::default()
        };
        let mut at: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
        for (p, o, v) in &seen {
            at.entry(v.as_str()).or_default().push((*p, *o));
        }
        report.duplicated = at.values().filter(|v| v.len() > 1).count();
        for (v, pos) in &acked {
            match at.get(v.as_str()) {
                None => report.lost += 1,
                Some(found) if !found.contains(pos) => report.misplaced += 1,
                Some(_) => {}
            }
        }
        // Per producer and partition, sequence numbers must rise with offsets.
        let mut last: HashMap<(String, i32), u64> = HashMap::new();
        let mut ordered = seen.clone();
        ordered.sort_by_key(|(p, o, _)| (*p, *o));
        for (p, _, v) in &ordered {
            let (producer, seq) = v.split_once('-').expect("checker value");
            let seq: u64 = seq.parse().unwrap();
            let k = (producer.to_string(), *p);
            if last.get(&k).is_some_and(|prev| *prev >= seq) {
                report.out_of_order += 1;
            }
            last.insert(k, seq);
        }
        report
    }
}

/// Every record of every partition, from the log start to the high watermark.
fn read_all(bootstrap: &str, topic: &str, partitions: i32) -> Vec<(i32, i64, String)> {
    let c: BaseConsumer = config(
        bootstrap,
        &[
            ("group.id", "silt-checker"),
            ("enable.auto.commit", "false"),
            ("fetch.wait.max.ms", "50"),
        ],
    )
    .create()
    .expect("consumer");
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, hw) = c
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .expect("watermarks");
        ends.insert(p, hw);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut next: HashMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while next.iter().any(|(p, n)| *n < ends[p]) {
        assert!(
            Instant::now() < deadline,
            "reading back stalled at {next:?} of {ends:?}"
        );
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                assert_eq!(
                    m.offset(),
                    next[&m.partition()],
                    "offsets are dense: every offset below the high watermark is readable"
                );
                next.insert(m.partition(), m.offset() + 1);
                let v = String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap();
                // A paced load pads its values after a '#'.
                let v = v.split('#').next().unwrap_or_default().to_string();
                out.push((m.partition(), m.offset(), v));
            }
            Some(Err(e)) => eprintln!("checker consumer: {e}"),
            None => {}
        }
    }
    out
}

pub fn metadata_view(bootstrap: &str, topic: &str) -> (Vec<i32>, Vec<(i32, i32)>) {
    let c: BaseConsumer = config(bootstrap, &[]).create().expect("client");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut brokers: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
    brokers.sort();
    let t = &md.topics()[0];
    let mut leaders: Vec<(i32, i32)> = t
        .partitions()
        .iter()
        .map(|p| (p.id(), p.leader()))
        .collect();
    leaders.sort();
    (brokers, leaders)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_agent_shows_the_whole_cluster_and_work_is_shared() {
    let c = TestCluster::start(3);
    let b = c.bootstrap();
    create_topic(&c.agents[0].bootstrap(), "shared", 12, &[]).await;
    let views: Vec<_> = c
        .agents
        .iter()
        .map(|a| metadata_view(&a.bootstrap(), "shared"))
        .collect();
    for v in &views {
        assert_eq!(v.0, vec![1, 2, 3], "every live agent is a broker");
        assert_eq!(v.1, views[0].1, "every agent names the same leaders");
    }
    for id in 1..=3 {
        let n = views[0].1.iter().filter(|(_, l)| *l == id).count();
        assert_eq!(n, 4, "12 partitions over 3 agents: {:?}", views[0].1);
    }
    // Clients bootstrapped from one agent produce to and consume from all three.
    let load = Load::start(&c.agents[1].bootstrap(), "shared-load", 6, 2).await;
    load.progress(2_000).await;
    load.finish(&b).await.assert_clean("steady state");
    // Group coordination is spread too, and every agent agrees on each group's coordinator.
    let coordinators: HashSet<i32> = (0..30)
        .map(|i| find_coordinator(&c, &format!("group-{i}")))
        .collect();
    assert!(
        coordinators.len() >= 2,
        "groups coordinated by {coordinators:?}"
    );
}

/// Asks every agent for a group's coordinator with a raw FindCoordinator (v1); all must agree.
pub fn find_coordinator(c: &TestCluster, group: &str) -> i32 {
    let mut answers = HashSet::new();
    for a in &c.agents {
        let mut conn = crate::protocol::Conn::open(a);
        let req = FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.into()));
        let r: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, 1, &req);
        assert_eq!(r.error_code, 0, "FindCoordinator({group}) failed: {r:?}");
        answers.insert(r.node_id.0);
    }
    assert_eq!(answers.len(), 1, "agents disagree on {group}'s coordinator");
    answers.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_repeatedly_loses_nothing() {
    let mut c = TestCluster::start(3);
    let b = c.bootstrap();
    let load = Load::start(&b, "kill", 6, 3).await;
    load.progress(1_000).await;
    for round in 0..3 {
        let victim = round % 3;
        c.agents[victim].kill();
        let killed = Instant::now();
        // Partitions move once the lease lapses; producers keep going.
        load.progress(1_000).await;
        eprintln!(
            "round {round}: producers past the failover {} ms after SIGKILL",
            killed.elapsed().as_millis()
        );
        c.agents[victim].start_again();
        load.progress(500).await;
    }
    // The new leaders rebuilt high watermarks and producer state from etcd; how long it took:
    let rebuild_ms = c
        .agents
        .iter()
        .map(|a| a.metrics()["silt_partition_load_last_ms"])
        .fold(0.0, f64::max);
    eprintln!("slowest leadership take-over: {rebuild_ms} ms");
    assert!(rebuild_ms < 5_000.0, "take-over took {rebuild_ms} ms");
    let report = load.finish(&b).await;
    report.assert_clean("SIGKILL x3");
    assert!(
        report.max_stall < Duration::from_secs(20),
        "failover took {:?}",
        report.max_stall
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_agent_is_fenced_and_its_late_commits_are_refused() {
    let mut c = TestCluster::start(3);
    let b = c.bootstrap();
    let load = Load::start(&b, "zombie", 6, 3).await;
    load.progress(1_000).await;
    c.agents[0].signal("STOP");
    // Past the lease TTL: its partitions move; the others keep acknowledging.
    tokio::time::sleep(Duration::from_millis(3_000 + 2_000)).await;
    load.progress(1_000).await;
    c.agents[0].signal("CONT");
    // Awake, it finds its lease gone: every late commit fails its fence, its buffered writes
    // fail, and it serves again under a new session in the same process (rule 11.8: losing
    // the lease is not death).
    let resumed = eventually(Duration::from_secs(20), || {
        c.agents[0]
            .log()
            .contains("this agent serves again with a new session")
            .then_some(())
    });
    assert!(resumed.is_some(), "it resumes: {}", c.agents[0].log());
    assert!(c.agents[0].exited().is_none(), "in the same process");
    let log = c.agents[0].log();
    assert!(log.contains("lease expired"), "it says why: {log}");
    // It takes its share again.
    let shared = eventually(Duration::from_secs(20), || {
        (c.agents[0]
            .metrics()
            .get("silt_partitions")
            .copied()
            .unwrap_or(0.0)
            >= 1.0)
            .then_some(())
    });
    assert!(shared.is_some(), "the resumed agent leads partitions again");
    load.progress(500).await;
    load.finish(&b)
        .await
        .assert_clean("SIGSTOP past the TTL, then SIGCONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_hands_partitions_over_quickly() {
    let mut c = TestCluster::start(3);
    let b = c.bootstrap();
    let load = Load::start(&b, "term", 6, 3).await;
    load.progress(1_000).await;
    let started = Instant::now();
    let status = c.agents[2].terminate();
    let took = started.elapsed();
    assert!(status.success(), "clean exit: {}", c.agents[2].log());
    assert!(took < Duration::from_secs(6), "graceful stop took {took:?}");
    load.progress(1_000).await;
    let leads = c.agents[..2]
        .iter()
        .map(|a| a.metrics()["silt_partitions"])
        .sum::<f64>();
    assert_eq!(leads, 6.0, "the survivors lead every partition");
    let report = load.finish(&b).await;
    report.assert_clean("SIGTERM");
    assert_eq!(report.failed, 0, "clients saw only retriable errors");
    eprintln!("SIGTERM handoff: agent exited after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_out_from_two_to_three_takes_a_fair_share() {
    let mut c = TestCluster::start(2);
    let b = c.bootstrap();
    let load = Load::start(&b, "scale", 6, 3).await;
    load.progress(1_000).await;
    let added = Instant::now();
    c.add();
    let shared = eventually(Duration::from_secs(15), || {
        let l = c.leads();
        (l == vec![2.0, 2.0, 2.0]).then_some(l)
    });
    assert!(
        shared.is_some(),
        "6 partitions over 3 agents: {:?}",
        c.leads()
    );
    eprintln!("scale-out: fair share after {:?}", added.elapsed());
    load.progress(1_000).await;
    let report = load.finish(&b).await;
    report.assert_clean("scale-out 2 -> 3");
    assert_eq!(report.failed, 0, "clients saw only retriable errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_etcd_restart_loses_nothing() {
    let mut c = TestCluster::start(3);
    let b = c.bootstrap();
    let load = Load::start(&b, "etcd", 6, 3).await;
    load.progress(1_000).await;
    c.etcd.restart(Duration::from_secs(2));
    load.progress(1_000).await;
    load.finish(&b).await.assert_clean("etcd restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_storage_stopped_for_twenty_seconds_loses_nothing() {
    let c = TestCluster::start(3);
    let b = c.bootstrap();
    let load = Load::start(&b, "s3stop", 6, 3).await;
    load.progress(1_000).await;
    silt_testkit::signal(c.weed.pid(), "STOP");
    tokio::time::sleep(Duration::from_secs(20)).await;
    silt_testkit::signal(c.weed.pid(), "CONT");
    load.progress(1_000).await;
    let report = load.finish(&b).await;
    report.assert_clean("object store stopped 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_and_admin_work_across_agents_and_survive_a_coordinator_move() {
    use crate::groups::{group_consumer, produce_n, GROUP_ENV};
    use rdkafka::consumer::{CommitMode, StreamConsumer};

    let mut c = TestCluster::start_with(3, GROUP_ENV);
    let b = c.bootstrap();
    create_topic(&c.agents[0].bootstrap(), "cg", 6, &[]).await;
    produce_n(&b, "cg", 6, 600).await;
    // Two members, each bootstrapped from a different agent.
    let members: Vec<StreamConsumer> = (1..3)
        .map(|i| group_consumer(&c.agents[i].bootstrap(), "cg-group"))
        .collect();
    for m in &members {
        m.subscribe(&["cg"]).unwrap();
    }
    let mut seen: HashMap<(i32, i64), usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 600 && Instant::now() < deadline {
        for (i, m) in members.iter().enumerate() {
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(50), m.recv()).await {
                let prev = seen.insert((r.partition(), r.offset()), i);
                assert!(prev.is_none_or(|p| p == i), "delivered to two members");
            }
        }
    }
    assert_eq!(seen.len(), 600, "every record consumed once by the group");
    for m in &members {
        m.commit_consumer_state(CommitMode::Sync).unwrap();
    }
    drop(members);
    // Stop the group's coordinator: another agent takes its shard and serves the offsets.
    let coordinator = find_coordinator(&c, "cg-group");
    let idx = (coordinator - 1) as usize;
    assert!(c.agents[idx].terminate().success());
    let survivor = c
        .agents
        .iter()
        .enumerate()
        .find(|(i, _)| *i != idx)
        .unwrap()
        .1;
    let sb = survivor.bootstrap();
    let fresh = group_consumer(&sb, "cg-group");
    let mut tpl = TopicPartitionList::new();
    for p in 0..6 {
        tpl.add_partition("cg", p);
    }
    let committed = fresh
        .committed_offsets(tpl, Duration::from_secs(20))
        .expect("committed offsets from the new coordinator");
    for e in committed.elements() {
        assert_eq!(
            e.offset(),
            Offset::Offset(100),
            "partition {}",
            e.partition()
        );
    }
    drop(fresh);
    // Admin calls through one agent are seen by another.
    let admin = crate::kafka::admin(&sb);
    let res = admin
        .delete_topics(&["cg"], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
    assert!(res[0].is_ok(), "{res:?}");
    let other = c
        .agents
        .iter()
        .enumerate()
        .find(|(i, a)| *i != idx && a.bootstrap() != sb)
        .unwrap()
        .1
        .bootstrap();
    let gone = eventually(Duration::from_secs(10), || {
        let cl: BaseConsumer = config(&other, &[]).create().unwrap();
        let md = cl.fetch_metadata(None, Duration::from_secs(5)).ok()?;
        md.topics().iter().all(|t| t.name() != "cg").then_some(())
    });
    assert!(gone.is_some(), "the deletion is seen by every agent");
}

/// How many partitions the members own; panics if one is owned by two.
fn owned_once(members: &[rdkafka::consumer::StreamConsumer]) -> usize {
    let mut owner: HashMap<i32, usize> = HashMap::new();
    for (i, m) in members.iter().enumerate() {
        for e in m.assignment().unwrap().elements() {
            if let Some(j) = owner.insert(e.partition(), i) {
                panic!("partition {} owned by members {j} and {i}", e.partition());
            }
        }
    }
    owner.len()
}

/// Reads with every member until `want` distinct records were seen (or `secs` passed),
/// checking after every round that no partition has two owners; then commits what was read if
/// `commit`.
async fn consume_848(
    members: &[rdkafka::consumer::StreamConsumer],
    seen: &mut HashMap<(i32, i64), usize>,
    dups: &mut usize,
    want: usize,
    secs: u64,
    commit: bool,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while seen.len() < want && Instant::now() < deadline {
        for (i, m) in members.iter().enumerate() {
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(50), m.recv()).await {
                if seen.insert((r.partition(), r.offset()), i).is_some() {
                    *dups += 1;
                }
            }
        }
        owned_once(members);
    }
    for m in members.iter().filter(|_| commit) {
        let _ = m.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
    }
}

/// KIP-848 (`group.protocol=consumer`): three members on three agents; the coordinator's agent
/// is SIGKILLed mid-stream. The group's membership was stored, so the new coordinator carries
/// the members on at their epochs: nobody loses its partitions, no partition is ever owned by
/// two members, every record is read exactly once, and the commits are served afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_protocol_group_carries_on_through_a_coordinator_kill() {
    use crate::groups::{produce_n, GROUP_ENV};
    use rdkafka::consumer::StreamConsumer;

    let mut env = GROUP_ENV.to_vec();
    env.extend([
        ("SILT_GROUPS__CONSUMER_HEARTBEAT_INTERVAL_MS", "500"),
        ("SILT_GROUPS__CONSUMER_SESSION_TIMEOUT_MS", "10000"),
    ]);
    let mut c = TestCluster::start_with(3, &env);
    let b = c.bootstrap();
    create_topic(&c.agents[0].bootstrap(), "k848", 6, &[]).await;
    produce_n(&b, "k848", 6, 600).await;
    let members: Vec<StreamConsumer> = (0..3)
        .map(|i| {
            config(
                &c.agents[i].bootstrap(),
                &[
                    ("group.id", "k848-group"),
                    ("group.protocol", "consumer"),
                    ("auto.offset.reset", "earliest"),
                    ("enable.auto.commit", "false"),
                    ("fetch.wait.max.ms", "50"),
                ],
            )
            .create()
            .expect("consumer")
        })
        .collect();
    for m in &members {
        m.subscribe(&["k848"]).unwrap();
    }
    let mut seen: HashMap<(i32, i64), usize> = HashMap::new();
    let mut dups = 0;
    consume_848(&members, &mut seen, &mut dups, 600, 60, true).await;
    assert_eq!(seen.len(), 600);
    // While the group forms, a member that joins late takes partitions whose reads were not
    // committed yet and reads them again (at-least-once, as in Kafka): wait until each member
    // owns two, commit, and count repeats only from there.
    let settled = Instant::now() + Duration::from_secs(30);
    while members
        .iter()
        .any(|m| m.assignment().map_or(0, |a| a.count()) != 2)
    {
        assert!(
            Instant::now() < settled,
            "the group never settled on 2 partitions each"
        );
        for m in &members {
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(50), m.recv()).await {
                seen.insert((r.partition(), r.offset()), 0);
            }
        }
    }
    for m in &members {
        let _ = m.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
    }
    dups = 0;
    assert_eq!(
        owned_once(&members),
        6,
        "the members share all six partitions"
    );
    // More records, half of them read and not committed when the coordinator dies: a member
    // that lost its partitions would read those again from the commits.
    produce_n(&b, "k848", 6, 600).await;
    consume_848(&members, &mut seen, &mut dups, 900, 60, false).await;
    assert!(seen.len() >= 900);
    let coordinator = find_coordinator(&c, "k848-group");
    c.agents[(coordinator - 1) as usize].kill();
    let live: Vec<String> = c
        .agents
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != (coordinator - 1) as usize)
        .map(|(_, a)| a.bootstrap())
        .collect();
    consume_848(&members, &mut seen, &mut dups, 1200, 90, true).await;
    assert_eq!(
        seen.len(),
        1200,
        "every record read after the coordinator kill"
    );
    assert_eq!(dups, 0, "records read twice: a member lost its partitions");
    assert_eq!(owned_once(&members), 6);
    drop(members);
    let fresh: BaseConsumer = config(&live[0], &[("group.id", "k848-group")])
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..6 {
        tpl.add_partition("k848", p);
    }
    let committed = fresh
        .committed_offsets(tpl, Duration::from_secs(20))
        .expect("committed offsets from the new coordinator");
    for e in committed.elements() {
        assert_eq!(
            e.offset(),
            Offset::Offset(200),
            "partition {}",
            e.partition()
        );
    }
}

/// Partitions led by the live agents, and how many of them say they hold the controller key.
fn live_view(c: &TestCluster, dead: Option<usize>) -> (f64, usize) {
    let mut led = 0.0;
    let mut controllers = 0;
    for (i, a) in c.agents.iter().enumerate() {
        if Some(i) == dead {
            continue;
        }
        let m = a.metrics();
        led += m.get("silt_partitions").copied().unwrap_or(0.0);
        controllers += usize::from(m.get("silt_is_controller").copied() == Some(1.0));
    }
    (led, controllers)
}

/// Rule (issue 11.7): the pool always has a controller. etcd is restarted repeatedly (the
/// controller's reconcile fails meanwhile) and then an agent — a plain one or the controller
/// itself — is killed: every partition must have a live, loaded leader and exactly one live
/// agent must hold the controller role within 2× the lease TTL of the kill. On the old code the
/// controller stepped down on an unanswered read while its key, bound to its live lease, stayed
/// in place, so no agent ever reassigned the dead agent's partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pool_always_has_a_controller_through_etcd_restarts_and_deaths() {
    let mut c = TestCluster::start(3);
    create_topic(&c.agents[0].bootstrap(), "ctl", 12, &[]).await;
    let total = 12.0 + 0.0;
    let settled = |c: &TestCluster, dead: Option<usize>| {
        let (led, controllers) = live_view(c, dead);
        led == total && controllers == 1
    };
    assert!(
        eventually(Duration::from_secs(30), || settled(&c, None).then_some(())).is_some(),
        "the pool settles: {:?}",
        live_view(&c, None)
    );
    let ttl = Duration::from_millis(TTL_MS.parse().unwrap());
    for round in 0..3 {
        c.etcd.restart(Duration::from_secs(2));
        // Let the controller's reconcile run into the outage's aftermath.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let controller = c
            .agents
            .iter()
            .position(|a| a.metrics().get("silt_is_controller").copied() == Some(1.0));
        let victim = match (round, controller) {
            (1, Some(ctl)) => ctl,
            (_, Some(ctl)) => (ctl + 1) % c.agents.len(),
            (_, None) => round % c.agents.len(),
        };
        c.agents[victim].kill();
        let killed = Instant::now();
        let recovered = eventually(Duration::from_secs(30), || {
            settled(&c, Some(victim)).then_some(killed.elapsed())
        });
        let took = recovered.unwrap_or_else(|| {
            panic!(
                "round {round}: no controller or leaderless partitions 30 s after killing agent {} \
                 (controller was {controller:?}): {:?}",
                victim + 1,
                live_view(&c, Some(victim))
            )
        });
        eprintln!(
            "round {round}: killed agent {} (controller {controller:?}); every partition led again after {took:?}",
            victim + 1
        );
        assert!(
            took <= 2 * ttl,
            "round {round}: took {took:?}, more than 2x the lease TTL"
        );
        c.agents[victim].start_again();
        assert!(
            eventually(Duration::from_secs(30), || settled(&c, None).then_some(())).is_some(),
            "round {round}: the restarted agent rejoins: {:?}",
            live_view(&c, None)
        );
    }
}

/// A config change and partition growth made through one agent apply on every agent at once:
/// `max.message.bytes` lowered through agent 1 refuses a large record on partitions led by
/// either agent, partitions added through agent 2 get leaders on both and take writes, and a
/// cluster-wide `message.max.bytes` set through agent 2 applies on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_changes_and_new_partitions_apply_on_every_agent() {
    use rdkafka::admin::{AdminOptions, AlterConfig, NewPartitions, ResourceSpecifier};
    let c = TestCluster::start(2);
    let b = c.bootstrap();
    create_topic(&b, "altered", 4, &[]).await;
    let leaders = |n: usize| {
        eventually(Duration::from_secs(20), || {
            let (_, led) = metadata_view(&b, "altered");
            let by: HashSet<i32> = led.iter().map(|(_, l)| *l).collect();
            (led.len() == n && led.iter().all(|(_, l)| *l >= 0) && by.len() == 2).then_some(by)
        })
    };
    assert!(
        leaders(4).is_some(),
        "both agents lead partitions of the topic"
    );

    let first = crate::kafka::admin(&c.agents[0].bootstrap());
    let change =
        AlterConfig::new(ResourceSpecifier::Topic("altered")).set("max.message.bytes", "2000");
    let r = first
        .alter_configs(&[change], &AdminOptions::new())
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    let p = crate::kafka::producer(&b, &[]);
    let big = vec![b'x'; 5000];
    for part in 0..4 {
        let res = p
            .send(
                FutureRecord::<(), _>::to("altered")
                    .partition(part)
                    .payload(&big),
                Duration::from_secs(20),
            )
            .await;
        let err = res.expect_err("a record over the new limit is refused").0;
        assert_eq!(
            err.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge),
            "partition {part}: {err}"
        );
    }

    let second = crate::kafka::admin(&c.agents[1].bootstrap());
    let r = second
        .create_partitions(&[NewPartitions::new("altered", 8)], &AdminOptions::new())
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    assert!(
        leaders(8).is_some(),
        "the new partitions are led, on both agents"
    );
    // A producer sees new partitions after a metadata refresh, as with Kafka: a new one here.
    let p = crate::kafka::producer(&b, &[]);
    for part in 4..8 {
        let got = p
            .send(
                FutureRecord::<(), _>::to("altered")
                    .partition(part)
                    .payload("small"),
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("partition {part}: {e}"));
        assert_eq!(got.partition, part);
    }
    let r = second
        .create_partitions(&[NewPartitions::new("altered", 6)], &AdminOptions::new())
        .await
        .unwrap();
    assert!(r[0].is_err(), "shrinking is refused: {r:?}");

    // A cluster-wide default (the default broker resource, name "") set through agent 2
    // applies to a topic without its own value on partitions led by either agent.
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::{
        ApiKey, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    };
    use kafka_protocol::protocol::StrBytes;
    create_topic(&b, "defaulted", 4, &[]).await;
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(4)
            .with_resource_name(StrBytes::from_static_str(""))
            .with_configs(vec![AlterableConfig::default()
                .with_name(StrBytes::from_static_str("message.max.bytes"))
                .with_config_operation(0)
                .with_value(Some(StrBytes::from_static_str("2000")))]),
    ]);
    let mut conn = crate::protocol::Conn::open(&c.agents[1]);
    let r: IncrementalAlterConfigsResponse = conn.call(ApiKey::IncrementalAlterConfigs, 1, &req);
    assert_eq!(
        r.responses[0].error_code, 0,
        "{:?}",
        r.responses[0].error_message
    );
    let p = crate::kafka::producer(&b, &[]);
    for part in 0..4 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let res = p
                .send(
                    FutureRecord::<(), _>::to("defaulted")
                        .partition(part)
                        .payload(&big),
                    Duration::from_secs(20),
                )
                .await;
            match res {
                Err((e, _))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge) =>
                {
                    break
                }
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "partition {part}: the cluster-wide message.max.bytes never applied: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
