//! Group APIs: membership (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) and OffsetCommit need
//! READ on the group (OffsetCommit also READ on each topic; ConsumerGroupHeartbeat also DESCRIBE
//! on each topic subscribed to by name), OffsetFetch, DescribeGroups, ConsumerGroupDescribe and
//! FindCoordinator DESCRIBE, DeleteGroups and OffsetDelete DELETE; ListGroups lists the groups
//! the principal may DESCRIBE (all of them with DESCRIBE on the cluster).

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use silt_security::acl::{Operation, ResourceType};

use super::{fix, strip, Access, Verdict};

const GROUP_DENIED: ResponseError = ResponseError::GroupAuthorizationFailed;
const TOPIC_DENIED: ResponseError = ResponseError::TopicAuthorizationFailed;

/// JoinGroup, SyncGroup, Heartbeat, LeaveGroup: READ on the group, or the empty response of
/// the API (`empty`) with GROUP_AUTHORIZATION_FAILED.
pub(super) fn membership(a: &mut Access<'_>, group: &str, empty: ResponseKind) -> Verdict {
    if a.group(Operation::Read, group) {
        return Verdict::Pass(None);
    }
    let code = GROUP_DENIED.code();
    Verdict::Deny(Box::new(match empty {
        ResponseKind::JoinGroup(r) => {
            ResponseKind::JoinGroup(r.with_error_code(code).with_generation_id(-1))
        }
        ResponseKind::SyncGroup(r) => ResponseKind::SyncGroup(r.with_error_code(code)),
        ResponseKind::Heartbeat(r) => ResponseKind::Heartbeat(r.with_error_code(code)),
        ResponseKind::LeaveGroup(r) => ResponseKind::LeaveGroup(r.with_error_code(code)),
        ResponseKind::ConsumerGroupHeartbeat(r) => {
            ResponseKind::ConsumerGroupHeartbeat(r.with_error_code(code).with_member_epoch(-1))
        }
        other => other,
    }))
}

fn commit_topic(
    name: TopicName,
    parts: impl Iterator<Item = i32>,
    code: ResponseError,
) -> OffsetCommitResponseTopic {
    OffsetCommitResponseTopic::default()
        .with_name(name)
        .with_partitions(
            parts
                .map(|p| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(code.code())
                })
                .collect(),
        )
}

pub(super) fn offset_commit(a: &mut Access<'_>, r: &mut OffsetCommitRequest) -> Verdict {
    if !a.group(Operation::Read, &r.group_id) {
        return Verdict::Deny(Box::new(ResponseKind::OffsetCommit(
            OffsetCommitResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        commit_topic(
                            t.name.clone(),
                            t.partitions.iter().map(|p| p.partition_index),
                            GROUP_DENIED,
                        )
                    })
                    .collect(),
            ),
        )));
    }
    let refused = strip(&mut r.topics, |t| a.topic(Operation::Read, &t.name));
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::OffsetCommit(c) = resp {
            for t in refused {
                c.topics.push(commit_topic(
                    t.name,
                    t.partitions.iter().map(|p| p.partition_index),
                    TOPIC_DENIED,
                ));
            }
        }
    })
}

pub(super) fn offset_fetch(
    a: &mut Access<'_>,
    r: &mut OffsetFetchRequest,
    version: i16,
) -> Verdict {
    if version >= 8 {
        let refused = strip(&mut r.groups, |g| a.group(Operation::Describe, &g.group_id));
        let mut hidden: Vec<(String, Vec<OffsetFetchResponseTopics>)> = Vec::new();
        for g in &mut r.groups {
            if let Some(topics) = &mut g.topics {
                let gone = strip(topics, |t| a.topic(Operation::Describe, &t.name));
                if !gone.is_empty() {
                    hidden.push((
                        g.group_id.to_string(),
                        gone.into_iter()
                            .map(|t| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(t.name)
                                    .with_topic_id(t.topic_id)
                                    .with_partitions(
                                        t.partition_indexes
                                            .iter()
                                            .map(|p| {
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(*p)
                                                    .with_committed_offset(-1)
                                                    .with_error_code(TOPIC_DENIED.code())
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ));
                }
            }
        }
        let hide_all: Vec<String> = r
            .groups
            .iter()
            .filter(|g| g.topics.is_none())
            .map(|g| g.group_id.to_string())
            .collect();
        if refused.is_empty() && hidden.is_empty() && hide_all.is_empty() {
            return Verdict::Pass(None);
        }
        let visible = visible_topics(a);
        return fix(move |resp| {
            if let ResponseKind::OffsetFetch(o) = resp {
                for g in &mut o.groups {
                    if hide_all.iter().any(|h| h == g.group_id.as_str()) {
                        g.topics.retain(|t| visible.contains(t.name.as_str()));
                    }
                    if let Some((_, topics)) =
                        hidden.iter().find(|(id, _)| id == g.group_id.as_str())
                    {
                        g.topics.extend(topics.iter().cloned());
                    }
                }
                for g in refused {
                    o.groups.push(
                        OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id)
                            .with_error_code(GROUP_DENIED.code()),
                    );
                }
            }
        });
    }
    if !a.group(Operation::Describe, &r.group_id) {
        let topics = r
            .topics
            .iter()
            .flatten()
            .map(|t| fetch_topic(t.name.clone(), &t.partition_indexes, GROUP_DENIED))
            .collect();
        return Verdict::Deny(Box::new(ResponseKind::OffsetFetch(
            OffsetFetchResponse::default()
                .with_error_code(if version >= 2 { GROUP_DENIED.code() } else { 0 })
                .with_topics(topics),
        )));
    }
    match &mut r.topics {
        Some(topics) => {
            let refused = strip(topics, |t| a.topic(Operation::Describe, &t.name));
            if refused.is_empty() {
                return Verdict::Pass(None);
            }
            fix(move |resp| {
                if let ResponseKind::OffsetFetch(o) = resp {
                    for t in refused {
                        o.topics
                            .push(fetch_topic(t.name, &t.partition_indexes, TOPIC_DENIED));
                    }
                }
            })
        }
        None => {
            let visible = visible_topics(a);
            fix(move |resp| {
                if let ResponseKind::OffsetFetch(o) = resp {
                    o.topics.retain(|t| visible.contains(t.name.as_str()));
                }
            })
        }
    }
}

/// The topics the principal may DESCRIBE, decided now.
fn visible_topics(a: &mut Access<'_>) -> std::collections::HashSet<String> {
    let names: Vec<String> = a
        .broker()
        .topics
        .all()
        .iter()
        .map(|t| t.record.name.clone())
        .collect();
    names
        .into_iter()
        .filter(|n| a.topic(Operation::Describe, n))
        .collect()
}

fn fetch_topic(name: TopicName, parts: &[i32], code: ResponseError) -> OffsetFetchResponseTopic {
    OffsetFetchResponseTopic::default()
        .with_name(name)
        .with_partitions(
            parts
                .iter()
                .map(|p| {
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(*p)
                        .with_committed_offset(-1)
                        .with_error_code(code.code())
                })
                .collect(),
        )
}

pub(super) fn offset_delete(a: &mut Access<'_>, r: &mut OffsetDeleteRequest) -> Verdict {
    if !a.group(Operation::Delete, &r.group_id) {
        return Verdict::Deny(Box::new(ResponseKind::OffsetDelete(
            OffsetDeleteResponse::default().with_error_code(GROUP_DENIED.code()),
        )));
    }
    let refused = strip(&mut r.topics, |t| a.topic(Operation::Read, &t.name));
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::OffsetDelete(o) = resp {
            for t in refused {
                o.topics.push(
                    OffsetDeleteResponseTopic::default()
                        .with_name(t.name)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(TOPIC_DENIED.code())
                                })
                                .collect(),
                        ),
                );
            }
        }
    })
}

const KEY_GROUP: i8 = 0;

pub(super) fn find_coordinator(
    a: &mut Access<'_>,
    r: &mut FindCoordinatorRequest,
    version: i16,
) -> Verdict {
    let key_type = if version >= 1 { r.key_type } else { KEY_GROUP };
    let (rt, code) = if key_type == KEY_GROUP {
        (ResourceType::Group, GROUP_DENIED)
    } else {
        (
            ResourceType::TransactionalId,
            ResponseError::TransactionalIdAuthorizationFailed,
        )
    };
    if version < 4 {
        if a.may(Operation::Describe, rt, &r.key) {
            return Verdict::Pass(None);
        }
        return Verdict::Deny(Box::new(ResponseKind::FindCoordinator(
            FindCoordinatorResponse::default()
                .with_error_code(code.code())
                .with_node_id(BrokerId(-1))
                .with_port(-1),
        )));
    }
    let refused = strip(&mut r.coordinator_keys, |k| {
        a.may(Operation::Describe, rt, k)
    });
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::FindCoordinator(f) = resp {
            for k in refused {
                f.coordinators.push(
                    Coordinator::default()
                        .with_key(k)
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(code.code()),
                );
            }
        }
    })
}

/// ConsumerGroupHeartbeat: READ on the group, and DESCRIBE on every topic subscribed to by
/// name (TOPIC_AUTHORIZATION_FAILED otherwise, as Kafka answers).
pub(super) fn consumer_heartbeat(a: &mut Access<'_>, r: &ConsumerGroupHeartbeatRequest) -> Verdict {
    let empty = ResponseKind::ConsumerGroupHeartbeat(Default::default());
    if let Verdict::Deny(d) = membership(a, &r.group_id, empty) {
        return Verdict::Deny(d);
    }
    let names = r.subscribed_topic_names.iter().flatten();
    for n in names {
        if !a.topic(Operation::Describe, n) {
            return Verdict::Deny(Box::new(ResponseKind::ConsumerGroupHeartbeat(
                ConsumerGroupHeartbeatResponse::default()
                    .with_error_code(TOPIC_DENIED.code())
                    .with_member_epoch(-1),
            )));
        }
    }
    Verdict::Pass(None)
}

/// ConsumerGroupDescribe: DESCRIBE on each group.
pub(super) fn consumer_describe(
    a: &mut Access<'_>,
    r: &mut ConsumerGroupDescribeRequest,
) -> Verdict {
    let refused = strip(&mut r.group_ids, |g| a.group(Operation::Describe, g));
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::ConsumerGroupDescribe(d) = resp {
            for g in refused {
                d.groups.push(
                    consumer_group_describe_response::DescribedGroup::default()
                        .with_group_id(g)
                        .with_error_code(GROUP_DENIED.code()),
                );
            }
        }
    })
}

pub(super) fn describe_groups(a: &mut Access<'_>, r: &mut DescribeGroupsRequest) -> Verdict {
    let refused = strip(&mut r.groups, |g| a.group(Operation::Describe, g));
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::DescribeGroups(d) = resp {
            for g in refused {
                d.groups.push(
                    DescribedGroup::default()
                        .with_group_id(g)
                        .with_error_code(GROUP_DENIED.code()),
                );
            }
        }
    })
}

pub(super) fn list_groups(a: &mut Access<'_>) -> Verdict {
    if a.cluster(Operation::Describe) {
        return Verdict::Pass(None);
    }
    // The groups are known only once the handler answers; decide per group then, from a
    // snapshot of the decisions this principal's ACLs give.
    let az = a.az.clone();
    let principal = a.s.principal.clone();
    let host = a.s.host.clone();
    fix(move |resp| {
        if let ResponseKind::ListGroups(l) = resp {
            l.groups.retain(|g| {
                az.authorize(
                    &principal,
                    &host,
                    Operation::Describe,
                    ResourceType::Group,
                    &g.group_id,
                )
            });
        }
    })
}

pub(super) fn delete_groups(a: &mut Access<'_>, r: &mut DeleteGroupsRequest) -> Verdict {
    let refused = strip(&mut r.groups_names, |g| a.group(Operation::Delete, g));
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    fix(move |resp| {
        if let ResponseKind::DeleteGroups(d) = resp {
            for g in refused {
                d.results.push(
                    DeletableGroupResult::default()
                        .with_group_id(g)
                        .with_error_code(GROUP_DENIED.code()),
                );
            }
        }
    })
}
