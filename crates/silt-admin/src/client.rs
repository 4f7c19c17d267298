//! A minimal Kafka client: one request at a time over a TCP connection, frames bounded in size,
//! and the cluster's brokers found through Metadata.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::AdminError;

/// Largest response accepted.
const MAX_FRAME: usize = 256 << 20;

/// One connection to one agent.
#[derive(Debug)]
pub struct Conn {
    addr: String,
    stream: TcpStream,
    next: i32,
}

impl Conn {
    /// Connects to `addr` (`host:port`).
    pub async fn connect(addr: &str) -> Result<Self, AdminError> {
        let io = |source| AdminError::Io {
            addr: addr.to_string(),
            source,
        };
        let stream =
            tokio::time::timeout(std::time::Duration::from_secs(10), TcpStream::connect(addr))
                .await
                .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
                .map_err(io)?;
        Ok(Self {
            addr: addr.to_string(),
            stream,
            next: 1,
        })
    }

    /// Sends `req` as `key`/`version` and decodes the response.
    pub async fn call<Q: Encodable + HeaderVersion, R: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Q,
    ) -> Result<R, AdminError> {
        let proto = |reason: String| AdminError::Protocol {
            addr: self.addr.clone(),
            reason,
        };
        let corr = self.next;
        self.next += 1;
        let mut b = BytesMut::new();
        b.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(corr)
            .with_client_id(Some(StrBytes::from_static_str("silt-admin")))
            .encode(&mut b, key.request_header_version(version))
            .map_err(|e| proto(e.to_string()))?;
        req.encode(&mut b, version)
            .map_err(|e| proto(e.to_string()))?;
        let len = (b.len() - 4) as i32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        let io = |source| AdminError::Io {
            addr: self.addr.clone(),
            source,
        };
        self.stream.write_all(&b).await.map_err(io)?;
        let n = self.stream.read_i32().await.map_err(io)?;
        if n < 0 || n as usize > MAX_FRAME {
            return Err(proto(format!("response size {n}")));
        }
        let mut body = vec![0u8; n as usize];
        self.stream.read_exact(&mut body).await.map_err(io)?;
        let mut f = Bytes::from(body);
        let h = ResponseHeader::decode(&mut f, key.response_header_version(version))
            .map_err(|e| proto(e.to_string()))?;
        if h.correlation_id != corr {
            return Err(proto(format!(
                "correlation id {} for request {corr}",
                h.correlation_id
            )));
        }
        let r = R::decode(&mut f, version).map_err(|e| proto(e.to_string()))?;
        if f.has_remaining() {
            return Err(proto(format!("{} bytes left over", f.remaining())));
        }
        Ok(r)
    }
}

/// A broker as Metadata names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// Node id.
    pub id: i32,
    /// `host:port`.
    pub addr: String,
}

/// The cluster reached through a bootstrap address.
#[derive(Debug)]
pub struct Cluster {
    /// The bootstrap connection.
    pub conn: Conn,
    /// Brokers by id.
    pub brokers: BTreeMap<i32, Broker>,
    /// The controller's id.
    pub controller: i32,
}

impl Cluster {
    /// Connects to `bootstrap` and reads the broker list.
    pub async fn connect(bootstrap: &str) -> Result<Self, AdminError> {
        let mut conn = Conn::connect(bootstrap).await?;
        let md: MetadataResponse = conn
            .call(
                ApiKey::Metadata,
                12,
                &MetadataRequest::default().with_topics(Some(vec![])),
            )
            .await?;
        let brokers = md
            .brokers
            .iter()
            .map(|b| {
                (
                    b.node_id.0,
                    Broker {
                        id: b.node_id.0,
                        addr: format!("{}:{}", b.host, b.port),
                    },
                )
            })
            .collect();
        Ok(Self {
            conn,
            brokers,
            controller: md.controller_id.0,
        })
    }

    /// A connection to broker `id`.
    pub async fn broker(&self, id: i32) -> Result<Conn, AdminError> {
        let b = self.brokers.get(&id).ok_or_else(|| {
            AdminError::Usage(format!("broker {id} is not in the cluster's metadata"))
        })?;
        Conn::connect(&b.addr).await
    }
}
