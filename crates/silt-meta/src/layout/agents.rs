//! `/silt/agents/{node_id}` (which agent session is registered as a node) and `/silt/writer`
//! (the one agent session allowed to commit). Both are bound to the agent's lease, so an agent
//! that stops renewing it loses them after the lease TTL. Every flush commit compares
//! `/silt/writer`, so an agent that lost it — replaced by a restart of the same node, or fenced
//! after a stall — can never make data visible again.
//!
//! Until partition leadership (the cluster issue) exists, one agent writes per metadata store;
//! a second agent with another node id is refused at start-up instead of racing the first.

use crate::kv::{Compare, LeaseId, MetaError, MetaKv, Op, Txn};

/// The registration key of `node_id`.
pub fn key(node_id: i32) -> String {
    format!("{}/agents/{node_id}", super::ROOT)
}

/// The single-writer key.
pub fn writer_key() -> String {
    format!("{}/writer", super::ROOT)
}

fn writer_value(node_id: i32, session: &str) -> String {
    format!("{node_id}:{session}")
}

/// Registers `session` as `node_id` under `lease`, replacing any earlier session.
pub async fn register(
    kv: &dyn MetaKv,
    node_id: i32,
    session: &str,
    lease: LeaseId,
) -> Result<(), MetaError> {
    kv.txn(Txn {
        success: vec![Op::Put {
            key: key(node_id).into_bytes(),
            value: session.as_bytes().to_vec(),
            lease,
        }],
        ..Default::default()
    })
    .await
    .map(|_| ())
}

/// Claims the right to write for `node_id`/`session`. Succeeds when nobody holds it or when the
/// holder is an earlier session of the same node (a restart, which fences the old session).
/// Otherwise returns the holder (`node:session`).
pub async fn claim_writer(
    kv: &dyn MetaKv,
    node_id: i32,
    session: &str,
    lease: LeaseId,
) -> Result<Result<(), String>, MetaError> {
    let k = writer_key();
    let put = Op::Put {
        key: k.clone().into_bytes(),
        value: writer_value(node_id, session).into_bytes(),
        lease,
    };
    for _ in 0..3 {
        let current = kv.get(k.as_bytes()).await?;
        let compare = match &current {
            None => Compare::absent(k.clone()),
            Some(c) => {
                let holder = String::from_utf8_lossy(&c.value).into_owned();
                if !holder.starts_with(&format!("{node_id}:")) {
                    return Ok(Err(holder));
                }
                Compare::mod_revision(k.clone(), c.mod_revision)
            }
        };
        let r = kv
            .txn(Txn {
                compares: vec![compare],
                success: vec![put.clone()],
                failure: vec![],
            })
            .await?;
        if r.succeeded {
            return Ok(Ok(()));
        }
    }
    let holder = kv
        .get(k.as_bytes())
        .await?
        .map(|c| String::from_utf8_lossy(&c.value).into_owned())
        .unwrap_or_default();
    Ok(Err(holder))
}

/// The compare every commit carries: this session still holds the right to write.
pub fn still_writer(node_id: i32, session: &str) -> Compare {
    Compare::value(writer_key(), writer_value(node_id, session))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedKv;
    use silt_common::ManualClock;
    use std::time::Duration;

    #[tokio::test]
    async fn one_writer_per_store_and_restarts_take_over() {
        let clock = ManualClock::new(0);
        let kv = EmbeddedKv::in_memory(clock.clone());
        let l1 = kv.grant_lease(Duration::from_secs(10)).await.unwrap();
        assert_eq!(claim_writer(&kv, 1, "a", l1).await.unwrap(), Ok(()));
        let l2 = kv.grant_lease(Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            claim_writer(&kv, 2, "b", l2).await.unwrap(),
            Err("1:a".to_string()),
            "another node is refused"
        );
        assert_eq!(
            claim_writer(&kv, 1, "a2", l2).await.unwrap(),
            Ok(()),
            "the same node restarting takes over"
        );
        let t = Txn {
            compares: vec![still_writer(1, "a")],
            ..Default::default()
        };
        assert!(
            !kv.txn(t).await.unwrap().succeeded,
            "the old session is fenced"
        );
        clock.advance(Duration::from_secs(11));
        let l3 = kv.grant_lease(Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            claim_writer(&kv, 2, "b", l3).await.unwrap(),
            Ok(()),
            "an expired writer's claim lapses"
        );
    }
}
