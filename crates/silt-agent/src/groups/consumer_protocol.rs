//! The consumer protocol's embedded payloads, which classic members exchange through JoinGroup
//! (their subscription, as each protocol's metadata) and SyncGroup (their assignment): a 2-byte
//! version, then a `ConsumerProtocolSubscription` or `ConsumerProtocolAssignment`. A version
//! newer than known is read as the newest known one (its extra fields ignored), as Kafka's
//! `ConsumerProtocol` reads it. Payloads from clients are read by a bounded reader of their own
//! (not kafka-protocol's decoder, which allocates whatever count the bytes claim): one that does
//! not decode is `None`.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::{
    ConsumerProtocolAssignment, TopicPartition as AssignedPartitions,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::{Encodable, StrBytes};

/// The newest version of both payloads this agent reads and writes.
pub const LATEST: i16 = 3;

/// A classic member's subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// The version it was written at.
    pub version: i16,
    /// Subscribed topic names.
    pub topics: Vec<String>,
    /// Partitions it says it owns (cooperative members, v1+), by topic name.
    pub owned: Vec<(String, Vec<i32>)>,
    /// Its rack (v3+).
    pub rack: Option<String>,
}

/// A bounded reader: every length and count is checked against the bytes left before
/// anything is allocated (a hostile count cannot ask for memory).
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (x, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(x)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    /// An array count, each element taking at least `min` bytes.
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = self.i32()?;
        if n < 0 {
            return Some(0); // null array
        }
        let n = n as usize;
        (n.checked_mul(min)? <= self.0.len()).then_some(n)
    }
    fn string(&mut self) -> Option<String> {
        let n = self.i16()?;
        if n < 0 {
            return None;
        }
        Some(String::from_utf8_lossy(self.take(n as usize)?).into_owned())
    }
    fn nullable_string(&mut self) -> Option<Option<String>> {
        let n = self.i16()?;
        if n < 0 {
            return Some(None);
        }
        Some(Some(
            String::from_utf8_lossy(self.take(n as usize)?).into_owned(),
        ))
    }
    fn bytes(&mut self) -> Option<()> {
        let n = self.i32()?;
        if n >= 0 {
            self.take(n as usize)?;
        }
        Some(())
    }
    /// `[topic: string, partitions: [i32]]`.
    fn topic_partitions(&mut self) -> Option<Vec<(String, Vec<i32>)>> {
        let n = self.count(6)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let topic = self.string()?;
            let k = self.count(4)?;
            let mut ps = Vec::with_capacity(k);
            for _ in 0..k {
                ps.push(self.i32()?);
            }
            out.push((topic, ps));
        }
        Some(out)
    }
}

/// A subscription from a JoinGroup protocol's metadata.
pub fn decode_subscription(bytes: &[u8]) -> Option<Subscription> {
    let mut r = Reader(bytes);
    let version = r.i16()?;
    if version < 0 {
        return None;
    }
    let n = r.count(2)?;
    let mut topics = Vec::with_capacity(n);
    for _ in 0..n {
        topics.push(r.string()?);
    }
    r.bytes()?; // user data
    let mut s = Subscription {
        version,
        topics,
        ..Default::default()
    };
    if version >= 1 {
        s.owned = r.topic_partitions()?;
    }
    if version >= 2 {
        r.i32()?; // generation
    }
    if version >= 3 {
        s.rack = r.nullable_string()?;
    }
    Some(s)
}

/// An assignment from a SyncGroup (empty bytes: no partitions, as Kafka reads them).
pub fn decode_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut r = Reader(bytes);
    if r.i16()? < 0 {
        return None;
    }
    let parts = r.topic_partitions()?;
    r.bytes()?; // user data
    Some(parts)
}

/// An assignment for a SyncGroup answer, at `version` (capped at [`LATEST`]).
pub fn encode_assignment(version: i16, parts: &[(String, Vec<i32>)]) -> Bytes {
    let version = version.clamp(0, LATEST);
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        parts
            .iter()
            .map(|(t, ps)| {
                AssignedPartitions::default()
                    .with_topic(TopicName(StrBytes::from_string(t.clone())))
                    .with_partitions(ps.clone())
            })
            .collect(),
    );
    let mut out = BytesMut::new();
    out.put_i16(version);
    a.encode(&mut out, version)
        .expect("an assignment of valid names encodes");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_protocol_subscription::{
        ConsumerProtocolSubscription, TopicPartition,
    };

    fn subscription(version: i16, s: &ConsumerProtocolSubscription) -> Bytes {
        let mut out = BytesMut::new();
        out.put_i16(version);
        s.encode(&mut out, version.min(LATEST)).unwrap();
        out.freeze()
    }

    #[test]
    fn payloads_round_trip_and_hostile_bytes_are_none() {
        let s = ConsumerProtocolSubscription::default()
            .with_topics(vec![
                StrBytes::from_static_str("a"),
                StrBytes::from_static_str("b"),
            ])
            .with_owned_partitions(vec![TopicPartition::default()
                .with_topic(TopicName(StrBytes::from_static_str("a")))
                .with_partitions(vec![0, 2])])
            .with_rack_id(Some(StrBytes::from_static_str("z1")));
        let d = decode_subscription(&subscription(3, &s)).unwrap();
        assert_eq!(d.topics, ["a", "b"]);
        assert_eq!(d.owned, vec![("a".to_string(), vec![0, 2])]);
        assert_eq!((d.version, d.rack.as_deref()), (3, Some("z1")));
        // Version 0 has neither owned partitions nor a rack.
        let d0 = decode_subscription(&subscription(0, &s)).unwrap();
        assert!(d0.owned.is_empty() && d0.rack.is_none());
        // A newer version is read as the newest known.
        let mut v9 = subscription(3, &s).to_vec();
        v9[..2].copy_from_slice(&9i16.to_be_bytes());
        assert_eq!(decode_subscription(&v9).unwrap().topics, ["a", "b"]);
        let parts = vec![("t".to_string(), vec![1, 3])];
        for v in 0..=4 {
            assert_eq!(
                decode_assignment(&encode_assignment(v, &parts)).unwrap(),
                parts
            );
        }
        assert_eq!(decode_assignment(b"").unwrap(), vec![]);
        for bad in [
            &b"\x00"[..],
            b"\x00\x00\x7f\xff\xff\xff",
            b"\xff\xff\x00",
            b"\x00\x01\x00\x00\x00\x01\x00",
        ] {
            assert_eq!(decode_subscription(bad), None, "{bad:?}");
            assert_eq!(decode_assignment(bad), None, "{bad:?}");
        }
    }
}
