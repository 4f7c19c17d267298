//! Committed offsets: OffsetCommit, OffsetFetch (one group, or several in v8+) and OffsetDelete.
//! A commit of any number of partitions is one metadata transaction.

use std::sync::Arc;

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
use silt_meta::layout::group_offsets::Committed;

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::groups::CommitError;

/// Kafka's `offset.metadata.max.bytes`.
const MAX_METADATA: usize = 4096;

fn partition_exists(b: &Broker, topic: &str, partition: i32) -> bool {
    b.topics
        .get(topic)
        .is_some_and(|t| t.has_partition(partition))
}

/// OffsetCommit.
pub async fn commit(b: &Arc<Broker>, req: OffsetCommitRequest, v: i16) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    // (topic, partition, error code or None if it is to be written)
    let mut slots: Vec<(String, i32, Option<i16>)> = Vec::new();
    let mut writes = Vec::new();
    let now = b.clock.now_ms();
    for t in &req.topics {
        for p in &t.partitions {
            let topic = t.name.0.to_string();
            let meta = p.committed_metadata.as_ref().map(|m| m.to_string());
            let err = if group.is_empty() {
                Some(ResponseError::InvalidGroupId.code())
            } else if !partition_exists(b, &topic, p.partition_index) {
                Some(ResponseError::UnknownTopicOrPartition.code())
            } else if meta.as_ref().is_some_and(|m| m.len() > MAX_METADATA) {
                Some(ResponseError::OffsetMetadataTooLarge.code())
            } else {
                writes.push((
                    topic.clone(),
                    p.partition_index,
                    Committed {
                        offset: p.committed_offset,
                        leader_epoch: if v >= 6 { p.committed_leader_epoch } else { -1 },
                        metadata: meta,
                        commit_ms: now,
                    },
                ));
                None
            };
            slots.push((topic, p.partition_index, err));
        }
    }
    let n_writes = writes.len();
    let outcome = if writes.is_empty() {
        Outcome::All(0)
    } else {
        match b
            .groups
            .commit(
                &group,
                &req.member_id,
                req.group_instance_id.as_deref(),
                req.generation_id_or_member_epoch,
                writes,
            )
            .await
        {
            Ok(()) => Outcome::All(0),
            Err(CommitError::Refused(c)) => Outcome::All(c),
            Err(CommitError::Meta(e)) => {
                tracing::error!(group = %group, error = %e, "offset commit failed in the metadata store");
                Outcome::All(ResponseError::CoordinatorNotAvailable.code())
            }
            Err(CommitError::Partial { written, code }) => Outcome::Prefix { written, code },
        }
    };
    // Each written offset's code, in request order.
    let mut codes = (0..n_writes).map(|i| match outcome {
        Outcome::All(c) => c,
        Outcome::Prefix { written, code } => {
            if i < written {
                0
            } else {
                code
            }
        }
    });
    let topics = by_topic(slots.into_iter().map(|(topic, partition, err)| {
        let code = err.unwrap_or_else(|| codes.next().unwrap_or(0));
        let p = OffsetCommitResponsePartition::default()
            .with_partition_index(partition)
            .with_error_code(code);
        (topic, p)
    }))
    .into_iter()
    .map(|(t, ps)| {
        OffsetCommitResponseTopic::default()
            .with_name(topic_name(&t))
            .with_partitions(ps)
    })
    .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// What happened to the offsets an OffsetCommit wrote.
#[derive(Clone, Copy)]
enum Outcome {
    /// Every one got this code.
    All(i16),
    /// The first `written` were stored; the rest got `code`.
    Prefix { written: usize, code: i16 },
}

/// Groups per-partition results by topic, keeping the request's order.
fn by_topic<P>(rows: impl IntoIterator<Item = (String, P)>) -> Vec<(String, Vec<P>)> {
    let mut out: Vec<(String, Vec<P>)> = Vec::new();
    for (topic, p) in rows {
        match out.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, ps)) => ps.push(p),
            None => out.push((topic, vec![p])),
        }
    }
    out
}

/// (partition, committed offset, leader epoch, metadata) of one topic.
type Rows = Vec<(i32, i64, i32, Option<String>)>;

fn fetch_group(
    b: &Broker,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Vec<(String, Rows)> {
    let wanted: Option<Vec<(String, i32)>> = topics.map(|ts| {
        ts.into_iter()
            .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
            .collect()
    });
    by_topic(
        b.groups
            .committed(group, wanted.as_deref())
            .into_iter()
            .map(|(t, p, c)| {
                let row = match c {
                    Some(c) => (
                        p,
                        c.offset,
                        c.leader_epoch,
                        Some(c.metadata.unwrap_or_default()),
                    ),
                    None => (p, -1, -1, Some(String::new())),
                };
                (t, row)
            }),
    )
}

/// OffsetFetch.
pub fn fetch(b: &Arc<Broker>, req: OffsetFetchRequest, v: i16) -> OffsetFetchResponse {
    if v >= 8 {
        let groups = req
            .groups
            .into_iter()
            .map(|g| {
                let topics = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes))
                        .collect()
                });
                if let Err(code) = b
                    .groups
                    .check(&g.group_id.0)
                    .and_then(|_| {
                        b.groups.check_fetching_member(
                            &g.group_id.0,
                            g.member_id.as_deref(),
                            g.member_epoch,
                        )
                    })
                    .and_then(|_| b.groups.offsets_settled(&g.group_id.0))
                {
                    return OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id)
                        .with_error_code(code);
                }
                let rows = fetch_group(b, &g.group_id.0, topics);
                let group = g.group_id.0.to_string();
                let unstable =
                    |t: &str, p: i32| req.require_stable && b.groups.unstable(&group, t, p);
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_topics(
                        rows.into_iter()
                            .map(|(t, ps)| {
                                let parts = ps
                                    .into_iter()
                                    .map(|(p, o, e, m)| {
                                        let r = OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p);
                                        if unstable(&t, p) {
                                            return r
                                                .with_committed_offset(-1)
                                                .with_error_code(UNSTABLE.code());
                                        }
                                        r.with_committed_offset(o)
                                            .with_committed_leader_epoch(e)
                                            .with_metadata(m.map(str_bytes))
                                    })
                                    .collect();
                                OffsetFetchResponseTopics::default()
                                    .with_name(topic_name(&t))
                                    .with_partitions(parts)
                            })
                            .collect(),
                    )
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let topics = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    if let Err(code) = b
        .groups
        .check(&req.group_id.0)
        .and_then(|_| b.groups.offsets_settled(&req.group_id.0))
    {
        return OffsetFetchResponse::default().with_error_code(code);
    }
    let rows = fetch_group(b, &req.group_id.0, topics);
    let group = req.group_id.0.to_string();
    let unstable = |t: &str, p: i32| req.require_stable && b.groups.unstable(&group, t, p);
    OffsetFetchResponse::default().with_topics(
        rows.into_iter()
            .map(|(t, ps)| {
                let parts = ps
                    .into_iter()
                    .map(|(p, o, e, m)| {
                        let r = OffsetFetchResponsePartition::default().with_partition_index(p);
                        if unstable(&t, p) {
                            return r.with_committed_offset(-1).with_error_code(UNSTABLE.code());
                        }
                        r.with_committed_offset(o)
                            .with_committed_leader_epoch(if v >= 5 { e } else { -1 })
                            .with_metadata(m.map(str_bytes))
                    })
                    .collect();
                OffsetFetchResponseTopic::default()
                    .with_name(topic_name(&t))
                    .with_partitions(parts)
            })
            .collect(),
    )
}

/// What OffsetFetch with `require_stable` answers for a partition whose offset was committed in
/// a transaction still open (the client retries).
const UNSTABLE: ResponseError = ResponseError::UnstableOffsetCommit;

/// OffsetDelete.
pub async fn delete(b: &Arc<Broker>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group = req.group_id.0.to_string();
    let mut known = Vec::new();
    let mut rows: Vec<(String, i32, Option<i16>)> = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            let topic = t.name.0.to_string();
            if partition_exists(b, &topic, p.partition_index) {
                known.push((topic.clone(), p.partition_index));
                rows.push((topic, p.partition_index, None));
            } else {
                rows.push((
                    topic,
                    p.partition_index,
                    Some(ResponseError::UnknownTopicOrPartition.code()),
                ));
            }
        }
    }
    let codes = match b.groups.delete_offsets(&group, &known).await {
        Ok(c) => c,
        Err(group_error) => return OffsetDeleteResponse::default().with_error_code(group_error),
    };
    let mut codes = codes.into_iter();
    let topics = by_topic(rows.into_iter().map(|(topic, partition, err)| {
        let code = err.unwrap_or_else(|| codes.next().unwrap_or(0));
        let p = OffsetDeleteResponsePartition::default()
            .with_partition_index(partition)
            .with_error_code(code);
        (topic, p)
    }))
    .into_iter()
    .map(|(t, ps)| {
        OffsetDeleteResponseTopic::default()
            .with_name(topic_name(&t))
            .with_partitions(ps)
    })
    .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
