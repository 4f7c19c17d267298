//! Crash and shutdown: every record acknowledged with acks=all survives SIGKILL at its offset,
//! once; SIGTERM flushes everything (acks=1 included) before exiting; offsets continue.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::FutureRecord;

use crate::harness::{eventually, AgentProc};
use crate::kafka::{consume, create_topic, producer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_record() {
    let mut agent = AgentProc::start(&[]);
    let b = agent.bootstrap();
    create_topic(&b, "dur", 4, &[]).await;
    let p = Arc::new(producer(
        &b,
        &[
            ("enable.idempotence", "true"),
            ("linger.ms", "2"),
            ("retry.backoff.ms", "50"),
            ("reconnect.backoff.ms", "20"),
            ("reconnect.backoff.max.ms", "200"),
        ],
    ));
    let acked: Arc<Mutex<Vec<(i32, i64, String)>>> = Arc::default();
    let total = 6000;
    let mut tasks = Vec::new();
    for i in 0..total {
        let p = p.clone();
        let acks = acked.clone();
        let v = format!("rec-{i}");
        tasks.push(tokio::spawn(async move {
            let rec = FutureRecord::to("dur")
                .partition(i % 4)
                .key("k")
                .payload(&v);
            if let Ok(d) = p.send(rec, Duration::from_secs(60)).await {
                acks.lock().unwrap().push((d.partition, d.offset, v));
            }
        }));
        if i == 2000 {
            // Let some records be acknowledged, then kill the agent mid-stream.
            let a = acked.clone();
            eventually(Duration::from_secs(30), || {
                (a.lock().unwrap().len() >= 500).then_some(())
            })
            .expect("acks before the kill");
            agent.kill();
            std::thread::sleep(Duration::from_millis(300));
            agent.restart();
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= total as usize - 100,
        "most records are acknowledged eventually ({})",
        acked.len()
    );

    // No two acknowledged records share an offset; values are unique.
    let mut by_pos: HashMap<(i32, i64), String> = HashMap::new();
    for (p, o, v) in &acked {
        assert!(
            by_pos.insert((*p, *o), v.clone()).is_none(),
            "offset {p}:{o} acknowledged twice"
        );
    }
    let hwm: BTreeMap<i32, i64> = (0..4)
        .map(|p| {
            (
                p,
                acked
                    .iter()
                    .filter(|a| a.0 == p)
                    .map(|a| a.1 + 1)
                    .max()
                    .unwrap_or(0),
            )
        })
        .collect();
    let want: i64 = hwm.values().sum();
    let got = consume(&b, "dur", 4, want as usize);
    let mut seen_values = HashMap::new();
    for g in &got {
        let v = String::from_utf8(g.value.clone().unwrap()).unwrap();
        assert!(
            seen_values
                .insert(v.clone(), (g.partition, g.offset))
                .is_none(),
            "{v} delivered twice (idempotence)"
        );
        if let Some(expected) = by_pos.get(&(g.partition, g.offset)) {
            assert_eq!(
                &v, expected,
                "acknowledged record at {}:{} changed",
                g.partition, g.offset
            );
        }
    }
    for ((p, o), v) in &by_pos {
        assert_eq!(
            seen_values.get(v),
            Some(&(*p, *o)),
            "acknowledged {v} at {p}:{o} is missing"
        );
    }
    for p in 0..4 {
        let offs: Vec<i64> = got
            .iter()
            .filter(|g| g.partition == p)
            .map(|g| g.offset)
            .collect();
        assert_eq!(
            offs,
            (0..hwm[&p]).collect::<Vec<_>>(),
            "partition {p} offsets are dense"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_everything_and_offsets_continue() {
    // A long flush interval: only the shutdown flush can make acks=1 records durable.
    let mut agent = AgentProc::start(&[("SILT_FLUSH__INTERVAL_MS", "60000")]);
    let b = agent.bootstrap();
    let p = producer(&b, &[("acks", "1"), ("linger.ms", "1")]);
    for i in 0..500u32 {
        let v = format!("v{i}");
        let d = p
            .send(
                FutureRecord::to("term").key("k").payload(&v),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        assert_eq!(d.offset, i as i64);
    }
    drop(p);
    let status = agent.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(
        agent
            .log()
            .contains("every acknowledged write is committed"),
        "{}",
        agent.log()
    );

    agent.set_env("SILT_FLUSH__INTERVAL_MS", "20");
    agent.restart();
    let b = agent.bootstrap();
    let got = consume(&b, "term", 1, 500);
    let values: Vec<String> = got
        .iter()
        .map(|g| String::from_utf8(g.value.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(
        values,
        (0..500).map(|i| format!("v{i}")).collect::<Vec<_>>()
    );

    let p = producer(&b, &[]);
    let d = p
        .send(
            FutureRecord::to("term").key("k").payload("after"),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(d.offset, 500, "offsets continue after a restart");
}
