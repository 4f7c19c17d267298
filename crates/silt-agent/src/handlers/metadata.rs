//! Metadata: every live agent as a broker, the controller, and each partition's live leader and
//! epoch (LEADER_NOT_AVAILABLE while a partition has none, as Kafka answers during a failover).
//! Topics a client asks for that do not exist are created when auto-creation is on and the
//! client allows it, as Kafka does.

use std::sync::Arc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::error::TopicError;
use crate::topics::{validate_name, Topic};

/// Handles Metadata.
///
/// Brokers are listed with their addresses on `listener` (the one the client connected
/// through); an agent without that listener is left out. A missing topic is auto-created only
/// where `may_create` says the client may create it (always, without authorization).
pub async fn handle(
    b: &Arc<Broker>,
    req: MetadataRequest,
    version: i16,
    listener: &str,
    may_create: &(dyn Fn(&str) -> bool + Sync),
) -> MetadataResponse {
    let node = &b.node;
    let mut nodes = b.cluster.brokers();
    if !nodes.iter().any(|n| n.id == node.id) {
        nodes.push(node.clone());
    }
    let brokers = nodes
        .iter()
        .filter_map(|n| {
            let (host, port) = n.endpoint(listener)?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(n.id))
                    .with_host(str_bytes(host))
                    .with_port(port)
                    .with_rack(n.rack.as_deref().map(str_bytes)),
            )
        })
        .collect();
    let controller = b.cluster.controller_id().unwrap_or(node.id);
    let all = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    let topics = if all {
        b.topics
            .all()
            .iter()
            .map(|t| describe(t, b, version))
            .collect()
    } else {
        let mut out = Vec::new();
        for t in req.topics.unwrap_or_default() {
            out.push(match (t.name, t.topic_id.is_nil()) {
                (Some(name), _) => {
                    let allowed =
                        (req.allow_auto_topic_creation || version < 4) && may_create(&name.0);
                    by_name(b, &name.0, allowed, version).await
                }
                (None, false) => match b.topics.get_by_id(&t.topic_id) {
                    Some(topic) => describe(&topic, b, version),
                    None => MetadataResponseTopic::default()
                        .with_topic_id(t.topic_id)
                        .with_error_code(ResponseError::UnknownTopicId.code()),
                },
                (None, true) => MetadataResponseTopic::default()
                    .with_error_code(ResponseError::InvalidTopicException.code()),
            });
        }
        out
    };
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id((version >= 2).then(|| str_bytes(b.cluster_id.clone())))
        .with_controller_id(BrokerId(if version >= 1 { controller } else { -1 }))
        .with_topics(topics)
}

async fn by_name(
    b: &Arc<Broker>,
    name: &str,
    client_allows: bool,
    version: i16,
) -> MetadataResponseTopic {
    let error = |e: TopicError| {
        MetadataResponseTopic::default()
            .with_name(Some(topic_name(name)))
            .with_error_code(e.code().code())
    };
    if let Err(e) = validate_name(name) {
        return error(e);
    }
    if let Some(t) = b.topics.get(name) {
        return describe(&t, b, version);
    }
    if !(client_allows && b.topics.defaults().auto_create) {
        return error(TopicError::Unknown(name.to_owned()));
    }
    match b.topics.get_or_create(name).await {
        Ok(t) => {
            b.cluster.wait_led(&t, CREATE_WAIT).await;
            describe(&t, b, version)
        }
        Err(e) => {
            tracing::warn!(topic = name, error = %e, "auto-creating topic failed");
            error(e)
        }
    }
}

/// How long an auto-created topic's Metadata answer waits for its partitions' leaders.
const CREATE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn describe(t: &Topic, b: &Broker, version: i16) -> MetadataResponseTopic {
    let partitions = (0..t.record.partitions)
        .map(|p| {
            let r = MetadataResponsePartition::default().with_partition_index(p);
            match b.cluster.leader(&t.record.id, p) {
                Some(a) => {
                    // The leader first, then (with racks) the agent each other zone reads from:
                    // any agent serves reads of any partition from the object store.
                    let replicas: Vec<BrokerId> = b
                        .cluster
                        .replicas(&t.record.id, p, a.leader)
                        .into_iter()
                        .map(BrokerId)
                        .collect();
                    r.with_leader_id(BrokerId(a.leader))
                        .with_leader_epoch(if version >= 7 { a.epoch } else { -1 })
                        .with_replica_nodes(replicas.clone())
                        .with_isr_nodes(replicas)
                }
                None => r
                    .with_error_code(ResponseError::LeaderNotAvailable.code())
                    .with_leader_id(BrokerId(-1))
                    .with_leader_epoch(-1),
            }
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&t.record.name)))
        .with_topic_id(if version >= 10 {
            t.record.id
        } else {
            uuid::Uuid::nil()
        })
        .with_partitions(partitions)
}
