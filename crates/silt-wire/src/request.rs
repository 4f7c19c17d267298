//! Request framing above the length prefix: the header, and guarded decoding of the body.
//!
//! Decoding runs under `catch_unwind` so a decoder bug is one closed connection, not a dead
//! agent; the allocator in [`crate::alloc`] keeps wire-sized capacities from aborting.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;

/// A request whose header is parsed and whose body is not yet decoded.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// The API.
    pub api_key: ApiKey,
    /// The API version.
    pub version: i16,
    /// The parsed header.
    pub header: RequestHeader,
    /// The body bytes after the header.
    pub body: Bytes,
}

impl RawRequest {
    /// The correlation id from the header.
    pub fn correlation_id(&self) -> i32 {
        self.header.correlation_id
    }
}

/// Why a request could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Fewer bytes than the fixed part of a header.
    #[error("frame of {len} bytes is too short for a request header")]
    TooShort {
        /// Frame length.
        len: usize,
    },
    /// The API key is not one Kafka defines.
    #[error("unknown API key {api_key} (correlation id {correlation_id})")]
    UnknownApiKey {
        /// The key sent.
        api_key: i16,
        /// From the header.
        correlation_id: i32,
    },
    /// The header or body did not decode.
    #[error("malformed {api:?} v{version} request (correlation id {correlation_id}): {reason}")]
    Malformed {
        /// The API.
        api: ApiKey,
        /// Its version.
        version: i16,
        /// From the header.
        correlation_id: i32,
        /// What the decoder said.
        reason: String,
    },
}

/// Parses the header of `frame`.
pub fn parse_header(frame: Bytes) -> Result<RawRequest, RequestError> {
    if frame.len() < 8 {
        return Err(RequestError::TooShort { len: frame.len() });
    }
    let mut peek = &frame[..8];
    let key = peek.get_i16();
    let version = peek.get_i16();
    let correlation_id = peek.get_i32();
    let api_key = ApiKey::try_from(key).map_err(|_| RequestError::UnknownApiKey {
        api_key: key,
        correlation_id,
    })?;
    let malformed = |reason: String| RequestError::Malformed {
        api: api_key,
        version,
        correlation_id,
        reason,
    };
    let header_version =
        if api_key == ApiKey::ApiVersions && version > ApiKey::ApiVersions.valid_versions().max {
            // KIP-511: a client newer than us still sends a header we can read (v2).
            2
        } else {
            api_key.request_header_version(version)
        };
    let mut body = frame;
    let header = guarded(|| RequestHeader::decode(&mut body, header_version)).map_err(malformed)?;
    Ok(RawRequest {
        api_key,
        version,
        header,
        body,
    })
}

/// Decodes the body of `req`. The caller has checked the version is one it serves.
pub fn decode_body(req: &RawRequest) -> Result<RequestKind, RequestError> {
    let mut body = req.body.clone();
    guarded(|| RequestKind::decode(req.api_key, &mut body, req.version)).map_err(|reason| {
        RequestError::Malformed {
            api: req.api_key,
            version: req.version,
            correlation_id: req.correlation_id(),
            reason,
        }
    })
}

fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!(
            "decoder panicked: {}",
            panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn frame(api: i16, version: i16, rest: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(api);
        b.put_i16(version);
        b.put_i32(77);
        b.put_i16(-1); // null client id
        b.put_slice(rest);
        b.freeze()
    }

    #[test]
    fn hostile_array_count_is_an_error_not_an_abort() {
        // Metadata v1: topics array with i32::MAX elements and no bytes behind it.
        let req = parse_header(frame(3, 1, &[0x7f, 0xff, 0xff, 0xff])).unwrap();
        let err = decode_body(&req).unwrap_err();
        assert!(
            matches!(
                err,
                RequestError::Malformed {
                    correlation_id: 77,
                    ..
                }
            ),
            "{err}"
        );
        // Flexible Metadata v12: compact array with u32::MAX-1 elements.
        let mut rest = vec![0u8]; // empty header tagged fields
        rest.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        let mut f = BytesMut::new();
        f.put_i16(3);
        f.put_i16(12);
        f.put_i32(78);
        f.put_i16(-1);
        f.put_slice(&rest);
        let req = parse_header(f.freeze()).unwrap();
        assert!(decode_body(&req).is_err());
    }

    #[test]
    fn unknown_key_and_short_frames_are_named() {
        assert!(matches!(
            parse_header(frame(999, 0, &[])),
            Err(RequestError::UnknownApiKey {
                api_key: 999,
                correlation_id: 77
            })
        ));
        assert!(matches!(
            parse_header(Bytes::from_static(&[0, 3, 0])),
            Err(RequestError::TooShort { len: 3 })
        ));
    }
}
