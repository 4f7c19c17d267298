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
    let mut buf = BytesMut::with_capacity(256);
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
