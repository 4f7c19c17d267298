//! The agent on the cluster backends: etcd for metadata and an S3-compatible bucket
//! (SeaweedFS) for objects — real servers, the real binary. Acknowledged records survive
//! SIGKILL; a second agent claiming a live agent's node id is refused; unreachable services
//! are named at start-up.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use silt_testkit::{free_port_below, Etcd, Weed};

use crate::harness::AgentProc;
use crate::kafka::{consume, create_topic, producer};

fn cluster_env(etcd: &Etcd, weed: Option<&Weed>) -> Vec<(String, String)> {
    let mut env = vec![
        ("SILT_METADATA__KIND".to_string(), "etcd".to_string()),
        (
            "SILT_METADATA__ETCD_ENDPOINTS".to_string(),
            format!("[\"{}\"]", etcd.url),
        ),
        (
            "SILT_METADATA__LEASE_TTL_MS".to_string(),
            "3000".to_string(),
        ),
    ];
    if let Some(w) = weed {
        for (k, v) in [
            ("SILT_OBJECT_STORE__KIND", "s3".to_string()),
            ("SILT_OBJECT_STORE__S3__BUCKET", "silt".to_string()),
            ("SILT_OBJECT_STORE__S3__ENDPOINT", w.endpoint()),
            ("SILT_OBJECT_STORE__S3__REGION", "us-east-1".to_string()),
            ("SILT_OBJECT_STORE__S3__ACCESS_KEY_ID", "silt".to_string()),
            (
                "SILT_OBJECT_STORE__S3__SECRET_ACCESS_KEY",
                "silt".to_string(),
            ),
            ("SILT_OBJECT_STORE__S3__ALLOW_HTTP", "true".to_string()),
        ] {
            env.push((k.to_string(), v));
        }
    }
    env
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_and_s3_keep_every_acknowledged_record_across_sigkill() {
    let etcd = Etcd::start();
    let weed = Weed::start("silt");
    let env = cluster_env(&etcd, Some(&weed));
    let mut agent = AgentProc::start(&refs(&env));
    let b = agent.bootstrap();
    create_topic(&b, "durable", 3, &[]).await;
    let p = producer(&b, &[("enable.idempotence", "true")]);
    let mut acked = Vec::new();
    for i in 0..300u32 {
        let v = format!("v{i}");
        let d = p
            .send(
                FutureRecord::to("durable")
                    .partition((i % 3) as i32)
                    .key("k")
                    .payload(&v),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        acked.push((d.partition, d.offset, v));
    }
    drop(p);
    agent.kill();
    agent.restart();
    let got = consume(&agent.bootstrap(), "durable", 3, 300);
    let seen: HashSet<(i32, i64, String)> = got
        .iter()
        .map(|g| {
            (
                g.partition,
                g.offset,
                String::from_utf8(g.value.clone().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(got.len(), 300);
    for a in &acked {
        assert!(
            seen.contains(a),
            "acknowledged {a:?} is missing after SIGKILL"
        );
    }
    // The data went to the bucket, not to local disk.
    assert_eq!(
        agent.object_count(),
        0,
        "no local objects with the S3 backend"
    );
    let m = agent.metrics();
    assert!(
        m["silt_object_gets_total"] >= 1.0,
        "a restarted agent reads from the bucket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_node_id_is_refused_and_dead_services_are_named() {
    let etcd = Etcd::start();
    let env = cluster_env(&etcd, None);
    let first = AgentProc::start(&refs(&env));
    // Same node id (the default), another address.
    let (status, log) = AgentProc::start_failing(&refs(&env));
    assert!(!status.success());
    assert!(
        log.contains(&format!(
            "node id 0 is registered by a live agent at 127.0.0.1:{}",
            first.port
        )),
        "the holder is named: {log}"
    );

    let dead = format!("http://127.0.0.1:{}", free_port_below(u16::MAX));
    let dead_env = [
        ("SILT_METADATA__KIND", "etcd"),
        ("SILT_METADATA__ETCD_ENDPOINTS", &format!("[\"{dead}\"]")),
        ("SILT_METADATA__CONNECT_TIMEOUT_MS", "500"),
    ];
    let (status, log) = AgentProc::start_failing(&dead_env);
    assert!(!status.success());
    assert!(
        log.contains(&dead) && log.contains("etcd"),
        "the endpoint tried is named: {log}"
    );

    let weed = Weed::start("present");
    let bucket_env = [
        ("SILT_OBJECT_STORE__KIND", "s3"),
        ("SILT_OBJECT_STORE__S3__BUCKET", "missing-bucket"),
        ("SILT_OBJECT_STORE__S3__ENDPOINT", &weed.endpoint()),
        ("SILT_OBJECT_STORE__S3__ACCESS_KEY_ID", "silt"),
        ("SILT_OBJECT_STORE__S3__SECRET_ACCESS_KEY", "silt"),
        ("SILT_OBJECT_STORE__S3__ALLOW_HTTP", "true"),
    ];
    let (status, log) = AgentProc::start_failing(&bucket_env);
    assert!(!status.success());
    assert!(
        log.contains("bucket missing-bucket"),
        "the bucket is named: {log}"
    );
}
