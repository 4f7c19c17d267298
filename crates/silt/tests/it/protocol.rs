//! Raw Kafka frames over TCP against the real agent: version negotiation, pipelining, acks=0,
//! long-poll wake-up, idempotence rules across a restart, and bad input of every kind — each
//! answered with Kafka's error code or a closed connection, never a dead or bloated agent.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::harness::AgentProc;

pub struct Conn {
    s: TcpStream,
    next: i32,
}

impl Conn {
    pub fn open(a: &AgentProc) -> Self {
        Self::to(&a.bootstrap())
    }

    pub fn to(addr: &str) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Self { s, next: 1 }
    }

    pub fn send_raw(&mut self, frame: &[u8]) {
        self.s.write_all(frame).unwrap();
    }

    /// Sends a request without waiting; returns its correlation id.
    pub fn send<R: Encodable + HeaderVersion>(&mut self, key: ApiKey, v: i16, req: &R) -> i32 {
        let corr = self.next;
        self.next += 1;
        self.s.write_all(&frame(key, v, corr, req)).unwrap();
        corr
    }

    /// Reads one response frame; `None` if the agent closed the connection.
    pub fn recv_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        if self.s.read_exact(&mut len).is_err() {
            return None;
        }
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut body).ok()?;
        Some(Bytes::from(body))
    }

    pub fn recv<R: Decodable>(&mut self, key: ApiKey, v: i16) -> (i32, R) {
        let mut f = self.recv_frame().expect("response");
        let h = ResponseHeader::decode(&mut f, key.response_header_version(v)).unwrap();
        (h.correlation_id, R::decode(&mut f, v).unwrap())
    }

    pub fn call<Q: Encodable + HeaderVersion, R: Decodable>(
        &mut self,
        key: ApiKey,
        v: i16,
        req: &Q,
    ) -> R {
        let corr = self.send(key, v, req);
        let (got, r) = self.recv(key, v);
        assert_eq!(got, corr);
        r
    }

    /// True once the agent has closed this connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

/// A complete request frame: length prefix, header, body.
pub fn frame<R: Encodable + HeaderVersion>(key: ApiKey, v: i16, corr: i32, req: &R) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(v)
        .with_correlation_id(corr)
        .with_client_id(Some(StrBytes::from_static_str("silt-tests")))
        .encode(&mut b, key.request_header_version(v))
        .unwrap();
    req.encode(&mut b, v).unwrap();
    let len = (b.len() - 4) as i32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

fn topic(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// A v2 record batch of `n` uncompressed records (kafka-protocol's encoder writes one batch per
/// record, so the tests build their own).
pub fn batch(n: usize, pid: i64, epoch: i16, seq: i32) -> Bytes {
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                Some(format!("k{i}").into_bytes()),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    batch_of(&records, pid, epoch, seq)
}

/// A v2 record batch of the given (key, value) records, uncompressed.
pub fn batch_of(records: &[(Option<Vec<u8>>, Vec<u8>)], pid: i64, epoch: i16, seq: i32) -> Bytes {
    fn varint(b: &mut BytesMut, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            b.put_u8((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
        b.put_u8(z as u8);
    }
    let n = records.len();
    let mut encoded = BytesMut::new();
    for (i, (k, v)) in records.iter().enumerate() {
        let mut r = BytesMut::new();
        r.put_i8(0);
        varint(&mut r, i as i64); // timestamp delta
        varint(&mut r, i as i64); // offset delta
        match k {
            Some(k) => {
                varint(&mut r, k.len() as i64);
                r.put_slice(k);
            }
            None => varint(&mut r, -1),
        }
        varint(&mut r, v.len() as i64);
        r.put_slice(v);
        varint(&mut r, 0);
        varint(&mut encoded, r.len() as i64);
        encoded.extend_from_slice(&r);
    }
    let records = encoded;
    let mut b = BytesMut::new();
    b.put_i64(0);
    b.put_i32((49 + records.len()) as i32);
    b.put_i32(-1);
    b.put_i8(2);
    b.put_u32(0);
    b.put_i16(0);
    b.put_i32(n as i32 - 1);
    b.put_i64(1_000);
    b.put_i64(1_000 + n as i64 - 1);
    b.put_i64(pid);
    b.put_i16(epoch);
    b.put_i32(seq);
    b.put_i32(n as i32);
    b.put_slice(&records);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

fn produce(topic_name: &str, acks: i16, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic(topic_name))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])])
}

pub fn produce_result(c: &mut Conn, t: &str, records: Bytes) -> (i16, i64) {
    let r: ProduceResponse = c.call(ApiKey::Produce, 9, &produce(t, -1, records));
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// An idempotent producer id from InitProducerId (asserts no error).
pub fn init_producer_id(c: &mut Conn) -> i64 {
    let r: InitProducerIdResponse = c.call(
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(r.error_code, 0);
    r.producer_id.0
}

pub fn metadata(c: &mut Conn, names: &[&str], v: i16) -> MetadataResponse {
    let req = MetadataRequest::default()
        .with_topics(Some(
            names
                .iter()
                .map(|n| MetadataRequestTopic::default().with_name(Some(topic(n))))
                .collect(),
        ))
        .with_allow_auto_topic_creation(true);
    c.call(ApiKey::Metadata, v, &req)
}

fn assert_serving(a: &AgentProc) {
    let mut c = Conn::open(a);
    let md = metadata(&mut c, &["alive"], 12);
    assert_eq!(md.topics[0].error_code, 0, "agent must keep serving");
}

#[test]
fn api_versions_negotiation() {
    let a = AgentProc::start(&[]);
    let mut c = Conn::open(&a);
    let r: ApiVersionsResponse = c.call(
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("t"))
            .with_client_software_version(StrBytes::from_static_str("1")),
    );
    assert_eq!(r.error_code, 0);
    let produce = r
        .api_keys
        .iter()
        .find(|k| k.api_key == 0)
        .expect("Produce listed");
    assert!(produce.min_version <= 3 && produce.max_version >= 9);

    // A version from the future gets a v0-encoded UNSUPPORTED_VERSION with our ranges.
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(18)
        .with_request_api_version(99)
        .with_correlation_id(4242)
        .encode(&mut body, 2)
        .unwrap();
    ApiVersionsRequest::default().encode(&mut body, 3).unwrap();
    let mut framed = BytesMut::new();
    framed.put_i32(body.len() as i32);
    framed.extend_from_slice(&body);
    c.send_raw(&framed);
    let mut f = c.recv_frame().unwrap();
    assert_eq!(f.get_i32(), 4242);
    let r = ApiVersionsResponse::decode(&mut f, 0).unwrap();
    assert_eq!(r.error_code, 35);
    assert!(r
        .api_keys
        .iter()
        .any(|k| k.api_key == 18 && k.max_version >= 3));
    // The connection stays usable.
    let md = metadata(&mut c, &["x"], 1);
    assert_eq!(md.topics[0].error_code, 0);
}

#[test]
fn bad_frames_close_only_their_connection() {
    let a = AgentProc::start(&[("SILT_MAX_FRAME_BYTES", "1048576")]);
    let rss_before = a.rss_kib();

    // Larger than max_frame_bytes.
    let mut c = Conn::open(&a);
    c.send_raw(&(64 * 1024 * 1024i32).to_be_bytes());
    assert!(c.closed(), "oversized frame must close the connection");

    // Negative size.
    let mut c = Conn::open(&a);
    c.send_raw(&(-5i32).to_be_bytes());
    assert!(c.closed());

    // Unknown API key.
    let mut c = Conn::open(&a);
    c.send_raw(&[0, 0, 0, 10, 0x03, 0xe7, 0, 0, 0, 0, 0, 1, 0xff, 0xff]);
    assert!(c.closed(), "unknown API key must close the connection");

    // Header too short.
    let mut c = Conn::open(&a);
    c.send_raw(&[0, 0, 0, 3, 0, 3, 0]);
    assert!(c.closed());

    // Truncated body, then the client goes away.
    let mut c = Conn::open(&a);
    c.send_raw(&[0, 0, 0, 100, 0, 3, 0, 1]);
    c.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.closed());

    // Array counts far beyond the frame: Metadata v1 (i32::MAX topics) and v12 (compact).
    for _ in 0..20 {
        let mut c = Conn::open(&a);
        c.send_raw(&[
            0, 0, 0, 14, 0, 3, 0, 1, 0, 0, 0, 7, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff,
        ]);
        assert!(c.closed(), "hostile array count must close the connection");
        let mut c = Conn::open(&a);
        c.send_raw(&[
            0, 0, 0, 16, 0, 3, 0, 12, 0, 0, 0, 8, 0xff, 0xff, 0, 0xfe, 0xff, 0xff, 0xff, 0x0f,
        ]);
        assert!(c.closed());
    }
    // Produce whose partition array claims 2^31-1 entries.
    let mut c = Conn::open(&a);
    let mut f = BytesMut::new();
    f.put_i16(0);
    f.put_i16(9);
    f.put_i32(1);
    f.put_i16(-1);
    f.put_u8(0); // header v2
    f.put_u8(0);
    f.put_i16(-1);
    f.put_i32(1000); // txn id null, acks, timeout
    f.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x07]); // compact array length
    let mut framed = BytesMut::new();
    framed.put_i32(f.len() as i32);
    framed.extend_from_slice(&f);
    c.send_raw(&framed);
    assert!(c.closed());

    // Random garbage frames with valid API keys (seeded, so failures reproduce).
    let mut x: u64 = 0x5eed;
    for i in 0..300 {
        let mut c = Conn::open(&a);
        let mut body = BytesMut::new();
        body.put_i16([0i16, 1, 2, 3, 18, 19, 20, 22, 23, 32, 60][i % 11]);
        body.put_i16((i % 14) as i16);
        body.put_i32(i as i32);
        for _ in 0..(i % 64) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            body.put_u8(x as u8);
        }
        let mut framed = BytesMut::new();
        framed.put_i32(body.len() as i32);
        framed.extend_from_slice(&body);
        c.send_raw(&framed);
        c.s.shutdown(std::net::Shutdown::Write).unwrap();
        while c.recv_frame().is_some() {}
    }

    assert_serving(&a);
    let rss_after = a.rss_kib();
    assert!(
        rss_after < rss_before + 100 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB on bad input"
    );
    assert!(
        a.log().contains("closing connection"),
        "bad frames are logged"
    );
}

#[test]
fn bad_batches_get_kafka_error_codes() {
    let a = AgentProc::start(&[]);
    let mut c = Conn::open(&a);
    metadata(&mut c, &["t"], 12); // auto-create

    let good = batch(3, -1, -1, -1);
    let mut corrupt = good.to_vec();
    let n = corrupt.len();
    corrupt[n - 1] ^= 0xff;
    assert_eq!(
        produce_result(&mut c, "t", Bytes::from(corrupt)).0,
        2,
        "CRC mismatch → CORRUPT_MESSAGE"
    );
    assert_eq!(
        produce_result(&mut c, "t", good.slice(..good.len() - 3)).0,
        2,
        "truncated → CORRUPT_MESSAGE"
    );
    let mut two = good.to_vec();
    two.extend_from_slice(&good);
    assert_eq!(
        produce_result(&mut c, "t", Bytes::from(two)).0,
        87,
        "two batches → INVALID_RECORD"
    );
    assert_eq!(
        produce_result(&mut c, "nope-no-topic", good.clone()).0,
        3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );

    let r: ProduceResponse = c.call(ApiKey::Produce, 9, &produce("t", 2, good.clone()));
    assert_eq!(
        r.responses[0].partition_responses[0].error_code, 21,
        "acks=2 → INVALID_REQUIRED_ACKS"
    );

    let big = batch(1, -1, -1, -1);
    let huge_value = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 0,
        key: None,
        value: Some(Bytes::from(vec![7u8; 1_100_000])),
        headers: Default::default(),
    }; // one record: kafka-protocol's encoder makes exactly one batch
    let mut hb = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut hb,
        [&huge_value],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    assert_eq!(
        produce_result(&mut c, "t", hb.freeze()).0,
        10,
        "over max.message.bytes → MESSAGE_TOO_LARGE"
    );

    let (err, base) = produce_result(&mut c, "t", big);
    assert_eq!((err, base), (0, 0), "nothing refused took an offset");

    let md = metadata(&mut c, &["bad name!"], 12);
    assert_eq!(md.topics[0].error_code, 17, "INVALID_TOPIC_EXCEPTION");
}

#[test]
fn idempotence_rules_hold_across_a_restart() {
    let mut a = AgentProc::start(&[]);
    let mut c = Conn::open(&a);
    metadata(&mut c, &["idem"], 12);
    let pid = init_producer_id(&mut c);
    assert!(pid >= 0);

    assert_eq!(produce_result(&mut c, "idem", batch(3, pid, 0, 0)), (0, 0));
    assert_eq!(
        produce_result(&mut c, "idem", batch(3, pid, 0, 0)),
        (0, 0),
        "duplicate answered with its original offset"
    );
    assert_eq!(
        produce_result(&mut c, "idem", batch(2, pid, 0, 5)).0,
        45,
        "gap → OUT_OF_ORDER_SEQUENCE_NUMBER"
    );
    assert_eq!(produce_result(&mut c, "idem", batch(2, pid, 0, 3)), (0, 3));

    a.restart();
    let mut c = Conn::open(&a);
    assert_eq!(
        produce_result(&mut c, "idem", batch(2, pid, 0, 3)),
        (0, 3),
        "state rebuilt: still a duplicate"
    );
    assert_eq!(
        produce_result(&mut c, "idem", batch(2, pid, 0, 9)).0,
        45,
        "state rebuilt: still out of order"
    );
    assert_eq!(produce_result(&mut c, "idem", batch(1, pid, 0, 5)), (0, 5));
    assert_eq!(
        produce_result(&mut c, "idem", batch(1, pid, -1, 6)).0,
        47,
        "older epoch → INVALID_PRODUCER_EPOCH"
    );
    assert_ne!(
        init_producer_id(&mut c),
        pid,
        "producer ids are never reused across restarts"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order_and_acks0_is_silent() {
    let a = AgentProc::start(&[]);
    let mut c = Conn::open(&a);
    metadata(&mut c, &["pipe"], 12);
    let mut expected = Vec::new();
    for i in 0..60 {
        let corr = match i % 3 {
            0 => c.send(
                ApiKey::Produce,
                9,
                &produce("pipe", -1, batch(2, -1, -1, -1)),
            ),
            1 => c.send(
                ApiKey::Metadata,
                12,
                &MetadataRequest::default().with_topics(None),
            ),
            _ => {
                // acks=0: no response at all.
                c.send(
                    ApiKey::Produce,
                    9,
                    &produce("pipe", 0, batch(1, -1, -1, -1)),
                );
                continue;
            }
        };
        expected.push((corr, i % 3));
    }
    let mut produced_offsets = Vec::new();
    for (corr, kind) in expected {
        if kind == 0 {
            let (got, r): (i32, ProduceResponse) = c.recv(ApiKey::Produce, 9);
            assert_eq!(got, corr, "responses in request order");
            let p = &r.responses[0].partition_responses[0];
            assert_eq!(p.error_code, 0);
            produced_offsets.push(p.base_offset);
        } else {
            let (got, _): (i32, MetadataResponse) = c.recv(ApiKey::Metadata, 12);
            assert_eq!(got, corr, "responses in request order");
        }
    }
    // 20 acks=all batches of 2 and 20 acks=0 batches of 1, interleaved: offsets follow arrival.
    let mut expect = Vec::new();
    let mut next = 0;
    for i in 0..60 {
        match i % 3 {
            0 => {
                expect.push(next);
                next += 2;
            }
            2 => next += 1,
            _ => {}
        }
    }
    assert_eq!(produced_offsets, expect);
}

#[test]
fn long_poll_fetch_wakes_on_commit() {
    let a = AgentProc::start(&[]);
    let mut c = Conn::open(&a);
    metadata(&mut c, &["poll"], 12);
    let mut fetcher = Conn::open(&a);
    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(15_000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic("poll"))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let started = Instant::now();
    fetcher.send(ApiKey::Fetch, 12, &fetch);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(produce_result(&mut c, "poll", batch(4, -1, -1, -1)), (0, 0));
    let (_, r): (i32, FetchResponse) = fetcher.recv(ApiKey::Fetch, 12);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fetch must wake on commit, not wait out max_wait"
    );
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert_eq!(p.high_watermark, 4);
    let mut recs = p.records.clone().unwrap();
    let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut recs).unwrap();
    let offsets: Vec<i64> = sets
        .iter()
        .flat_map(|s| s.records.iter().map(|r| r.offset))
        .collect();
    assert_eq!(offsets, vec![0, 1, 2, 3]);

    // Out of range → OFFSET_OUT_OF_RANGE.
    let bad = fetch
        .clone()
        .with_max_wait_ms(0)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic("poll"))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(99)
                .with_partition_max_bytes(1024)])]);
    let r: FetchResponse = fetcher.call(ApiKey::Fetch, 12, &bad);
    assert_eq!(r.responses[0].partitions[0].error_code, 1);
}

/// Issue 14 (per-partition wakeups): a long-polling fetch is woken by commits to its own
/// partitions only. Twenty fetches wait on a quiet topic while another takes thirty commits;
/// none of them is woken (before, every commit anywhere woke every waiting fetch, which then
/// looked at each of its partitions), and the first commit to the quiet topic wakes them all.
#[test]
fn long_polls_wake_only_for_their_own_partitions() {
    let a = AgentProc::start(&[]);
    let mut c = Conn::open(&a);
    metadata(&mut c, &["quiet", "busy"], 12);
    let fetch = |max_wait_ms: i32| {
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic("quiet"))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])])
    };
    let wakeups = |a: &AgentProc| a.metrics()["silt_fetch_long_poll_wakeups_total"];
    let mut waiting: Vec<Conn> = (0..20).map(|_| Conn::open(&a)).collect();
    let started = Instant::now();
    for w in &mut waiting {
        w.send(ApiKey::Fetch, 12, &fetch(6_000));
    }
    for _ in 0..30 {
        assert_eq!(produce_result(&mut c, "busy", batch(1, -1, -1, -1)).0, 0);
    }
    let busy_done = started.elapsed();
    assert!(
        busy_done < Duration::from_secs(5),
        "the thirty commits took {busy_done:?}: the fetches may have timed out meanwhile"
    );
    assert_eq!(
        wakeups(&a),
        0.0,
        "fetches of a quiet partition were woken by commits to another topic"
    );
    for w in &mut waiting {
        let (_, r): (i32, FetchResponse) = w.recv(ApiKey::Fetch, 12);
        assert!(r.responses[0].partitions[0]
            .records
            .as_ref()
            .is_none_or(|r| r.is_empty()));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "they waited out max_wait"
    );
    assert_eq!(wakeups(&a), 0.0);

    // A commit to the quiet partition wakes each fetch waiting on it, once.
    for w in &mut waiting {
        w.send(ApiKey::Fetch, 12, &fetch(15_000));
    }
    std::thread::sleep(Duration::from_millis(300));
    let woken = Instant::now();
    assert_eq!(
        produce_result(&mut c, "quiet", batch(2, -1, -1, -1)),
        (0, 0)
    );
    for w in &mut waiting {
        let (_, r): (i32, FetchResponse) = w.recv(ApiKey::Fetch, 12);
        assert_eq!(r.responses[0].partitions[0].high_watermark, 2);
        assert!(r.responses[0].partitions[0]
            .records
            .as_ref()
            .is_some_and(|r| !r.is_empty()));
    }
    assert!(
        woken.elapsed() < Duration::from_secs(10),
        "the commit woke them"
    );
    assert_eq!(wakeups(&a), 20.0, "each waiting fetch was woken once");
}
