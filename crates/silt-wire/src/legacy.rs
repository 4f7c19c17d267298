//! Request and response versions Kafka 3.9 still serves but `kafka-protocol` 0.18 no longer
//! knows (KIP-896 removed them in Kafka 4.0; older clients still send them): Produce v0–2 and
//! Fetch v0–3 (their records stay message sets here; [`crate::message_set`] converts them),
//! OffsetCommit v0–1, OffsetFetch v0, ListOffsets v0, CreateTopics v0–1, DeleteTopics v0, DescribeConfigs v0,
//! OffsetForLeaderEpoch v0–1 and the ACL APIs' v0 (literal resource names only, as before
//! prefixed patterns). Each is decoded by hand into the request structure of the oldest
//! version the crate knows, handled like it, and its response encoded by hand in the old layout.
//! Everything here is bounds-checked: a short or lying frame is an error, never a panic or a
//! large allocation.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

/// The lowest version served for `api` when it is below what `kafka-protocol` decodes.
pub fn floor(api: ApiKey) -> Option<i16> {
    Some(match api {
        ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::ListOffsets
        | ApiKey::CreateTopics
        | ApiKey::DeleteTopics
        | ApiKey::DescribeConfigs
        | ApiKey::OffsetForLeaderEpoch
        | ApiKey::DescribeAcls
        | ApiKey::CreateAcls
        | ApiKey::DeleteAcls
        | ApiKey::Produce
        | ApiKey::Fetch => 0,
        _ => return None,
    })
}

/// Whether `version` of `api` is decoded and encoded here.
pub fn covers(api: ApiKey, version: i16) -> bool {
    floor(api).is_some_and(|f| version >= f && version < api.valid_versions().min)
}

/// A bounds-checked reader of the classic (non-flexible) encoding.
struct Reader(Bytes);

type R<T> = Result<T, String>;

impl Reader {
    fn need(&self, n: usize) -> R<()> {
        if self.0.remaining() < n {
            return Err(format!("frame ends early: {n} more bytes needed"));
        }
        Ok(())
    }
    fn i8(&mut self) -> R<i8> {
        self.need(1)?;
        Ok(self.0.get_i8())
    }
    fn i16(&mut self) -> R<i16> {
        self.need(2)?;
        Ok(self.0.get_i16())
    }
    fn i32(&mut self) -> R<i32> {
        self.need(4)?;
        Ok(self.0.get_i32())
    }
    fn i64(&mut self) -> R<i64> {
        self.need(8)?;
        Ok(self.0.get_i64())
    }
    fn nullable_string(&mut self) -> R<Option<StrBytes>> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(None);
        }
        let n = n as usize;
        self.need(n)?;
        let b = self.0.split_to(n);
        StrBytes::from_utf8(b)
            .map(Some)
            .map_err(|e| format!("string is not UTF-8: {e}"))
    }
    fn string(&mut self) -> R<StrBytes> {
        self.nullable_string()?
            .ok_or_else(|| "null where a string is required".to_string())
    }
    /// An array count, checked against what is left (each element takes at least `min` bytes).
    fn count(&mut self, min: usize) -> R<usize> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(0);
        }
        let n = n as usize;
        if n.saturating_mul(min) > self.0.remaining() {
            return Err(format!("array of {n} elements does not fit in the frame"));
        }
        Ok(n)
    }
    /// An array whose elements take at least `min` bytes each, each read by `item`.
    fn array<T>(&mut self, min: usize, mut item: impl FnMut(&mut Self) -> R<T>) -> R<Vec<T>> {
        let n = self.count(min)?;
        (0..n).map(|_| item(self)).collect()
    }
    fn done(&self) -> R<()> {
        if self.0.has_remaining() {
            return Err(format!(
                "{} bytes left after the request",
                self.0.remaining()
            ));
        }
        Ok(())
    }
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len() as i16);
    b.put_slice(s.as_bytes());
}

fn put_nullable(b: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(b, s),
        None => b.put_i16(-1),
    }
}

/// Decodes a request body of a version [`covers`] says is handled here.
pub fn decode(api: ApiKey, version: i16, body: Bytes) -> R<RequestKind> {
    let mut r = Reader(body.clone());
    let req = match api {
        ApiKey::OffsetCommit => {
            let group_id = GroupId(r.string()?);
            let (generation, member) = if version >= 1 {
                (r.i32()?, r.string()?)
            } else {
                (-1, StrBytes::default())
            };
            let topics = r.array(6, |r| {
                let name = TopicName(r.string()?);
                let parts = r.array(14, |r| {
                    let index = r.i32()?;
                    let offset = r.i64()?;
                    if version >= 1 {
                        r.i64()?; // commit timestamp: Kafka ignores it since 0.10.1 as well
                    }
                    Ok(
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(index)
                            .with_committed_offset(offset)
                            .with_committed_metadata(r.nullable_string()?),
                    )
                })?;
                Ok(offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(name)
                    .with_partitions(parts))
            })?;
            RequestKind::OffsetCommit(
                OffsetCommitRequest::default()
                    .with_group_id(group_id)
                    .with_generation_id_or_member_epoch(generation)
                    .with_member_id(member)
                    .with_retention_time_ms(-1)
                    .with_topics(topics),
            )
        }
        ApiKey::ListOffsets => {
            let replica = r.i32()?;
            let topics = r.array(6, |r| {
                let name = TopicName(r.string()?);
                let parts = r.array(16, |r| {
                    let index = r.i32()?;
                    let ts = r.i64()?;
                    r.i32()?; // max_num_offsets: Silt answers one
                    Ok(list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(index)
                        .with_timestamp(ts)
                        .with_current_leader_epoch(-1))
                })?;
                Ok(list_offsets_request::ListOffsetsTopic::default()
                    .with_name(name)
                    .with_partitions(parts))
            })?;
            RequestKind::ListOffsets(
                ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(replica))
                    .with_topics(topics),
            )
        }
        ApiKey::OffsetForLeaderEpoch => {
            let topics = r.array(6, |r| {
                let name = TopicName(r.string()?);
                let parts = r.array(8, |r| {
                    Ok(
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(r.i32()?)
                            .with_leader_epoch(r.i32()?)
                            .with_current_leader_epoch(-1),
                    )
                })?;
                Ok(
                    offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                        .with_topic(name)
                        .with_partitions(parts),
                )
            })?;
            RequestKind::OffsetForLeaderEpoch(
                OffsetForLeaderEpochRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(topics),
            )
        }
        // v0 of the ACL APIs knows literal resource names only (pattern type 3).
        ApiKey::DescribeAcls => RequestKind::DescribeAcls(
            DescribeAclsRequest::default()
                .with_resource_type_filter(r.i8()?)
                .with_resource_name_filter(r.nullable_string()?)
                .with_pattern_type_filter(LITERAL)
                .with_principal_filter(r.nullable_string()?)
                .with_host_filter(r.nullable_string()?)
                .with_operation(r.i8()?)
                .with_permission_type(r.i8()?),
        ),
        ApiKey::CreateAcls => {
            let creations = r.array(9, |r| {
                Ok(create_acls_request::AclCreation::default()
                    .with_resource_type(r.i8()?)
                    .with_resource_name(r.string()?)
                    .with_resource_pattern_type(LITERAL)
                    .with_principal(r.string()?)
                    .with_host(r.string()?)
                    .with_operation(r.i8()?)
                    .with_permission_type(r.i8()?))
            })?;
            RequestKind::CreateAcls(CreateAclsRequest::default().with_creations(creations))
        }
        ApiKey::DeleteAcls => {
            let filters = r.array(9, |r| {
                Ok(delete_acls_request::DeleteAclsFilter::default()
                    .with_resource_type_filter(r.i8()?)
                    .with_resource_name_filter(r.nullable_string()?)
                    .with_pattern_type_filter(LITERAL)
                    .with_principal_filter(r.nullable_string()?)
                    .with_host_filter(r.nullable_string()?)
                    .with_operation(r.i8()?)
                    .with_permission_type(r.i8()?))
            })?;
            RequestKind::DeleteAcls(DeleteAclsRequest::default().with_filters(filters))
        }
        // Same layout as the oldest version the crate knows, or that layout with a field
        // appended at the end.
        ApiKey::OffsetFetch | ApiKey::DeleteTopics => {
            return decode_as(api, 1, body);
        }
        ApiKey::CreateTopics => {
            let mut b = BytesMut::from(&body[..]);
            if version == 0 {
                b.put_u8(0); // validate_only = false (added in v1)
            }
            return decode_as(api, 2, b.freeze());
        }
        ApiKey::DescribeConfigs => {
            let mut b = BytesMut::from(&body[..]);
            b.put_u8(0); // include_synonyms = false (added in v1)
            return decode_as(api, 1, b.freeze());
        }
        ApiKey::Produce => {
            // v3 adds a transactional id in front; the rest is laid out alike.
            let mut b = BytesMut::with_capacity(body.len() + 2);
            b.put_i16(-1);
            b.put_slice(&body);
            return decode_as(api, 3, b.freeze());
        }
        ApiKey::Fetch => {
            // v3 adds max_bytes after min_bytes, v4 the isolation level after it.
            let head = if version >= 3 { 16 } else { 12 };
            r.need(head)?;
            let mut b = BytesMut::with_capacity(body.len() + 5);
            b.put_slice(&body[..head]);
            if version < 3 {
                b.put_i32(i32::MAX);
            }
            b.put_i8(0); // read_uncommitted
            b.put_slice(&body[head..]);
            return decode_as(api, 4, b.freeze());
        }
        other => return Err(format!("{other:?} v{version} is not decoded here")),
    };
    r.done()?;
    Ok(req)
}

/// Kafka's LITERAL resource pattern type.
const LITERAL: i8 = 3;

fn decode_as(api: ApiKey, version: i16, mut body: Bytes) -> R<RequestKind> {
    RequestKind::decode(api, &mut body, version).map_err(|e| e.to_string())
}

/// Encodes the body of a response to a version [`covers`] says is handled here.
pub fn encode(api: ApiKey, version: i16, resp: &ResponseKind, buf: &mut BytesMut) -> R<()> {
    let enc = |buf: &mut BytesMut, v: i16| resp.encode(buf, v).map_err(|e| e.to_string());
    match (api, resp) {
        // v0–v1 responses are laid out like v2 (OffsetCommit) and v1 (OffsetFetch).
        (ApiKey::OffsetCommit, _) => enc(buf, 2),
        (ApiKey::OffsetFetch, _) => enc(buf, 1),
        (ApiKey::DeleteTopics, ResponseKind::DeleteTopics(d)) => {
            // v0: no throttle time.
            buf.put_i32(d.responses.len() as i32);
            for t in &d.responses {
                put_nullable(buf, t.name.as_ref().map(|n| n.0.as_str()));
                buf.put_i16(t.error_code);
            }
            Ok(())
        }
        (ApiKey::CreateTopics, ResponseKind::CreateTopics(c)) => {
            buf.put_i32(c.topics.len() as i32);
            for t in &c.topics {
                put_str(buf, &t.name.0);
                buf.put_i16(t.error_code);
                if version >= 1 {
                    put_nullable(buf, t.error_message.as_deref());
                }
            }
            Ok(())
        }
        (ApiKey::ListOffsets, ResponseKind::ListOffsets(l)) => {
            buf.put_i32(l.topics.len() as i32);
            for t in &l.topics {
                put_str(buf, &t.name.0);
                buf.put_i32(t.partitions.len() as i32);
                for p in &t.partitions {
                    buf.put_i32(p.partition_index);
                    buf.put_i16(p.error_code);
                    // v0 answers a list of offsets; Silt has one per query.
                    if p.error_code == 0 && p.offset >= 0 {
                        buf.put_i32(1);
                        buf.put_i64(p.offset);
                    } else {
                        buf.put_i32(0);
                    }
                }
            }
            Ok(())
        }
        (ApiKey::OffsetForLeaderEpoch, ResponseKind::OffsetForLeaderEpoch(o)) => {
            buf.put_i32(o.topics.len() as i32);
            for t in &o.topics {
                put_str(buf, &t.topic.0);
                buf.put_i32(t.partitions.len() as i32);
                for p in &t.partitions {
                    buf.put_i16(p.error_code);
                    buf.put_i32(p.partition);
                    if version >= 1 {
                        buf.put_i32(p.leader_epoch);
                    }
                    buf.put_i64(p.end_offset);
                }
            }
            Ok(())
        }
        (ApiKey::DescribeConfigs, ResponseKind::DescribeConfigs(d)) => {
            // v0: `is_default` instead of the source; no synonyms.
            buf.put_i32(d.throttle_time_ms);
            buf.put_i32(d.results.len() as i32);
            for res in &d.results {
                buf.put_i16(res.error_code);
                put_nullable(buf, res.error_message.as_deref());
                buf.put_i8(res.resource_type);
                put_str(buf, &res.resource_name);
                buf.put_i32(res.configs.len() as i32);
                for c in &res.configs {
                    put_str(buf, &c.name);
                    put_nullable(buf, c.value.as_deref());
                    buf.put_u8(c.read_only as u8);
                    buf.put_u8((c.config_source == 5) as u8); // DEFAULT_CONFIG
                    buf.put_u8(c.is_sensitive as u8);
                }
            }
            Ok(())
        }
        (ApiKey::Produce, ResponseKind::Produce(p)) => {
            buf.put_i32(p.responses.len() as i32);
            for t in &p.responses {
                put_str(buf, &t.name.0);
                buf.put_i32(t.partition_responses.len() as i32);
                for pr in &t.partition_responses {
                    buf.put_i32(pr.index);
                    buf.put_i16(pr.error_code);
                    buf.put_i64(pr.base_offset);
                    if version >= 2 {
                        buf.put_i64(pr.log_append_time_ms);
                    }
                }
            }
            if version >= 1 {
                buf.put_i32(p.throttle_time_ms);
            }
            Ok(())
        }
        (ApiKey::Fetch, ResponseKind::Fetch(f)) => {
            if version >= 1 {
                buf.put_i32(f.throttle_time_ms);
            }
            buf.put_i32(f.responses.len() as i32);
            for t in &f.responses {
                put_str(buf, &t.topic.0);
                buf.put_i32(t.partitions.len() as i32);
                for p in &t.partitions {
                    buf.put_i32(p.partition_index);
                    buf.put_i16(p.error_code);
                    buf.put_i64(p.high_watermark);
                    let records = p.records.as_deref().unwrap_or_default();
                    buf.put_i32(records.len() as i32);
                    buf.put_slice(records);
                }
            }
            Ok(())
        }
        (ApiKey::CreateAcls, _) => enc(buf, 1), // v0 and v1 responses are laid out alike
        (ApiKey::DescribeAcls, ResponseKind::DescribeAcls(d)) => {
            buf.put_i32(d.throttle_time_ms);
            buf.put_i16(d.error_code);
            put_nullable(buf, d.error_message.as_deref());
            let literal: Vec<_> = d
                .resources
                .iter()
                .filter(|r| r.pattern_type == LITERAL)
                .collect();
            buf.put_i32(literal.len() as i32);
            for res in literal {
                buf.put_i8(res.resource_type);
                put_str(buf, &res.resource_name);
                buf.put_i32(res.acls.len() as i32);
                for a in &res.acls {
                    put_str(buf, &a.principal);
                    put_str(buf, &a.host);
                    buf.put_i8(a.operation);
                    buf.put_i8(a.permission_type);
                }
            }
            Ok(())
        }
        (ApiKey::DeleteAcls, ResponseKind::DeleteAcls(d)) => {
            buf.put_i32(d.throttle_time_ms);
            buf.put_i32(d.filter_results.len() as i32);
            for f in &d.filter_results {
                buf.put_i16(f.error_code);
                put_nullable(buf, f.error_message.as_deref());
                buf.put_i32(f.matching_acls.len() as i32);
                for m in &f.matching_acls {
                    buf.put_i16(m.error_code);
                    put_nullable(buf, m.error_message.as_deref());
                    buf.put_i8(m.resource_type);
                    put_str(buf, &m.resource_name);
                    put_str(buf, &m.principal);
                    put_str(buf, &m.host);
                    buf.put_i8(m.operation);
                    buf.put_i8(m.permission_type);
                }
            }
            Ok(())
        }
        (api, _) => Err(format!("no {api:?} v{version} encoder for this response")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: &mut BytesMut, v: &str) {
        put_str(b, v);
    }

    #[test]
    fn offset_commit_v1_decodes_into_the_current_request() {
        let mut b = BytesMut::new();
        s(&mut b, "g");
        b.put_i32(3); // generation
        s(&mut b, "m-1");
        b.put_i32(1);
        s(&mut b, "orders");
        b.put_i32(1);
        b.put_i32(2); // partition
        b.put_i64(42); // offset
        b.put_i64(1_700_000_000_000); // commit timestamp
        put_nullable(&mut b, Some("meta"));
        let RequestKind::OffsetCommit(r) = decode(ApiKey::OffsetCommit, 1, b.freeze()).unwrap()
        else {
            panic!("an OffsetCommit")
        };
        assert_eq!(r.group_id.0.as_str(), "g");
        assert_eq!(
            (r.generation_id_or_member_epoch, r.member_id.as_str()),
            (3, "m-1")
        );
        let p = &r.topics[0].partitions[0];
        assert_eq!((p.partition_index, p.committed_offset), (2, 42));
        assert_eq!(p.committed_metadata.as_deref(), Some("meta"));
    }

    #[test]
    fn short_or_lying_frames_are_errors() {
        let mut b = BytesMut::new();
        s(&mut b, "g");
        b.put_i32(i32::MAX); // topics: more than the frame holds
        assert!(decode(ApiKey::OffsetCommit, 0, b.freeze()).is_err());
        let mut b = BytesMut::new();
        b.put_i16(50); // a string longer than the frame
        assert!(decode(ApiKey::OffsetCommit, 0, b.freeze()).is_err());
        assert!(decode(ApiKey::ListOffsets, 0, Bytes::from_static(&[0, 0])).is_err());
        let mut b = BytesMut::new();
        b.put_i32(-1);
        b.put_i32(0);
        b.put_u8(9); // trailing garbage
        assert!(decode(ApiKey::ListOffsets, 0, b.freeze()).is_err());
    }

    #[test]
    fn list_offsets_v0_answers_a_list_of_one_offset() {
        let resp = ResponseKind::ListOffsets(ListOffsetsResponse::default().with_topics(vec![
            list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![
                    list_offsets_response::ListOffsetsPartitionResponse::default()
                        .with_partition_index(0)
                        .with_offset(7),
                ]),
        ]));
        let mut buf = BytesMut::new();
        encode(ApiKey::ListOffsets, 0, &resp, &mut buf).unwrap();
        let mut want = BytesMut::new();
        want.put_i32(1);
        s(&mut want, "t");
        want.put_i32(1);
        want.put_i32(0);
        want.put_i16(0);
        want.put_i32(1);
        want.put_i64(7);
        assert_eq!(buf, want);
    }

    #[test]
    fn describe_acls_v0_lists_literal_bindings_without_a_pattern_type() {
        let mut b = BytesMut::new();
        b.put_i8(2);
        put_nullable(&mut b, Some("orders"));
        put_nullable(&mut b, None);
        put_nullable(&mut b, None);
        b.put_i8(1);
        b.put_i8(1);
        let RequestKind::DescribeAcls(r) = decode(ApiKey::DescribeAcls, 0, b.freeze()).unwrap()
        else {
            panic!("a DescribeAcls")
        };
        assert_eq!(r.pattern_type_filter, LITERAL);
        assert_eq!(r.resource_name_filter.as_deref(), Some("orders"));
        let acl = describe_acls_response::AclDescription::default()
            .with_principal(StrBytes::from_static_str("User:a"))
            .with_host(StrBytes::from_static_str("*"))
            .with_operation(3)
            .with_permission_type(3);
        let resource = |pattern| {
            describe_acls_response::DescribeAclsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("orders"))
                .with_pattern_type(pattern)
                .with_acls(vec![acl.clone()])
        };
        let resp = ResponseKind::DescribeAcls(
            DescribeAclsResponse::default()
                .with_error_message(None)
                .with_resources(vec![resource(LITERAL), resource(4)]),
        );
        let mut buf = BytesMut::new();
        encode(ApiKey::DescribeAcls, 0, &resp, &mut buf).unwrap();
        let mut want = BytesMut::new();
        want.put_i32(0); // throttle
        want.put_i16(0);
        put_nullable(&mut want, None);
        want.put_i32(1); // the prefixed binding is left out
        want.put_i8(2);
        put_str(&mut want, "orders");
        want.put_i32(1);
        put_str(&mut want, "User:a");
        put_str(&mut want, "*");
        want.put_i8(3);
        want.put_i8(3);
        assert_eq!(buf, want);
    }

    #[test]
    fn covered_versions_are_those_below_the_crates_floor() {
        assert!(covers(ApiKey::OffsetCommit, 0) && covers(ApiKey::OffsetCommit, 1));
        assert!(!covers(ApiKey::OffsetCommit, 2));
        assert!(covers(ApiKey::DescribeConfigs, 0) && !covers(ApiKey::DescribeConfigs, 1));
        assert!(covers(ApiKey::Produce, 0) && covers(ApiKey::Produce, 2));
        assert!(!covers(ApiKey::Produce, 3));
        assert!(covers(ApiKey::Fetch, 3) && !covers(ApiKey::Fetch, 4));
        assert!(!covers(ApiKey::Metadata, 0));
    }

    #[test]
    fn produce_v2_and_fetch_v0_decode_into_the_current_requests() {
        let mut b = BytesMut::new();
        b.put_i16(-1); // acks
        b.put_i32(1500); // timeout
        b.put_i32(1);
        s(&mut b, "orders");
        b.put_i32(1);
        b.put_i32(3); // partition
        b.put_i32(4); // message set size
        b.put_slice(b"abcd");
        let RequestKind::Produce(p) = decode(ApiKey::Produce, 2, b.freeze()).unwrap() else {
            panic!("not a produce request")
        };
        assert_eq!((p.acks, p.timeout_ms, p.transactional_id), (-1, 1500, None));
        let pd = &p.topic_data[0].partition_data[0];
        assert_eq!((pd.index, pd.records.as_deref()), (3, Some(&b"abcd"[..])));

        for version in [0i16, 3] {
            let mut b = BytesMut::new();
            b.put_i32(-1); // replica
            b.put_i32(100); // max wait
            b.put_i32(1); // min bytes
            if version == 3 {
                b.put_i32(5000); // max bytes
            }
            b.put_i32(1);
            s(&mut b, "orders");
            b.put_i32(1);
            b.put_i32(2);
            b.put_i64(77);
            b.put_i32(1024);
            let RequestKind::Fetch(f) = decode(ApiKey::Fetch, version, b.freeze()).unwrap() else {
                panic!("not a fetch request")
            };
            assert_eq!((f.max_wait_ms, f.min_bytes, f.isolation_level), (100, 1, 0));
            assert_eq!(f.max_bytes, if version == 3 { 5000 } else { i32::MAX });
            let fp = &f.topics[0].partitions[0];
            assert_eq!(
                (fp.partition, fp.fetch_offset, fp.partition_max_bytes),
                (2, 77, 1024)
            );
        }
        assert!(decode(ApiKey::Fetch, 1, Bytes::from_static(&[0, 0, 0])).is_err());
    }

    #[test]
    fn produce_and_fetch_responses_take_the_old_layouts() {
        use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
        use kafka_protocol::messages::produce_response::{
            PartitionProduceResponse, TopicProduceResponse,
        };
        let resp = ResponseKind::Produce(
            ProduceResponse::default()
                .with_throttle_time_ms(9)
                .with_responses(vec![TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partition_responses(vec![PartitionProduceResponse::default()
                        .with_index(1)
                        .with_base_offset(42)
                        .with_log_append_time_ms(-1)])]),
        );
        for (version, len) in [
            (0i16, 4 + 3 + 4 + 14),
            (1, 4 + 3 + 4 + 14 + 4),
            (2, 4 + 3 + 4 + 22 + 4),
        ] {
            let mut buf = BytesMut::new();
            encode(ApiKey::Produce, version, &resp, &mut buf).unwrap();
            assert_eq!(buf.len(), len, "produce v{version}");
            assert_eq!(&buf[17..25], &42i64.to_be_bytes());
        }
        let resp = ResponseKind::Fetch(FetchResponse::default().with_responses(
            vec![FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![PartitionData::default()
                    .with_partition_index(0)
                    .with_high_watermark(5)
                    .with_records(Some(Bytes::from_static(b"set")))])],
        ));
        let mut v0 = BytesMut::new();
        encode(ApiKey::Fetch, 0, &resp, &mut v0).unwrap();
        assert_eq!(v0.len(), 4 + 3 + 4 + 4 + 2 + 8 + 4 + 3);
        assert_eq!(&v0[v0.len() - 3..], b"set");
        let mut v1 = BytesMut::new();
        encode(ApiKey::Fetch, 1, &resp, &mut v1).unwrap();
        assert_eq!(&v1[4..], &v0[..], "v1 puts the throttle time first");
    }
}
