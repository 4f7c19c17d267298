//! Every API version the agent advertises is answered, including those Kafka 3.9 serves and
//! Kafka 4.0 dropped (KIP-896): a request of each version gets its response on an open
//! connection; the old OffsetCommit, OffsetFetch, ListOffsets and DescribeConfigs versions an
//! older client sends do what they say; zstd before Produce v7 is refused as Kafka refuses it.

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
