//! `/silt/agents/{node_id}`: the live agents. Each agent registers under its own lease a
//! [`Registration`] (session, advertised address); the key disappears when the agent revokes
//! its lease on shutdown or stops renewing it (crash, freeze, partition) for the lease TTL.
//!
//! The registration is the agent's identity for fencing: every commit an agent makes compares
//! the exact bytes of its registration ([`registered`]), so an agent whose lease lapsed, or whose
//! node id was taken over by a restart, can never make data visible again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{decode_json, encode_json};
use crate::kv::{Compare, LeaseId, MetaError, MetaKv, Op, Txn};

/// What an agent registers. Persisted: field names are stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// A fresh id per process start.
    pub session: String,
    /// Host clients connect to.
    pub host: String,
    /// Port clients connect to.
    pub port: i32,
    /// The advertised addresses of the agent's other named listeners (absent when it has only
    /// the default one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub listeners: BTreeMap<String, Endpoint>,
    /// The agent's zone (`rack` setting), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
}

/// An advertised address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Host.
    pub host: String,
    /// Port.
    pub port: i32,
}

/// Why an agent could not register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The node id asked for.
    pub node_id: i32,
    /// Who holds it.
    pub holder: Registration,
}

/// Prefix of every registration.
pub fn prefix() -> String {
    format!("{}/agents/", super::ROOT)
}

/// The registration key of `node_id`.
pub fn key(node_id: i32) -> String {
    format!("{}{node_id}", prefix())
}

/// The node id of a registration key.
pub fn parse_key(key: &[u8]) -> Option<i32> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(&prefix())?
        .parse()
        .ok()
}

/// Decodes a registration value.
pub fn decode(key: &[u8], value: &[u8]) -> Result<Registration, MetaError> {
    decode_json(key, value)
}

/// Registers `reg` under `lease` as `node_id`, or as the lowest free id when `node_id` is
/// negative. A live registration of the same id at the same address is taken over (a restart:
/// the earlier session is fenced); one at another address is refused. Returns the node id and
/// the registration bytes that [`registered`] compares.
pub async fn register(
    kv: &dyn MetaKv,
    node_id: i32,
    reg: &Registration,
    lease: LeaseId,
) -> Result<Result<(i32, Vec<u8>), Taken>, MetaError> {
    let value = encode_json(reg);
    if node_id < 0 {
        for id in 0..i32::MAX {
            let k = key(id);
            let r = kv
                .txn(Txn {
                    compares: vec![Compare::absent(k.clone())],
                    success: vec![Op::Put {
                        key: k.into_bytes(),
                        value: value.clone(),
                        lease,
                    }],
                    failure: vec![],
                })
                .await?;
            if r.succeeded {
                return Ok(Ok((id, value)));
            }
        }
    }
    let k = key(node_id);
    for _ in 0..5 {
        let current = kv.get(k.as_bytes()).await?;
        let compare = match &current {
            None => Compare::absent(k.clone()),
            Some(c) => {
                let holder = decode(&c.key, &c.value)?;
                if holder.host != reg.host || holder.port != reg.port {
                    return Ok(Err(Taken { node_id, holder }));
                }
                Compare::mod_revision(k.clone(), c.mod_revision)
            }
        };
        let r = kv
            .txn(Txn {
                compares: vec![compare],
                success: vec![Op::Put {
                    key: k.clone().into_bytes(),
                    value: value.clone(),
                    lease,
                }],
                failure: vec![],
            })
            .await?;
        if r.succeeded {
            return Ok(Ok((node_id, value)));
        }
    }
    let holder = match kv.get(k.as_bytes()).await? {
        Some(c) => decode(&c.key, &c.value)?,
        None => reg.clone(),
    };
    Ok(Err(Taken { node_id, holder }))
}

/// Every live agent by node id.
pub async fn list(kv: &dyn MetaKv) -> Result<BTreeMap<i32, Registration>, MetaError> {
    let mut out = BTreeMap::new();
    for item in kv.range_all(prefix().as_bytes()).await? {
        if let Some(id) = parse_key(&item.key) {
            out.insert(id, decode(&item.key, &item.value)?);
        }
    }
    Ok(out)
}

/// What a live session has finished with, published under its lease so garbage collection
/// never deletes an object whose commit may still land. Persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionProgress {
    /// Every flush generation up to this one is done (committed or refused for good).
    #[serde(default)]
    pub flush: u64,
    /// Every compaction step up to this one is done.
    #[serde(default)]
    pub compact: u64,
}

/// The key where a live session publishes its [`SessionProgress`].
pub fn session_progress_key(session: &str) -> String {
    format!("{}/sessions/{session}", super::ROOT)
}

/// Every live session's published progress.
pub async fn session_progress(
    kv: &dyn MetaKv,
) -> Result<std::collections::HashMap<String, SessionProgress>, MetaError> {
    let prefix = format!("{}/sessions/", super::ROOT);
    let mut out = std::collections::HashMap::new();
    for item in kv.range_all(prefix.as_bytes()).await? {
        let k = String::from_utf8_lossy(&item.key[prefix.len()..]).into_owned();
        out.insert(k, decode_json(&item.key, &item.value)?);
    }
    Ok(out)
}

/// The put that publishes a session's progress under its lease.
pub fn session_progress_op(session: &str, p: &SessionProgress, lease: LeaseId) -> Op {
    Op::Put {
        key: session_progress_key(session).into_bytes(),
        value: encode_json(p),
        lease,
    }
}

/// The compare every commit of an agent carries: its registration is still exactly `value`.
pub fn registered(node_id: i32, value: &[u8]) -> Compare {
    Compare::value(key(node_id), value.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedKv;
    use silt_common::ManualClock;
    use std::time::Duration;

    fn reg(session: &str, port: i32) -> Registration {
        Registration {
            session: session.into(),
            host: "h".into(),
            port,
            listeners: Default::default(),
            rack: None,
        }
    }

    #[tokio::test]
    async fn restarts_take_over_and_other_agents_are_refused() {
        let clock = ManualClock::new(0);
        let kv = EmbeddedKv::in_memory(clock.clone());
        let l1 = kv.grant_lease(Duration::from_secs(10)).await.unwrap();
        let (id, v1) = register(&kv, 1, &reg("a", 9092), l1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(id, 1);
        let l2 = kv.grant_lease(Duration::from_secs(10)).await.unwrap();
        let taken = register(&kv, 1, &reg("b", 9093), l2).await.unwrap();
        assert_eq!(taken.unwrap_err().holder, reg("a", 9092), "another address");
        let (_, v2) = register(&kv, 1, &reg("a2", 9092), l2)
            .await
            .unwrap()
            .unwrap();
        let fenced = Txn {
            compares: vec![registered(1, &v1)],
            ..Default::default()
        };
        assert!(!kv.txn(fenced).await.unwrap().succeeded, "old session");
        let ok = Txn {
            compares: vec![registered(1, &v2)],
            ..Default::default()
        };
        assert!(kv.txn(ok).await.unwrap().succeeded, "new session");
        let (auto, _) = register(&kv, -1, &reg("c", 9094), l2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(auto, 0, "the lowest free id");
        let (auto, _) = register(&kv, -1, &reg("d", 9095), l2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(auto, 2, "1 is taken");
        assert_eq!(list(&kv).await.unwrap().len(), 3);
        clock.advance(Duration::from_secs(11));
        assert!(list(&kv).await.unwrap().is_empty(), "leases lapsed");
        let t = Txn {
            compares: vec![registered(1, &v2)],
            ..Default::default()
        };
        assert!(!kv.txn(t).await.unwrap().succeeded, "a lapsed agent");
    }
}
