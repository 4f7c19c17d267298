//! `/silt/broker-configs/{scope}`: broker configs changed at run time (AlterConfigs and
//! IncrementalAlterConfigs on a BROKER resource). The one scope is `<default>`, the
//! cluster-wide defaults every agent applies at once (Kafka's `--entity-default`); its value is
//! a JSON object of Kafka broker config names to values, e.g. `{"log.retention.ms": "3600000"}`.
//! No values: no key.

use std::collections::BTreeMap;

use super::{decode_json, encode_json};
use crate::kv::{Compare, MetaError, MetaKv, Op, Txn};

/// The cluster-wide scope.
pub const DEFAULT: &str = "<default>";

/// Broker config names to values.
pub type Values = BTreeMap<String, String>;

/// Prefix of every broker-config key.
pub fn prefix() -> String {
    format!("{}/broker-configs/", super::ROOT)
}

/// Key of a scope's values.
pub fn key(scope: &str) -> String {
    format!("{}{scope}", prefix())
}

/// The scope of a key.
pub fn parse_key(k: &[u8]) -> Option<String> {
    std::str::from_utf8(k)
        .ok()?
        .strip_prefix(&prefix())
        .map(String::from)
}

/// Decodes a value.
pub fn decode(k: &[u8], v: &[u8]) -> Result<Values, MetaError> {
    decode_json(k, v)
}

/// A scope's values and the revision they were read at (0: none stored).
pub async fn get(kv: &dyn MetaKv, scope: &str) -> Result<(Values, i64), MetaError> {
    match kv.get(key(scope).as_bytes()).await? {
        Some(cur) => Ok((decode(&cur.key, &cur.value)?, cur.mod_revision)),
        None => Ok((Values::new(), 0)),
    }
}

/// Replaces a scope's values if they are still at `revision` (0: none stored); returns whether
/// they were replaced. Empty values delete the key.
pub async fn replace(
    kv: &dyn MetaKv,
    scope: &str,
    values: &Values,
    revision: i64,
) -> Result<bool, MetaError> {
    let k = key(scope);
    let compare = if revision == 0 {
        Compare::absent(k.clone())
    } else {
        Compare::mod_revision(k.clone(), revision)
    };
    let op = if values.is_empty() {
        Op::Delete {
            key: k.into_bytes(),
        }
    } else {
        Op::put(k, encode_json(values))
    };
    let r = kv
        .txn(Txn {
            compares: vec![compare],
            success: vec![op],
            failure: vec![],
        })
        .await?;
    Ok(r.succeeded)
}
