//! Cluster APIs: DescribeAcls and DescribeUserScramCredentials need DESCRIBE
//! on the cluster; CreateAcls, DeleteAcls and AlterUserScramCredentials ALTER;
//! DescribeClientQuotas DESCRIBE_CONFIGS and AlterClientQuotas ALTER_CONFIGS; InitProducerId
//! without a transactional id IDEMPOTENT_WRITE on the cluster or WRITE on some topic (as Kafka
//! 2.8+ allows), with one WRITE on the transactional id.

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::DeleteAclsFilterResult;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use silt_security::acl::{Operation, ResourceType};

use super::{Access, Verdict};

const DENIED: ResponseError = ResponseError::ClusterAuthorizationFailed;

pub(super) fn init_producer_id(a: &mut Access<'_>, r: &mut InitProducerIdRequest) -> Verdict {
    let (ok, code) = match &r.transactional_id {
        Some(id) => (
            a.may(Operation::Write, ResourceType::TransactionalId, id),
            ResponseError::TransactionalIdAuthorizationFailed,
        ),
        None => (
            a.cluster(Operation::IdempotentWrite) || a.writes_any_topic(),
            DENIED,
        ),
    };
    if ok {
        return Verdict::Pass(None);
    }
    Verdict::Deny(Box::new(ResponseKind::InitProducerId(
        InitProducerIdResponse::default()
            .with_error_code(code.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    )))
}

/// DescribeCluster is answered to every client, as Kafka does (its cluster permission only
/// decides `cluster_authorized_operations`, which Silt does not report).
pub(super) fn describe_cluster(_a: &mut Access<'_>) -> Verdict {
    Verdict::Pass(None)
}

pub(super) fn describe_acls(a: &mut Access<'_>) -> Verdict {
    if a.cluster(Operation::Describe) {
        return Verdict::Pass(None);
    }
    Verdict::Deny(Box::new(ResponseKind::DescribeAcls(
        DescribeAclsResponse::default().with_error_code(DENIED.code()),
    )))
}

pub(super) fn create_acls(a: &mut Access<'_>, r: &mut CreateAclsRequest) -> Verdict {
    if a.cluster(Operation::Alter) {
        return Verdict::Pass(None);
    }
    Verdict::Deny(Box::new(ResponseKind::CreateAcls(
        CreateAclsResponse::default().with_results(
            r.creations
                .iter()
                .map(|_| AclCreationResult::default().with_error_code(DENIED.code()))
                .collect(),
        ),
    )))
}

pub(super) fn delete_acls(a: &mut Access<'_>, r: &mut DeleteAclsRequest) -> Verdict {
    if a.cluster(Operation::Alter) {
        return Verdict::Pass(None);
    }
    Verdict::Deny(Box::new(ResponseKind::DeleteAcls(
        DeleteAclsResponse::default().with_filter_results(
            r.filters
                .iter()
                .map(|_| DeleteAclsFilterResult::default().with_error_code(DENIED.code()))
                .collect(),
        ),
    )))
}

pub(super) fn describe_users(a: &mut Access<'_>) -> Verdict {
    if a.cluster(Operation::Describe) {
        return Verdict::Pass(None);
    }
    Verdict::Deny(Box::new(ResponseKind::DescribeUserScramCredentials(
        DescribeUserScramCredentialsResponse::default().with_error_code(DENIED.code()),
    )))
}

pub(super) fn alter_users(a: &mut Access<'_>, r: &mut AlterUserScramCredentialsRequest) -> Verdict {
    if a.cluster(Operation::Alter) {
        return Verdict::Pass(None);
    }
    let mut users: Vec<StrBytes> = r
        .deletions
        .iter()
        .map(|d| d.name.clone())
        .chain(r.upsertions.iter().map(|u| u.name.clone()))
        .collect();
    users.sort();
    users.dedup();
    Verdict::Deny(Box::new(ResponseKind::AlterUserScramCredentials(
        AlterUserScramCredentialsResponse::default().with_results(
            users
                .into_iter()
                .map(|u| {
                    AlterUserScramCredentialsResult::default()
                        .with_user(u)
                        .with_error_code(DENIED.code())
                })
                .collect(),
        ),
    )))
}

pub(super) fn describe_quotas(a: &mut Access<'_>) -> Verdict {
    if a.cluster(Operation::DescribeConfigs) {
        return Verdict::Pass(None);
    }
    Verdict::Deny(Box::new(ResponseKind::DescribeClientQuotas(
        DescribeClientQuotasResponse::default().with_error_code(DENIED.code()),
    )))
}

pub(super) fn alter_quotas(a: &mut Access<'_>, r: &mut AlterClientQuotasRequest) -> Verdict {
    use kafka_protocol::messages::alter_client_quotas_response::{EntityData, EntryData};
    if a.cluster(Operation::AlterConfigs) {
        return Verdict::Pass(None);
    }
    Verdict::Deny(Box::new(ResponseKind::AlterClientQuotas(
        AlterClientQuotasResponse::default().with_entries(
            r.entries
                .iter()
                .map(|e| {
                    EntryData::default()
                        .with_error_code(DENIED.code())
                        .with_entity(
                            e.entity
                                .iter()
                                .map(|p| {
                                    EntityData::default()
                                        .with_entity_type(p.entity_type.clone())
                                        .with_entity_name(p.entity_name.clone())
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    )))
}
