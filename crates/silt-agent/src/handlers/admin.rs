//! Admin APIs: CreateTopics, DeleteTopics, DescribeConfigs, DescribeCluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeClusterRequest, DescribeClusterResponse, DescribeConfigsRequest,
    DescribeConfigsResponse,
};
use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::error::TopicError;
use crate::topic_config::{self, ConfigType};
use crate::topics::NewTopic;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const RESOURCE_BROKER_LOGGER: i8 = 8;
const SOURCE_DYNAMIC_BROKER_LOGGER: i8 = 6;
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_DYNAMIC_DEFAULT_BROKER: i8 = 3;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// Handles CreateTopics.
pub async fn create_topics(
    b: &Arc<Broker>,
    req: CreateTopicsRequest,
    v: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    let dynamic = b.topics.dynamic_defaults();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut configs = BTreeMap::new();
        let mut bad = None;
        for c in &t.configs {
            match &c.value {
                Some(v) => {
                    configs.insert(c.name.to_string(), v.to_string());
                }
                None => {
                    bad = Some(TopicError::InvalidConfig(format!(
                        "config {} has a null value",
                        c.name.as_str()
                    )))
                }
            }
        }
        let new = NewTopic {
            name: name.clone(),
            // A manual assignment (num_partitions = -1) names the partitions to create.
            partitions: if t.num_partitions == -1 && !t.assignments.is_empty() {
                t.assignments.len() as i32
            } else {
                t.num_partitions
            },
            replication_factor: t.replication_factor,
            configs,
        };
        let res = match bad {
            Some(e) => Err(e),
            None if req.validate_only => {
                if b.topics.get(&name).is_some() {
                    Err(TopicError::AlreadyExists(name.clone()))
                } else {
                    b.topics.plan(&new)
                }
            }
            None => match b.topics.create(&new).await {
                Ok(t) => {
                    // Answer once leaders are known, so the client's next Metadata sees them.
                    b.cluster
                        .wait_led(&t, std::time::Duration::from_secs(3))
                        .await;
                    Ok(t.record.clone())
                }
                Err(e) => Err(e),
            },
        };
        let r = CreatableTopicResult::default().with_name(topic_name(&name));
        results.push(match res {
            Ok(_) if v < 5 => r,
            Ok(record) => r
                .with_topic_id(if req.validate_only || v < 7 {
                    uuid::Uuid::nil()
                } else {
                    record.id
                })
                .with_num_partitions(record.partitions)
                .with_replication_factor(if t.replication_factor == -1 {
                    1
                } else {
                    t.replication_factor
                })
                .with_configs(Some(
                    topic_config::DEFS
                        .iter()
                        .map(|d| {
                            let (value, source) = effective(&record.configs, d.name, b, &dynamic);
                            CreatableTopicConfigs::default()
                                .with_name(str_bytes(d.name))
                                .with_value(Some(str_bytes(value)))
                                .with_config_source(source)
                        })
                        .collect(),
                )),
            Err(e) => {
                tracing::info!(topic = %name, error = %e, "create topic refused");
                r.with_error_code(e.code().code())
                    .with_error_message(Some(str_bytes(e.to_string())))
            }
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// Handles DeleteTopics (by name, or by id in v6+).
pub async fn delete_topics(
    b: &Arc<Broker>,
    req: DeleteTopicsRequest,
    v: i16,
) -> DeleteTopicsResponse {
    let mut targets: Vec<(Option<String>, uuid::Uuid)> = req
        .topic_names
        .into_iter()
        .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
        .collect();
    targets.extend(
        req.topics
            .into_iter()
            .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id)),
    );
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let resolved = match (&name, id.is_nil()) {
            (Some(n), _) => Ok(n.clone()),
            (None, false) => b
                .topics
                .get_by_id(&id)
                .map(|t| t.record.name.clone())
                .ok_or(TopicError::UnknownId(id)),
            (None, true) => Err(TopicError::Unknown(String::new())),
        };
        let res = match resolved {
            Ok(n) => b.topics.delete(&n).await.map(|r| (n, r.id)),
            Err(e) => Err(e),
        };
        let r = DeletableTopicResult::default();
        responses.push(match res {
            Ok((n, id)) => r.with_name(Some(topic_name(&n))).with_topic_id(if v >= 6 {
                id
            } else {
                uuid::Uuid::nil()
            }),
            Err(e) => r
                .with_name(Some(topic_name(name.as_deref().unwrap_or_default())))
                .with_topic_id(if v >= 6 { id } else { uuid::Uuid::nil() })
                .with_error_code(e.code().code())
                .with_error_message((v >= 5).then(|| str_bytes(e.to_string()))),
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

/// A topic config's value and where it comes from (set on the topic, or the default).
fn effective(
    configs: &BTreeMap<String, String>,
    name: &str,
    b: &Broker,
    dynamic: &BTreeMap<String, String>,
) -> (String, i8) {
    match configs.get(name) {
        Some(v) => (v.clone(), SOURCE_DYNAMIC_TOPIC),
        None => match topic_config::default_with(name, b.topics.defaults(), dynamic) {
            (v, topic_config::DefaultSource::Dynamic) => (v, SOURCE_DYNAMIC_DEFAULT_BROKER),
            (v, topic_config::DefaultSource::Static) => (v, SOURCE_DEFAULT),
        },
    }
}

/// Where a topic config's value can come from, most specific first, as Kafka lists them: the
/// topic's own value, the cluster-wide dynamic default (its broker name), and the default.
fn synonyms(
    configs: &BTreeMap<String, String>,
    name: &str,
    b: &Broker,
    dynamic: &BTreeMap<String, String>,
) -> Vec<DescribeConfigsSynonym> {
    let syn = |n: &str, v: String, source: i8| {
        DescribeConfigsSynonym::default()
            .with_name(str_bytes(n))
            .with_value(Some(str_bytes(v)))
            .with_source(source)
    };
    let mut out = Vec::new();
    if let Some(v) = configs.get(name) {
        out.push(syn(name, v.clone(), SOURCE_DYNAMIC_TOPIC));
    }
    let broker = topic_config::broker_synonym(name);
    if let Some(v) = broker.and_then(|k| dynamic.get(k)) {
        out.push(syn(
            broker.unwrap_or(name),
            v.clone(),
            SOURCE_DYNAMIC_DEFAULT_BROKER,
        ));
    }
    out.push(syn(
        broker.unwrap_or(name),
        topic_config::default_value(name, b.topics.defaults()),
        SOURCE_DEFAULT,
    ));
    out
}

/// The type of a broker config that is a topic config's default (its topic config's type).
fn broker_kind(name: &str) -> ConfigType {
    topic_config::topic_synonym(name)
        .and_then(topic_config::find)
        .map_or(ConfigType::String, |d| d.kind)
}

fn config_entry(
    name: &str,
    value: String,
    source: i8,
    kind: ConfigType,
    synonyms: bool,
    version: i16,
) -> DescribeConfigsResourceResult {
    let r = DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value.clone())))
        .with_config_source(source)
        .with_config_type(if version >= 3 { kind as i8 } else { 0 });
    if synonyms {
        r.with_synonyms(vec![DescribeConfigsSynonym::default()
            .with_name(str_bytes(name))
            .with_value(Some(str_bytes(value)))
            .with_source(source)])
    } else {
        r
    }
}

/// Handles DescribeConfigs for topics (every known config), brokers (the agent's own settings)
/// and broker loggers (the agent's log levels).
pub fn describe_configs(
    b: &Arc<Broker>,
    req: DescribeConfigsRequest,
    v: i16,
) -> DescribeConfigsResponse {
    let dynamic = b.topics.dynamic_defaults();
    let results = req
        .resources
        .into_iter()
        .map(|res| {
            let name = res.resource_name.to_string();
            let wanted = |k: &str| {
                res.configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|w| w.as_str() == k))
            };
            let r = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            match res.resource_type {
                RESOURCE_TOPIC => match b.topics.get(&name) {
                    None => r
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                        .with_error_message(Some(str_bytes(format!(
                            "topic {name} does not exist"
                        )))),
                    Some(t) => r.with_configs(
                        topic_config::DEFS
                            .iter()
                            .filter(|d| wanted(d.name))
                            .map(|d| {
                                let (value, source) = effective(&t.record.configs, d.name, b, &dynamic);
                                let entry = config_entry(d.name, value, source, d.kind, req.include_synonyms, v);
                                if req.include_synonyms {
                                    entry.with_synonyms(synonyms(&t.record.configs, d.name, b, &dynamic))
                                } else {
                                    entry
                                }
                            })
                            .collect(),
                    ),
                },
                // The cluster-wide defaults changed at run time (Kafka's default resource).
                RESOURCE_BROKER if name.is_empty() => r.with_configs(
                    dynamic
                        .iter()
                        .filter(|(k, _)| wanted(k))
                        .map(|(k, val)| {
                            let kind = broker_kind(k);
                            config_entry(
                                k,
                                val.clone(),
                                SOURCE_DYNAMIC_DEFAULT_BROKER,
                                kind,
                                req.include_synonyms,
                                v,
                            )
                        })
                        .collect(),
                ),
                RESOURCE_BROKER => {
                    let s = &b.settings;
                    let entries = [
                        (
                            "auto.create.topics.enable",
                            s.topics.auto_create.to_string(),
                            ConfigType::Boolean,
                        ),
                        (
                            "num.partitions",
                            s.topics.num_partitions.to_string(),
                            ConfigType::Int,
                        ),
                        (
                            "log.retention.ms",
                            s.topics.retention_ms.to_string(),
                            ConfigType::Long,
                        ),
                        (
                            "message.max.bytes",
                            s.topics.max_message_bytes.to_string(),
                            ConfigType::Int,
                        ),
                        (
                            "socket.request.max.bytes",
                            s.max_frame_bytes.to_string(),
                            ConfigType::Int,
                        ),
                        ("broker.id", s.node_id.to_string(), ConfigType::Int),
                    ];
                    // Settings first; the cluster-wide dynamic values replace theirs.
                    let mut all: Vec<(String, String, ConfigType, i8)> = entries
                        .into_iter()
                        .map(|(k, val, kind)| (k.to_string(), val, kind, SOURCE_STATIC_BROKER))
                        .collect();
                    for (k, val) in &dynamic {
                        let kind = broker_kind(k);
                        let entry = (k.clone(), val.clone(), kind, SOURCE_DYNAMIC_DEFAULT_BROKER);
                        match all.iter_mut().find(|e| e.0 == *k) {
                            Some(e) => *e = entry,
                            None => all.push(entry),
                        }
                    }
                    r.with_configs(
                        all.into_iter()
                            .filter(|(k, _, _, _)| wanted(k))
                            .map(|(k, val, kind, source)| {
                                config_entry(&k, val, source, kind, req.include_synonyms, v)
                            })
                            .collect(),
                    )
                }
                RESOURCE_BROKER_LOGGER => match loggers(b, &name) {
                    Ok(levels) => r.with_configs(
                        levels
                            .into_iter()
                            .filter(|(k, _)| wanted(k))
                            .map(|(k, level)| {
                                config_entry(
                                    &k,
                                    level,
                                    SOURCE_DYNAMIC_BROKER_LOGGER,
                                    ConfigType::String,
                                    req.include_synonyms,
                                    v,
                                )
                            })
                            .collect(),
                    ),
                    Err(why) => r
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(str_bytes(why))),
                },
                other => r
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes(format!(
                        "resource type {other} is not supported (topics: 2, brokers: 4, broker loggers: 8)"
                    )))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// This agent's log levels as Kafka's broker loggers: `root` (the default level) and each
/// target the filter names, with their levels in Kafka's upper case.
fn loggers(b: &Broker, broker: &str) -> Result<Vec<(String, String)>, String> {
    if broker.parse::<i32>().ok() != Some(b.node.id) {
        return Err(format!(
            "log levels are kept per agent: this is agent {}, not {broker:?}",
            b.node.id
        ));
    }
    let filter = b
        .log_levels
        .as_ref()
        .map(|l| l.current())
        .unwrap_or_default();
    let mut out = vec![("root".to_string(), "INFO".to_string())];
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match d.split_once('=') {
            Some((target, level)) => out.push((target.to_string(), level.to_ascii_uppercase())),
            None => out[0].1 = d.to_ascii_uppercase(),
        }
    }
    Ok(out)
}

/// Handles DescribeCluster: every live agent's address on the client's listener.
pub fn describe_cluster(
    b: &Arc<Broker>,
    _req: DescribeClusterRequest,
    listener: &str,
) -> DescribeClusterResponse {
    let mut nodes = b.cluster.brokers();
    if !nodes.iter().any(|n| n.id == b.node.id) {
        nodes.push(b.node.clone());
    }
    let brokers = nodes
        .iter()
        .filter_map(|n| {
            let (host, port) = n.endpoint(listener)?;
            Some(
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(n.id))
                    .with_host(str_bytes(host))
                    .with_port(port)
                    .with_rack(n.rack.as_deref().map(str_bytes)),
            )
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(b.cluster_id.clone()))
        .with_controller_id(BrokerId(b.cluster.controller_id().unwrap_or(b.node.id)))
        .with_brokers(brokers)
}
