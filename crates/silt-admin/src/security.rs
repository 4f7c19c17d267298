//! `users` and `acls` commands: SCRAM users (AlterUserScramCredentials: the password is salted
//! and iterated here, only the salted form is sent) and ACL bindings (CreateAcls, DescribeAcls,
//! DeleteAcls), through the agent given as bootstrap. On a cluster with authorization on, run
//! them through a listener whose principal is a super user (see docs/security.md).

use std::fmt::Write as _;

use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use silt_security::acl::{Operation, PatternType, Permission, ResourceType, CLUSTER_NAME};
use silt_security::scram::{random_bytes, Mechanism};

use crate::client::Conn;
use crate::{check, AdminError};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// `users list`: every user and its SCRAM mechanisms.
pub async fn users_list(bootstrap: &str) -> Result<String, AdminError> {
    let mut c = Conn::connect(bootstrap).await?;
    let r: DescribeUserScramCredentialsResponse = c
        .call(
            ApiKey::DescribeUserScramCredentials,
            0,
            &DescribeUserScramCredentialsRequest::default().with_users(None),
        )
        .await?;
    check(r.error_code, "listing users", r.error_message.as_deref())?;
    let mut out = String::from("USER\tMECHANISMS\n");
    for u in &r.results {
        let mechs: Vec<String> = u
            .credential_infos
            .iter()
            .map(|i| {
                let name = Mechanism::from_code(i.mechanism).map_or("?", |m| m.name());
                format!("{name} ({} iterations)", i.iterations)
            })
            .collect();
        let _ = writeln!(out, "{}\t{}", u.user.as_str(), mechs.join(", "));
    }
    Ok(out)
}

fn mechanisms(which: Option<&str>) -> Result<Vec<Mechanism>, AdminError> {
    match which {
        None => Ok(Mechanism::ALL.to_vec()),
        Some(n) => Mechanism::from_name(n).map(|m| vec![m]).ok_or_else(|| {
            AdminError::Usage(format!(
                "unknown mechanism {n:?}: SCRAM-SHA-256 or SCRAM-SHA-512"
            ))
        }),
    }
}

async fn alter(
    bootstrap: &str,
    req: AlterUserScramCredentialsRequest,
    what: &str,
) -> Result<(), AdminError> {
    let mut c = Conn::connect(bootstrap).await?;
    let r: AlterUserScramCredentialsResponse =
        c.call(ApiKey::AlterUserScramCredentials, 0, &req).await?;
    for u in &r.results {
        check(u.error_code, what, u.error_message.as_deref())?;
    }
    Ok(())
}

/// `users set NAME --password P`: creates or replaces the user's credentials.
pub async fn users_set(
    bootstrap: &str,
    user: &str,
    password: &str,
    mechanism: Option<&str>,
    iterations: i32,
) -> Result<String, AdminError> {
    if password.is_empty() {
        return Err(AdminError::Usage("the password is empty".into()));
    }
    let mechs = mechanisms(mechanism)?;
    let upsertions = mechs
        .iter()
        .map(|m| {
            let salt = random_bytes(24);
            let salted = m.salted_password(password.as_bytes(), &salt, iterations.max(1) as u32);
            ScramCredentialUpsertion::default()
                .with_name(s(user))
                .with_mechanism(m.code())
                .with_iterations(iterations)
                .with_salt(salt.into())
                .with_salted_password(salted.into())
        })
        .collect();
    let req = AlterUserScramCredentialsRequest::default().with_upsertions(upsertions);
    alter(
        bootstrap,
        req,
        &format!("setting the credentials of {user}"),
    )
    .await?;
    let names: Vec<&str> = mechs.iter().map(|m| m.name()).collect();
    Ok(format!(
        "set {} credentials of user {user}\n",
        names.join(" and ")
    ))
}

/// `users delete NAME`: removes the user's credentials.
pub async fn users_delete(
    bootstrap: &str,
    user: &str,
    mechanism: Option<&str>,
) -> Result<String, AdminError> {
    let mechs = mechanisms(mechanism)?;
    let deletions = mechs
        .iter()
        .map(|m| {
            ScramCredentialDeletion::default()
                .with_name(s(user))
                .with_mechanism(m.code())
        })
        .collect();
    let req = AlterUserScramCredentialsRequest::default().with_deletions(deletions);
    alter(bootstrap, req, &format!("deleting user {user}")).await?;
    Ok(format!("deleted user {user}\n"))
}

/// One ACL binding as the command line gives it.
#[derive(Debug, Clone)]
pub struct AclArgs {
    /// `topic`, `group`, `cluster` or `transactional-id`.
    pub resource_type: String,
    /// Resource name (ignored for the cluster).
    pub name: String,
    /// Match names starting with `name`.
    pub prefixed: bool,
    /// `User:name` or `User:*`.
    pub principal: String,
    /// Client host, `*` for any.
    pub host: String,
    /// Operation name (`read`, `write`, `all`, …).
    pub operation: String,
    /// A DENY binding.
    pub deny: bool,
}

fn parse_resource(t: &str) -> Result<ResourceType, AdminError> {
    Ok(match t.to_ascii_lowercase().as_str() {
        "topic" => ResourceType::Topic,
        "group" => ResourceType::Group,
        "cluster" => ResourceType::Cluster,
        "transactional-id" | "transactional_id" => ResourceType::TransactionalId,
        other => {
            return Err(AdminError::Usage(format!(
                "unknown resource type {other:?}: topic, group, cluster or transactional-id"
            )))
        }
    })
}

fn parse_operation(o: &str) -> Result<Operation, AdminError> {
    use Operation::*;
    Ok(
        match o.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "all" => All,
            "read" => Read,
            "write" => Write,
            "create" => Create,
            "delete" => Delete,
            "alter" => Alter,
            "describe" => Describe,
            "clusteraction" => ClusterAction,
            "describeconfigs" => DescribeConfigs,
            "alterconfigs" => AlterConfigs,
            "idempotentwrite" => IdempotentWrite,
            other => return Err(AdminError::Usage(format!("unknown operation {other:?}"))),
        },
    )
}

impl AclArgs {
    fn codes(&self) -> Result<(i8, String, i8, i8, i8), AdminError> {
        let rt = parse_resource(&self.resource_type)?;
        let name = if rt == ResourceType::Cluster {
            CLUSTER_NAME.to_string()
        } else {
            self.name.clone()
        };
        let pattern = if self.prefixed {
            PatternType::Prefixed
        } else {
            PatternType::Literal
        };
        let perm = if self.deny {
            Permission::Deny
        } else {
            Permission::Allow
        };
        Ok((
            rt.code(),
            name,
            pattern.code(),
            parse_operation(&self.operation)?.code(),
            perm.code(),
        ))
    }
}

/// `acls add`: creates one binding.
pub async fn acls_add(bootstrap: &str, a: &AclArgs) -> Result<String, AdminError> {
    let (rt, name, pattern, op, perm) = a.codes()?;
    let mut c = Conn::connect(bootstrap).await?;
    let req = CreateAclsRequest::default().with_creations(vec![AclCreation::default()
        .with_resource_type(rt)
        .with_resource_name(s(&name))
        .with_resource_pattern_type(pattern)
        .with_principal(s(&a.principal))
        .with_host(s(&a.host))
        .with_operation(op)
        .with_permission_type(perm)]);
    let r: CreateAclsResponse = c.call(ApiKey::CreateAcls, 2, &req).await?;
    for x in &r.results {
        check(x.error_code, "creating the ACL", x.error_message.as_deref())?;
    }
    Ok(format!(
        "{} {} {} on {} {name}{}\n",
        if a.deny { "denied" } else { "allowed" },
        a.principal,
        a.operation,
        a.resource_type,
        if a.prefixed { "*" } else { "" }
    ))
}

/// `acls remove`: deletes exactly one binding.
pub async fn acls_remove(bootstrap: &str, a: &AclArgs) -> Result<String, AdminError> {
    let (rt, name, pattern, op, perm) = a.codes()?;
    let mut c = Conn::connect(bootstrap).await?;
    let req = DeleteAclsRequest::default().with_filters(vec![DeleteAclsFilter::default()
        .with_resource_type_filter(rt)
        .with_resource_name_filter(Some(s(&name)))
        .with_pattern_type_filter(pattern)
        .with_principal_filter(Some(s(&a.principal)))
        .with_host_filter(Some(s(&a.host)))
        .with_operation(op)
        .with_permission_type(perm)]);
    let r: DeleteAclsResponse = c.call(ApiKey::DeleteAcls, 2, &req).await?;
    let mut n = 0;
    for f in &r.filter_results {
        check(f.error_code, "deleting the ACL", f.error_message.as_deref())?;
        n += f.matching_acls.len();
    }
    Ok(format!("removed {n} ACL binding(s)\n"))
}

/// `acls list`: every binding.
pub async fn acls_list(bootstrap: &str) -> Result<String, AdminError> {
    let mut c = Conn::connect(bootstrap).await?;
    let req = DescribeAclsRequest::default()
        .with_resource_name_filter(None)
        .with_principal_filter(None)
        .with_host_filter(None)
        .with_resource_type_filter(ResourceType::Any.code())
        .with_pattern_type_filter(PatternType::Any.code())
        .with_operation(Operation::Any.code())
        .with_permission_type(Permission::Any.code());
    let r: DescribeAclsResponse = c.call(ApiKey::DescribeAcls, 2, &req).await?;
    check(r.error_code, "listing ACLs", r.error_message.as_deref())?;
    let mut out = String::from("RESOURCE\tPATTERN\tPRINCIPAL\tHOST\tOPERATION\tPERMISSION\n");
    for res in &r.resources {
        let rt = ResourceType::from_code(res.resource_type)
            .map_or("?".to_string(), |t| format!("{t:?}").to_lowercase());
        let pt = PatternType::from_code(res.pattern_type)
            .map_or("?".to_string(), |t| format!("{t:?}").to_lowercase());
        for acl in &res.acls {
            let op = Operation::from_code(acl.operation).map_or("?".into(), |o| format!("{o:?}"));
            let perm =
                Permission::from_code(acl.permission_type).map_or("?".into(), |p| format!("{p:?}"));
            let _ = writeln!(
                out,
                "{rt}:{}\t{pt}\t{}\t{}\t{op}\t{perm}",
                res.resource_name.as_str(),
                acl.principal.as_str(),
                acl.host.as_str()
            );
        }
    }
    Ok(out)
}

/// A quota entity on the command line: a user and/or a client id, each a name or the default
/// (`None`).
#[derive(Debug, Clone, Default)]
pub struct QuotaEntity {
    /// `Some(Some(name))`, `Some(None)` for the default user, `None` for no user part.
    pub user: Option<Option<String>>,
    /// The same for the client id.
    pub client_id: Option<Option<String>>,
}

impl QuotaEntity {
    fn parts(&self) -> Vec<(&'static str, Option<String>)> {
        let mut out = Vec::new();
        if let Some(u) = &self.user {
            out.push(("user", u.clone()));
        }
        if let Some(c) = &self.client_id {
            out.push(("client-id", c.clone()));
        }
        out
    }
}

/// `quotas list`: every entity with quotas.
pub async fn quotas_list(bootstrap: &str) -> Result<String, AdminError> {
    let mut c = Conn::connect(bootstrap).await?;
    let req = DescribeClientQuotasRequest::default().with_components(vec![]);
    let r: DescribeClientQuotasResponse = c.call(ApiKey::DescribeClientQuotas, 1, &req).await?;
    check(r.error_code, "listing quotas", r.error_message.as_deref())?;
    let mut out = String::from("ENTITY\tQUOTAS\n");
    for e in r.entries.unwrap_or_default() {
        let entity: Vec<String> = e
            .entity
            .iter()
            .map(|p| {
                format!(
                    "{}={}",
                    p.entity_type.as_str(),
                    p.entity_name.as_deref().unwrap_or("<default>")
                )
            })
            .collect();
        let values: Vec<String> = e
            .values
            .iter()
            .map(|v| format!("{}={}", v.key.as_str(), v.value))
            .collect();
        let _ = writeln!(out, "{}\t{}", entity.join(","), values.join(","));
    }
    Ok(out)
}

/// `quotas set` / `quotas remove`: sets (`Some`) or removes (`None`) each given key.
pub async fn quotas_alter(
    bootstrap: &str,
    entity: &QuotaEntity,
    ops: &[(&str, Option<f64>)],
) -> Result<String, AdminError> {
    use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
    if entity.user.is_none() && entity.client_id.is_none() {
        return Err(AdminError::Usage(
            "name a user (--user, --default-user) and/or a client id (--client-id, --default-client-id)".into(),
        ));
    }
    if ops.is_empty() {
        return Err(AdminError::Usage(
            "give --producer-byte-rate and/or --consumer-byte-rate".into(),
        ));
    }
    let mut c = Conn::connect(bootstrap).await?;
    let entry = EntryData::default()
        .with_entity(
            entity
                .parts()
                .into_iter()
                .map(|(t, n)| {
                    EntityData::default()
                        .with_entity_type(s(t))
                        .with_entity_name(n.as_deref().map(s))
                })
                .collect(),
        )
        .with_ops(
            ops.iter()
                .map(|(k, v)| {
                    OpData::default()
                        .with_key(s(k))
                        .with_value(v.unwrap_or(0.0))
                        .with_remove(v.is_none())
                })
                .collect(),
        );
    let req = AlterClientQuotasRequest::default().with_entries(vec![entry]);
    let r: AlterClientQuotasResponse = c.call(ApiKey::AlterClientQuotas, 1, &req).await?;
    for e in &r.entries {
        check(e.error_code, "changing quotas", e.error_message.as_deref())?;
    }
    let described: Vec<String> = entity
        .parts()
        .into_iter()
        .map(|(t, n)| format!("{t}={}", n.as_deref().unwrap_or("<default>")))
        .collect();
    Ok(format!("quotas of {} changed\n", described.join(",")))
}
