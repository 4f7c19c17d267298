//! Reads from the nearest agent (KIP-392) on a pool of six agents in three zones over real
//! etcd and SeaweedFS: a librdkafka consumer that sets `client.rack` is pointed by each
//! partition's leader at an agent of its own zone and reads every record from agents of that
//! zone only (bytes served by agents of other zones: zero). When the agent it reads from is
//! killed, it falls back to the leaders and comes back to the zone's other agent, still
//! reading nothing across zones, and every offset once.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::cluster::{Load, TestCluster};
use crate::kafka::config;

const TOPIC: &str = "zoned";
const PARTITIONS: i32 = 6;

fn zone(agent: usize) -> String {
    format!("z{}", agent / 2 + 1)
}

/// Keeps the consumer's latest debug lines (broker, topic, fetch), for a stall's message.
#[derive(Default)]
struct Captured {
    lines: Mutex<VecDeque<String>>,
}

impl ClientContext for Captured {
    fn log(&self, _level: RDKafkaLogLevel, fac: &str, line: &str) {
        let mut l = self.lines.lock().unwrap();
        if l.len() == 50_000 {
            l.pop_front();
        }
        l.push_back(format!("{:?} {fac} {line}", Instant::now()));
    }
}

impl ConsumerContext for Captured {}

impl Captured {
    /// The last lines that name partition `p` of the topic, or a broker's state.
    fn about(&self, p: i32) -> String {
        let tag = format!("{TOPIC} [{p}]");
        let l = self.lines.lock().unwrap();
        let hits: Vec<&String> = l
            .iter()
            .filter(|x| {
                (x.contains(&tag) || x.contains("STATE") || x.contains("DESTROY"))
                    && !x.contains(" METADATA ")
                    && !x.contains("not migrating away")
                    && !x.contains("Topic zoned changed state")
                    && !x.contains(" -> leader ")
            })
            .collect();
        hits[hits.len().saturating_sub(300)..]
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Record bytes each agent served to consumers of the topic.
fn served(c: &TestCluster, alive: &[bool]) -> Vec<f64> {
    c.agents
        .iter()
        .zip(alive)
        .map(|(a, up)| {
            if !up {
                return 0.0;
            }
            a.metrics()
                .get(&format!("silt_fetched_bytes_total{{topic=\"{TOPIC}\"}}"))
                .copied()
                .unwrap_or(0.0)
        })
        .collect()
}

/// Polls until every partition is read up to `ends` (or 90 s); the offsets read.
/// On a stall, `views` says what each live agent sees of the pool (for the failure message).
fn read_up_to(
    c: &BaseConsumer<Captured>,
    ends: &[i64],
    seen: &mut HashSet<(i32, i64)>,
    views: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut next: Vec<i64> = (0..PARTITIONS)
        .map(|p| {
            seen.iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, o)| o + 1)
                .max()
                .unwrap_or(0)
        })
        .collect();
    while next.iter().zip(ends).any(|(n, e)| n < e) {
        if Instant::now() >= deadline {
            let stuck: Vec<String> = (0..PARTITIONS)
                .filter(|p| next[*p as usize] < ends[*p as usize])
                .map(|p| format!("partition {p}:\n{}", c.context().about(p)))
                .collect();
            panic!(
                "the zone's consumer stalled at {next:?} of {ends:?}; {}\n{}",
                views(),
                stuck.join("\n")
            );
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            assert!(
                seen.insert((m.partition(), m.offset())),
                "offset {} of partition {} read twice",
                m.offset(),
                m.partition()
            );
            let n = &mut next[m.partition() as usize];
            assert_eq!(m.offset(), *n, "every offset, in order");
            *n += 1;
        }
    }
}

/// What each live agent sees: the agents it counts, and the partitions it leads.
fn views(c: &TestCluster, alive: &[bool]) -> String {
    (0..6)
        .filter(|i| alive[*i])
        .map(|i| {
            let m = c.agents[i].metrics();
            let led: Vec<String> = m
                .keys()
                .filter(|k| k.starts_with("silt_high_watermark{") && k.contains(TOPIC))
                .cloned()
                .collect();
            format!(
                "agent {} sees {} agents, leads {led:?}",
                i + 1,
                m.get("silt_cluster_agents").copied().unwrap_or(-1.0)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Each partition's high watermark. A request to a leader that was just killed waits for
/// that agent until it times out, so it is asked again (librdkafka routes the retry to the new
/// leader once its metadata has moved).
fn high_watermarks(c: &BaseConsumer<Captured>) -> Vec<i64> {
    (0..PARTITIONS)
        .map(|p| {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                match c.fetch_watermarks(TOPIC, p, Duration::from_secs(5)) {
                    Ok((_, hw)) => break hw,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("watermarks of partition {p}: {e}; asking again")
                    }
                    Err(e) => panic!("watermarks of partition {p}: {e}"),
                }
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_read_only_from_agents_in_their_zone() {
    let mut c = TestCluster::start(0);
    for i in 0..6 {
        c.add_with(&[("SILT_RACK", &zone(i))]);
    }
    let mut alive = vec![true; 6];
    let load = Load::start(&c.bootstrap(), TOPIC, PARTITIONS, 2).await;
    load.progress(3_000).await;

    let consumer: BaseConsumer<Captured> = config(
        &c.bootstrap(),
        &[
            ("group.id", "zone-1-readers"),
            ("debug", "broker,topic,fetch"),
            ("client.rack", "z1"),
            ("enable.auto.commit", "false"),
            ("fetch.wait.max.ms", "100"),
            ("topic.metadata.refresh.interval.ms", "1000"),
        ],
    )
    .set_log_level(RDKafkaLogLevel::Debug)
    .create_with_context(Captured::default())
    .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut seen = HashSet::new();
    let ends = high_watermarks(&consumer);
    read_up_to(&consumer, &ends, &mut seen, &|| views(&c, &[true; 6]));
    let first = served(&c, &alive);
    eprintln!("bytes served per agent (zones z1 z1 z2 z2 z3 z3): {first:?}");
    assert!(
        first[..2].iter().sum::<f64>() > 0.0,
        "zone z1 served the reads"
    );
    assert_eq!(&first[2..], &[0.0; 4], "agents of other zones served reads");

    // Kill the zone's busier agent while producers go on.
    let victim = if first[0] >= first[1] { 0 } else { 1 };
    let survivor = 1 - victim;
    c.agents[victim].kill();
    alive[victim] = false;
    let killed = Instant::now();
    load.progress(3_000).await;
    let ends = high_watermarks(&consumer);
    read_up_to(&consumer, &ends, &mut seen, &|| views(&c, &alive));
    let caught_up = killed.elapsed();
    let second = served(&c, &alive);
    eprintln!(
        "after killing agent {} (z1): bytes served per agent {second:?}; caught up {caught_up:?} after the kill; {} offsets read",
        victim + 1,
        seen.len()
    );
    assert!(
        second[survivor] > first[survivor],
        "the zone's other agent took over the reads"
    );
    assert_eq!(
        &second[2..],
        &[0.0; 4],
        "reads crossed zones after the kill"
    );
    for p in 0..PARTITIONS {
        let read: Vec<i64> = seen
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .collect();
        let top = read.iter().max().map_or(0, |o| o + 1);
        assert!(
            top >= ends[p as usize] && read.len() as i64 == top,
            "partition {p}: every offset below {top} once ({} read)",
            read.len()
        );
    }

    let live: Vec<String> = (0..6)
        .filter(|i| alive[*i])
        .map(|i| c.agents[i].bootstrap())
        .collect();
    let report = load.finish(&live.join(",")).await;
    report.assert_clean("reads from the nearest agent");
}
