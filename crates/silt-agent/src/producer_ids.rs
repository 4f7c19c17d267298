//! Hands out producer ids from blocks claimed in the metadata store, each sealed to the
//! principal it is issued to (`silt_security::producer_ids`).

use std::sync::Arc;

use silt_meta::layout::producer_ids;
use silt_meta::{MetaError, MetaKv};
use silt_security::producer_ids::PidSealer;
use tokio::sync::Mutex;

const BLOCK: i64 = 1000;

/// The allocator.
#[derive(Debug)]
pub struct ProducerIds {
    meta: Arc<dyn MetaKv>,
    range: Mutex<(i64, i64)>,
    sealer: PidSealer,
}

impl ProducerIds {
    /// An allocator with no block claimed yet, sealing with the cluster's secret.
    pub fn new(meta: Arc<dyn MetaKv>, sealer: PidSealer) -> Self {
        Self {
            meta,
            range: Mutex::new((0, 0)),
            sealer,
        }
    }

    /// What checks a batch's producer id against its connection's principal.
    pub fn sealer(&self) -> &PidSealer {
        &self.sealer
    }

    /// A producer id never handed out before, by any agent, sealed to `principal`.
    pub async fn next(&self, principal: &str) -> Result<i64, MetaError> {
        Ok(self.sealer.seal(self.next_counter().await?, principal))
    }

    async fn next_counter(&self) -> Result<i64, MetaError> {
        let mut r = self.range.lock().await;
        if r.0 >= r.1 {
            let start = producer_ids::allocate_block(self.meta.as_ref(), BLOCK).await?;
            *r = (start, start + BLOCK);
        }
        let id = r.0;
        r.0 += 1;
        Ok(id)
    }
}
