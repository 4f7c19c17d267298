//! Every API version the agent advertises is answered, including those Kafka 3.9 serves and
//! Kafka 4.0 dropped (KIP-896): a request of each version gets its response on an open
//! connection; the old OffsetCommit, OffsetFetch, ListOffsets and DescribeConfigs versions an
//! older client sends do what they say; zstd before Produce v7 is refused as Kafka refuses it;
//! message sets v0 and v1 (Produce v0–2, Fetch v0–3) round-trip through the v2 log, from raw
//! frames and from librdkafka pinned to old brokers.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::harness::AgentProc;
use crate::protocol::{batch, metadata, produce_result, Conn};

/// A request with default fields (acks=1 for Produce, so it is answered).
fn default_request(api: ApiKey) -> Option<RequestKind> {
    use RequestKind as K;
    Some(match api {
        ApiKey::Produce => K::Produce(ProduceRequest::default().with_acks(1).with_timeout_ms(1000)),
        ApiKey::Fetch => K::Fetch(FetchRequest::default().with_max_wait_ms(0)),
        ApiKey::ListOffsets => K::ListOffsets(ListOffsetsRequest::default()),
        ApiKey::Metadata => K::Metadata(MetadataRequest::default().with_topics(Some(vec![]))),
        ApiKey::OffsetCommit => K::OffsetCommit(OffsetCommitRequest::default()),
        ApiKey::OffsetFetch => K::OffsetFetch(OffsetFetchRequest::default()),
        ApiKey::FindCoordinator => K::FindCoordinator(FindCoordinatorRequest::default()),
        ApiKey::JoinGroup => K::JoinGroup(JoinGroupRequest::default()),
        ApiKey::Heartbeat => K::Heartbeat(HeartbeatRequest::default()),
        ApiKey::LeaveGroup => K::LeaveGroup(LeaveGroupRequest::default()),
        ApiKey::SyncGroup => K::SyncGroup(SyncGroupRequest::default()),
        ApiKey::DescribeGroups => K::DescribeGroups(DescribeGroupsRequest::default()),
        ApiKey::ListGroups => K::ListGroups(ListGroupsRequest::default()),
        ApiKey::ConsumerGroupHeartbeat => {
            K::ConsumerGroupHeartbeat(ConsumerGroupHeartbeatRequest::default())
        }
        ApiKey::ConsumerGroupDescribe => {
            K::ConsumerGroupDescribe(ConsumerGroupDescribeRequest::default())
        }
        ApiKey::ApiVersions => K::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::CreateTopics => K::CreateTopics(CreateTopicsRequest::default()),
        ApiKey::DeleteTopics => K::DeleteTopics(DeleteTopicsRequest::default()),
        ApiKey::DeleteRecords => K::DeleteRecords(DeleteRecordsRequest::default()),
        ApiKey::InitProducerId => K::InitProducerId(InitProducerIdRequest::default()),
        ApiKey::OffsetForLeaderEpoch => {
            K::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest::default())
        }
        ApiKey::AddPartitionsToTxn => K::AddPartitionsToTxn(AddPartitionsToTxnRequest::default()),
        ApiKey::AddOffsetsToTxn => K::AddOffsetsToTxn(AddOffsetsToTxnRequest::default()),
        ApiKey::EndTxn => K::EndTxn(EndTxnRequest::default()),
        ApiKey::TxnOffsetCommit => K::TxnOffsetCommit(TxnOffsetCommitRequest::default()),
        ApiKey::DescribeAcls => K::DescribeAcls(DescribeAclsRequest::default()),
        ApiKey::CreateAcls => K::CreateAcls(CreateAclsRequest::default()),
        ApiKey::DeleteAcls => K::DeleteAcls(DeleteAclsRequest::default()),
        ApiKey::DescribeConfigs => K::DescribeConfigs(DescribeConfigsRequest::default()),
        ApiKey::AlterConfigs => K::AlterConfigs(AlterConfigsRequest::default()),
        ApiKey::DescribeLogDirs => K::DescribeLogDirs(DescribeLogDirsRequest::default()),
        ApiKey::CreatePartitions => K::CreatePartitions(CreatePartitionsRequest::default()),
        ApiKey::DeleteGroups => K::DeleteGroups(DeleteGroupsRequest::default()),
        ApiKey::ElectLeaders => K::ElectLeaders(ElectLeadersRequest::default()),
        ApiKey::IncrementalAlterConfigs => {
            K::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::default())
        }
        ApiKey::AlterPartitionReassignments => {
            K::AlterPartitionReassignments(AlterPartitionReassignmentsRequest::default())
        }
        ApiKey::ListPartitionReassignments => {
            K::ListPartitionReassignments(ListPartitionReassignmentsRequest::default())
        }
        ApiKey::OffsetDelete => K::OffsetDelete(OffsetDeleteRequest::default()),
        ApiKey::DescribeClientQuotas => {
            K::DescribeClientQuotas(DescribeClientQuotasRequest::default())
        }
        ApiKey::AlterClientQuotas => K::AlterClientQuotas(AlterClientQuotasRequest::default()),
        ApiKey::DescribeUserScramCredentials => {
            K::DescribeUserScramCredentials(DescribeUserScramCredentialsRequest::default())
        }
        ApiKey::AlterUserScramCredentials => {
            K::AlterUserScramCredentials(AlterUserScramCredentialsRequest::default())
        }
        ApiKey::DescribeCluster => K::DescribeCluster(DescribeClusterRequest::default()),
        ApiKey::DescribeProducers => K::DescribeProducers(DescribeProducersRequest::default()),
        ApiKey::DescribeTransactions => {
            K::DescribeTransactions(DescribeTransactionsRequest::default())
        }
        ApiKey::ListTransactions => K::ListTransactions(ListTransactionsRequest::default()),
        _ => return None,
    })
}

/// The body of an empty request of a version older than `kafka-protocol` encodes, by hand.
fn old_empty_request(api: ApiKey, v: i16) -> BytesMut {
    let mut b = BytesMut::new();
    let empty_string = |b: &mut BytesMut| b.put_i16(0);
    match (api, v) {
        (ApiKey::OffsetCommit, 0) => {
            empty_string(&mut b); // group
            b.put_i32(0); // topics
        }
        (ApiKey::OffsetCommit, 1) => {
            empty_string(&mut b);
            b.put_i32(-1); // generation
            empty_string(&mut b); // member
            b.put_i32(0);
        }
        (ApiKey::OffsetFetch, 0) => {
            empty_string(&mut b);
            b.put_i32(0);
        }
        (ApiKey::ListOffsets, 0) => {
            b.put_i32(-1); // replica
            b.put_i32(0);
        }
        (ApiKey::CreateTopics, 0) => {
            b.put_i32(0);
            b.put_i32(1000); // timeout
        }
        (ApiKey::CreateTopics, 1) => {
            b.put_i32(0);
            b.put_i32(1000);
            b.put_u8(0); // validate_only
        }
        (ApiKey::DeleteTopics, 0) => {
            b.put_i32(0);
            b.put_i32(1000);
        }
        (ApiKey::DescribeConfigs, 0) => b.put_i32(0),
        (ApiKey::DescribeAcls, 0) => {
            b.put_i8(1); // any resource type
            b.put_i16(-1); // any name
            b.put_i16(-1); // any principal
            b.put_i16(-1); // any host
            b.put_i8(1); // any operation
            b.put_i8(1); // any permission
        }
        (ApiKey::CreateAcls | ApiKey::DeleteAcls, 0) => b.put_i32(0),
        (ApiKey::OffsetForLeaderEpoch, 0 | 1) => b.put_i32(0),
        (ApiKey::Produce, 0..=2) => {
            b.put_i16(1); // acks
            b.put_i32(1000); // timeout
            b.put_i32(0);
        }
        (ApiKey::Fetch, 0..=3) => {
            b.put_i32(-1); // replica
            b.put_i32(0); // max wait
            b.put_i32(0); // min bytes
            if v == 3 {
                b.put_i32(1 << 20);
            }
            b.put_i32(0);
        }
        (api, v) => panic!("the agent advertises {api:?} v{v}, which this test cannot build"),
    }
    b
}

/// Sends `body` as `api` v`v` and returns the response body (after the header), checking the
/// correlation id.
fn exchange(c: &mut Conn, api: ApiKey, v: i16, body: &[u8], corr: i32) -> Bytes {
    let mut f = BytesMut::new();
    f.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(v)
        .with_correlation_id(corr)
        .with_client_id(Some(StrBytes::from_static_str("versions")))
        .encode(&mut f, api.request_header_version(v))
        .unwrap();
    f.put_slice(body);
    let len = (f.len() - 4) as i32;
    f[..4].copy_from_slice(&len.to_be_bytes());
    c.send_raw(&f);
    let mut resp = c
        .recv_frame()
        .unwrap_or_else(|| panic!("{api:?} v{v}: the agent closed the connection"));
    let h = ResponseHeader::decode(&mut resp, api.response_header_version(v)).unwrap();
    assert_eq!(h.correlation_id, corr, "{api:?} v{v}");
    resp
}

#[test]
fn every_advertised_version_of_every_api_is_answered() {
    let a = AgentProc::start(&[]);
    let mut c = Conn::open(&a);
    let r: ApiVersionsResponse = c.call(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default());
    let mut answered = 0;
    let mut corr = 1000;
    for k in &r.api_keys {
        let api = ApiKey::try_from(k.api_key).unwrap();
        // A plaintext listener closes the connection on a SASL exchange, as Kafka does.
        if matches!(api, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate) {
            continue;
        }
        let req = default_request(api)
            .unwrap_or_else(|| panic!("advertised {api:?} has no request in this test"));
        for v in k.min_version..=k.max_version {
            let body = if v < api.valid_versions().min {
                old_empty_request(api, v)
            } else {
                let mut b = BytesMut::new();
                req.encode(&mut b, v)
                    .unwrap_or_else(|e| panic!("{api:?} v{v}: {e}"));
                b
            };
            corr += 1;
            exchange(&mut c, api, v, &body, corr);
            answered += 1;
        }
    }
    // Kafka 3.9's floors: OffsetCommit, OffsetFetch, ListOffsets, CreateTopics, DeleteTopics,
    // DescribeConfigs, OffsetForLeaderEpoch and the ACL APIs from v0.
    for (api, min) in [
        (ApiKey::OffsetCommit, 0),
        (ApiKey::OffsetFetch, 0),
        (ApiKey::ListOffsets, 0),
        (ApiKey::CreateTopics, 0),
        (ApiKey::DeleteTopics, 0),
        (ApiKey::DescribeConfigs, 0),
        (ApiKey::OffsetForLeaderEpoch, 0),
        (ApiKey::DescribeAcls, 0),
        (ApiKey::CreateAcls, 0),
        (ApiKey::DeleteAcls, 0),
        (ApiKey::Produce, 0),
        (ApiKey::Fetch, 0),
    ] {
        let k = r.api_keys.iter().find(|k| k.api_key == api as i16).unwrap();
        assert_eq!(k.min_version, min, "{api:?}");
    }
    assert!(answered > 200, "{answered} versions answered");
    // Still the same, usable connection.
    assert_eq!(metadata(&mut c, &["after"], 1).topics[0].error_code, 0);
}

fn s(b: &mut BytesMut, v: &str) {
    b.put_i16(v.len() as i16);
    b.put_slice(v.as_bytes());
}

fn read_str(b: &mut Bytes) -> Option<String> {
    let n = b.get_i16();
    if n < 0 {
        return None;
    }
    Some(String::from_utf8(b.split_to(n as usize).to_vec()).unwrap())
}

#[test]
fn old_versions_commit_fetch_list_and_describe_as_they_say() {
    let a = AgentProc::start(&[]);
    let mut c = Conn::open(&a);
    metadata(&mut c, &["old"], 4); // auto-creates the topic
    for _ in 0..3 {
        assert_eq!(produce_result(&mut c, "old", batch(2, -1, -1, -1)).0, 0);
    }

    // OffsetCommit v1 (with generation -1: a commit outside a group) and v0.
    for (v, offset) in [(1i16, 4i64), (0, 5)] {
        let mut b = BytesMut::new();
        s(&mut b, "old-group");
        if v == 1 {
            b.put_i32(-1);
            s(&mut b, "");
        }
        b.put_i32(1);
        s(&mut b, "old");
        b.put_i32(1);
        b.put_i32(0);
        b.put_i64(offset);
        if v == 1 {
            b.put_i64(-1); // commit timestamp
        }
        s(&mut b, "meta");
        let mut resp = exchange(&mut c, ApiKey::OffsetCommit, v, &b, 10 + v as i32);
        let r = OffsetCommitResponse::decode(&mut resp, 2).unwrap(); // same layout
        assert_eq!(r.topics[0].partitions[0].error_code, 0, "v{v}: {r:?}");

        // OffsetFetch v0 reads it back.
        let mut b = BytesMut::new();
        s(&mut b, "old-group");
        b.put_i32(1);
        s(&mut b, "old");
        b.put_i32(1);
        b.put_i32(0);
        let mut resp = exchange(&mut c, ApiKey::OffsetFetch, 0, &b, 20 + v as i32);
        let r = OffsetFetchResponse::decode(&mut resp, 1).unwrap(); // same layout
        let p = &r.topics[0].partitions[0];
        assert_eq!((p.committed_offset, p.error_code), (offset, 0));
        assert_eq!(p.metadata.as_deref(), Some("meta"));
    }

    // ListOffsets v0: latest (-1) answers [6], earliest (-2) [0].
    for (ts, want) in [(-1i64, 6i64), (-2, 0)] {
        let mut b = BytesMut::new();
        b.put_i32(-1);
        b.put_i32(1);
        s(&mut b, "old");
        b.put_i32(1);
        b.put_i32(0);
        b.put_i64(ts);
        b.put_i32(1); // max_num_offsets
        let mut resp = exchange(&mut c, ApiKey::ListOffsets, 0, &b, 30);
        assert_eq!(resp.get_i32(), 1);
        assert_eq!(read_str(&mut resp).as_deref(), Some("old"));
        assert_eq!(resp.get_i32(), 1);
        assert_eq!((resp.get_i32(), resp.get_i16()), (0, 0));
        assert_eq!(resp.get_i32(), 1, "one offset");
        assert_eq!(resp.get_i64(), want, "timestamp {ts}");
    }

    // DescribeConfigs v0: retention.ms reported as a default (is_default = true).
    let mut b = BytesMut::new();
    b.put_i32(1);
    b.put_i8(2);
    s(&mut b, "old");
    b.put_i32(1);
    s(&mut b, "retention.ms");
    let mut resp = exchange(&mut c, ApiKey::DescribeConfigs, 0, &b, 40);
    resp.get_i32(); // throttle
    assert_eq!(resp.get_i32(), 1);
    assert_eq!(resp.get_i16(), 0, "no error");
    read_str(&mut resp);
    assert_eq!(resp.get_i8(), 2);
    assert_eq!(read_str(&mut resp).as_deref(), Some("old"));
    assert_eq!(resp.get_i32(), 1);
    assert_eq!(read_str(&mut resp).as_deref(), Some("retention.ms"));
    assert!(read_str(&mut resp).is_some(), "a value");
    let (read_only, is_default, sensitive) = (resp.get_u8(), resp.get_u8(), resp.get_u8());
    assert_eq!((read_only, is_default, sensitive), (0, 1, 0));
    assert!(!resp.has_remaining());

    // zstd before Produce v7: UNSUPPORTED_COMPRESSION_TYPE, as Kafka answers.
    let mut zstd = BytesMut::from(&batch(1, -1, -1, -1)[..]);
    let attrs = (i16::from_be_bytes([zstd[21], zstd[22]]) & !7) | 4;
    zstd[21..23].copy_from_slice(&attrs.to_be_bytes());
    let req = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("old")))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(zstd.freeze())),
            ])]);
    let r: ProduceResponse = c.call(ApiKey::Produce, 6, &req);
    assert_eq!(r.responses[0].partition_responses[0].error_code, 76);
}

/// A Produce v0-2 request of one partition carrying `set`.
fn old_produce(topic: &str, set: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i16(-1); // acks=all
    b.put_i32(10_000);
    b.put_i32(1);
    s(&mut b, topic);
    b.put_i32(1);
    b.put_i32(0);
    b.put_i32(set.len() as i32);
    b.put_slice(set);
    b
}

/// One message of `magic` (uncompressed).
fn message(magic: i8, ts: i64, key: &[u8], value: &[u8]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_i8(magic);
    body.put_i8(0);
    if magic == 1 {
        body.put_i64(ts);
    }
    body.put_i32(key.len() as i32);
    body.put_slice(key);
    body.put_i32(value.len() as i32);
    body.put_slice(value);
    let mut m = BytesMut::new();
    m.put_i64(0);
    m.put_i32(4 + body.len() as i32);
    m.put_u32(crc32fast::hash(&body));
    m.put_slice(&body);
    m
}

/// Produced as message sets (acks=all), the records survive a SIGKILL and read back, once,
/// through current and old fetches.
#[test]
fn message_sets_v0_and_v1_round_trip_through_the_log() {
    let a = AgentProc::start(&[]);
    let mut c = Conn::open(&a);
    metadata(&mut c, &["sets"], 4);
    // Produce v0 (magic 0, two messages) and v2 (magic 1, one with a timestamp).
    let mut set = message(0, -1, b"k0", b"v0");
    set.extend_from_slice(&message(0, -1, b"k1", b"v1"));
    let mut resp = exchange(&mut c, ApiKey::Produce, 0, &old_produce("sets", &set), 50);
    assert_eq!(resp.get_i32(), 1);
    read_str(&mut resp);
    assert_eq!(resp.get_i32(), 1);
    assert_eq!(
        (resp.get_i32(), resp.get_i16(), resp.get_i64()),
        (0, 0, 0),
        "v0: partition, error, base offset"
    );
    let set = message(1, 1_700_000_000_000, b"k2", b"v2");
    let mut resp = exchange(&mut c, ApiKey::Produce, 2, &old_produce("sets", &set), 51);
    resp.advance(4 + 2 + 4 + 4);
    assert_eq!(
        (resp.get_i32(), resp.get_i16(), resp.get_i64()),
        (0, 0, 2),
        "v2: base offset 2"
    );
    // A bad CRC: CORRUPT_MESSAGE.
    let mut bad = message(1, 5, b"k", b"v");
    bad[12] ^= 0xff;
    let mut resp = exchange(&mut c, ApiKey::Produce, 1, &old_produce("sets", &bad), 52);
    resp.advance(4 + 2 + 4 + 4 + 4);
    assert_eq!(resp.get_i16(), 2, "CORRUPT_MESSAGE");

    // Three message sets converted (the corrupt one was tried too).
    assert_eq!(
        a.metrics()[r#"silt_message_format_conversions_total{direction="up"}"#],
        3.0
    );

    // Acknowledged (acks=all) means durable: SIGKILL and start again before reading.
    let mut a = a;
    a.kill();
    a.start_again();
    let mut c = Conn::open(&a);

    // A current consumer reads three records at offsets 0-2; magic 0 ones without timestamps.
    let f: FetchResponse = c.call(
        ApiKey::Fetch,
        11,
        &FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("sets")))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]),
    );
    let mut recs = f.responses[0].partitions[0].records.clone().unwrap();
    let got: Vec<(i64, i64, Vec<u8>)> =
        kafka_protocol::records::RecordBatchDecoder::decode_all(&mut recs)
            .unwrap()
            .into_iter()
            .flat_map(|s| s.records)
            .map(|r| (r.offset, r.timestamp, r.value.unwrap().to_vec()))
            .collect();
    assert_eq!(
        got,
        vec![
            (0, -1, b"v0".to_vec()),
            (1, -1, b"v1".to_vec()),
            (2, 1_700_000_000_000, b"v2".to_vec())
        ]
    );

    // Fetch v0 (magic 0) from offset 1 and v3 (magic 1) from 0 read them as message sets.
    for (v, from, magic) in [(0i16, 1i64, 0i8), (3, 0, 1)] {
        let mut b = BytesMut::new();
        b.put_i32(-1);
        b.put_i32(0);
        b.put_i32(0);
        if v == 3 {
            b.put_i32(1 << 20);
        }
        b.put_i32(1);
        s(&mut b, "sets");
        b.put_i32(1);
        b.put_i32(0);
        b.put_i64(from);
        b.put_i32(1 << 20);
        let mut resp = exchange(&mut c, ApiKey::Fetch, v, &b, 60 + v as i32);
        if v >= 1 {
            resp.get_i32(); // throttle
        }
        assert_eq!(resp.get_i32(), 1);
        read_str(&mut resp);
        assert_eq!(resp.get_i32(), 1);
        assert_eq!(
            (resp.get_i32(), resp.get_i16(), resp.get_i64()),
            (0, 0, 3),
            "v{v}"
        );
        let n = resp.get_i32() as usize;
        let mut set = resp.split_to(n);
        assert!(!resp.has_remaining());
        let mut seen = Vec::new();
        while set.has_remaining() {
            let offset = set.get_i64();
            let size = set.get_i32() as usize;
            let mut m = set.split_to(size);
            let crc = m.get_u32();
            assert_eq!(crc32fast::hash(&m), crc, "v{v}: CRC of offset {offset}");
            assert_eq!(m.get_i8(), magic);
            m.get_i8();
            let ts = if magic == 1 { m.get_i64() } else { -1 };
            let k = m.get_i32() as usize;
            let key = m.split_to(k);
            let vl = m.get_i32() as usize;
            let value = m.split_to(vl);
            seen.push((offset, ts, key.to_vec(), value.to_vec()));
        }
        let all = [
            (0, -1, b"k0".to_vec(), b"v0".to_vec()),
            (1, -1, b"k1".to_vec(), b"v1".to_vec()),
            (2, 1_700_000_000_000, b"k2".to_vec(), b"v2".to_vec()),
        ];
        let want: Vec<_> = all
            .iter()
            .filter(|m| m.0 >= from)
            .map(|m| {
                (
                    m.0,
                    if magic == 0 { -1 } else { m.1 },
                    m.2.clone(),
                    m.3.clone(),
                )
            })
            .collect();
        assert_eq!(seen, want, "Fetch v{v}");
    }
    // Operators can see that old clients are connected (counted since the restart).
    let m = a.metrics();
    assert_eq!(
        m[r#"silt_message_format_conversions_total{direction="down"}"#],
        2.0
    );
}

/// librdkafka pinned to brokers from before 0.11 (`api.version.request=false`): 0.9 speaks
/// Produce v1 / Fetch v1 with messages v0, 0.10 Produce v2 / Fetch v2 with messages v1. Each
/// produces, with and without compression, and a consumer group of the same client reads
/// every record back, keys and (for v1) timestamps included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_pinned_to_old_brokers_produces_and_consumes() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::FutureRecord;
    use rdkafka::Message;
    let a = AgentProc::start(&[("SILT_GROUPS__INITIAL_REBALANCE_DELAY_MS", "0")]);
    let b = a.bootstrap();
    for (fallback, codec) in [
        ("0.9.0", "none"),
        ("0.9.0", "gzip"),
        ("0.9.0", "lz4"),
        ("0.10.0", "none"),
        ("0.10.0", "snappy"),
        ("0.10.0", "lz4"),
    ] {
        let topic = format!("old-{}-{codec}", fallback.replace('.', "-"));
        let old = [
            ("api.version.request", "false"),
            ("broker.version.fallback", fallback),
        ];
        let mut conf: Vec<(&str, &str)> = old.to_vec();
        conf.push(("compression.codec", codec));
        let p = crate::kafka::producer(&b, &conf);
        let n = 50;
        for i in 0..n {
            let (k, v) = (format!("k{i}"), format!("value {i} ").repeat(1 + i % 5));
            p.send(
                FutureRecord::to(&topic)
                    .key(&k)
                    .payload(&v)
                    .timestamp(1_700_000_000_000 + i as i64),
                std::time::Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("{fallback} {codec}: record {i}: {e}"));
        }
        let mut conf: Vec<(&str, &str)> = old.to_vec();
        conf.extend([
            ("group.id", topic.as_str()),
            ("auto.offset.reset", "earliest"),
        ]);
        let c: StreamConsumer = crate::kafka::config(&b, &conf).create().unwrap();
        c.subscribe(&[&topic]).unwrap();
        let mut got = Vec::new();
        while got.len() < n {
            let m = tokio::time::timeout(std::time::Duration::from_secs(30), c.recv())
                .await
                .unwrap_or_else(|_| panic!("{fallback} {codec}: only {} records read", got.len()))
                .unwrap();
            got.push((
                m.offset(),
                m.timestamp().to_millis(),
                String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                String::from_utf8(m.payload().unwrap().to_vec()).unwrap(),
            ));
        }
        for (i, (offset, ts, k, v)) in got.iter().enumerate() {
            assert_eq!(*offset, i as i64, "{fallback} {codec}");
            assert_eq!(k, &format!("k{i}"));
            assert_eq!(v, &format!("value {i} ").repeat(1 + i % 5));
            if fallback == "0.10.0" {
                assert_eq!(
                    *ts,
                    Some(1_700_000_000_000 + i as i64),
                    "{codec}: timestamps survive v1"
                );
            }
        }
    }
}
