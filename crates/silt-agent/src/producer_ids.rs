//! Hands out producer ids from blocks claimed in the metadata store.

use std::sync::Arc;

use silt_meta::layout::producer_ids;
use silt_meta::{MetaError, MetaKv};
use tokio::sync::Mutex;

const BLOCK: i64 = 1000;

/// The allocator.
#[derive(Debug)]
pub struct ProducerIds {
    meta: Arc<dyn MetaKv>,
    range: Mutex<(i64, i64)>,
}

impl ProducerIds {
    /// An allocator with no block claimed yet.
    pub fn new(meta: Arc<dyn MetaKv>) -> Self {
        Self {
            meta,
            range: Mutex::new((0, 0)),
        }
    }

    /// A producer id never handed out before, by any agent.
    pub async fn next(&self) -> Result<i64, MetaError> {
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
