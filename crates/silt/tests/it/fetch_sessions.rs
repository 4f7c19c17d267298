//! Incremental fetch sessions (KIP-227) against the real agent, in raw frames: a session is
//! created by a full fetch, incremental fetches return only partitions with something new,
//! bad ids and epochs get Kafka's errors, a session does not outlive its connection, and a
//! seeded run of random produce, fetch, forget and re-add steps reads every record once.

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;

use crate::harness::AgentProc;
use crate::protocol::{batch, metadata, Conn};

const TOPIC: &str = "sessions";
const PARTITIONS: i32 = 8;

fn name() -> TopicName {
    TopicName(StrBytes::from_static_str(TOPIC))
}

fn produce(c: &mut Conn, partition: i32, n: usize) {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch(n, -1, -1, -1)))])]);
    let r: ProduceResponse = c.call(ApiKey::Produce, 9, &req);
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
}

fn fetch(id: i32, epoch: i32, parts: &[(i32, i64)], forget: &[i32]) -> FetchRequest {
    let topics = if parts.is_empty() {
        vec![]
    } else {
        vec![FetchTopic::default().with_topic(name()).with_partitions(
            parts
                .iter()
                .map(|&(p, o)| {
                    FetchPartition::default()
                        .with_partition(p)
                        .with_fetch_offset(o)
                        .with_partition_max_bytes(1 << 20)
                })
                .collect(),
        )]
    };
    let forgotten = if forget.is_empty() {
        vec![]
    } else {
        vec![ForgottenTopic::default()
            .with_topic(name())
            .with_partitions(forget.to_vec())]
    };
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(8 << 20)
        .with_session_id(id)
        .with_session_epoch(epoch)
        .with_topics(topics)
        .with_forgotten_topics_data(forgotten)
}

/// The partitions a response lists, with the offsets of the records each returned.
fn listed(r: &FetchResponse) -> Vec<(i32, i64, Vec<i64>)> {
    let mut out = Vec::new();
    for t in &r.responses {
        assert_eq!(t.topic, name());
        for p in &t.partitions {
            assert_eq!(p.error_code, 0, "partition {}", p.partition_index);
            let mut recs = p.records.clone().unwrap_or_default();
            let offsets = RecordBatchDecoder::decode_all(&mut recs)
                .unwrap()
                .iter()
                .flat_map(|s| s.records.iter().map(|r| r.offset))
                .collect();
            out.push((p.partition_index, p.high_watermark, offsets));
        }
    }
    out.sort();
    out
}

fn call(c: &mut Conn, req: &FetchRequest) -> FetchResponse {
    c.call(ApiKey::Fetch, 12, req)
}

#[test]
fn incremental_fetches_return_only_what_changed() {
    let a = AgentProc::start(&[("SILT_TOPICS__NUM_PARTITIONS", "8")]);
    let mut c = Conn::open(&a);
    assert_eq!(metadata(&mut c, &[TOPIC], 12).topics[0].error_code, 0);
    produce(&mut c, 2, 3);

    // A full fetch with epoch 0 creates a session and lists every partition.
    let all: Vec<(i32, i64)> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    let mut f = Conn::open(&a);
    let r = call(&mut f, &fetch(0, 0, &all, &[]));
    assert_eq!(r.error_code, 0);
    let id = r.session_id;
    assert_ne!(id, 0, "a full fetch with epoch 0 creates a session");
    let got = listed(&r);
    assert_eq!(got.len(), PARTITIONS as usize);
    assert_eq!(got[2], (2, 3, vec![0, 1, 2]));

    // Nothing new: an incremental fetch (no partitions sent) lists none.
    let r = call(&mut f, &fetch(id, 1, &[(2, 3)], &[]));
    assert_eq!((r.error_code, r.session_id), (0, id));
    assert!(listed(&r).is_empty(), "{:?}", listed(&r));

    // New records in partition 5 only: only it comes back, from the cached offset 0.
    produce(&mut c, 5, 2);
    let r = call(&mut f, &fetch(id, 2, &[], &[]));
    assert_eq!(listed(&r), vec![(5, 2, vec![0, 1])]);
    // Not moving the offset: its records come back again (no new high watermark needed).
    let r = call(&mut f, &fetch(id, 3, &[], &[]));
    assert_eq!(listed(&r), vec![(5, 2, vec![0, 1])]);
    // Forgetting partition 5 removes it; moving it on shows nothing.
    produce(&mut c, 5, 1);
    let r = call(&mut f, &fetch(id, 4, &[], &[5]));
    assert!(listed(&r).is_empty(), "{:?}", listed(&r));

    // Wrong epoch, unknown id: Kafka's errors, no partitions.
    let r = call(&mut f, &fetch(id, 9, &[], &[]));
    assert_eq!(r.error_code, 71, "INVALID_FETCH_SESSION_EPOCH");
    assert!(r.responses.is_empty());
    let r = call(&mut f, &fetch(id.wrapping_add(1), 5, &[], &[]));
    assert_eq!(r.error_code, 70, "FETCH_SESSION_ID_NOT_FOUND");
    // The session still works at the right epoch, and re-adding 5 answers its new records.
    let r = call(&mut f, &fetch(id, 5, &[(5, 2)], &[]));
    assert_eq!(listed(&r), vec![(5, 3, vec![2])]);

    // Another connection cannot use it.
    let mut other = Conn::open(&a);
    let r = call(&mut other, &fetch(id, 6, &[], &[]));
    assert_eq!(r.error_code, 70);

    let m = a.metrics();
    assert_eq!(m["silt_fetch_sessions"], 1.0);
    assert_eq!(m["silt_fetch_session_partitions"], PARTITIONS as f64);
    assert!(m["silt_fetch_incremental_total"] >= 5.0);

    // The final epoch closes it; closing the connection frees everything.
    let r = call(&mut f, &fetch(id, -1, &[(0, 0)], &[]));
    assert_eq!((r.error_code, r.session_id), (0, 0));
    assert_eq!(call(&mut f, &fetch(id, 6, &[], &[])).error_code, 70);
    let r = call(&mut f, &fetch(0, 0, &all, &[]));
    assert_ne!(r.session_id, 0);
    drop(f);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while a.metrics()["silt_fetch_sessions"] != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a closed connection's sessions must go"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(a.metrics()["silt_fetch_session_partitions"], 0.0);
}

/// A consumer that follows the protocol as librdkafka-less clients do (send only what changed,
/// start over on a session error) reads every produced record exactly once, whatever the
/// seeded mix of produce, fetch, forget and re-add steps.
#[test]
fn a_seeded_session_reads_every_record_once() {
    let a = AgentProc::start(&[("SILT_TOPICS__NUM_PARTITIONS", "8")]);
    let mut c = Conn::open(&a);
    assert_eq!(metadata(&mut c, &[TOPIC], 12).topics[0].error_code, 0);
    let mut f = Conn::open(&a);
    let mut rng = crate::txn_checker::Rng(0x5e55_1075);
    let mut produced = [0i64; PARTITIONS as usize];
    let mut position = [0i64; PARTITIONS as usize];
    let mut read: Vec<Vec<i64>> = vec![Vec::new(); PARTITIONS as usize];
    let mut in_session: Vec<bool> = vec![false; PARTITIONS as usize];
    let mut sent = [0i64; PARTITIONS as usize];
    let (mut id, mut epoch) = (0i32, 0i32);
    for step in 0..300 {
        match rng.below(10) {
            0..=3 => {
                let p = rng.below(PARTITIONS as u64) as i32;
                let n = 1 + rng.below(5) as usize;
                produce(&mut c, p, n);
                produced[p as usize] += n as i64;
            }
            4 if id != 0 => {
                // Forget a partition, or add one back.
                let p = rng.below(PARTITIONS as u64) as usize;
                let (parts, forget) = if in_session[p] {
                    in_session[p] = false;
                    (vec![], vec![p as i32])
                } else {
                    in_session[p] = true;
                    sent[p] = position[p];
                    (vec![(p as i32, position[p])], vec![])
                };
                let r = call(&mut f, &fetch(id, epoch, &parts, &forget));
                assert_eq!(r.error_code, 0, "step {step}");
                epoch += 1;
                take(&r, &mut position, &mut read, &in_session);
            }
            _ => {
                let r = if id == 0 {
                    // Start (or start over) with a full fetch of every partition.
                    let all: Vec<(i32, i64)> =
                        (0..PARTITIONS).map(|p| (p, position[p as usize])).collect();
                    in_session = vec![true; PARTITIONS as usize];
                    sent = position;
                    let r = call(&mut f, &fetch(0, 0, &all, &[]));
                    (id, epoch) = (r.session_id, 1);
                    r
                } else {
                    // Send the partitions whose position moved since they were last sent.
                    let moved: Vec<(i32, i64)> = (0..PARTITIONS as usize)
                        .filter(|&p| in_session[p] && sent[p] != position[p])
                        .map(|p| (p as i32, position[p]))
                        .collect();
                    for &(p, o) in &moved {
                        sent[p as usize] = o;
                    }
                    let r = call(&mut f, &fetch(id, epoch, &moved, &[]));
                    epoch += 1;
                    r
                };
                assert_eq!(r.error_code, 0, "step {step}");
                take(&r, &mut position, &mut read, &in_session);
            }
        }
        if rng.below(40) == 0 {
            // Reconnect: the old session is gone; the client starts over.
            f = Conn::open(&a);
            let r = call(&mut f, &fetch(id, epoch, &[], &[]));
            assert_eq!(r.error_code, 70, "a session dies with its connection");
            id = 0;
        }
    }
    // Drain with a fresh full session.
    in_session.fill(true);
    for _ in 0..20 {
        let all: Vec<(i32, i64)> = (0..PARTITIONS).map(|p| (p, position[p as usize])).collect();
        let r = call(&mut f, &fetch(0, -1, &all, &[]));
        take(&r, &mut position, &mut read, &in_session);
    }
    for p in 0..PARTITIONS as usize {
        let want: Vec<i64> = (0..produced[p]).collect();
        assert_eq!(read[p], want, "partition {p}: every record once, in order");
    }
}

fn take(r: &FetchResponse, position: &mut [i64], read: &mut [Vec<i64>], in_session: &[bool]) {
    for (p, _hw, offsets) in listed(r) {
        assert!(
            in_session[p as usize],
            "partition {p} was forgotten but came back"
        );
        for o in offsets {
            if o >= position[p as usize] {
                read[p as usize].push(o);
                position[p as usize] = o + 1;
            }
        }
    }
}
