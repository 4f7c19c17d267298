//! The authorization layer of the request pipeline: every request is checked against the ACLs
//! before its handler runs, the way Kafka checks it, so handlers hold no security code.
//!
//! A request wholly refused (a group it may not read, a cluster operation) is answered here with
//! Kafka's error. A request that names several resources goes on with only those the principal
//! may use; the refused ones are added back to the response with TOPIC_AUTHORIZATION_FAILED
//! (or the API's equivalent) by a fix-up applied when the handler answers. Metadata and
//! ListGroups leave out what the principal may not DESCRIBE. Without authorization enabled the
//! layer is a single branch.

mod admin;
mod cluster;
mod groups;
mod producers;
mod topics;
mod txns;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kafka_protocol::messages::{RequestKind, ResponseKind};
use silt_security::acl::{Operation, ResourceType, CLUSTER_NAME};
use silt_security::authorizer::Authorizer;

use crate::broker::Broker;
use crate::handlers::Reply;
use crate::session::Session;

/// Changes a handler's response (adds back refused resources, drops hidden ones).
pub type Fixup = Box<dyn FnOnce(&mut ResponseKind) + Send>;

/// What the layer decided.
pub enum Verdict {
    /// Run the handler (with the request as narrowed), then apply the fix-up if any.
    Pass(Option<Fixup>),
    /// Answer this without running the handler.
    Deny(Box<ResponseKind>),
    /// Close the connection (an acks=0 produce that was refused, as Kafka does).
    Close(String),
}

fn fix(f: impl FnOnce(&mut ResponseKind) + Send + 'static) -> Verdict {
    Verdict::Pass(Some(Box::new(f)))
}

/// Decisions for one request.
pub(crate) struct Access<'a> {
    az: Arc<Authorizer>,
    s: &'a mut Session,
    b: &'a Broker,
}

impl Access<'_> {
    pub(crate) fn may(&mut self, op: Operation, rt: ResourceType, name: &str) -> bool {
        let s = &mut *self.s;
        let ok = s
            .acl
            .authorize(&self.az, &s.principal, &s.host, op, rt, name);
        if !ok {
            self.b.security.stats.denied.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(principal = %s.principal, host = %s.host, ?op, ?rt, name, "denied");
        }
        ok
    }

    pub(crate) fn topic(&mut self, op: Operation, name: &str) -> bool {
        self.may(op, ResourceType::Topic, name)
    }

    pub(crate) fn group(&mut self, op: Operation, name: &str) -> bool {
        self.may(op, ResourceType::Group, name)
    }

    pub(crate) fn cluster(&mut self, op: Operation) -> bool {
        self.may(op, ResourceType::Cluster, CLUSTER_NAME)
    }

    /// Whether the principal may WRITE some topic (Kafka lets such producers be idempotent).
    pub(crate) fn writes_any_topic(&self) -> bool {
        self.az.authorize_any(
            &self.s.principal,
            &self.s.host,
            Operation::Write,
            ResourceType::Topic,
        )
    }

    pub(crate) fn broker(&self) -> &Broker {
        self.b
    }
}

/// Keeps in `v` what `keep` allows; returns the rest.
pub(crate) fn strip<T>(v: &mut Vec<T>, keep: impl FnMut(&T) -> bool) -> Vec<T> {
    let (kept, refused): (Vec<T>, Vec<T>) = std::mem::take(v).into_iter().partition(keep);
    *v = kept;
    refused
}

/// Runs the layer for one request (see the module documentation).
pub fn check(b: &Arc<Broker>, s: &mut Session, body: &mut RequestKind, version: i16) -> Verdict {
    // Producer-id ownership holds with or without ACLs.
    let owned = match body {
        RequestKind::Produce(r) => producers::check(b, s, r),
        _ => None,
    };
    match (acls(b, s, body, version), owned) {
        (v, None) => v,
        (Verdict::Pass(f), Some(o)) => Verdict::Pass(then(f, o)),
        (other, Some(_)) => other,
    }
}

fn acls(b: &Arc<Broker>, s: &mut Session, body: &mut RequestKind, version: i16) -> Verdict {
    let Some(az) = b.security.authorizer.clone() else {
        return Verdict::Pass(None);
    };
    let mut a = Access { az, s, b };
    use RequestKind as R;
    match body {
        R::Produce(r) => topics::produce(&mut a, r),
        R::Fetch(r) => topics::fetch(&mut a, r),
        R::ListOffsets(r) => topics::list_offsets(&mut a, r),
        R::DescribeProducers(r) => topics::describe_producers(&mut a, r),
        R::IncrementalAlterConfigs(r) => admin::incremental_alter_configs(&mut a, r),
        R::AlterConfigs(r) => admin::alter_configs(&mut a, r),
        R::CreatePartitions(r) => admin::create_partitions(&mut a, r),
        R::DescribeLogDirs(_) => admin::describe_log_dirs(&mut a),
        R::ElectLeaders(_) => admin::elect_leaders(&mut a),
        R::ListPartitionReassignments(_) => admin::list_reassignments(&mut a),
        R::AlterPartitionReassignments(_) => admin::alter_reassignments(&mut a),
        R::OffsetForLeaderEpoch(r) => topics::offset_for_leader_epoch(&mut a, r),
        R::Metadata(r) => topics::metadata(&mut a, r, version),
        R::CreateTopics(r) => topics::create_topics(&mut a, r),
        R::DeleteTopics(r) => topics::delete_topics(&mut a, r),
        R::DeleteRecords(r) => topics::delete_records(&mut a, r),
        R::DescribeConfigs(r) => topics::describe_configs(&mut a, r),
        R::OffsetCommit(r) => groups::offset_commit(&mut a, r),
        R::OffsetFetch(r) => groups::offset_fetch(&mut a, r, version),
        R::OffsetDelete(r) => groups::offset_delete(&mut a, r),
        R::FindCoordinator(r) => groups::find_coordinator(&mut a, r, version),
        R::JoinGroup(r) => groups::membership(
            &mut a,
            &r.group_id.clone(),
            ResponseKind::JoinGroup(Default::default()),
        ),
        R::SyncGroup(r) => groups::membership(
            &mut a,
            &r.group_id.clone(),
            ResponseKind::SyncGroup(Default::default()),
        ),
        R::Heartbeat(r) => groups::membership(
            &mut a,
            &r.group_id.clone(),
            ResponseKind::Heartbeat(Default::default()),
        ),
        R::LeaveGroup(r) => groups::membership(
            &mut a,
            &r.group_id.clone(),
            ResponseKind::LeaveGroup(Default::default()),
        ),
        R::DescribeGroups(r) => groups::describe_groups(&mut a, r),
        R::ConsumerGroupHeartbeat(r) => groups::consumer_heartbeat(&mut a, r),
        R::ConsumerGroupDescribe(r) => groups::consumer_describe(&mut a, r),
        R::ListGroups(_) => groups::list_groups(&mut a),
        R::DeleteGroups(r) => groups::delete_groups(&mut a, r),
        R::InitProducerId(r) => cluster::init_producer_id(&mut a, r),
        R::AddPartitionsToTxn(r) => txns::add_partitions(&mut a, r),
        R::EndTxn(r) => txns::end_txn(&mut a, r),
        R::AddOffsetsToTxn(r) => txns::add_offsets(&mut a, r),
        R::TxnOffsetCommit(r) => txns::txn_offset_commit(&mut a, r),
        R::DescribeTransactions(r) => txns::describe_transactions(&mut a, r),
        R::ListTransactions(_) => txns::list_transactions(&mut a),
        R::DescribeCluster(_) => cluster::describe_cluster(&mut a),
        R::DescribeAcls(_) => cluster::describe_acls(&mut a),
        R::CreateAcls(r) => cluster::create_acls(&mut a, r),
        R::DeleteAcls(r) => cluster::delete_acls(&mut a, r),
        R::DescribeUserScramCredentials(_) => cluster::describe_users(&mut a),
        R::AlterUserScramCredentials(r) => cluster::alter_users(&mut a, r),
        R::DescribeClientQuotas(_) => cluster::describe_quotas(&mut a),
        R::AlterClientQuotas(r) => cluster::alter_quotas(&mut a, r),
        // ApiVersions and the SASL exchange need no permission.
        _ => Verdict::Pass(None),
    }
}

/// Applies a fix-up to a handler's reply.
pub fn apply(reply: Reply, fixup: Option<Fixup>) -> Reply {
    let Some(f) = fixup else {
        return reply;
    };
    match reply {
        Reply::None => Reply::None,
        Reply::Now(mut r) => {
            f(&mut r);
            Reply::Now(r)
        }
        Reply::Later(fut) => Reply::Later(Box::pin(async move {
            let mut r = fut.await;
            f(&mut r.body);
            r
        })),
    }
}

/// A fix-up followed by another change (the quota layer's throttle time).
pub fn then(
    first: Option<Fixup>,
    next: impl FnOnce(&mut ResponseKind) + Send + 'static,
) -> Option<Fixup> {
    Some(Box::new(move |r: &mut ResponseKind| {
        if let Some(f) = first {
            f(r);
        }
        next(r);
    }))
}
