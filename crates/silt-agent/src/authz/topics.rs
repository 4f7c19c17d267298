//! Topic APIs: Produce (WRITE), Fetch (READ), ListOffsets and OffsetForLeaderEpoch (DESCRIBE),
//! Metadata (DESCRIBE; auto-creation needs CREATE), CreateTopics (CREATE on the cluster or the
//! topic), DeleteTopics and DeleteRecords (DELETE), DescribeConfigs (DESCRIBE_CONFIGS).

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use silt_security::acl::{Operation, ResourceType};

use super::{fix, strip, Access, Verdict};

const TOPIC_DENIED: ResponseError = ResponseError::TopicAuthorizationFailed;

pub(super) fn produce(a: &mut Access<'_>, r: &mut ProduceRequest) -> Verdict {
    // A transactional produce needs WRITE on its transactional id as well.
    let tid_ok = match &r.transactional_id {
        Some(id) => a.may(Operation::Write, ResourceType::TransactionalId, id),
        None => true,
    };
    let code = if tid_ok {
        TOPIC_DENIED
    } else {
        ResponseError::TransactionalIdAuthorizationFailed
    };
    let refused = strip(&mut r.topic_data, |t| {
        tid_ok && a.topic(Operation::Write, &t.name)
    });
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    if r.acks == 0 {
        return Verdict::Close(format!(
            "acks=0 produce to topics it may not WRITE ({})",
            refused
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    fix(move |resp| {
        if let ResponseKind::Produce(p) = resp {
            for t in refused {
                p.responses.push(
                    TopicProduceResponse::default()
                        .with_name(t.name)
                        .with_topic_id(t.topic_id)
                        .with_partition_responses(
                            t.partition_data
                                .iter()
                                .map(|pd| {
                                    PartitionProduceResponse::default()
                                        .with_index(pd.index)
                                        .with_error_code(code.code())
                                        .with_base_offset(-1)
                                })
                                .collect(),
                        ),
                );
            }
        }
    })
}

pub(super) fn fetch(a: &mut Access<'_>, r: &mut FetchRequest) -> Verdict {
    let refused = strip(&mut r.topics, |t| {
        let name = if t.topic.is_empty() {
            match a.broker().topics.get_by_id(&t.topic_id) {
                Some(topic) => topic.record.name.clone(),
                // An unknown id is the handler's to answer (UNKNOWN_TOPIC_ID).
                None => return true,
            }
        } else {
            t.topic.to_string()
        };
        a.topic(Operation::Read, &name)
    });
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::Fetch(f) = resp {
            for t in refused {
                f.responses.push(
                    FetchableTopicResponse::default()
                        .with_topic(t.topic)
                        .with_topic_id(t.topic_id)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    PartitionData::default()
                                        .with_partition_index(p.partition)
                                        .with_error_code(TOPIC_DENIED.code())
                                        .with_high_watermark(-1)
                                        .with_last_stable_offset(-1)
                                        .with_log_start_offset(-1)
                                })
                                .collect(),
                        ),
                );
            }
        }
    })
}

pub(super) fn list_offsets(a: &mut Access<'_>, r: &mut ListOffsetsRequest) -> Verdict {
    let refused = strip(&mut r.topics, |t| a.topic(Operation::Describe, &t.name));
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::ListOffsets(l) = resp {
            for t in refused {
                l.topics.push(
                    ListOffsetsTopicResponse::default()
                        .with_name(t.name)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    ListOffsetsPartitionResponse::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(TOPIC_DENIED.code())
                                        .with_offset(-1)
                                        .with_timestamp(-1)
                                })
                                .collect(),
                        ),
                );
            }
        }
    })
}

/// DescribeProducers: READ on each topic, as Kafka asks.
pub(super) fn describe_producers(a: &mut Access<'_>, r: &mut DescribeProducersRequest) -> Verdict {
    let refused = strip(&mut r.topics, |t| a.topic(Operation::Read, &t.name));
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::DescribeProducers(d) = resp {
            for t in refused {
                d.topics.push(
                    describe_producers_response::TopicResponse::default()
                        .with_name(t.name)
                        .with_partitions(
                            t.partition_indexes
                                .iter()
                                .map(|p| {
                                    describe_producers_response::PartitionResponse::default()
                                        .with_partition_index(*p)
                                        .with_error_code(TOPIC_DENIED.code())
                                })
                                .collect(),
                        ),
                );
            }
        }
    })
}

pub(super) fn offset_for_leader_epoch(
    a: &mut Access<'_>,
    r: &mut OffsetForLeaderEpochRequest,
) -> Verdict {
    let refused = strip(&mut r.topics, |t| a.topic(Operation::Describe, &t.topic));
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::OffsetForLeaderEpoch(o) = resp {
            for t in refused {
                o.topics.push(
                    OffsetForLeaderTopicResult::default()
                        .with_topic(t.topic)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    EpochEndOffset::default()
                                        .with_partition(p.partition)
                                        .with_error_code(TOPIC_DENIED.code())
                                        .with_leader_epoch(-1)
                                        .with_end_offset(-1)
                                })
                                .collect(),
                        ),
                );
            }
        }
    })
}

pub(super) fn metadata(a: &mut Access<'_>, r: &mut MetadataRequest, version: i16) -> Verdict {
    let listing_all = match &r.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    // Decided now (the connection's cache is not reachable from the fix-up); the response
    // holds the same topics, plus any auto-created ones, which were decided by CREATE and
    // DESCRIBE. Topics asked for by id are answered by id: a refused one keeps its id and
    // loses its name, as Kafka answers.
    let mut by_id = std::collections::HashSet::new();
    let names: Vec<String> = if listing_all {
        a.broker()
            .topics
            .all()
            .iter()
            .map(|t| t.record.name.clone())
            .collect()
    } else {
        r.topics
            .iter()
            .flatten()
            .filter_map(|t| match &t.name {
                Some(n) => Some(n.to_string()),
                None => a.broker().topics.get_by_id(&t.topic_id).map(|topic| {
                    by_id.insert(t.topic_id);
                    topic.record.name.clone()
                }),
            })
            .collect()
    };
    let hidden: std::collections::HashSet<String> = names
        .into_iter()
        .filter(|n| !a.topic(Operation::Describe, n))
        .collect();
    if hidden.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::Metadata(m) = resp {
            if listing_all {
                m.topics
                    .retain(|t| t.name.as_ref().is_none_or(|n| !hidden.contains(n.as_str())));
            } else {
                for t in &mut m.topics {
                    if t.name.as_ref().is_some_and(|n| hidden.contains(n.as_str())) {
                        t.error_code = TOPIC_DENIED.code();
                        t.partitions.clear();
                        if by_id.contains(&t.topic_id) {
                            t.name = None;
                        } else {
                            t.topic_id = uuid::Uuid::nil();
                        }
                    }
                }
            }
        }
    })
}

pub(super) fn create_topics(a: &mut Access<'_>, r: &mut CreateTopicsRequest) -> Verdict {
    let cluster = a.cluster(Operation::Create);
    let refused = strip(&mut r.topics, |t| {
        cluster || a.topic(Operation::Create, &t.name)
    });
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::CreateTopics(c) = resp {
            for t in refused {
                c.topics.push(
                    CreatableTopicResult::default()
                        .with_name(t.name)
                        .with_error_code(TOPIC_DENIED.code())
                        .with_num_partitions(-1)
                        .with_replication_factor(-1),
                );
            }
        }
    })
}

pub(super) fn delete_topics(a: &mut Access<'_>, r: &mut DeleteTopicsRequest) -> Verdict {
    let refused_names = strip(&mut r.topic_names, |n| a.topic(Operation::Delete, n));
    let refused_states = strip(&mut r.topics, |t| {
        let name = match &t.name {
            Some(n) => n.to_string(),
            None => match a.broker().topics.get_by_id(&t.topic_id) {
                Some(topic) => topic.record.name.clone(),
                None => return true,
            },
        };
        a.topic(Operation::Delete, &name)
    });
    if refused_names.is_empty() && refused_states.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::DeleteTopics(d) = resp {
            for n in refused_names {
                d.responses.push(
                    DeletableTopicResult::default()
                        .with_name(Some(n))
                        .with_error_code(TOPIC_DENIED.code()),
                );
            }
            for t in refused_states {
                d.responses.push(
                    DeletableTopicResult::default()
                        .with_name(t.name)
                        .with_topic_id(t.topic_id)
                        .with_error_code(TOPIC_DENIED.code()),
                );
            }
        }
    })
}

pub(super) fn delete_records(a: &mut Access<'_>, r: &mut DeleteRecordsRequest) -> Verdict {
    let refused = strip(&mut r.topics, |t| a.topic(Operation::Delete, &t.name));
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::DeleteRecords(d) = resp {
            for t in refused {
                d.topics.push(
                    DeleteRecordsTopicResult::default()
                        .with_name(t.name)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    DeleteRecordsPartitionResult::default()
                                        .with_partition_index(p.partition_index)
                                        .with_low_watermark(-1)
                                        .with_error_code(TOPIC_DENIED.code())
                                })
                                .collect(),
                        ),
                );
            }
        }
    })
}

const TOPIC_RESOURCE: i8 = 2;
const BROKER_RESOURCE: i8 = 4;

pub(super) fn describe_configs(a: &mut Access<'_>, r: &mut DescribeConfigsRequest) -> Verdict {
    let refused = strip(&mut r.resources, |res| match res.resource_type {
        TOPIC_RESOURCE => a.topic(Operation::DescribeConfigs, &res.resource_name),
        BROKER_RESOURCE => a.cluster(Operation::DescribeConfigs),
        _ => true,
    });
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::DescribeConfigs(d) = resp {
            for res in refused {
                let code = if res.resource_type == TOPIC_RESOURCE {
                    TOPIC_DENIED
                } else {
                    ResponseError::ClusterAuthorizationFailed
                };
                d.results.push(
                    DescribeConfigsResult::default()
                        .with_resource_type(res.resource_type)
                        .with_resource_name(res.resource_name)
                        .with_error_code(code.code()),
                );
            }
        }
    })
}
