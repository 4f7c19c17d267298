//! DescribeClientQuotas and AlterClientQuotas: user and client-id quotas in the metadata store
//! (`producer_byte_rate`, `consumer_byte_rate`, `request_percentage`), enforced by [`crate::quotas`] on every agent.

use std::sync::Arc;

use kafka_protocol::messages::describe_client_quotas_response::{EntityData, EntryData, ValueData};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use silt_meta::layout::quotas::{self as layout, Entity};

use super::str_bytes;
use crate::broker::Broker;

const USER: &str = "user";
const CLIENT_ID: &str = "client-id";

fn entity_parts(e: &Entity) -> Vec<(&'static str, Option<String>)> {
    let mut out = Vec::new();
    if let Some(u) = &e.user {
        out.push((USER, u.clone()));
    }
    if let Some(c) = &e.client_id {
        out.push((CLIENT_ID, c.clone()));
    }
    out
}

/// Handles DescribeClientQuotas.
pub async fn describe(
    b: &Arc<Broker>,
    r: DescribeClientQuotasRequest,
) -> DescribeClientQuotasResponse {
    let resp = DescribeClientQuotasResponse::default();
    for c in &r.components {
        if c.entity_type.as_str() != USER && c.entity_type.as_str() != CLIENT_ID {
            return resp
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(str_bytes(format!(
                    "entity type {:?} is not supported (user, client-id)",
                    c.entity_type.as_str()
                ))));
        }
    }
    let all = match layout::list(b.meta.as_ref()).await {
        Ok(a) => a,
        Err(e) => {
            return resp
                .with_error_code(crate::error::meta_error_code(&e).code())
                .with_error_message(Some(str_bytes(e.to_string())))
        }
    };
    let entries = all
        .into_iter()
        .filter(|(e, _)| {
            let parts = entity_parts(e);
            let matched = r.components.iter().all(|c| {
                let Some((_, name)) = parts.iter().find(|(t, _)| *t == c.entity_type.as_str())
                else {
                    return false;
                };
                match c.match_type {
                    0 => name.as_deref() == c._match.as_deref(),
                    1 => name.is_none(),
                    _ => true,
                }
            });
            matched && (!r.strict || parts.len() == r.components.len())
        })
        .map(|(e, values)| {
            EntryData::default()
                .with_entity(
                    entity_parts(&e)
                        .into_iter()
                        .map(|(t, n)| {
                            EntityData::default()
                                .with_entity_type(str_bytes(t))
                                .with_entity_name(n.map(str_bytes))
                        })
                        .collect(),
                )
                .with_values(
                    values
                        .into_iter()
                        .map(|(k, v)| ValueData::default().with_key(str_bytes(k)).with_value(v))
                        .collect(),
                )
        })
        .collect();
    resp.with_entries(Some(entries))
}

/// Handles AlterClientQuotas.
pub async fn alter(b: &Arc<Broker>, r: AlterClientQuotasRequest) -> AlterClientQuotasResponse {
    use kafka_protocol::messages::alter_client_quotas_response::{
        EntityData as OutEntity, EntryData as OutEntry,
    };
    let mut out = Vec::with_capacity(r.entries.len());
    let current = layout::list(b.meta.as_ref()).await;
    for entry in r.entries {
        let echo: Vec<OutEntity> = entry
            .entity
            .iter()
            .map(|e| {
                OutEntity::default()
                    .with_entity_type(e.entity_type.clone())
                    .with_entity_name(e.entity_name.clone())
            })
            .collect();
        let result = |code: i16, msg: Option<String>| {
            OutEntry::default()
                .with_error_code(code)
                .with_error_message(msg.map(str_bytes))
                .with_entity(echo.clone())
        };
        let mut entity = Entity {
            user: None,
            client_id: None,
        };
        let mut bad = None;
        for part in &entry.entity {
            let name = part.entity_name.as_ref().map(|n| n.to_string());
            let slot = match part.entity_type.as_str() {
                USER => &mut entity.user,
                CLIENT_ID => &mut entity.client_id,
                other => {
                    bad = Some(format!(
                        "entity type {other:?} is not supported (user, client-id)"
                    ));
                    break;
                }
            };
            if slot.is_some() {
                bad = Some(format!(
                    "entity type {} given twice",
                    part.entity_type.as_str()
                ));
                break;
            }
            *slot = Some(name);
        }
        if entry.entity.is_empty() {
            bad = Some("an empty entity".into());
        }
        for op in &entry.ops {
            if !crate::quotas::KEYS.contains(&op.key.as_str()) {
                bad = Some(format!(
                    "quota {:?} is not supported (producer_byte_rate, consumer_byte_rate, request_percentage)",
                    op.key.as_str()
                ));
            } else if !op.remove && (op.value <= 0.0 || !op.value.is_finite()) {
                bad = Some(format!("{} must be a positive number", op.key.as_str()));
            }
        }
        if let Some(msg) = bad {
            out.push(result(ResponseError::InvalidRequest.code(), Some(msg)));
            continue;
        }
        let mut values = match &current {
            Ok(all) => all
                .iter()
                .find(|(e, _)| *e == entity)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            Err(e) => {
                out.push(result(
                    crate::error::meta_error_code(e).code(),
                    Some(e.to_string()),
                ));
                continue;
            }
        };
        for op in &entry.ops {
            if op.remove {
                values.remove(op.key.as_str());
            } else {
                values.insert(op.key.to_string(), op.value);
            }
        }
        if r.validate_only {
            out.push(result(0, None));
            continue;
        }
        match layout::set(b.meta.as_ref(), &entity, &values).await {
            Ok(()) => {
                tracing::info!(entity = %entity.canonical(), ?values, "client quotas changed");
                out.push(result(0, None))
            }
            Err(e) => out.push(result(
                crate::error::meta_error_code(&e).code(),
                Some(e.to_string()),
            )),
        }
    }
    AlterClientQuotasResponse::default().with_entries(out)
}
