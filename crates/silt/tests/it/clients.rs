//! Stock librdkafka clients against the real agent: produce and consume byte-for-byte with keys,
//! headers, null values, every compression codec, 1 MiB records, 100 partitions, idempotence,
//! and the admin APIs.

use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;

use crate::harness::AgentProc;
use crate::kafka::{self, consume, create_topic, producer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_round_trips_byte_for_byte() {
    // The records carry 2023 timestamps: keep them past the default 7-day retention.
    let agent = AgentProc::start(&[("SILT_TOPICS__RETENTION_MS", "-1")]);
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        let p = producer(
            &agent.bootstrap(),
            &[("compression.type", codec), ("linger.ms", "5")],
        );
        let mut sent = Vec::new();
        for i in 0..300u32 {
            let key = format!("k{i}").into_bytes();
            let value: Option<Vec<u8>> = match i % 50 {
                7 => None,
                8 => Some(Vec::new()),
                _ => Some(format!("value {i} {}", "x".repeat((i % 97) as usize)).into_bytes()),
            };
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "h",
                    value: Some(&i.to_be_bytes()[..]),
                })
                .insert(Header {
                    key: "h",
                    value: Some("dup"),
                })
                .insert(Header {
                    key: "null",
                    value: None::<&[u8]>,
                });
            let mut rec = FutureRecord::to(&topic)
                .key(&key)
                .headers(headers)
                .timestamp(1_700_000_000_000 + i as i64);
            if let Some(v) = &value {
                rec = rec.payload(v);
            }
            let d = p
                .send(rec, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .expect("delivery");
            sent.push((d.offset, key, value));
        }
        let got = consume(&agent.bootstrap(), &topic, 1, sent.len());
        assert_eq!(got.len(), sent.len(), "{codec}: record count");
        for (g, (off, key, value)) in got.iter().zip(&sent) {
            assert_eq!(g.offset, *off, "{codec}: offset");
            assert_eq!(g.key.as_ref(), Some(key), "{codec}: key at {off}");
            assert_eq!(&g.value, value, "{codec}: value at {off}");
            let i = (g.offset) as u32;
            assert_eq!(
                g.timestamp,
                Some(1_700_000_000_000 + i as i64),
                "{codec}: timestamp"
            );
            assert_eq!(
                g.headers,
                vec![
                    ("h".to_string(), Some(i.to_be_bytes().to_vec())),
                    ("h".to_string(), Some(b"dup".to_vec())),
                    ("null".to_string(), None)
                ],
                "{codec}: headers at {off}"
            );
        }
        let offsets: Vec<i64> = got.iter().map(|g| g.offset).collect();
        assert_eq!(
            offsets,
            (0..sent.len() as i64).collect::<Vec<_>>(),
            "{codec}: dense offsets"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_records_and_size_limits() {
    let agent = AgentProc::start(&[]);
    let b = agent.bootstrap();
    create_topic(&b, "big", 1, &[("max.message.bytes", "2097152")]).await;
    let p = producer(&b, &[("message.max.bytes", "3000000")]);
    let values: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1024 * 1024]).collect();
    for v in &values {
        kafka::send(&p, "big", 0, b"k", v).await;
    }
    let got = consume(&b, "big", 1, 3);
    for (g, v) in got.iter().zip(&values) {
        assert_eq!(g.value.as_ref(), Some(v), "1 MiB value at {}", g.offset);
    }

    create_topic(&b, "small", 1, &[("max.message.bytes", "1000")]).await;
    let err = p
        .send(
            FutureRecord::to("small").key("k").payload(&vec![1u8; 5000]),
            Duration::from_secs(30),
        )
        .await
        .expect_err("a batch over max.message.bytes must be refused");
    assert_eq!(
        err.0.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge),
        "{:?}",
        err.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_partitions_each_record_once() {
    let agent = AgentProc::start(&[]);
    let b = agent.bootstrap();
    create_topic(&b, "wide", 100, &[]).await;
    let p = producer(&b, &[("linger.ms", "5")]);
    let mut futs = Vec::new();
    for part in 0..100 {
        for i in 0..5 {
            let v = format!("{part}-{i}");
            futs.push(
                p.send_result(
                    FutureRecord::to("wide")
                        .partition(part)
                        .key("k")
                        .payload(&v),
                )
                .unwrap(),
            );
        }
    }
    for f in futs {
        f.await.unwrap().map_err(|(e, _)| e).expect("delivery");
    }
    let got = consume(&b, "wide", 100, 500);
    assert_eq!(got.len(), 500);
    for part in 0..100 {
        let mine: Vec<String> = got
            .iter()
            .filter(|g| g.partition == part)
            .map(|g| String::from_utf8(g.value.clone().unwrap()).unwrap())
            .collect();
        let expected: Vec<String> = (0..5).map(|i| format!("{part}-{i}")).collect();
        assert_eq!(mine, expected, "partition {part}");
    }
    let m = agent.metrics();
    assert_eq!(m["silt_partitions"], 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_writes_each_record_once() {
    let agent = AgentProc::start(&[]);
    let b = agent.bootstrap();
    let p = producer(
        &b,
        &[
            ("enable.idempotence", "true"),
            ("max.in.flight.requests.per.connection", "5"),
            ("linger.ms", "2"),
        ],
    );
    let mut futs = Vec::new();
    for i in 0..2000u32 {
        let v = i.to_string();
        futs.push(
            p.send_result(FutureRecord::to("idem").key("k").payload(&v))
                .unwrap(),
        );
    }
    for f in futs {
        f.await.unwrap().map_err(|(e, _)| e).expect("delivery");
    }
    let got = consume(&b, "idem", 1, 2000);
    let values: Vec<u32> = got
        .iter()
        .map(|g| {
            String::from_utf8(g.value.clone().unwrap())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(
        values,
        (0..2000).collect::<Vec<_>>(),
        "exactly once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_create_describe_list_delete() {
    let agent = AgentProc::start(&[]);
    let b = agent.bootstrap();
    let admin = kafka::admin(&b);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));

    let t = NewTopic::new("orders", 3, TopicReplication::Fixed(1))
        .set("retention.ms", "3600000")
        .set("max.message.bytes", "65536");
    let r = admin.create_topics(&[t], &opts).await.unwrap();
    assert!(r[0].is_ok(), "{r:?}");

    let again = NewTopic::new("orders", 3, TopicReplication::Fixed(1));
    let r = admin.create_topics(&[again], &opts).await.unwrap();
    assert_eq!(
        r[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::TopicAlreadyExists
    );

    let bad = NewTopic::new("bad name!", 1, TopicReplication::Fixed(1));
    let r = admin.create_topics(&[bad], &opts).await.unwrap();
    assert_eq!(r[0].as_ref().unwrap_err().1, RDKafkaErrorCode::InvalidTopic);

    let unknown_cfg = NewTopic::new("cfg", 1, TopicReplication::Fixed(1)).set("retention.msx", "1");
    let r = admin.create_topics(&[unknown_cfg], &opts).await.unwrap();
    assert_eq!(
        r[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::InvalidConfig
    );

    let vo = NewTopic::new("validate-only", 2, TopicReplication::Fixed(1));
    let vo_opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .validate_only(true);
    let r = admin.create_topics(&[vo], &vo_opts).await.unwrap();
    assert!(r[0].is_ok(), "{r:?}");

    let c: BaseConsumer = kafka::config(&b, &[]).create().unwrap();
    let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let names: Vec<&str> = md.topics().iter().map(|t| t.name()).collect();
    assert!(names.contains(&"orders"), "{names:?}");
    assert!(
        !names.contains(&"validate-only"),
        "validate_only must not create: {names:?}"
    );
    let orders = md.topics().iter().find(|t| t.name() == "orders").unwrap();
    assert_eq!(orders.partitions().len(), 3);
    assert_eq!(
        md.brokers().iter().map(|b| b.id()).collect::<Vec<_>>(),
        vec![0]
    );

    let cfg = admin
        .describe_configs(&[ResourceSpecifier::Topic("orders")], &opts)
        .await
        .unwrap();
    let res = cfg[0].as_ref().unwrap();
    let map = res.entry_map();
    assert_eq!(map["retention.ms"].value.as_deref(), Some("3600000"));
    assert_eq!(map["max.message.bytes"].value.as_deref(), Some("65536"));
    assert_eq!(map["cleanup.policy"].value.as_deref(), Some("delete"));
    assert!(map["cleanup.policy"].is_default);
    assert!(!map["retention.ms"].is_default);

    let del = admin.delete_topics(&["orders"], &opts).await.unwrap();
    assert!(del[0].is_ok(), "{del:?}");
    let del = admin.delete_topics(&["orders"], &opts).await.unwrap();
    assert_eq!(
        del[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::UnknownTopicOrPartition
    );
    let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    assert!(md.topics().iter().all(|t| t.name() != "orders"));
}
