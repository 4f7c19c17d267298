//! Partition administration answered the way a Kafka cluster with one replica per partition
//! answers it: CreatePartitions grows a topic (the controller gives the new partitions leaders
//! at once; shrinking is refused), DescribeLogDirs reports one log dir per agent with each led
//! partition's size from the offset index, ElectLeaders finds every leader already preferred,
//! and the reassignment APIs have nothing to reassign (the controller places partitions).

use std::collections::HashSet;
use std::sync::Arc;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
    CreatePartitionsRequest, CreatePartitionsResponse, DescribeLogDirsRequest,
    DescribeLogDirsResponse, ElectLeadersRequest, ElectLeadersResponse,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::error::TopicError;

/// Handles CreatePartitions (v0-3).
pub async fn create_partitions(
    b: &Arc<Broker>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut seen = HashSet::new();
    let dup: HashSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.0.to_string()))
        .map(|t| t.name.0.to_string())
        .collect();
    let live: HashSet<i32> = b.cluster.brokers().iter().map(|n| n.id).collect();
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.to_string();
        let r = if dup.contains(&name) {
            Err(TopicError::InvalidRequest(format!(
                "topic {name} appears more than once in the request"
            )))
        } else {
            match check_assignments(&t.assignments, &live) {
                Err(e) => Err(e),
                Ok(()) => {
                    let r = b
                        .topics
                        .add_partitions(&name, t.count, req.validate_only)
                        .await;
                    if r.is_ok() && !req.validate_only {
                        // As for CreateTopics: answered once the new partitions have leaders
                        // (bounded; clients refresh metadata anyway).
                        if let Some(topic) = b.topics.get(&name) {
                            b.cluster
                                .wait_led(&topic, std::time::Duration::from_secs(3))
                                .await;
                        }
                    }
                    r
                }
            }
        };
        let res = CreatePartitionsTopicResult::default().with_name(t.name);
        results.push(match r {
            Ok(_) => res,
            Err(e) => res
                .with_error_code(e.code().code())
                .with_error_message(Some(str_bytes(e.to_string()))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// Replica assignments are accepted as placement hints only when Kafka would accept them: one
/// replica per new partition (there is one copy, in object storage), on a live agent.
fn check_assignments(
    a: &Option<
        Vec<kafka_protocol::messages::create_partitions_request::CreatePartitionsAssignment>,
    >,
    live: &HashSet<i32>,
) -> Result<(), TopicError> {
    for p in a.iter().flatten() {
        if p.broker_ids.len() != 1 {
            return Err(TopicError::InvalidReplicaAssignment(format!(
                "{} replicas asked for a new partition: Silt keeps one copy (in object storage); name one agent",
                p.broker_ids.len()
            )));
        }
        if !live.contains(&p.broker_ids[0].0) {
            return Err(TopicError::InvalidReplicaAssignment(format!(
                "agent {} is not live",
                p.broker_ids[0].0
            )));
        }
    }
    Ok(())
}

/// Handles DescribeLogDirs (v1-4): one log dir, named after the agent's data directory, with
/// the partitions this agent leads and their sizes (bytes in the offset index from the log
/// start). `total_bytes` and `usable_bytes` are -1: object storage has no fixed size.
pub fn describe_log_dirs(b: &Arc<Broker>, req: DescribeLogDirsRequest) -> DescribeLogDirsResponse {
    let wanted = |topic: &str, p: i32| {
        req.topics.as_ref().is_none_or(|ts| {
            ts.iter()
                .any(|t| t.topic.0.as_str() == topic && t.partitions.contains(&p))
        })
    };
    let mut by_topic: std::collections::BTreeMap<String, Vec<DescribeLogDirsPartition>> =
        Default::default();
    for p in b.cluster.local_partitions() {
        if !wanted(&p.topic, p.index) {
            continue;
        }
        let size: i64 = p.lock().segments.iter().map(|s| s.len as i64).sum();
        by_topic.entry(p.topic.to_string()).or_default().push(
            DescribeLogDirsPartition::default()
                .with_partition_index(p.index)
                .with_partition_size(size)
                .with_offset_lag(0)
                .with_is_future_key(false),
        );
    }
    let topics = by_topic
        .into_iter()
        .map(|(name, mut parts)| {
            parts.sort_by_key(|p| p.partition_index);
            DescribeLogDirsTopic::default()
                .with_name(topic_name(&name))
                .with_partitions(parts)
        })
        .collect();
    let dir = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(b.settings.data_dir.display().to_string()))
        .with_topics(topics)
        .with_total_bytes(-1)
        .with_usable_bytes(-1);
    DescribeLogDirsResponse::default().with_results(vec![dir])
}

/// Handles ElectLeaders (v0-2). With one replica, every partition's leader is its preferred
/// one: ELECTION_NOT_NEEDED for preferred elections and, for unclean ones, for partitions that
/// have a leader; unknown partitions get UNKNOWN_TOPIC_OR_PARTITION. No topics named means
/// every partition, answered with an empty list as Kafka does when nothing needed electing.
pub fn elect_leaders(b: &Arc<Broker>, req: ElectLeadersRequest) -> ElectLeadersResponse {
    let Some(topics) = req.topic_partitions else {
        return ElectLeadersResponse::default();
    };
    let results = topics
        .into_iter()
        .map(|t| {
            let topic = b.topics.get(t.topic.0.as_str());
            let parts = t
                .partitions
                .iter()
                .map(|&p| {
                    let (code, msg) = match &topic {
                        Some(tp) if tp.has_partition(p) => (
                            ResponseError::ElectionNotNeeded.code(),
                            "the partition's leader is its only and preferred replica",
                        ),
                        _ => (
                            ResponseError::UnknownTopicOrPartition.code(),
                            "no such topic or partition",
                        ),
                    };
                    PartitionResult::default()
                        .with_partition_id(p)
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_static_str(msg)))
                })
                .collect();
            ReplicaElectionResult::default()
                .with_topic(t.topic)
                .with_partition_result(parts)
        })
        .collect();
    ElectLeadersResponse::default().with_replica_election_results(results)
}

/// Handles ListPartitionReassignments (v0): none is ever in progress.
pub fn list_reassignments(
    _b: &Arc<Broker>,
    _req: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    ListPartitionReassignmentsResponse::default()
}

/// Handles AlterPartitionReassignments (v0): the controller places partitions by itself, so a
/// reassignment is refused per partition (INVALID_REPLICA_ASSIGNMENT, saying why); cancelling
/// one (no replicas given) gets NO_REASSIGNMENT_IN_PROGRESS, as Kafka answers.
pub fn alter_reassignments(
    b: &Arc<Broker>,
    req: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let responses = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = b.topics.get(t.name.0.as_str());
            let parts = t
                .partitions
                .iter()
                .map(|p| {
                    let (code, msg) = match (&topic, &p.replicas) {
                        (Some(tp), _) if !tp.has_partition(p.partition_index) => (
                            ResponseError::UnknownTopicOrPartition,
                            "no such partition".to_string(),
                        ),
                        (None, _) => (
                            ResponseError::UnknownTopicOrPartition,
                            "no such topic".to_string(),
                        ),
                        (Some(_), None) => (
                            ResponseError::NoReassignmentInProgress,
                            "no reassignment is in progress".to_string(),
                        ),
                        (Some(_), Some(_)) => (
                            ResponseError::InvalidReplicaAssignment,
                            "Silt's controller places partitions on agents by itself (one copy, in object storage); scale the agent pool or drain an agent instead".to_string(),
                        ),
                    };
                    ReassignablePartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code.code())
                        .with_error_message(Some(str_bytes(msg)))
                })
                .collect();
            ReassignableTopicResponse::default()
                .with_name(t.name)
                .with_partitions(parts)
        })
        .collect();
    AlterPartitionReassignmentsResponse::default().with_responses(responses)
}
