//! librdkafka (through the `rdkafka` crate) helpers for the end-to-end tests.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

pub fn config(bootstrap: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .set("message.timeout.ms", "60000");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c
}

pub fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut base = vec![("acks", "all"), ("linger.ms", "1")];
    base.extend_from_slice(extra);
    config(bootstrap, &base).create().expect("producer")
}

pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    config(bootstrap, &[]).create().expect("admin client")
}

pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let res = admin(bootstrap)
        .create_topics(&[t], &AdminOptions::new())
        .await
        .expect("create_topics request");
    assert!(res[0].is_ok(), "create {name}: {:?}", res[0]);
}

/// A record as a consumer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<i64>,
}

/// Reads every partition of `topic` from the beginning until `want` records arrived (or 60 s).
pub fn consume(bootstrap: &str, topic: &str, partitions: i32, want: usize) -> Vec<Got> {
    consume_within(bootstrap, topic, partitions, want, Duration::from_secs(60))
}

/// [`consume`] with another deadline.
pub fn consume_within(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    want: usize,
    within: Duration,
) -> Vec<Got> {
    let c: BaseConsumer = config(
        bootstrap,
        &[
            ("group.id", "silt-test-no-commit"),
            ("enable.auto.commit", "false"),
            ("fetch.wait.max.ms", "50"),
        ],
    )
    .create()
    .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::with_capacity(want);
    let deadline = Instant::now() + within;
    while out.len() < want && Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(Got {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default(),
                timestamp: m.timestamp().to_millis(),
            }),
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    // Nothing beyond what was expected may arrive.
    let extra_deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < extra_deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
            panic!(
                "unexpected extra record at {}:{}",
                m.partition(),
                m.offset()
            );
        }
    }
    out
}

/// Sends `value` to `topic`/`partition`, returning the acknowledged offset.
pub async fn send(
    p: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &[u8],
    value: &[u8],
) -> i64 {
    let d = p
        .send(
            FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("delivery");
    d.offset
}
