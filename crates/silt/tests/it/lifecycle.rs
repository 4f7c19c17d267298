//! Retention, DeleteRecords and garbage collection with the real agent: the log start moves,
//! clients follow it as with Kafka (OFFSET_OUT_OF_RANGE, auto.offset.reset), unreferenced
//! objects disappear after the grace period, and nothing referenced is ever deleted — including
//! objects orphaned by an agent killed between its object PUT and its commit.

use std::time::{Duration, Instant};

use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::harness::{eventually, AgentProc};
use crate::kafka::{admin, config, consume, create_topic, producer, send};

const FAST: &[(&str, &str)] = &[
    ("SILT_LIFECYCLE__RETENTION_INTERVAL_MS", "200"),
    ("SILT_LIFECYCLE__GC_INTERVAL_MS", "200"),
    ("SILT_LIFECYCLE__GC_GRACE_MS", "1500"),
];

fn low_high(bootstrap: &str, topic: &str, p: i32) -> (i64, i64) {
    let c: BaseConsumer = config(bootstrap, &[]).create().unwrap();
    c.fetch_watermarks(topic, p, Duration::from_secs(10))
        .unwrap()
}

/// The first record a fresh consumer assigned at offset 0 receives, with `reset` policy.
fn first_from_zero(bootstrap: &str, topic: &str, reset: &str) -> Option<i64> {
    let c: BaseConsumer = config(
        bootstrap,
        &[
            ("group.id", "silt-lifecycle"),
            ("auto.offset.reset", reset),
            ("enable.auto.commit", "false"),
            ("fetch.wait.max.ms", "50"),
        ],
    )
    .create()
    .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(0))
        .unwrap();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            return Some(m.offset());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_moves_the_log_start_and_gc_deletes_only_unreferenced_objects() {
    let agent = AgentProc::start(FAST);
    let b = agent.bootstrap();
    create_topic(&b, "kept", 1, &[]).await;
    create_topic(&b, "expiring", 1, &[("retention.ms", "1500")]).await;
    let p = producer(&b, &[]);
    for i in 0..5 {
        send(&p, "kept", 0, b"k", format!("kept-{i}").as_bytes()).await;
    }
    let baseline = agent.object_count();
    for i in 0..10 {
        send(&p, "expiring", 0, b"k", format!("old-{i}").as_bytes()).await;
    }
    assert!(
        agent.object_count() >= baseline + 10,
        "one flush per acks=all send"
    );
    // Retention moves the log start to the high watermark once every range is too old...
    let moved = eventually(Duration::from_secs(20), || {
        (low_high(&b, "expiring", 0) == (10, 10)).then_some(())
    });
    assert!(
        moved.is_some(),
        "log start: {:?}",
        low_high(&b, "expiring", 0)
    );
    // ...and GC then deletes exactly the objects nothing references any more.
    let collected = eventually(Duration::from_secs(20), || {
        (agent.object_count() == baseline).then_some(())
    });
    assert!(
        collected.is_some(),
        "{} objects left, {baseline} expected",
        agent.object_count()
    );
    let m = agent.metrics_strict();
    assert!(m["silt_gc_deleted_objects_total"] >= 10.0);
    assert_eq!(
        m["silt_log_start_offset{topic=\"expiring\",partition=\"0\"}"],
        10.0
    );
    let kept = consume(&b, "kept", 1, 5);
    assert_eq!(kept.len(), 5, "referenced objects are untouched");

    // Consumers positioned below the log start follow auto.offset.reset, as with Kafka.
    send(&p, "expiring", 0, b"k", b"new").await;
    assert_eq!(first_from_zero(&b, "expiring", "earliest"), Some(10));
    assert_eq!(
        first_from_zero(&b, "expiring", "latest"),
        None,
        "latest: nothing until something new arrives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_moves_the_low_watermark_and_survives_a_restart() {
    let mut agent = AgentProc::start(FAST);
    let b = agent.bootstrap();
    create_topic(&b, "trim", 2, &[]).await;
    let p = producer(&b, &[]);
    for i in 0..20 {
        send(&p, "trim", i % 2, b"k", format!("v{i}").as_bytes()).await;
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("trim", 0, Offset::Offset(4))
        .unwrap();
    tpl.add_partition_offset("trim", 1, Offset::End).unwrap();
    let res = admin(&b)
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .unwrap();
    let lows: Vec<(i32, Offset)> = res
        .elements()
        .iter()
        .map(|e| {
            assert!(e.error().is_ok(), "{:?}", e.error());
            (e.partition(), e.offset())
        })
        .collect();
    assert!(lows.contains(&(0, Offset::Offset(4))) && lows.contains(&(1, Offset::Offset(10))));
    // Past the high watermark is refused, as Kafka does.
    let mut bad = TopicPartitionList::new();
    bad.add_partition_offset("trim", 0, Offset::Offset(99))
        .unwrap();
    let res = admin(&b)
        .delete_records(&bad, &AdminOptions::new())
        .await
        .unwrap();
    assert!(
        res.elements()[0].error().is_err(),
        "offset past the high watermark"
    );
    agent.kill();
    agent.restart();
    let b = agent.bootstrap();
    assert_eq!(
        low_high(&b, "trim", 0),
        (4, 10),
        "persisted across a restart"
    );
    assert_eq!(low_high(&b, "trim", 1), (10, 10));
    let got = crate::kafka::consume(&b, "trim", 1, 6);
    assert_eq!(
        got.first().map(|g| g.offset),
        Some(4),
        "reads start at the log start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_orphaned_by_a_crash_between_put_and_commit_is_collected() {
    // Every PUT is followed by a 3 s pause before the commit: a window to SIGKILL the agent in.
    let mut env = FAST.to_vec();
    env.push(("SILT_OBJECT_STORE__INJECT_AFTER_PUT_MS", "3000"));
    env.push(("SILT_LIFECYCLE__GC_GRACE_MS", "4000"));
    let mut agent = AgentProc::start(&env);
    let b = agent.bootstrap();
    create_topic(&b, "orphans", 1, &[]).await;
    let p1 = producer(&b, &[("acks", "1"), ("linger.ms", "0")]);
    send(&p1, "orphans", 0, b"k", b"lost-with-the-agent").await;
    let written = eventually(Duration::from_secs(10), || {
        (agent.object_count() == 1).then_some(())
    });
    assert!(written.is_some(), "the object was PUT");
    agent.kill();
    agent.set_env("SILT_OBJECT_STORE__INJECT_AFTER_PUT_MS", "0");
    agent.restart();
    assert_eq!(
        agent.object_count(),
        1,
        "not collected before the grace period"
    );
    let b = agent.bootstrap();
    let p = producer(&b, &[]);
    for i in 0..5 {
        send(&p, "orphans", 0, b"k", format!("acked-{i}").as_bytes()).await;
    }
    assert_eq!(
        agent.object_count(),
        6,
        "the orphan and five committed objects"
    );
    let collected = eventually(Duration::from_secs(20), || {
        (agent.object_count() == 5).then_some(())
    });
    assert!(collected.is_some(), "the orphan was not collected");
    assert_eq!(
        agent.metrics()["silt_gc_deleted_objects_total"],
        1.0,
        "only the orphan"
    );
    let got = consume(&b, "orphans", 1, 5);
    let values: Vec<String> = got
        .iter()
        .map(|g| String::from_utf8(g.value.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(
        values,
        (0..5).map(|i| format!("acked-{i}")).collect::<Vec<_>>(),
        "every committed record readable; the acks=1 write that died with the agent never appears"
    );
}

const COMPACT: &[(&str, &str)] = &[
    ("SILT_LIFECYCLE__COMPACT_INTERVAL_MS", "200"),
    ("SILT_LIFECYCLE__COMPACT_MIN_ENTRIES", "8"),
];

fn index_entries(agent: &AgentProc, topic: &str) -> f64 {
    agent.metrics()[&format!("silt_index_entries{{topic=\"{topic}\",partition=\"0\"}}")]
}

fn values(got: &[crate::kafka::Got]) -> Vec<String> {
    got.iter()
        .map(|g| String::from_utf8(g.value.clone().unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_bounds_index_entries_and_objects_and_changes_no_offset() {
    let env: Vec<_> = FAST.iter().chain(COMPACT).copied().collect();
    let agent = AgentProc::start(&env);
    let b = agent.bootstrap();
    create_topic(&b, "compacted", 1, &[]).await;
    let p = producer(&b, &[]);
    let mut acked = Vec::new();
    for i in 0..120 {
        acked.push(send(&p, "compacted", 0, b"k", format!("v{i}").as_bytes()).await);
    }
    assert_eq!(acked, (0..120).collect::<Vec<i64>>());
    // Entries fall to a bound (the threshold plus the recent ones left alone)...
    let bounded = eventually(Duration::from_secs(30), || {
        (index_entries(&agent, "compacted") <= 12.0).then_some(())
    });
    assert!(
        bounded.is_some(),
        "{} entries",
        index_entries(&agent, "compacted")
    );
    // ...and the flush objects they replaced are collected.
    let few = eventually(Duration::from_secs(30), || {
        (agent.object_count() <= 16).then_some(())
    });
    assert!(
        few.is_some(),
        "{} objects for 120 flushes",
        agent.object_count()
    );
    let m = agent.metrics_strict();
    assert!(m["silt_compaction_segments_total"] >= 1.0);
    assert!(m["silt_compaction_entries_folded_total"] >= 100.0);
    let got = consume(&b, "compacted", 1, 120);
    assert_eq!(
        got.iter().map(|g| g.offset).collect::<Vec<_>>(),
        (0..120).collect::<Vec<i64>>(),
        "every offset once, in order"
    );
    assert_eq!(
        values(&got),
        (0..120).map(|i| format!("v{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_compaction_leaves_every_offset_readable_once() {
    // First run: 60 small flushes, compaction effectively off.
    let mut env: Vec<_> = FAST.to_vec();
    env.push(("SILT_LIFECYCLE__COMPACT_MIN_ENTRIES", "1000"));
    let mut agent = AgentProc::start(&env);
    let b = agent.bootstrap();
    create_topic(&b, "crashy", 1, &[]).await;
    let p = producer(&b, &[]);
    for i in 0..60 {
        send(&p, "crashy", 0, b"k", format!("v{i}").as_bytes()).await;
    }
    let flushed = agent.object_count();
    // Second run: compaction on, and every PUT pauses 3 s before its commit; killed there.
    for (k, v) in COMPACT {
        agent.set_env(k, v);
    }
    agent.set_env("SILT_OBJECT_STORE__INJECT_AFTER_PUT_MS", "3000");
    agent.restart();
    let segment_written = eventually(Duration::from_secs(15), || {
        (agent.object_count() > flushed).then_some(())
    });
    assert!(segment_written.is_some(), "a segment was PUT");
    agent.kill();
    // Third run: no fault. Compaction redoes the step; GC collects the dead run's segment.
    agent.set_env("SILT_OBJECT_STORE__INJECT_AFTER_PUT_MS", "0");
    agent.restart();
    let b = agent.bootstrap();
    let done = eventually(Duration::from_secs(30), || {
        let m = agent.metrics();
        (index_entries(&agent, "crashy") <= 12.0 && m["silt_gc_deleted_objects_total"] >= 1.0)
            .then_some(())
    });
    assert!(done.is_some(), "{:?}", agent.metrics());
    let got = consume(&b, "crashy", 1, 60);
    assert_eq!(
        got.iter().map(|g| g.offset).collect::<Vec<_>>(),
        (0..60).collect::<Vec<i64>>(),
        "every offset once, in order, after a crash between segment PUT and commit"
    );
    assert_eq!(
        values(&got),
        (0..60).map(|i| format!("v{i}")).collect::<Vec<_>>()
    );
}
