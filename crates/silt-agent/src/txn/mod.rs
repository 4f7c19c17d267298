//! Transactions: the coordinator's rules ([`state`]) for a transactional id's durable record
//! (`/silt/txns/…`), the [`coordinator`] that applies them on the agent of the id's shard, and
//! the leaders' side that writes the markers it asks for ([`markers`]). The partition side —
//! transaction marks in the index, the last stable offset and the aborted list — is in
//! `txn_index`, `append` and `read`.

use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;

pub mod coordinator;
pub mod markers;
pub mod state;

/// The coordinator's view of an agent.
pub fn deps(b: &Broker) -> coordinator::Deps<'_> {
    coordinator::Deps {
        meta: b.meta.as_ref(),
        groups: &b.groups,
        producer_ids: &b.producer_ids,
        topics: &b.topics,
        clock: b.clock.as_ref(),
        max_timeout_ms: b.settings.transactions.max_timeout_ms,
    }
}

/// The coordinator's periodic pass: timeouts and transactions left half-ended.
pub struct TxnPassJob(pub Arc<Broker>);

impl crate::tasks::Periodic for TxnPassJob {
    fn name(&self) -> &'static str {
        "txn-coordinator"
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.0.settings.transactions.check_interval_ms.max(10))
    }

    async fn step(&mut self) {
        let b = &self.0;
        b.txns.pass(&deps(b)).await;
    }
}
