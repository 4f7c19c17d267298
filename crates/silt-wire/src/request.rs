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
    let legacy = crate::legacy::covers(req.api_key, req.version);
    guarded(|| {
        if legacy {
            crate::legacy::decode(req.api_key, req.version, body).map_err(anyhow::Error::msg)
        } else {
            RequestKind::decode(req.api_key, &mut body, req.version)
        }
    })
    .map_err(|reason| RequestError::Malformed {
        api: req.api_key,
        version: req.version,
        correlation_id: req.correlation_id(),
        reason,
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

#[cfg(test)]
mod mutation_tests {
    //! A stable-toolchain stand-in for the fuzz target (`fuzz/`): valid requests of several
    //! APIs and versions, mutated with a seeded generator, must decode or fail cleanly.
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn frame(key: ApiKey, v: i16, body: &RequestKind) -> Vec<u8> {
        let mut b = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(v)
            .with_correlation_id(9)
            .with_client_id(Some(StrBytes::from_static_str("m")))
            .encode(&mut b, key.request_header_version(v))
            .unwrap();
        body.encode(&mut b, v).unwrap();
        b.to_vec()
    }

    fn seeds() -> Vec<Vec<u8>> {
        let topic = TopicName(StrBytes::from_static_str("t"));
        let mut out = Vec::new();
        for v in [3i16, 7, 9, 11] {
            let p = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1000)
                .with_topic_data(vec![produce_request::TopicProduceData::default()
                    .with_name(topic.clone())
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(Bytes::from_static(&[0u8; 70]))),
                    ])]);
            out.push(frame(ApiKey::Produce, v, &RequestKind::Produce(p)));
        }
        for v in [4i16, 11, 12, 13, 16] {
            let mut t = fetch_request::FetchTopic::default()
                .with_partitions(vec![fetch_request::FetchPartition::default()]);
            if v < 13 {
                t = t.with_topic(topic.clone());
            }
            let f = FetchRequest::default().with_topics(vec![t]);
            out.push(frame(ApiKey::Fetch, v, &RequestKind::Fetch(f)));
        }
        for v in [0i16, 1, 4, 9, 12, 13] {
            let m =
                MetadataRequest::default()
                    .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                    )
                    .with_name(Some(topic.clone()))]));
            out.push(frame(ApiKey::Metadata, v, &RequestKind::Metadata(m)));
        }
        for v in [0i16, 3, 4] {
            out.push(frame(
                ApiKey::ApiVersions,
                v,
                &RequestKind::ApiVersions(ApiVersionsRequest::default()),
            ));
        }
        for v in [2i16, 5, 7] {
            let c = CreateTopicsRequest::default().with_topics(vec![
                create_topics_request::CreatableTopic::default()
                    .with_name(topic.clone())
                    .with_configs(vec![create_topics_request::CreatableTopicConfig::default()]),
            ]);
            out.push(frame(
                ApiKey::CreateTopics,
                v,
                &RequestKind::CreateTopics(c),
            ));
        }
        out
    }

    #[test]
    fn mutated_requests_never_panic_or_abort() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds = seeds();
        let (mut decoded, mut rejected) = (0, 0);
        for i in 0..30_000 {
            let mut f = seeds[i % seeds.len()].clone();
            for _ in 0..1 + rnd() % 4 {
                let pos = (rnd() as usize) % f.len();
                match rnd() % 4 {
                    0 => f[pos] ^= 1 << (rnd() % 8),
                    1 => f[pos] = 0xff,
                    2 => f.truncate(pos.max(8)),
                    _ => {
                        let mut b = BytesMut::new();
                        b.put_u32(rnd() as u32 | 0x7000_0000);
                        f.splice(pos..pos, b.to_vec());
                    }
                }
            }
            match parse_header(Bytes::from(f)) {
                Ok(req) => match decode_body(&req) {
                    Ok(_) => decoded += 1,
                    Err(_) => rejected += 1,
                },
                Err(_) => rejected += 1,
            }
        }
        assert!(
            decoded > 100 && rejected > 1000,
            "mutations exercise both outcomes ({decoded} decoded, {rejected} rejected)"
        );
    }

    #[test]
    fn unmutated_seeds_decode() {
        for s in seeds() {
            let req = parse_header(Bytes::from(s)).unwrap();
            decode_body(&req).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
