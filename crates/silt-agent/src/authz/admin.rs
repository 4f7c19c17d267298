//! Topic and cluster administration: IncrementalAlterConfigs and AlterConfigs need
//! ALTER_CONFIGS on the topic (or on the cluster for broker and broker-logger resources);
//! CreatePartitions ALTER on the topic; DescribeLogDirs and ListPartitionReassignments DESCRIBE
//! on the cluster; ElectLeaders and AlterPartitionReassignments ALTER on the cluster — Kafka's
//! rules.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use silt_security::acl::Operation;

use super::{fix, strip, Access, Verdict};

const TOPIC: i8 = 2;
const CLUSTER_DENIED: ResponseError = ResponseError::ClusterAuthorizationFailed;
const TOPIC_DENIED: ResponseError = ResponseError::TopicAuthorizationFailed;

fn may_alter_configs(a: &mut Access<'_>, resource_type: i8, name: &str) -> bool {
    if resource_type == TOPIC {
        a.topic(Operation::AlterConfigs, name)
    } else {
        a.cluster(Operation::AlterConfigs)
    }
}

fn denied_code(resource_type: i8) -> i16 {
    if resource_type == TOPIC {
        TOPIC_DENIED.code()
    } else {
        CLUSTER_DENIED.code()
    }
}

pub(super) fn incremental_alter_configs(
    a: &mut Access<'_>,
    r: &mut IncrementalAlterConfigsRequest,
) -> Verdict {
    let refused = strip(&mut r.resources, |res| {
        may_alter_configs(a, res.resource_type, &res.resource_name)
    });
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::IncrementalAlterConfigs(x) = resp {
            for res in refused {
                x.responses.push(
                    incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                        .with_resource_type(res.resource_type)
                        .with_resource_name(res.resource_name)
                        .with_error_code(denied_code(res.resource_type)),
                );
            }
        }
    })
}

pub(super) fn alter_configs(a: &mut Access<'_>, r: &mut AlterConfigsRequest) -> Verdict {
    let refused = strip(&mut r.resources, |res| {
        may_alter_configs(a, res.resource_type, &res.resource_name)
    });
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::AlterConfigs(x) = resp {
            for res in refused {
                x.responses.push(
                    alter_configs_response::AlterConfigsResourceResponse::default()
                        .with_resource_type(res.resource_type)
                        .with_resource_name(res.resource_name)
                        .with_error_code(denied_code(res.resource_type)),
                );
            }
        }
    })
}

pub(super) fn create_partitions(a: &mut Access<'_>, r: &mut CreatePartitionsRequest) -> Verdict {
    let refused = strip(&mut r.topics, |t| a.topic(Operation::Alter, &t.name));
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::CreatePartitions(x) = resp {
            for t in refused {
                x.results.push(
                    CreatePartitionsTopicResult::default()
                        .with_name(t.name)
                        .with_error_code(TOPIC_DENIED.code()),
                );
            }
        }
    })
}

pub(super) fn describe_log_dirs(a: &mut Access<'_>) -> Verdict {
    if a.cluster(Operation::Describe) {
        return Verdict::Pass(None);
    }
    Verdict::Deny(Box::new(ResponseKind::DescribeLogDirs(
        DescribeLogDirsResponse::default().with_error_code(CLUSTER_DENIED.code()),
    )))
}

pub(super) fn elect_leaders(a: &mut Access<'_>) -> Verdict {
    if a.cluster(Operation::Alter) {
        return Verdict::Pass(None);
    }
    Verdict::Deny(Box::new(ResponseKind::ElectLeaders(
        ElectLeadersResponse::default().with_error_code(CLUSTER_DENIED.code()),
    )))
}

pub(super) fn list_reassignments(a: &mut Access<'_>) -> Verdict {
    if a.cluster(Operation::Describe) {
        return Verdict::Pass(None);
    }
    Verdict::Deny(Box::new(ResponseKind::ListPartitionReassignments(
        ListPartitionReassignmentsResponse::default().with_error_code(CLUSTER_DENIED.code()),
    )))
}

pub(super) fn alter_reassignments(a: &mut Access<'_>) -> Verdict {
    if a.cluster(Operation::Alter) {
        return Verdict::Pass(None);
    }
    Verdict::Deny(Box::new(ResponseKind::AlterPartitionReassignments(
        AlterPartitionReassignmentsResponse::default().with_error_code(CLUSTER_DENIED.code()),
    )))
}
