//! CreateAcls, DescribeAcls, DeleteAcls, DescribeUserScramCredentials and
//! AlterUserScramCredentials: ACL bindings and SCRAM users in the metadata store. Reads go to
//! the store (an ACL just created is described at once); every agent's authorizer follows the
//! store by a watch. Without authorization enabled, the ACL APIs answer SECURITY_DISABLED as
//! Kafka does without an authorizer. Who may call them is the authorization layer's concern
//! (DESCRIBE or ALTER on the cluster).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use silt_meta::layout::security as layout;
use silt_security::acl::{Binding, Filter, Operation, PatternType, Permission, ResourceType};
use silt_security::scram::{Credential, Mechanism, MAX_ITERATIONS, MIN_ITERATIONS};

use super::str_bytes;
use crate::broker::Broker;

const DISABLED: &str = "authorization is not enabled on this agent (authorization.enabled)";

fn meta_error(e: &silt_meta::MetaError) -> (i16, String) {
    (
        crate::error::meta_error_code(e).code(),
        format!("the metadata store failed: {e}"),
    )
}

fn filter(
    rt: i8,
    name: Option<&str>,
    pattern: i8,
    principal: Option<&str>,
    host: Option<&str>,
    op: i8,
    perm: i8,
) -> Result<Filter, String> {
    Ok(Filter {
        resource_type: ResourceType::from_code(rt).ok_or(format!("unknown resource type {rt}"))?,
        name: name.map(str::to_string),
        pattern: PatternType::from_code(pattern)
            .ok_or(format!("unknown pattern type {pattern}"))?,
        principal: principal.map(str::to_string),
        host: host.map(str::to_string),
        operation: Operation::from_code(op).ok_or(format!("unknown operation {op}"))?,
        permission: Permission::from_code(perm).ok_or(format!("unknown permission type {perm}"))?,
    })
}

async fn stored(b: &Broker) -> Result<Vec<Binding>, silt_meta::MetaError> {
    Ok(layout::list_acls(b.meta.as_ref())
        .await?
        .iter()
        .filter_map(Binding::from_record)
        .collect())
}

/// Handles DescribeAcls.
pub async fn describe_acls(b: &Arc<Broker>, r: DescribeAclsRequest) -> DescribeAclsResponse {
    let resp = DescribeAclsResponse::default();
    if b.security.authorizer.is_none() {
        return resp
            .with_error_code(ResponseError::SecurityDisabled.code())
            .with_error_message(Some(str_bytes(DISABLED)));
    }
    let f = match filter(
        r.resource_type_filter,
        r.resource_name_filter.as_deref(),
        r.pattern_type_filter,
        r.principal_filter.as_deref(),
        r.host_filter.as_deref(),
        r.operation,
        r.permission_type,
    ) {
        Ok(f) => f,
        Err(why) => {
            return resp
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(str_bytes(why)))
        }
    };
    let all = match stored(b).await {
        Ok(a) => a,
        Err(e) => {
            let (code, msg) = meta_error(&e);
            return resp
                .with_error_code(code)
                .with_error_message(Some(str_bytes(msg)));
        }
    };
    let mut grouped: BTreeMap<(i8, String, i8), Vec<AclDescription>> = BTreeMap::new();
    for a in all.iter().filter(|a| f.matches(a)) {
        grouped
            .entry((a.resource_type.code(), a.name.clone(), a.pattern.code()))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(str_bytes(a.principal.clone()))
                    .with_host(str_bytes(a.host.clone()))
                    .with_operation(a.operation.code())
                    .with_permission_type(a.permission.code()),
            );
    }
    resp.with_resources(
        grouped
            .into_iter()
            .map(|((rt, name, pt), acls)| {
                DescribeAclsResource::default()
                    .with_resource_type(rt)
                    .with_resource_name(str_bytes(name))
                    .with_pattern_type(pt)
                    .with_acls(acls)
            })
            .collect(),
    )
}

/// Handles CreateAcls.
pub async fn create_acls(b: &Arc<Broker>, r: CreateAclsRequest) -> CreateAclsResponse {
    let fail = |code: ResponseError, msg: String| {
        AclCreationResult::default()
            .with_error_code(code.code())
            .with_error_message(Some(str_bytes(msg)))
    };
    if b.security.authorizer.is_none() {
        let results = r
            .creations
            .iter()
            .map(|_| fail(ResponseError::SecurityDisabled, DISABLED.into()))
            .collect();
        return CreateAclsResponse::default().with_results(results);
    }
    let mut results = Vec::with_capacity(r.creations.len());
    let mut valid = Vec::new();
    for c in &r.creations {
        let binding = (|| {
            Some(Binding {
                resource_type: ResourceType::from_code(c.resource_type)?,
                name: c.resource_name.to_string(),
                pattern: PatternType::from_code(c.resource_pattern_type)?,
                principal: c.principal.to_string(),
                host: c.host.to_string(),
                operation: Operation::from_code(c.operation)?,
                permission: Permission::from_code(c.permission_type)?,
            })
        })();
        match binding
            .ok_or_else(|| "unknown code".to_string())
            .and_then(|b| {
                b.validate().map_err(|e| e.to_string())?;
                Ok(b)
            }) {
            Ok(binding) => {
                valid.push((results.len(), binding));
                results.push(AclCreationResult::default());
            }
            Err(why) => results.push(fail(ResponseError::InvalidRequest, why)),
        }
    }
    let records: Vec<_> = valid.iter().map(|(_, b)| b.to_record()).collect();
    if let Err(e) = layout::put_acls(b.meta.as_ref(), &records).await {
        let (code, msg) = meta_error(&e);
        for (i, _) in &valid {
            results[*i] = AclCreationResult::default()
                .with_error_code(code)
                .with_error_message(Some(str_bytes(msg.clone())));
        }
    } else {
        for (_, binding) in &valid {
            tracing::info!(?binding, "ACL created");
        }
    }
    CreateAclsResponse::default().with_results(results)
}

/// Handles DeleteAcls.
pub async fn delete_acls(b: &Arc<Broker>, r: DeleteAclsRequest) -> DeleteAclsResponse {
    let result = |code: ResponseError, msg: &str| {
        DeleteAclsFilterResult::default()
            .with_error_code(code.code())
            .with_error_message(Some(str_bytes(msg)))
    };
    if b.security.authorizer.is_none() {
        return DeleteAclsResponse::default().with_filter_results(
            r.filters
                .iter()
                .map(|_| result(ResponseError::SecurityDisabled, DISABLED))
                .collect(),
        );
    }
    let all = match stored(b).await {
        Ok(a) => a,
        Err(e) => {
            let (code, msg) = meta_error(&e);
            return DeleteAclsResponse::default().with_filter_results(
                r.filters
                    .iter()
                    .map(|_| {
                        DeleteAclsFilterResult::default()
                            .with_error_code(code)
                            .with_error_message(Some(str_bytes(msg.clone())))
                    })
                    .collect(),
            );
        }
    };
    let mut out = Vec::with_capacity(r.filters.len());
    let mut doomed = Vec::new();
    let mut seen = HashSet::new();
    for f in &r.filters {
        let f = match filter(
            f.resource_type_filter,
            f.resource_name_filter.as_deref(),
            f.pattern_type_filter,
            f.principal_filter.as_deref(),
            f.host_filter.as_deref(),
            f.operation,
            f.permission_type,
        ) {
            Ok(f) => f,
            Err(why) => {
                out.push(result(ResponseError::InvalidRequest, &why));
                continue;
            }
        };
        let matching: Vec<_> = all.iter().filter(|a| f.matches(a)).collect();
        for a in &matching {
            if seen.insert((*a).clone()) {
                doomed.push(a.to_record());
            }
        }
        out.push(
            DeleteAclsFilterResult::default().with_matching_acls(
                matching
                    .into_iter()
                    .map(|a| {
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(a.resource_type.code())
                            .with_resource_name(str_bytes(a.name.clone()))
                            .with_pattern_type(a.pattern.code())
                            .with_principal(str_bytes(a.principal.clone()))
                            .with_host(str_bytes(a.host.clone()))
                            .with_operation(a.operation.code())
                            .with_permission_type(a.permission.code())
                    })
                    .collect(),
            ),
        );
    }
    if let Err(e) = layout::delete_acls(b.meta.as_ref(), &doomed).await {
        let (code, msg) = meta_error(&e);
        for r in &mut out {
            r.error_code = code;
            r.error_message = Some(str_bytes(msg.clone()));
            r.matching_acls.clear();
        }
    } else if !doomed.is_empty() {
        tracing::info!(deleted = doomed.len(), "ACLs deleted");
    }
    DeleteAclsResponse::default().with_filter_results(out)
}

/// Handles DescribeUserScramCredentials.
pub async fn describe_users(
    b: &Arc<Broker>,
    r: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let resp = DescribeUserScramCredentialsResponse::default();
    let users = match b.security.verifiers.users.list().await {
        Ok(u) => u,
        Err(e) => {
            let (code, msg) = meta_error(&e);
            return resp
                .with_error_code(code)
                .with_error_message(Some(str_bytes(msg)));
        }
    };
    let mut by_user: BTreeMap<String, Vec<CredentialInfo>> = BTreeMap::new();
    for (u, m, iterations) in users {
        by_user.entry(u).or_default().push(
            CredentialInfo::default()
                .with_mechanism(m.code())
                .with_iterations(iterations as i32),
        );
    }
    let result =
        |user: &str| DescribeUserScramCredentialsResult::default().with_user(str_bytes(user));
    // Null or empty: every user.
    let results = match r.users.filter(|u| !u.is_empty()) {
        None => by_user
            .iter()
            .map(|(u, infos)| result(u).with_credential_infos(infos.clone()))
            .collect(),
        Some(asked) => {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for u in &asked {
                *counts.entry(u.name.to_string()).or_default() += 1;
            }
            counts
                .into_iter()
                .map(|(u, n)| match (n, by_user.get(&u)) {
                    (n, _) if n > 1 => result(&u)
                        .with_error_code(ResponseError::DuplicateResource.code())
                        .with_error_message(Some(str_bytes(format!(
                            "user {u} asked for more than once"
                        )))),
                    (_, Some(infos)) => result(&u).with_credential_infos(infos.clone()),
                    (_, None) => result(&u)
                        .with_error_code(ResponseError::ResourceNotFound.code())
                        .with_error_message(Some(str_bytes(format!(
                            "attempt to describe a user credential that does not exist: {u}"
                        )))),
                })
                .collect()
        }
    };
    resp.with_results(results)
}

/// Handles AlterUserScramCredentials: the client sends the salted password (never the
/// password); the stored and server keys are derived from it.
pub async fn alter_users(
    b: &Arc<Broker>,
    r: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let mut per_user: BTreeMap<String, Vec<(Mechanism, Option<Credential>)>> = BTreeMap::new();
    // Per user: the error it gets (None: every change applied).
    let mut errors: BTreeMap<String, Option<(ResponseError, String)>> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut note =
        |user: &str, m: i8, errors: &mut BTreeMap<String, Option<(ResponseError, String)>>| {
            if !seen.insert((user.to_string(), m)) {
                errors.entry(user.to_string()).or_insert(Some((
                    ResponseError::DuplicateResource,
                    "a credential for the same user and mechanism appears more than once".into(),
                )));
                return None;
            }
            if user.is_empty() {
                errors.entry(user.to_string()).or_insert(Some((
                    ResponseError::UnacceptableCredential,
                    "the user name is empty".into(),
                )));
                return None;
            }
            match Mechanism::from_code(m) {
                Some(m) => Some(m),
                None => {
                    errors.entry(user.to_string()).or_insert(Some((
                        ResponseError::UnsupportedSaslMechanism,
                        format!("unknown SCRAM mechanism {m}"),
                    )));
                    None
                }
            }
        };
    for d in &r.deletions {
        if let Some(m) = note(&d.name, d.mechanism, &mut errors) {
            per_user
                .entry(d.name.to_string())
                .or_default()
                .push((m, None));
        }
    }
    for u in &r.upsertions {
        let Some(m) = note(&u.name, u.mechanism, &mut errors) else {
            continue;
        };
        let iters = u.iterations;
        if iters < MIN_ITERATIONS as i32 || iters > MAX_ITERATIONS as i32 {
            errors.entry(u.name.to_string()).or_insert(Some((
                ResponseError::UnacceptableCredential,
                format!("iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}"),
            )));
            continue;
        }
        if u.salt.is_empty() || u.salted_password.len() != m.hash_len() {
            errors.entry(u.name.to_string()).or_insert(Some((
                ResponseError::UnacceptableCredential,
                "empty salt or a salted password of the wrong length".into(),
            )));
            continue;
        }
        let c = Credential::from_salted(m, &u.salted_password, u.salt.to_vec(), iters as u32);
        per_user
            .entry(u.name.to_string())
            .or_default()
            .push((m, Some(c)));
    }
    let mut results = Vec::new();
    for (user, changes) in per_user {
        if errors.contains_key(&user) {
            continue;
        }
        let mut outcome = None;
        for (m, change) in changes {
            let r = match change {
                Some(c) => b
                    .security
                    .verifiers
                    .users
                    .upsert(&user, m, &c)
                    .await
                    .map(|_| true),
                None => b.security.verifiers.users.delete(&user, m).await,
            };
            match r {
                Ok(true) => tracing::info!(%user, mechanism = m.name(), "SCRAM credential changed"),
                Ok(false) => {
                    outcome = Some((
                        ResponseError::ResourceNotFound,
                        format!(
                            "attempt to delete a {} credential that does not exist for {user}",
                            m.name()
                        ),
                    ));
                }
                Err(e) => {
                    let (_, msg) = meta_error(&e);
                    outcome = Some((crate::error::meta_error_code(&e), msg));
                    break;
                }
            }
        }
        errors.insert(user, outcome);
    }
    for (user, outcome) in errors {
        let r = AlterUserScramCredentialsResult::default().with_user(str_bytes(user));
        results.push(match outcome {
            None => r,
            Some((code, msg)) => r
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(msg))),
        });
    }
    AlterUserScramCredentialsResponse::default().with_results(results)
}
