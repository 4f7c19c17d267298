//! Response encoding: length prefix, the response header of the right version, the body.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;

/// Encodes a complete response frame.
pub fn encode_response(
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    body: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(size_hint(body));
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(&mut buf, api_key.response_header_version(version))?;
    if crate::legacy::covers(api_key, version) {
        crate::legacy::encode(api_key, version, body, &mut buf).map_err(anyhow::Error::msg)?;
    } else {
        body.encode(&mut buf, version)?;
    }
    let len = i32::try_from(buf.len() - 4).map_err(|_| {
        anyhow::anyhow!(
            "response of {} bytes exceeds the protocol's 2 GiB frame limit",
            buf.len()
        )
    })?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
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
