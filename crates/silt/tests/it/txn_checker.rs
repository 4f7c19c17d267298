//! A transactional-workload checker in the spirit of Jepsen's Kafka workload, against the
//! three-agent cluster (real etcd, real SeaweedFS, each agent in a network namespace of its
//! own), through at least 50 injected faults drawn by a seeded generator: SIGKILL of an agent
//! (the transaction coordinator's among them), an agent frozen (SIGSTOP) past its lease, an etcd
//! restart, an object-store outage, an agent cut from etcd past its lease, an agent cut from its
//! clients, and SIGKILL of a consume-transform-produce application.
//!
//! Meanwhile transactional producers (`rdkafka`) commit and abort transactions of 1 to 10
//! records over six partitions, noting what the client was told (committed, aborted, or
//! unknown when the call failed), and a consume-transform-produce application (confluent-kafka,
//! its own process: `tests/python/apps/ctp_app.py`) copies an input topic to an output topic,
//! committing its input offsets in each transaction. Afterwards a read_committed reader checks:
//!
//! - no lost committed write: every record of every committed transaction is read;
//! - no aborted read: no record of an aborted transaction is read;
//! - no torn transaction: of a transaction whose outcome is unknown, all records or none;
//! - no duplicate, and nothing read that was never written;
//! - offsets strictly increase per partition, and each producer's records keep their order;
//! - the application's output holds every input exactly once, in input order per partition;
//! - the pool recovers: after the last fault, every producer commits again.
//!
//! `SILT_CHECKER_FAULTS` (default 50) and `SILT_CHECKER_SEED` (default 1) change the run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::cluster::TestCluster;
use crate::harness::eventually;
use crate::kafka::{config, create_topic};

const TOPIC: &str = "chk";
const PARTITIONS: i32 = 6;
const WRITERS: usize = 3;
const TTL: Duration = Duration::from_secs(3);
const SRC: &str = "chk-in";
const DST: &str = "chk-out";
const INPUTS_PER_PARTITION: usize = 300;

/// splitmix64, so a failing seed replays the same fault schedule.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Outcome {
    Committed,
    Aborted,
    Unknown,
}

/// One transaction as its producer saw it.
struct Txn {
    values: Vec<String>,
    outcome: Outcome,
}

type Producer_ = ThreadedProducer<DefaultProducerContext>;

fn txn_producer(bootstrap: &str, tid: &str) -> Option<Producer_> {
    let p: Producer_ = config(
        bootstrap,
        &[
            ("transactional.id", tid),
            ("transaction.timeout.ms", "20000"),
            ("message.timeout.ms", "20000"),
            ("linger.ms", "5"),
            ("topic.metadata.refresh.interval.ms", "1000"),
        ],
    )
    .create()
    .expect("transactional producer");
    p.init_transactions(Duration::from_secs(30)).ok().map(|_| p)
}

fn requires_abort(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.txn_requires_abort())
}

/// Runs one transaction: the outcome, whether the producer must be replaced, and the first
/// error met.
fn run_txn(
    p: &Producer_,
    values: &[String],
    parts: &[i32],
    abort: bool,
) -> (Outcome, bool, Option<String>) {
    if let Err(e) = p.begin_transaction() {
        return (Outcome::Aborted, true, Some(e.to_string())); // nothing was written in it
    }
    let mut error = None;
    for (v, part) in values.iter().zip(parts) {
        let rec = BaseRecord::to(TOPIC).partition(*part).key(v).payload(v);
        if let Err((e, _)) = p.send(rec) {
            error = Some(e.to_string());
            break;
        }
    }
    if error.is_some() || abort {
        return match p.abort_transaction(Duration::from_secs(60)) {
            Ok(()) => (Outcome::Aborted, false, error),
            Err(e) => (Outcome::Unknown, true, Some(e.to_string())),
        };
    }
    match p.commit_transaction(Duration::from_secs(60)) {
        Ok(()) => (Outcome::Committed, false, None),
        Err(e) if requires_abort(&e) => match p.abort_transaction(Duration::from_secs(60)) {
            Ok(()) => (Outcome::Aborted, false, Some(e.to_string())),
            Err(e2) => (Outcome::Unknown, true, Some(format!("{e}; then {e2}"))),
        },
        Err(e) => (Outcome::Unknown, true, Some(e.to_string())),
    }
}

/// A writer thread: transactions until `stop`, each noted with its outcome.
fn writer(
    k: usize,
    bootstrap: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Txn>>>,
    committed: Arc<AtomicUsize>,
) {
    let tid = format!("chk-w{k}");
    let mut rng = Rng(1000 + k as u64);
    let mut p = None;
    let mut t = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(prod) = p.as_ref() else {
            p = txn_producer(&bootstrap, &tid);
            if p.is_none() {
                std::thread::sleep(Duration::from_millis(500));
            }
            continue;
        };
        let n = 1 + rng.below(10) as usize;
        let values: Vec<String> = (0..n).map(|i| format!("w{k}-{t:06}-{i:02}")).collect();
        let parts: Vec<i32> = (0..n)
            .map(|_| rng.below(PARTITIONS as u64) as i32)
            .collect();
        let abort = rng.below(5) == 0;
        t += 1;
        let began = Instant::now();
        let (outcome, replace, error) = run_txn(prod, &values, &parts, abort);
        if error.is_some() || began.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "writer {k}: transaction {} {outcome:?} after {} ms: {}",
                t - 1,
                began.elapsed().as_millis(),
                error.as_deref().unwrap_or("no error")
            );
        }
        if outcome == Outcome::Committed {
            committed.fetch_add(1, Ordering::Relaxed);
        }
        log.lock().unwrap().push(Txn { values, outcome });
        if replace {
            // The next instance (same transactional id) fences this one and ends its
            // transaction.
            p = None;
        }
    }
}

fn read_committed(bootstrap: &str, topic: &str) -> Vec<(i32, i64, String)> {
    crate::transactions::read_committed_records(bootstrap, topic, PARTITIONS)
}

/// The consume-transform-produce application, as a process of its own.
struct App {
    child: Option<Child>,
    args: Vec<String>,
    starts: usize,
}

impl App {
    fn python() -> String {
        if let Ok(p) = std::env::var("TEST_PYTHON") {
            return p;
        }
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/python");
        assert!(
            std::path::Path::new(venv).exists(),
            "the checker runs its application with confluent-kafka from the repository's venv ({venv}): run scripts/test once, or set TEST_PYTHON"
        );
        venv.into()
    }

    fn start(bootstrap: &str) -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/python/apps/ctp_app.py"
        );
        let mut a = Self {
            child: None,
            args: vec![
                script.into(),
                bootstrap.into(),
                SRC.into(),
                DST.into(),
                "chk-app".into(),
                "chk-app-txn".into(),
            ],
            starts: 0,
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        self.starts += 1;
        self.child = Some(
            Command::new(Self::python())
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the application"),
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn terminate(&mut self) {
        if let Some(c) = &self.child {
            silt_testkit::signal(c.id(), "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(c) = self.child.as_mut() {
            if c.try_wait().unwrap().is_some() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }
}

/// The agent coordinating transactional id `tid` (FindCoordinator, key type 1), asked of each
/// agent in turn until one answers.
fn txn_coordinator(c: &TestCluster, tid: &str) -> Option<usize> {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    use kafka_protocol::protocol::StrBytes;
    for _ in 0..10 {
        for a in &c.agents {
            let asked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut conn = crate::protocol::Conn::open(a);
                let req = FindCoordinatorRequest::default()
                    .with_key(StrBytes::from_string(tid.into()))
                    .with_key_type(1);
                let r: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, 1, &req);
                (r.error_code == 0).then_some(r.node_id.0)
            }));
            if let Ok(Some(id)) = asked {
                return Some(id as usize - 1);
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    None
}

/// One injected fault, over when this returns (healed, restarted, resumed): its kind and what
/// was done.
fn inject(c: &mut TestCluster, app: &mut App, rng: &mut Rng) -> (&'static str, String) {
    let n = c.agents.len();
    let i = rng.below(n as u64) as usize;
    match rng.below(8) {
        0 | 1 => {
            c.agents[i].kill();
            std::thread::sleep(Duration::from_millis(500 + rng.below(2500)));
            c.agents[i].start_again();
            ("agent SIGKILL", format!("SIGKILL of agent {}", i + 1))
        }
        2 => {
            let coordinator = txn_coordinator(c, "chk-w0").unwrap_or(i);
            c.agents[coordinator].kill();
            std::thread::sleep(Duration::from_millis(1000 + rng.below(2000)));
            c.agents[coordinator].start_again();
            (
                "coordinator SIGKILL",
                format!(
                    "SIGKILL of agent {} (the coordinator of chk-w0)",
                    coordinator + 1
                ),
            )
        }
        3 => {
            c.agents[i].signal("STOP");
            std::thread::sleep(TTL * 3 / 2);
            c.agents[i].signal("CONT");
            (
                "agent frozen past its lease",
                format!("agent {} frozen (SIGSTOP) for 1.5x its lease", i + 1),
            )
        }
        4 => {
            c.etcd.restart(Duration::from_millis(1000));
            ("etcd restart", "etcd restarted (down 1 s)".into())
        }
        5 => {
            let s3 = c.weed.s3_port;
            for ns in &c.netns {
                ns.cut_from(s3);
            }
            std::thread::sleep(Duration::from_secs(3));
            for ns in &c.netns {
                ns.heal();
            }
            (
                "object-store outage",
                "object store unreachable from every agent for 3 s".into(),
            )
        }
        6 => {
            let etcd = c.etcd.port();
            if rng.below(2) == 0 {
                c.netns[i].cut_from(etcd);
                std::thread::sleep(TTL * 3 / 2);
                c.netns[i].heal();
                (
                    "etcd cut past the lease",
                    format!("agent {} cut from etcd for 1.5x its lease", i + 1),
                )
            } else {
                c.netns[i].cut_inbound(c.agents[i].port);
                std::thread::sleep(Duration::from_secs(3));
                c.netns[i].heal();
                (
                    "client cut",
                    format!("agent {} cut from its clients for 3 s", i + 1),
                )
            }
        }
        _ => {
            app.kill();
            std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
            app.spawn();
            (
                "application SIGKILL",
                "SIGKILL of the consume-transform-produce application".into(),
            )
        }
    }
}

#[test]
fn transactions_hold_through_fifty_faults() {
    let faults: usize = std::env::var("SILT_CHECKER_FAULTS")
        .ok()
        .map(|s| s.parse().expect("SILT_CHECKER_FAULTS is a number"))
        .unwrap_or(50);
    let seed: u64 = std::env::var("SILT_CHECKER_SEED")
        .ok()
        .map(|s| s.parse().expect("SILT_CHECKER_SEED is a number"))
        .unwrap_or(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = TestCluster::start_in_netns(3, &[]);
    let b = c.bootstrap();
    rt.block_on(async {
        create_topic(&b, TOPIC, PARTITIONS, &[]).await;
        create_topic(&b, SRC, PARTITIONS, &[]).await;
        create_topic(&b, DST, PARTITIONS, &[]).await;
    });
    // The application's input, written before the faults start.
    let plain: ThreadedProducer<DefaultProducerContext> =
        config(&b, &[("enable.idempotence", "true"), ("acks", "all")])
            .create()
            .unwrap();
    let mut inputs: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for p in 0..PARTITIONS {
        for i in 0..INPUTS_PER_PARTITION {
            let v = format!("in-{p}-{i:04}");
            plain
                .send(BaseRecord::to(SRC).partition(p).key(&v).payload(&v))
                .unwrap();
            inputs.entry(p).or_default().push(v);
        }
    }
    plain.flush(Duration::from_secs(60)).unwrap();
    drop(plain);

    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Arc<Mutex<Vec<Txn>>>> = (0..WRITERS).map(|_| Arc::default()).collect();
    let committed: Vec<Arc<AtomicUsize>> = (0..WRITERS).map(|_| Arc::default()).collect();
    let threads: Vec<_> = (0..WRITERS)
        .map(|k| {
            let (b, stop, log, n) = (
                b.clone(),
                stop.clone(),
                logs[k].clone(),
                committed[k].clone(),
            );
            std::thread::spawn(move || writer(k, b, stop, log, n))
        })
        .collect();
    let mut app = App::start(&b);
    // Under way before the first fault.
    assert!(
        eventually(Duration::from_secs(60), || committed
            .iter()
            .all(|n| n.load(Ordering::Relaxed) > 0)
            .then_some(()))
        .is_some(),
        "every writer commits before any fault"
    );

    let mut rng = Rng(seed);
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let started = Instant::now();
    for f in 0..faults {
        let (kind, what) = inject(&mut c, &mut app, &mut rng);
        eprintln!("fault {f}: {what} ({} s in)", started.elapsed().as_secs());
        *kinds.entry(kind).or_default() += 1;
        std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
    }
    let faults_took = started.elapsed();

    // Recovery: every writer commits again, and the application finishes its input.
    let after: Vec<usize> = committed
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    let healed = Instant::now();
    assert!(
        eventually(Duration::from_secs(120), || committed
            .iter()
            .zip(&after)
            .all(|(n, a)| n.load(Ordering::Relaxed) >= a + 3)
            .then_some(()))
        .is_some(),
        "every writer commits again after the last fault"
    );
    let recovered = healed.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let total_inputs = PARTITIONS as usize * INPUTS_PER_PARTITION;
    let out = eventually(Duration::from_secs(180), || {
        let out = read_committed(&b, DST);
        (out.len() >= total_inputs).then_some(out)
    })
    .unwrap_or_else(|| read_committed(&b, DST));
    app.terminate();

    // The writers' transactions.
    let seen = read_committed(&b, TOPIC);
    let txns: Vec<Txn> = logs
        .iter()
        .flat_map(|l| std::mem::take(&mut *l.lock().unwrap()))
        .collect();
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (t, txn) in txns.iter().enumerate() {
        for v in &txn.values {
            owner.insert(v, t);
        }
    }
    let mut read: HashSet<&str> = HashSet::new();
    let mut last_offset: HashMap<i32, i64> = HashMap::new();
    let mut last_of_writer: HashMap<(i32, String), String> = HashMap::new();
    for (p, o, v) in &seen {
        assert!(read.insert(v), "{v} read twice");
        assert!(owner.contains_key(v.as_str()), "{v} read but never written");
        if let Some(prev) = last_offset.insert(*p, *o) {
            assert!(*o > prev, "partition {p}: offset {o} after {prev}");
        }
        let w = v.split('-').next().unwrap().to_string();
        if let Some(prev) = last_of_writer.insert((*p, w), v.clone()) {
            assert!(*v > prev, "partition {p}: {v} read after {prev}");
        }
    }
    let mut counts: BTreeMap<Outcome, usize> = BTreeMap::new();
    let mut unknown_applied = 0;
    for txn in &txns {
        *counts.entry(txn.outcome).or_default() += 1;
        let present = txn
            .values
            .iter()
            .filter(|v| read.contains(v.as_str()))
            .count();
        match txn.outcome {
            Outcome::Committed => assert_eq!(
                present,
                txn.values.len(),
                "committed transaction {:?} lost records",
                txn.values
            ),
            Outcome::Aborted => {
                assert_eq!(present, 0, "aborted transaction {:?} was read", txn.values)
            }
            Outcome::Unknown => {
                assert!(
                    present == 0 || present == txn.values.len(),
                    "torn transaction {:?}: {present} records read",
                    txn.values
                );
                unknown_applied += usize::from(present > 0);
            }
        }
    }

    // The application's output: every input once, in input order per partition.
    let mut got: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (p, _, v) in &out {
        got.entry(*p).or_default().push(v.clone());
    }
    for (p, want) in &inputs {
        let want: Vec<String> = want.iter().map(|v| format!("{v}!")).collect();
        let have = got.get(p).cloned().unwrap_or_default();
        assert_eq!(
            have.len(),
            want.len(),
            "partition {p} of the application's output: {} records for {} inputs",
            have.len(),
            want.len()
        );
        assert_eq!(
            have, want,
            "partition {p}: the output is the input, once, in order"
        );
    }

    eprintln!(
        "checker (seed {seed}): {faults} faults in {} s {kinds:?}; transactions {counts:?} ({unknown_applied} of the unknown ones applied); {} records read committed; writers committing again {} ms after the last fault; application restarted {} times, {} inputs copied once",
        faults_took.as_secs(),
        seen.len(),
        recovered.as_millis(),
        app.starts - 1,
        out.len()
    );
    assert!(
        counts.get(&Outcome::Committed).copied().unwrap_or(0) >= 50,
        "the workload made progress: {counts:?}"
    );
}
