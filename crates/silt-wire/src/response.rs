//! Response encoding: length prefix, the response header of the right version, the body; and
//! a Fetch response whose records stay where they were read ([`encode_frame`]).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;

use crate::rope::Rope;

/// Encodes a complete response frame.
pub fn encode_response(
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    body: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let mut buf = encode_unsized(correlation_id, api_key, version, body)?;
    let len = i32::try_from(buf.len() - 4).map_err(|_| {
        anyhow::anyhow!(
            "response of {} bytes exceeds the protocol's 2 GiB frame limit",
            buf.len()
        )
    })?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// An encoded response as pieces to write in order (one vectored write): the first holds the
/// length prefix and the response header.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pieces: Vec<Bytes>,
    len: usize,
}

impl From<Bytes> for Frame {
    fn from(b: Bytes) -> Self {
        Self {
            len: b.len(),
            pieces: vec![b],
        }
    }
}

impl Frame {
    /// Total bytes, length prefix included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No bytes (never true of an encoded frame).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order.
    pub fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    /// The first piece, for a change in place to the header or the fields right after it
    /// (a Fetch response's throttle time); the rest stays as it is.
    pub fn head_mut(&mut self, change: impl FnOnce(&mut BytesMut)) {
        if let Some(first) = self.pieces.first_mut() {
            let mut m = BytesMut::from(std::mem::take(first));
            change(&mut m);
            *first = m.freeze();
        }
    }

    /// The whole frame in one buffer (a copy unless it is one piece): for tests and callers
    /// that need contiguous bytes.
    pub fn contiguous(&self) -> Bytes {
        let mut r = Rope::default();
        for p in &self.pieces {
            r.push(p.clone());
        }
        r.contiguous()
    }
}

/// The stand-in for `records[index]` that a Fetch response carries until [`encode_frame`]
/// writes the records themselves in its place.
pub fn records_marker(index: u32) -> Bytes {
    Bytes::copy_from_slice(&index.to_be_bytes())
}

/// The index a [`records_marker`] names, if `records` is one.
pub fn marker_index(records: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(records.try_into().ok()?))
}

/// Encodes a response whose Fetch partitions carry [`records_marker`]s in place of their
/// records: each marker is replaced, length prefix included, by the pieces of the rope it
/// names, so no record byte is copied. With no ropes this is [`encode_response`] in one piece.
///
/// The markers are found without knowing the layout of any version: the body is encoded twice,
/// once with each marker `k` and once with its complement `!k`; the only bytes that differ are
/// the markers', in the order they were encoded.
pub fn encode_frame(
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    body: &ResponseKind,
    records: &[Rope],
) -> anyhow::Result<Frame> {
    let fetch = match body {
        ResponseKind::Fetch(f) if !records.is_empty() => f,
        _ => return Ok(encode_response(correlation_id, api_key, version, body)?.into()),
    };
    let mut flipped = fetch.clone();
    let mut marked = 0usize;
    for t in &mut flipped.responses {
        for p in &mut t.partitions {
            let Some(r) = p.records.as_mut().filter(|r| !r.is_empty()) else {
                continue;
            };
            let index = marker_index(r)
                .filter(|i| (*i as usize) < records.len())
                .ok_or_else(|| {
                    anyhow::anyhow!("records of {} bytes where a marker belongs", r.len())
                })?;
            *r = Bytes::copy_from_slice(&(!index).to_be_bytes());
            marked += 1;
        }
    }
    let a = encode_unsized(correlation_id, api_key, version, body)?;
    let b = encode_unsized(
        correlation_id,
        api_key,
        version,
        &ResponseKind::Fetch(flipped),
    )?;
    if a.len() != b.len() {
        anyhow::bail!("a marked Fetch response encoded to two lengths");
    }
    // (position of the marker, index) in encoding order.
    let mut found = Vec::with_capacity(marked);
    let mut at = 0usize;
    while let Some(d) = a[at..].iter().zip(&b[at..]).position(|(x, y)| x != y) {
        let d = at + d;
        let index = a
            .get(d..d + 4)
            .and_then(marker_index)
            .filter(|i| (*i as usize) < records.len())
            .ok_or_else(|| anyhow::anyhow!("a records marker at {d} does not name a rope"))?;
        found.push((d, index as usize));
        at = d + 4;
    }
    if found.len() != marked {
        anyhow::bail!("{marked} records markers encoded, {} found", found.len());
    }
    // The length prefix before each marker, as the version writes bytes: an i32 (classic) or
    // an unsigned varint of length + 1 (flexible, Fetch v12 on).
    let flexible = version >= 12;
    let (old_prefix, old_len): (&[u8], usize) = if flexible {
        (&[5u8], 1)
    } else {
        (&[0, 0, 0, 4], 4)
    };
    let mut total = a.len();
    let mut prefixes = Vec::with_capacity(found.len());
    for &(d, index) in &found {
        if d < old_len || &a[d - old_len..d] != old_prefix {
            anyhow::bail!("the records marker at {d} has no length prefix of 4 before it");
        }
        let n = records[index].len();
        let too_large = || anyhow::anyhow!("{n} bytes of records in one partition");
        let mut p = BytesMut::with_capacity(5);
        if flexible {
            let n = u32::try_from(n + 1).map_err(|_| too_large())?;
            crate::write::put_uvarint(&mut p, n.into());
        } else {
            p.put_i32(i32::try_from(n).map_err(|_| too_large())?);
        }
        total = total - old_len - 4 + p.len() + n;
        prefixes.push(p.freeze());
    }
    let len = i32::try_from(total - 4).map_err(|_| {
        anyhow::anyhow!("response of {total} bytes exceeds the protocol's 2 GiB frame limit")
    })?;
    let mut a = a;
    a[..4].copy_from_slice(&len.to_be_bytes());
    let a = a.freeze();
    let mut pieces = Vec::with_capacity(found.len() * 4 + 1);
    let mut cursor = 0usize;
    for (&(d, index), prefix) in found.iter().zip(prefixes) {
        pieces.push(a.slice(cursor..d - old_len));
        pieces.push(prefix);
        pieces.extend(records[index].pieces().iter().cloned());
        cursor = d + 4;
    }
    pieces.push(a.slice(cursor..));
    pieces.retain(|p| !p.is_empty());
    Ok(Frame { pieces, len: total })
}

/// [`encode_response`] without the length prefix filled in, as a buffer still to change.
fn encode_unsized(
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    body: &ResponseKind,
) -> anyhow::Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(size_hint(body));
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(&mut buf, api_key.response_header_version(version))?;
    if crate::legacy::covers(api_key, version) {
        crate::legacy::encode(api_key, version, body, &mut buf).map_err(anyhow::Error::msg)?;
    } else {
        body.encode(&mut buf, version)?;
    }
    Ok(buf)
}

/// Room for an encoded response, so a large one (a Fetch carrying up to 55 MiB of records) is
/// written into one buffer of about its size instead of one grown by doubling (which held up to
/// twice the response, and three times while it grew).
fn size_hint(body: &ResponseKind) -> usize {
    match body {
        ResponseKind::Fetch(f) => {
            let mut n = 1024;
            for t in &f.responses {
                n += 64 + t.topic.len();
                for p in &t.partitions {
                    n += 96 + p.records.as_ref().map_or(0, |r| r.len());
                    n += 16 * p.aborted_transactions.as_ref().map_or(0, |a| a.len());
                }
            }
            n
        }
        _ => 256,
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::FetchResponse;

    /// A large Fetch response is encoded into a buffer that never grew: its capacity is within
    /// the hint, which is within a few KiB of its size.
    #[test]
    fn a_fetch_response_is_encoded_without_growing_its_buffer() {
        let records = bytes::Bytes::from(vec![7u8; 3 << 20]);
        let parts = (0..8)
            .map(|i| {
                PartitionData::default()
                    .with_partition_index(i)
                    .with_records(Some(records.clone()))
            })
            .collect();
        let body = ResponseKind::Fetch(FetchResponse::default().with_responses(vec![
            FetchableTopicResponse::default().with_partitions(parts),
        ]));
        for version in [4i16, 12, 16] {
            let hint = size_hint(&body);
            let out = encode_response(1, ApiKey::Fetch, version, &body).unwrap();
            assert!(out.len() <= hint, "v{version}: {} > {hint}", out.len());
            assert!(
                hint - out.len() < 4096,
                "v{version}: hint {hint} for {}",
                out.len()
            );
        }
    }
}

#[cfg(test)]
mod frame_tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, FetchableTopicResponse, PartitionData,
    };
    use kafka_protocol::messages::{FetchResponse, ProducerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use crate::rope::tests::next;

    /// Seeded Fetch responses of every version a client can ask for (the classic encodings the
    /// legacy layer writes, v4–v11, the flexible v12–v16), with partitions that carry records
    /// (cut into random pieces, from 1 byte to 200 KiB), empty or null records, errors and
    /// aborted transactions: the frame's pieces, put together, are byte for byte what
    /// `encode_response` writes with the records in place, and no record byte was copied.
    #[test]
    fn a_frame_is_the_response_with_its_records_left_in_place() {
        for seed in 0..400u64 {
            let mut s = seed;
            let version = (next(&mut s) % 17) as i16;
            let mut ropes = Vec::new();
            let mut whole_topics = Vec::new();
            let mut marked_topics = Vec::new();
            for t in 0..(1 + next(&mut s) % 4) {
                let mut whole_parts = Vec::new();
                let mut marked_parts = Vec::new();
                for p in 0..(1 + next(&mut s) % 6) {
                    let mut pd = PartitionData::default()
                        .with_partition_index(p as i32)
                        .with_high_watermark(next(&mut s) as i64 >> 2)
                        .with_last_stable_offset(7)
                        .with_log_start_offset(3);
                    if version >= 4 && next(&mut s).is_multiple_of(3) {
                        pd = pd
                            .with_aborted_transactions(Some(vec![AbortedTransaction::default()
                                .with_producer_id(ProducerId(9))
                                .with_first_offset(11)]));
                    }
                    let (whole, marked) = match next(&mut s) % 4 {
                        0 => (None, None),
                        1 => (Some(Bytes::new()), Some(Bytes::new())),
                        _ => {
                            let n = 1 + next(&mut s) as usize % (200 << 10);
                            let data: Bytes =
                                (0..n).map(|i| (i * 31 + seed as usize) as u8).collect();
                            let mut rope = Rope::default();
                            let mut at = 0;
                            while at < n {
                                let end = (at + 1 + next(&mut s) as usize % (n / 3 + 1)).min(n);
                                rope.push(data.slice(at..end));
                                at = end;
                            }
                            ropes.push(rope);
                            (Some(data), Some(records_marker(ropes.len() as u32 - 1)))
                        }
                    };
                    whole_parts.push(pd.clone().with_records(whole));
                    marked_parts.push(pd.with_records(marked));
                }
                let topic = TopicName(StrBytes::from_string(format!("topic-{t}-{seed}")));
                whole_topics.push(
                    FetchableTopicResponse::default()
                        .with_topic(topic.clone())
                        .with_partitions(whole_parts),
                );
                marked_topics.push(
                    FetchableTopicResponse::default()
                        .with_topic(topic)
                        .with_partitions(marked_parts),
                );
            }
            let whole = ResponseKind::Fetch(
                FetchResponse::default()
                    .with_throttle_time_ms(5)
                    .with_responses(whole_topics),
            );
            let marked = ResponseKind::Fetch(
                FetchResponse::default()
                    .with_throttle_time_ms(5)
                    .with_responses(marked_topics),
            );
            let expect = encode_response(42, ApiKey::Fetch, version, &whole).unwrap();
            let frame = encode_frame(42, ApiKey::Fetch, version, &marked, &ropes).unwrap();
            assert_eq!(frame.len(), expect.len(), "seed {seed} v{version}");
            assert_eq!(frame.contiguous(), expect, "seed {seed} v{version}");
            // Every piece of every rope is in the frame as it was (the same buffer).
            for rope in &ropes {
                for piece in rope.pieces() {
                    assert!(
                        frame.pieces().iter().any(|f| f.as_ptr() == piece.as_ptr()),
                        "seed {seed}: a piece of records was copied"
                    );
                }
            }
        }
    }

    /// A marker that names no rope, or records where a marker belongs, is an error, not a
    /// wrong frame.
    #[test]
    fn a_bad_marker_is_an_error() {
        let body = |r: Bytes| {
            ResponseKind::Fetch(FetchResponse::default().with_responses(vec![
                FetchableTopicResponse::default().with_partitions(vec![
                    PartitionData::default().with_records(Some(r)),
                ]),
            ]))
        };
        let ropes = [Rope::from(Bytes::from_static(b"abc"))];
        assert!(encode_frame(1, ApiKey::Fetch, 12, &body(records_marker(1)), &ropes).is_err());
        assert!(encode_frame(
            1,
            ApiKey::Fetch,
            12,
            &body(Bytes::from_static(b"hello")),
            &ropes
        )
        .is_err());
        assert!(encode_frame(1, ApiKey::Fetch, 12, &body(records_marker(0)), &ropes).is_ok());
    }
}
