//! `/silt/cluster/id`: the cluster id reported to clients, chosen once by the first agent.
//! `/silt/cluster/producer-id-key`: the secret (hex) producer ids are sealed with, likewise.

use crate::kv::{Compare, MetaError, MetaKv, Op, Txn};

fn key() -> String {
    format!("{}/cluster/id", super::ROOT)
}

/// The cluster id, created from `proposal` if there is none yet.
pub async fn get_or_create(kv: &dyn MetaKv, proposal: &str) -> Result<String, MetaError> {
    get_or_create_at(kv, key(), proposal).await
}

/// The producer-id sealing secret (hex), created from `proposal` if there is none yet.
pub async fn producer_id_key(kv: &dyn MetaKv, proposal: &str) -> Result<String, MetaError> {
    get_or_create_at(
        kv,
        format!("{}/cluster/producer-id-key", super::ROOT),
        proposal,
    )
    .await
}

async fn get_or_create_at(kv: &dyn MetaKv, k: String, proposal: &str) -> Result<String, MetaError> {
    kv.txn(Txn {
        compares: vec![Compare::absent(k.clone())],
        success: vec![Op::put(k.clone(), proposal)],
        failure: vec![],
    })
    .await?;
    let got = kv
        .get(k.as_bytes())
        .await?
        .ok_or_else(|| MetaError::Corrupt {
            key: k.clone(),
            reason: "value missing right after it was created".into(),
        })?;
    Ok(String::from_utf8_lossy(&got.value).into_owned())
}
