//! Kafka request handlers, one module per API (or small family). Each takes the decoded
//! request and returns the response; errors become Kafka error codes through
//! [`crate::error`]'s mappings only.

mod admin;
mod api_versions;
mod configs;
mod consumer_groups;
mod coordinator;
mod delete_records;
mod describe_producers;
mod fetch;
mod groups;
mod list_offsets;
mod metadata;
mod offsets;
mod partitions_admin;
mod produce;
mod producer_id;
mod quotas;
mod security_admin;
pub(crate) mod txns;

use std::sync::Arc;

use futures::future::BoxFuture;
use kafka_protocol::messages::{ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use silt_wire::request::RawRequest;

use crate::broker::Broker;

pub use api_versions::{supported, unsupported_version_response};

/// What to send back for a request.
pub enum Reply {
    /// Nothing (acks=0 produce).
    None,
    /// A response ready now.
    Now(Box<ResponseKind>),
    /// A response that waits (durability, long-poll); answered in request order.
    Later(BoxFuture<'static, Answer>),
}

impl Reply {
    /// A response that waits, with no records to place ([`Answer::records`] empty).
    pub fn later(fut: BoxFuture<'static, ResponseKind>) -> Reply {
        Reply::Later(Box::pin(async move { Answer::from(fut.await) }))
    }
}

/// A response body, and the records its Fetch partitions name by
/// [`silt_wire::response::records_marker`]: written where the markers are, as they were read
/// (no copy), by [`silt_wire::response::encode_frame`].
pub struct Answer {
    /// The response.
    pub body: ResponseKind,
    /// Records named by markers in `body`; empty if it has none.
    pub records: Vec<silt_wire::rope::Rope>,
}

impl From<ResponseKind> for Answer {
    fn from(body: ResponseKind) -> Self {
        Self {
            body,
            records: Vec::new(),
        }
    }
}

/// Handles one decoded request. Runs in request order on its connection; anything that waits
/// goes into `Reply::Later` so later requests are read meanwhile.
pub async fn dispatch(
    broker: &Arc<Broker>,
    req: &RawRequest,
    body: kafka_protocol::messages::RequestKind,
    session: &mut crate::session::Session,
) -> Reply {
    let peer = session.peer;
    let listener = session.listener.clone();
    let listener = listener.name.as_str();
    let client_id = req.header.client_id.as_deref().unwrap_or("");
    use kafka_protocol::messages::RequestKind as R;
    let v = req.version;
    match body {
        R::ApiVersions(_) => now(ResponseKind::ApiVersions(api_versions::handle(
            v,
            broker.settings.transactions.version,
        ))),
        R::Metadata(r) => {
            let may_create = session.may_create(broker);
            now(ResponseKind::Metadata(
                metadata::handle(broker, r, v, listener, &may_create).await,
            ))
        }
        R::Produce(r) => produce::handle(broker, r, v).await,
        R::Fetch(r) => fetch::handle(broker, r, v),
        R::ListOffsets(r) => now(ResponseKind::ListOffsets(
            list_offsets::handle(broker, r, v).await,
        )),
        R::OffsetForLeaderEpoch(r) => now(ResponseKind::OffsetForLeaderEpoch(
            list_offsets::offset_for_leader_epoch(broker, r),
        )),
        R::CreateTopics(r) => now(ResponseKind::CreateTopics(
            admin::create_topics(broker, r, v).await,
        )),
        R::DeleteTopics(r) => now(ResponseKind::DeleteTopics(
            admin::delete_topics(broker, r, v).await,
        )),
        R::DescribeConfigs(r) => now(ResponseKind::DescribeConfigs(admin::describe_configs(
            broker, r, v,
        ))),
        R::DescribeCluster(r) => now(ResponseKind::DescribeCluster(admin::describe_cluster(
            broker, r, listener,
        ))),
        R::FindCoordinator(r) => now(ResponseKind::FindCoordinator(coordinator::handle(
            broker, r, v, listener,
        ))),
        R::DescribeAcls(r) => now(ResponseKind::DescribeAcls(
            security_admin::describe_acls(broker, r).await,
        )),
        R::CreateAcls(r) => now(ResponseKind::CreateAcls(
            security_admin::create_acls(broker, r).await,
        )),
        R::DeleteAcls(r) => now(ResponseKind::DeleteAcls(
            security_admin::delete_acls(broker, r).await,
        )),
        R::DescribeUserScramCredentials(r) => now(ResponseKind::DescribeUserScramCredentials(
            security_admin::describe_users(broker, r).await,
        )),
        R::AlterUserScramCredentials(r) => now(ResponseKind::AlterUserScramCredentials(
            security_admin::alter_users(broker, r).await,
        )),
        R::DescribeClientQuotas(r) => now(ResponseKind::DescribeClientQuotas(
            quotas::describe(broker, r).await,
        )),
        R::AlterClientQuotas(r) => now(ResponseKind::AlterClientQuotas(
            quotas::alter(broker, r).await,
        )),
        R::JoinGroup(r) => groups::join(broker, r, v, client_id, peer),
        R::SyncGroup(r) => groups::sync(broker, r, v),
        R::Heartbeat(r) => now(ResponseKind::Heartbeat(groups::heartbeat(broker, r))),
        R::LeaveGroup(r) => now(ResponseKind::LeaveGroup(groups::leave(broker, r, v).await)),
        R::DescribeGroups(r) => now(ResponseKind::DescribeGroups(groups::describe(broker, r, v))),
        R::ConsumerGroupHeartbeat(r) => now(ResponseKind::ConsumerGroupHeartbeat(
            consumer_groups::heartbeat(broker, r, client_id, peer).await,
        )),
        R::ConsumerGroupDescribe(r) => now(ResponseKind::ConsumerGroupDescribe(
            consumer_groups::describe(broker, r),
        )),
        R::ListGroups(r) => now(ResponseKind::ListGroups(groups::list(broker, r, v))),
        R::DeleteGroups(r) => now(ResponseKind::DeleteGroups(groups::delete(broker, r).await)),
        R::OffsetCommit(r) => now(ResponseKind::OffsetCommit(
            offsets::commit(broker, r, v).await,
        )),
        R::OffsetFetch(r) => now(ResponseKind::OffsetFetch(offsets::fetch(broker, r, v))),
        R::OffsetDelete(r) => now(ResponseKind::OffsetDelete(offsets::delete(broker, r).await)),
        R::DeleteRecords(r) => now(ResponseKind::DeleteRecords(
            delete_records::handle(broker, r).await,
        )),
        R::InitProducerId(r) => now(ResponseKind::InitProducerId(
            producer_id::handle(broker, r, &session.principal.to_string()).await,
        )),
        R::AddPartitionsToTxn(r) => now(ResponseKind::AddPartitionsToTxn(
            txns::add_partitions(broker, r).await,
        )),
        R::AddOffsetsToTxn(r) => now(ResponseKind::AddOffsetsToTxn(
            txns::add_offsets(broker, r).await,
        )),
        R::TxnOffsetCommit(r) => now(ResponseKind::TxnOffsetCommit(
            txns::offset_commit(broker, r, v).await,
        )),
        R::DescribeTransactions(r) => now(ResponseKind::DescribeTransactions(
            txns::describe(broker, r).await,
        )),
        R::ListTransactions(r) => now(ResponseKind::ListTransactions(txns::list(broker, r).await)),
        R::IncrementalAlterConfigs(r) => {
            let b = broker.clone();
            Reply::later(Box::pin(async move {
                ResponseKind::IncrementalAlterConfigs(configs::incremental(&b, r).await)
            }))
        }
        R::AlterConfigs(r) => {
            let b = broker.clone();
            Reply::later(Box::pin(async move {
                ResponseKind::AlterConfigs(configs::alter(&b, r).await)
            }))
        }
        R::CreatePartitions(r) => {
            let b = broker.clone();
            Reply::later(Box::pin(async move {
                ResponseKind::CreatePartitions(partitions_admin::create_partitions(&b, r).await)
            }))
        }
        R::DescribeLogDirs(r) => now(ResponseKind::DescribeLogDirs(
            partitions_admin::describe_log_dirs(broker, r),
        )),
        R::ElectLeaders(r) => now(ResponseKind::ElectLeaders(partitions_admin::elect_leaders(
            broker, r,
        ))),
        R::ListPartitionReassignments(r) => now(ResponseKind::ListPartitionReassignments(
            partitions_admin::list_reassignments(broker, r),
        )),
        R::AlterPartitionReassignments(r) => now(ResponseKind::AlterPartitionReassignments(
            partitions_admin::alter_reassignments(broker, r),
        )),
        R::DescribeProducers(r) => now(ResponseKind::DescribeProducers(
            describe_producers::handle(broker, r),
        )),
        R::EndTxn(r) => {
            let b = broker.clone();
            Reply::later(Box::pin(async move {
                ResponseKind::EndTxn(txns::end(&b, r, v).await)
            }))
        }
        other => {
            // The connection layer only decodes APIs listed in SUPPORTED.
            tracing::error!(api = ?req.api_key, "no handler for a supported API: {other:?}");
            Reply::None
        }
    }
}

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn now(r: ResponseKind) -> Reply {
    Reply::Now(Box::new(r))
}
