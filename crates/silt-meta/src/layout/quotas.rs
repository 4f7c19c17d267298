//! `/silt/quotas/{entity}`: client quotas (KIP-13, KIP-55), one key per entity with its values.
//!
//! `{entity}` is the canonical entity: `user=alice`, `client-id=app`, `user=alice,client-id=app`,
//! with `<default>` for a default entity (`user=<default>`); names are escaped like the security
//! keys, so a `,` or `=` in a name cannot forge another entity. The value is a JSON object of quota keys to numbers, e.g.
//! `{"producer_byte_rate": 1048576.0}`; an entity with no values has no key.

use std::collections::BTreeMap;

use super::security::{escape, unescape};
use crate::kv::{MetaError, MetaKv, Op, Txn};

/// The name of a default entity in keys.
pub const DEFAULT: &str = "<default>";

/// A quota entity: user and/or client id, each a name or the default (`None` inside `Some`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entity {
    /// `Some(Some(name))` a user, `Some(None)` the default user, `None` not part of it.
    pub user: Option<Option<String>>,
    /// The same for the client id.
    pub client_id: Option<Option<String>>,
}

fn part(kind: &str, v: &Option<String>) -> String {
    // Names are escaped (`,` and `=` included); `<default>` is not a name.
    format!(
        "{kind}={}",
        v.as_deref().map(escape).unwrap_or(DEFAULT.into())
    )
}

impl Entity {
    /// Canonical form: `user=…,client-id=…`, names escaped.
    pub fn canonical(&self) -> String {
        let mut parts = Vec::new();
        if let Some(u) = &self.user {
            parts.push(part("user", u));
        }
        if let Some(c) = &self.client_id {
            parts.push(part("client-id", c));
        }
        parts.join(",")
    }

    /// Parses the canonical form.
    pub fn parse(s: &str) -> Option<Self> {
        let mut e = Entity {
            user: None,
            client_id: None,
        };
        for p in s.split(',') {
            let (k, v) = p.split_once('=')?;
            let v = if v == DEFAULT {
                None
            } else {
                Some(unescape(v)?)
            };
            match k {
                "user" if e.user.is_none() => e.user = Some(v),
                "client-id" if e.client_id.is_none() => e.client_id = Some(v),
                _ => return None,
            }
        }
        (e.user.is_some() || e.client_id.is_some()).then_some(e)
    }
}

/// Prefix of every quota key.
pub fn prefix() -> String {
    format!("{}/quotas/", super::ROOT)
}

/// Key of an entity's quotas.
pub fn key(e: &Entity) -> String {
    format!("{}{}", prefix(), e.canonical())
}

/// The entity of a key.
pub fn parse_key(k: &[u8]) -> Option<Entity> {
    let rest = std::str::from_utf8(k).ok()?.strip_prefix(&prefix())?;
    Entity::parse(rest)
}

/// An entity's values.
pub type Values = BTreeMap<String, f64>;

/// Decodes a value.
pub fn decode(k: &[u8], v: &[u8]) -> Result<Values, MetaError> {
    super::decode_json(k, v)
}

/// Every entity with quotas.
pub async fn list(kv: &dyn MetaKv) -> Result<Vec<(Entity, Values)>, MetaError> {
    let mut out = Vec::new();
    for item in kv.range_all(prefix().as_bytes()).await? {
        if let Some(e) = parse_key(&item.key) {
            out.push((e, decode(&item.key, &item.value)?));
        }
    }
    Ok(out)
}

/// Replaces an entity's values (none: its key is deleted).
pub async fn set(kv: &dyn MetaKv, e: &Entity, values: &Values) -> Result<(), MetaError> {
    let k = key(e);
    let op = if values.is_empty() {
        Op::Delete {
            key: k.into_bytes(),
        }
    } else {
        Op::put(k, super::encode_json(values))
    };
    kv.txn(Txn {
        compares: vec![],
        success: vec![op],
        failure: vec![],
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_round_trip_through_keys() {
        for e in [
            Entity {
                user: Some(Some("alice".into())),
                client_id: None,
            },
            Entity {
                user: Some(None),
                client_id: None,
            },
            Entity {
                user: Some(Some("a,b=c".into())),
                client_id: Some(None),
            },
            Entity {
                user: None,
                client_id: Some(Some("app/1".into())),
            },
        ] {
            assert_eq!(
                parse_key(key(&e).as_bytes()),
                Some(e.clone()),
                "{}",
                key(&e)
            );
        }
        assert_eq!(Entity::parse("user=a,user=b"), None);
        assert_eq!(Entity::parse("host=x"), None);
    }
}
