//! The sink: a minimal Kafka server that answers ApiVersions, Metadata and Produce (acks with
//! increasing offsets per partition) and stores nothing. It measures the ceiling set by the
//! client, the loopback network and the protocol codec.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use silt_wire::frame::read_frame;
use silt_wire::request::{decode_body, parse_header};
use silt_wire::response::encode_response;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

type Offsets = Arc<Mutex<HashMap<(String, i32), i64>>>;

pub async fn run(listen: &str, partitions: i32) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen).await?;
    let port = l.local_addr()?.port();
    eprintln!("sink listening on {}", l.local_addr()?);
    let offsets: Offsets = Arc::default();
    loop {
        let (s, _) = l.accept().await?;
        tokio::spawn(serve(s, port, partitions, offsets.clone()));
    }
}

async fn serve(s: TcpStream, port: u16, partitions: i32, offsets: Offsets) -> anyhow::Result<()> {
    s.set_nodelay(true)?;
    let (mut rd, mut wr) = s.into_split();
    while let Some(frame) = read_frame(&mut rd, 100 << 20).await? {
        let req = parse_header(frame)?;
        let (key, v, corr) = (req.api_key, req.version, req.correlation_id());
        let resp = match decode_body(&req)? {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(
                ApiVersionsResponse::default().with_api_keys(
                    [
                        (ApiKey::Produce, 3, 9),
                        (ApiKey::Metadata, 0, 12),
                        (ApiKey::ApiVersions, 0, 3),
                    ]
                    .into_iter()
                    .map(|(k, a, b)| {
                        ApiVersion::default()
                            .with_api_key(k as i16)
                            .with_min_version(a)
                            .with_max_version(b)
                    })
                    .collect(),
                ),
            ),
            RequestKind::Metadata(m) => {
                let names: Vec<TopicName> = m
                    .topics
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|t| t.name)
                    .collect();
                ResponseKind::Metadata(
                    MetadataResponse::default()
                        .with_brokers(vec![MetadataResponseBroker::default()
                            .with_node_id(BrokerId(0))
                            .with_host(StrBytes::from_static_str("127.0.0.1"))
                            .with_port(port as i32)])
                        .with_controller_id(BrokerId(if v >= 1 { 0 } else { -1 }))
                        .with_topics(
                            names
                                .into_iter()
                                .map(|n| {
                                    MetadataResponseTopic::default()
                                        .with_name(Some(n))
                                        .with_partitions(
                                            (0..partitions)
                                                .map(|p| {
                                                    MetadataResponsePartition::default()
                                                        .with_partition_index(p)
                                                        .with_leader_id(BrokerId(0))
                                                        .with_replica_nodes(vec![BrokerId(0)])
                                                        .with_isr_nodes(vec![BrokerId(0)])
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        ),
                )
            }
            RequestKind::Produce(p) => {
                let acks = p.acks;
                let responses = p
                    .topic_data
                    .into_iter()
                    .map(|t| {
                        let parts = t
                            .partition_data
                            .into_iter()
                            .map(|pd| {
                                let n = pd
                                    .records
                                    .as_ref()
                                    .and_then(|r| silt_wire::batch::parse_header(r).ok())
                                    .map_or(0, |h| h.record_count as i64);
                                let mut o = offsets.lock().unwrap();
                                let e = o.entry((t.name.0.to_string(), pd.index)).or_insert(0);
                                let base = *e;
                                *e += n;
                                PartitionProduceResponse::default()
                                    .with_index(pd.index)
                                    .with_base_offset(base)
                            })
                            .collect();
                        TopicProduceResponse::default()
                            .with_name(t.name)
                            .with_partition_responses(parts)
                    })
                    .collect();
                if acks == 0 {
                    continue;
                }
                ResponseKind::Produce(ProduceResponse::default().with_responses(responses))
            }
            _ => return Ok(()),
        };
        wr.write_all(&encode_response(corr, key, v, &resp)?).await?;
    }
    Ok(())
}
