//! Users and ACLs.
//!
//! ```text
//! /silt/users/{user}/{mechanism}     ScramRecord: a user's SCRAM credential (never a password)
//! /silt/acls/{resource_type}/{resource_name}/{pattern_type}/{principal}/{host}/{operation}/{permission}
//!                                    AclRecord: one ACL binding (the key is the whole binding,
//!                                    so creating one twice is one key)
//! ```
//!
//! `{user}`, `{resource_name}`, `{principal}` and `{host}` are escaped with [`escape`] (any byte
//! outside `[A-Za-z0-9._-:*@]` becomes `%XX`), so a `/` in a group name cannot forge a key. The
//! numeric codes in ACL keys and records are Kafka's own (`AclResourceType`, `AclOperation`, …),
//! stable by definition. `{mechanism}` is `SCRAM-SHA-256` or `SCRAM-SHA-512`.

use serde::{Deserialize, Serialize};

use crate::kv::{Compare, MetaError, MetaKv, Op, Txn};

/// A stored SCRAM credential (RFC 5802): what verifies a password without holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramRecord {
    /// The salt, base64.
    pub salt: String,
    /// `H(ClientKey)`, base64.
    pub stored_key: String,
    /// `HMAC(SaltedPassword, "Server Key")`, base64.
    pub server_key: String,
    /// PBKDF2 iterations.
    pub iterations: u32,
}

/// One ACL binding, with Kafka's numeric codes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AclRecord {
    /// Kafka `AclResourceType` code (2 topic, 3 group, 4 cluster, 5 transactional id).
    pub resource_type: i8,
    /// The resource name (`kafka-cluster` for the cluster, `*` for every resource).
    pub resource_name: String,
    /// Kafka `PatternType` code (3 literal, 4 prefixed).
    pub pattern_type: i8,
    /// `User:name` (or `User:*`).
    pub principal: String,
    /// Client host, `*` for any.
    pub host: String,
    /// Kafka `AclOperation` code.
    pub operation: i8,
    /// Kafka `AclPermissionType` code (2 deny, 3 allow).
    pub permission: i8,
}

/// Escapes one key component (see the module documentation).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._-:*@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Inverse of [`escape`]; `None` for a malformed component.
pub fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Prefix of every user's credentials.
pub fn users_prefix() -> String {
    format!("{}/users/", super::ROOT)
}

/// Key of `user`'s credential for `mechanism`.
pub fn user_key(user: &str, mechanism: &str) -> String {
    format!("{}{}/{}", users_prefix(), escape(user), mechanism)
}

/// `(user, mechanism)` of a credential key.
pub fn parse_user_key(key: &[u8]) -> Option<(String, String)> {
    let rest = std::str::from_utf8(key)
        .ok()?
        .strip_prefix(&users_prefix())?;
    let (user, mech) = rest.split_once('/')?;
    Some((unescape(user)?, mech.to_string()))
}

/// A user's credential for a mechanism.
pub async fn get_user(
    kv: &dyn MetaKv,
    user: &str,
    mechanism: &str,
) -> Result<Option<ScramRecord>, MetaError> {
    let k = user_key(user, mechanism);
    match kv.get(k.as_bytes()).await? {
        None => Ok(None),
        Some(v) => super::decode_json(k.as_bytes(), &v.value).map(Some),
    }
}

/// Every stored credential: `(user, mechanism, record)`, ordered by user.
pub async fn list_users(kv: &dyn MetaKv) -> Result<Vec<(String, String, ScramRecord)>, MetaError> {
    let mut out = Vec::new();
    for kvp in kv.range_all(users_prefix().as_bytes()).await? {
        let Some((user, mech)) = parse_user_key(&kvp.key) else {
            continue;
        };
        out.push((user, mech, super::decode_json(&kvp.key, &kvp.value)?));
    }
    Ok(out)
}

/// Creates or replaces a credential.
pub fn put_user_op(user: &str, mechanism: &str, record: &ScramRecord) -> Op {
    Op::put(user_key(user, mechanism), super::encode_json(record))
}

/// Deletes a credential if it exists; `false` if it did not.
pub async fn delete_user(kv: &dyn MetaKv, user: &str, mechanism: &str) -> Result<bool, MetaError> {
    let k = user_key(user, mechanism);
    let r = kv
        .txn(Txn {
            compares: vec![Compare::absent(k.clone())],
            success: vec![],
            failure: vec![Op::Delete {
                key: k.into_bytes(),
            }],
        })
        .await?;
    Ok(!r.succeeded)
}

/// Prefix of every ACL binding.
pub fn acls_prefix() -> String {
    format!("{}/acls/", super::ROOT)
}

/// Key of one binding.
pub fn acl_key(a: &AclRecord) -> String {
    format!(
        "{}{}/{}/{}/{}/{}/{}/{}",
        acls_prefix(),
        a.resource_type,
        escape(&a.resource_name),
        a.pattern_type,
        escape(&a.principal),
        escape(&a.host),
        a.operation,
        a.permission
    )
}

/// Decodes a binding's value (used by mirrors of [`acls_prefix`]).
pub fn decode_acl(key: &[u8], value: &[u8]) -> Result<AclRecord, MetaError> {
    super::decode_json(key, value)
}

/// Stores bindings (existing ones stay as they are), in transactions within the store's limits.
pub async fn put_acls(kv: &dyn MetaKv, acls: &[AclRecord]) -> Result<(), MetaError> {
    let ops: Vec<Op> = acls
        .iter()
        .map(|a| Op::put(acl_key(a), super::encode_json(a)))
        .collect();
    for txn in crate::kv::chunk_ops(&[], ops)? {
        kv.txn(txn).await?;
    }
    Ok(())
}

/// Deletes bindings.
pub async fn delete_acls(kv: &dyn MetaKv, acls: &[AclRecord]) -> Result<(), MetaError> {
    let ops: Vec<Op> = acls
        .iter()
        .map(|a| Op::Delete {
            key: acl_key(a).into_bytes(),
        })
        .collect();
    for txn in crate::kv::chunk_ops(&[], ops)? {
        kv.txn(txn).await?;
    }
    Ok(())
}

/// Every stored binding.
pub async fn list_acls(kv: &dyn MetaKv) -> Result<Vec<AclRecord>, MetaError> {
    kv.range_all(acls_prefix().as_bytes())
        .await?
        .iter()
        .map(|k| decode_acl(&k.key, &k.value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_and_keeps_slashes_out_of_keys() {
        for s in ["alice", "a/b", "grp%1", "ünï", "", "User:*", "10.0.0.1"] {
            let e = escape(s);
            assert!(!e.contains('/'), "{e}");
            assert_eq!(unescape(&e).as_deref(), Some(s));
        }
        assert_eq!(unescape("%4"), None);
        assert_eq!(unescape("%zz"), None);
    }

    #[test]
    fn user_keys_parse_back() {
        let k = user_key("bob/evil", "SCRAM-SHA-256");
        assert_eq!(
            parse_user_key(k.as_bytes()),
            Some(("bob/evil".into(), "SCRAM-SHA-256".into()))
        );
    }
}
