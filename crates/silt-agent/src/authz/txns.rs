//! Transactional APIs: AddPartitionsToTxn needs WRITE on the transactional id and on each topic
//! (refused topics get TOPIC_AUTHORIZATION_FAILED, the others OPERATION_NOT_ATTEMPTED, as Kafka
//! answers); EndTxn WRITE on the transactional id; AddOffsetsToTxn that and READ on the group;
//! TxnOffsetCommit that, READ on the group and READ on each topic; DescribeTransactions DESCRIBE
//! on each id (TRANSACTIONAL_ID_AUTHORIZATION_FAILED for the others); ListTransactions lists the
//! ids the principal may DESCRIBE.

use std::collections::HashSet;

use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use silt_security::acl::{Operation, ResourceType};

use super::{Access, Verdict};

pub(super) fn add_partitions(a: &mut Access<'_>, r: &mut AddPartitionsToTxnRequest) -> Verdict {
    let tid_ok = a.may(
        Operation::Write,
        ResourceType::TransactionalId,
        &r.v3_and_below_transactional_id,
    );
    let refused: HashSet<String> = r
        .v3_and_below_topics
        .iter()
        .filter(|t| !tid_ok || !a.topic(Operation::Write, &t.name))
        .map(|t| t.name.0.to_string())
        .collect();
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    let resp = crate::handlers::txns::add_partitions_response(&r.v3_and_below_topics, |t, _| {
        match (tid_ok, refused.contains(t)) {
            (false, _) => ResponseError::TransactionalIdAuthorizationFailed,
            (true, true) => ResponseError::TopicAuthorizationFailed,
            (true, false) => ResponseError::OperationNotAttempted,
        }
        .code()
    });
    Verdict::Deny(Box::new(ResponseKind::AddPartitionsToTxn(resp)))
}

pub(super) fn end_txn(a: &mut Access<'_>, r: &mut EndTxnRequest) -> Verdict {
    if a.may(
        Operation::Write,
        ResourceType::TransactionalId,
        &r.transactional_id,
    ) {
        return Verdict::Pass(None);
    }
    Verdict::Deny(Box::new(ResponseKind::EndTxn(
        EndTxnResponse::default()
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    )))
}

pub(super) fn add_offsets(a: &mut Access<'_>, r: &mut AddOffsetsToTxnRequest) -> Verdict {
    let code = if !a.may(
        Operation::Write,
        ResourceType::TransactionalId,
        &r.transactional_id,
    ) {
        ResponseError::TransactionalIdAuthorizationFailed
    } else if !a.group(Operation::Read, &r.group_id) {
        ResponseError::GroupAuthorizationFailed
    } else {
        return Verdict::Pass(None);
    };
    Verdict::Deny(Box::new(ResponseKind::AddOffsetsToTxn(
        AddOffsetsToTxnResponse::default().with_error_code(code.code()),
    )))
}

pub(super) fn txn_offset_commit(a: &mut Access<'_>, r: &mut TxnOffsetCommitRequest) -> Verdict {
    let tid_ok = a.may(
        Operation::Write,
        ResourceType::TransactionalId,
        &r.transactional_id,
    );
    let group_ok = tid_ok && a.group(Operation::Read, &r.group_id);
    let refused: HashSet<String> = r
        .topics
        .iter()
        .filter(|t| !group_ok || !a.topic(Operation::Read, &t.name))
        .map(|t| t.name.0.to_string())
        .collect();
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    let resp = crate::handlers::txns::txn_offset_commit_response(&r.topics, |t| {
        match (tid_ok, group_ok, refused.contains(t)) {
            (false, _, _) => ResponseError::TransactionalIdAuthorizationFailed,
            (true, false, _) => ResponseError::GroupAuthorizationFailed,
            (true, true, true) => ResponseError::TopicAuthorizationFailed,
            (true, true, false) => ResponseError::OperationNotAttempted,
        }
        .code()
    });
    Verdict::Deny(Box::new(ResponseKind::TxnOffsetCommit(resp)))
}

pub(super) fn describe_transactions(
    a: &mut Access<'_>,
    r: &mut DescribeTransactionsRequest,
) -> Verdict {
    use kafka_protocol::messages::describe_transactions_response::TransactionState;
    let refused = super::strip(&mut r.transactional_ids, |id| {
        a.may(Operation::Describe, ResourceType::TransactionalId, id)
    });
    if refused.is_empty() {
        return Verdict::Pass(None);
    }
    super::fix(move |resp| {
        if let ResponseKind::DescribeTransactions(d) = resp {
            for id in refused {
                d.transaction_states.push(
                    TransactionState::default()
                        .with_transactional_id(id)
                        .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code()),
                );
            }
        }
    })
}

pub(super) fn list_transactions(a: &mut Access<'_>) -> Verdict {
    // Decided per id once the handler answered, as Kafka lists only what one may DESCRIBE.
    let az = a.az.clone();
    let principal = a.s.principal.clone();
    let host = a.s.host.clone();
    super::fix(move |resp| {
        if let ResponseKind::ListTransactions(l) = resp {
            l.transaction_states.retain(|t| {
                az.authorize(
                    &principal,
                    &host,
                    Operation::Describe,
                    ResourceType::TransactionalId,
                    &t.transactional_id,
                )
            });
        }
    })
}
