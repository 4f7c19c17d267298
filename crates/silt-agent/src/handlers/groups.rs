//! Group membership APIs: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, DescribeGroups,
//! ListGroups, DeleteGroups. The state machine lives in [`crate::groups`]; this module decodes,
//! validates ids and encodes per version.

use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use super::{now, str_bytes, Reply};
use crate::broker::Broker;
use crate::groups::group::{Join, JoinResult, SyncResult};

fn opt(s: &Option<kafka_protocol::protocol::StrBytes>) -> Option<String> {
    s.as_ref().map(|s| s.to_string())
}

/// JoinGroup: answered when the rebalance completes.
pub fn join(
    b: &Arc<Broker>,
    req: JoinGroupRequest,
    v: i16,
    client_id: &str,
    peer: SocketAddr,
) -> Reply {
    let group = req.group_id.0.to_string();
    let respond = move |r: JoinResult| {
        let mut resp = JoinGroupResponse::default()
            .with_error_code(r.error)
            .with_generation_id(r.generation)
            .with_leader(str_bytes(r.leader))
            .with_member_id(str_bytes(r.member_id))
            .with_members(
                r.members
                    .into_iter()
                    .map(|(id, inst, meta)| {
                        JoinGroupResponseMember::default()
                            .with_member_id(str_bytes(id))
                            .with_group_instance_id(if v >= 5 { inst.map(str_bytes) } else { None })
                            .with_metadata(meta)
                    })
                    .collect(),
            );
        if v >= 7 {
            resp = resp
                .with_protocol_type(r.protocol_type.map(str_bytes))
                .with_protocol_name(r.protocol_name.map(str_bytes));
        } else {
            resp = resp.with_protocol_name(Some(str_bytes(r.protocol_name.unwrap_or_default())));
        }
        ResponseKind::JoinGroup(resp)
    };
    if group.is_empty() {
        return now(respond(JoinResult {
            error: ResponseError::InvalidGroupId.code(),
            generation: -1,
            ..Default::default()
        }));
    }
    let j = Join {
        member_id: req.member_id.to_string(),
        instance_id: opt(&req.group_instance_id),
        client_id: client_id.to_string(),
        client_host: format!("/{}", peer.ip()),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: if v >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: v >= 4,
    };
    let b = b.clone();
    Reply::later(Box::pin(async move {
        let topics = super::consumer_groups::Catalog(&b.topics);
        respond(b.groups.join(&group, j, &topics).await)
    }))
}

/// SyncGroup: answered once the leader has assigned.
pub fn sync(b: &Arc<Broker>, req: SyncGroupRequest, v: i16) -> Reply {
    let respond = move |r: SyncResult| {
        let mut resp = SyncGroupResponse::default()
            .with_error_code(r.error)
            .with_assignment(r.assignment);
        if v >= 5 {
            resp = resp
                .with_protocol_type(r.protocol_type.map(str_bytes))
                .with_protocol_name(r.protocol_name.map(str_bytes));
        }
        ResponseKind::SyncGroup(resp)
    };
    let group = req.group_id.0.to_string();
    if group.is_empty() {
        return now(respond(SyncResult {
            error: ResponseError::InvalidGroupId.code(),
            ..Default::default()
        }));
    }
    let rx = b.groups.sync(
        &group,
        &req.member_id,
        req.group_instance_id.as_deref(),
        req.generation_id,
        req.protocol_type.as_deref(),
        req.protocol_name.as_deref(),
        req.assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
        &super::consumer_groups::Catalog(&b.topics),
    );
    Reply::later(Box::pin(async move {
        respond(rx.await.unwrap_or(SyncResult {
            error: ResponseError::CoordinatorNotAvailable.code(),
            ..Default::default()
        }))
    }))
}

/// Heartbeat.
pub fn heartbeat(b: &Arc<Broker>, req: HeartbeatRequest) -> HeartbeatResponse {
    let group = req.group_id.0.to_string();
    let code = if group.is_empty() {
        ResponseError::InvalidGroupId.code()
    } else {
        b.groups.heartbeat(
            &group,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
        )
    };
    HeartbeatResponse::default().with_error_code(code)
}

/// LeaveGroup (one member in v0-2, a batch in v3+).
pub async fn leave(b: &Arc<Broker>, req: LeaveGroupRequest, v: i16) -> LeaveGroupResponse {
    let group = req.group_id.0.to_string();
    if group.is_empty() {
        return LeaveGroupResponse::default().with_error_code(ResponseError::InvalidGroupId.code());
    }
    if let Err(code) = b.groups.check(&group) {
        return LeaveGroupResponse::default().with_error_code(code);
    }
    if v < 3 {
        let codes = b
            .groups
            .leave(&group, &[(req.member_id.to_string(), None)])
            .await;
        return LeaveGroupResponse::default().with_error_code(codes[0]);
    }
    let members: Vec<(String, Option<String>)> = req
        .members
        .iter()
        .map(|m| (m.member_id.to_string(), opt(&m.group_instance_id)))
        .collect();
    let codes = b.groups.leave(&group, &members).await;
    LeaveGroupResponse::default().with_members(
        members
            .into_iter()
            .zip(codes)
            .map(|((m, i), c)| {
                MemberResponse::default()
                    .with_member_id(str_bytes(m))
                    .with_group_instance_id(i.map(str_bytes))
                    .with_error_code(c)
            })
            .collect(),
    )
}

/// DescribeGroups. An unknown group is reported as Dead (v6+: GROUP_ID_NOT_FOUND).
pub fn describe(b: &Arc<Broker>, req: DescribeGroupsRequest, v: i16) -> DescribeGroupsResponse {
    let groups = req
        .groups
        .into_iter()
        .map(|g| {
            let id = g.0.to_string();
            let d = DescribedGroup::default().with_group_id(g);
            if let Err(code) = b.groups.check(&id) {
                return d.with_error_code(code);
            }
            match b
                .groups
                .describe(&id, &super::consumer_groups::Catalog(&b.topics))
            {
                None => d.with_group_state(str_bytes("Dead")),
                Some(x) => d
                    .with_group_state(str_bytes(x.state))
                    .with_protocol_type(str_bytes(x.protocol_type))
                    .with_protocol_data(str_bytes(x.protocol))
                    .with_members(
                        x.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(str_bytes(m.member_id))
                                    .with_group_instance_id(if v >= 4 {
                                        m.instance_id.map(str_bytes)
                                    } else {
                                        None
                                    })
                                    .with_client_id(str_bytes(m.client_id))
                                    .with_client_host(str_bytes(m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

/// ListGroups, with the v4 state filter and v5 type filter.
pub fn list(b: &Arc<Broker>, req: ListGroupsRequest, v: i16) -> ListGroupsResponse {
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let groups = b
        .groups
        .list()
        .into_iter()
        .filter(|(_, _, st, _)| states.is_empty() || states.contains(&st.to_lowercase()))
        .filter(|(_, _, _, ty)| types.is_empty() || types.iter().any(|t| t == ty))
        .map(|(id, pt, st, ty)| {
            let mut g = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(id)))
                .with_protocol_type(str_bytes(pt));
            if v >= 4 {
                g = g.with_group_state(str_bytes(st));
            }
            if v >= 5 {
                g = g.with_group_type(str_bytes(ty));
            }
            g
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

/// DeleteGroups.
pub async fn delete(b: &Arc<Broker>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for g in req.groups_names {
        let code = match b.groups.delete(&g.0).await {
            Ok(()) => 0,
            Err(c) => c,
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(g)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
