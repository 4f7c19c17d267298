//! KIP-848 consumer groups: ConsumerGroupHeartbeat and ConsumerGroupDescribe. The group state
//! machine and assignors live in [`crate::groups::consumer`]; this module decodes, checks the
//! request's shape and encodes, with topics seen through the agent's catalog.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::messages::consumer_group_describe_response::{
    self as describe, DescribedGroup,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::groups::assignors::Parts;
use crate::groups::consumer::{Heartbeat, TopicView};
use crate::topics::Topics;

/// The agent's topic catalog as a consumer group sees it.
pub(crate) struct Catalog<'a>(pub &'a Topics);

impl TopicView for Catalog<'_> {
    fn by_name(&self, name: &str) -> Option<(Uuid, i32)> {
        self.0.get(name).map(|t| (t.record.id, t.record.partitions))
    }

    fn names(&self) -> Vec<String> {
        self.0.all().iter().map(|t| t.record.name.clone()).collect()
    }

    fn name_of(&self, id: &Uuid) -> Option<String> {
        self.0.get_by_id(id).map(|t| t.record.name.clone())
    }
}

fn parts_of(
    tps: Vec<kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions>,
) -> Parts {
    let mut out = Parts::new();
    for tp in tps {
        out.entry(tp.topic_id).or_default().extend(tp.partitions);
    }
    out
}

/// ConsumerGroupHeartbeat.
pub async fn heartbeat(
    b: &Arc<Broker>,
    req: ConsumerGroupHeartbeatRequest,
    client_id: &str,
    peer: SocketAddr,
) -> ConsumerGroupHeartbeatResponse {
    let interval = b.groups.heartbeat_interval_ms();
    let fail = |e: ResponseError, msg: &str| {
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(e.code())
            .with_error_message(Some(str_bytes(msg)))
            .with_member_epoch(-1)
            .with_heartbeat_interval_ms(interval)
    };
    let group = req.group_id.0.to_string();
    if group.is_empty() {
        return fail(ResponseError::InvalidRequest, "GroupId can't be empty");
    }
    if req.member_epoch == 0 && req.rebalance_timeout_ms == -1 {
        return fail(
            ResponseError::InvalidRequest,
            "RebalanceTimeoutMs must be provided in the first heartbeat",
        );
    }
    let hb = Heartbeat {
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.map(|s| s.to_string()),
        rack_id: req.rack_id.map(|s| s.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        topic_names: req
            .subscribed_topic_names
            .map(|ns| ns.into_iter().map(|n| n.0.to_string()).collect()),
        topic_regex: req.subscribed_topic_regex.map(|s| s.to_string()),
        assignor: req.server_assignor.map(|s| s.to_string()),
        owned: req.topic_partitions.map(parts_of),
        client_id: client_id.to_string(),
        client_host: format!("/{}", peer.ip()),
    };
    let r = b
        .groups
        .consumer_heartbeat(&group, hb, &Catalog(&b.topics))
        .await;
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(r.error)
        .with_error_message(r.message.map(str_bytes))
        .with_member_id((!r.member_id.is_empty()).then(|| str_bytes(r.member_id)))
        .with_member_epoch(r.member_epoch)
        .with_heartbeat_interval_ms(interval)
        .with_assignment(r.assignment.map(|a| {
            Assignment::default().with_topic_partitions(
                a.into_iter()
                    .filter(|(_, ps)| !ps.is_empty())
                    .map(|(t, ps)| {
                        TopicPartitions::default()
                            .with_topic_id(t)
                            .with_partitions(ps.into_iter().collect())
                    })
                    .collect(),
            )
        }))
}

fn described_assignment(parts: &Parts, topics: &Catalog<'_>) -> describe::Assignment {
    describe::Assignment::default().with_topic_partitions(
        parts
            .iter()
            .filter(|(_, ps)| !ps.is_empty())
            .map(|(id, ps)| {
                describe::TopicPartitions::default()
                    .with_topic_id(*id)
                    .with_topic_name(topic_name(&topics.name_of(id).unwrap_or_default()))
                    .with_partitions(ps.iter().copied().collect())
            })
            .collect(),
    )
}

/// ConsumerGroupDescribe.
pub fn describe(
    b: &Arc<Broker>,
    req: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let topics = Catalog(&b.topics);
    let groups = req
        .group_ids
        .into_iter()
        .map(|g| {
            let id = g.0.to_string();
            let out = DescribedGroup::default()
                .with_group_id(g)
                .with_authorized_operations(i32::MIN);
            match b.groups.consumer_describe(&id) {
                Err(code) => out.with_error_code(code).with_error_message(
                    (code == ResponseError::GroupIdNotFound.code())
                        .then(|| str_bytes(format!("group {id} is not a consumer group"))),
                ),
                Ok(d) => out
                    .with_group_state(str_bytes(d.state))
                    .with_group_epoch(d.group_epoch)
                    .with_assignment_epoch(d.assignment_epoch)
                    .with_assignor_name(str_bytes(d.assignor))
                    .with_members(
                        d.members
                            .into_iter()
                            .map(|m| {
                                let names: BTreeSet<String> = m.topic_names.into_iter().collect();
                                describe::Member::default()
                                    .with_member_id(str_bytes(m.member_id))
                                    .with_instance_id(m.instance_id.map(str_bytes))
                                    .with_rack_id(m.rack_id.map(str_bytes))
                                    .with_member_epoch(m.epoch)
                                    .with_client_id(str_bytes(m.client_id))
                                    .with_client_host(str_bytes(m.client_host))
                                    .with_subscribed_topic_names(
                                        names.iter().map(|n| topic_name(n)).collect(),
                                    )
                                    .with_subscribed_topic_regex(m.topic_regex.map(str_bytes))
                                    .with_assignment(described_assignment(&m.assigned, &topics))
                                    .with_target_assignment(described_assignment(
                                        &m.target, &topics,
                                    ))
                                    // KIP-1099: 0 classic, 1 consumer protocol.
                                    .with_member_type(if m.classic { 0 } else { 1 })
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}
