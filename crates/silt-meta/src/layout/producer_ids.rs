//! `/silt/producer-ids/next`: producer ids are handed out in blocks so that allocating one is
//! usually free; the block is claimed with a compare-and-swap.

use crate::kv::{Compare, MetaError, MetaKv, Op, Txn};

fn key() -> String {
    format!("{}/producer-ids/next", super::ROOT)
}

/// Claims `size` producer ids; returns the first.
pub async fn allocate_block(kv: &dyn MetaKv, size: i64) -> Result<i64, MetaError> {
    let k = key();
    loop {
        let cur = kv.get(k.as_bytes()).await?;
        let (start, compare) = match &cur {
            None => (1000, Compare::absent(k.clone())),
            Some(v) => {
                let s = std::str::from_utf8(&v.value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| MetaError::Corrupt {
                        key: k.clone(),
                        reason: "not an integer".into(),
                    })?;
                (s, Compare::mod_revision(k.clone(), v.mod_revision))
            }
        };
        let r = kv
            .txn(Txn {
                compares: vec![compare],
                success: vec![Op::put(k.clone(), (start + size).to_string())],
                failure: vec![],
            })
            .await?;
        if r.succeeded {
            return Ok(start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedKv;
    use silt_common::ManualClock;

    #[tokio::test]
    async fn blocks_never_overlap() {
        let kv = EmbeddedKv::in_memory(ManualClock::new(0));
        let a = allocate_block(&kv, 100).await.unwrap();
        let b = allocate_block(&kv, 100).await.unwrap();
        assert!(b >= a + 100);
    }
}
