//! `transactions list`: every transactional id each agent coordinates (ListTransactions), with
//! its state, producer, the age of its open transaction and its partitions (DescribeTransactions).

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::client::Cluster;
use crate::commands::{row, table};
use crate::{check, AdminError};

/// `transactions list`.
pub async fn list(bootstrap: &str) -> Result<String, AdminError> {
    let c = Cluster::connect(bootstrap).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut rows = vec![row(&[
        &"TRANSACTIONAL-ID",
        &"STATE",
        &"PRODUCER-ID",
        &"EPOCH",
        &"OPEN-FOR-MS",
        &"PARTITIONS",
        &"COORDINATOR",
    ])];
    for broker in c.brokers.keys() {
        let mut conn = c.broker(*broker).await?;
        let l: ListTransactionsResponse = conn
            .call(
                ApiKey::ListTransactions,
                0,
                &ListTransactionsRequest::default(),
            )
            .await?;
        check(l.error_code, "listing transactions", None)?;
        if l.transaction_states.is_empty() {
            continue;
        }
        let ids: Vec<TransactionalId> = l
            .transaction_states
            .iter()
            .map(|t| t.transactional_id.clone())
            .collect();
        let d: DescribeTransactionsResponse = conn
            .call(
                ApiKey::DescribeTransactions,
                0,
                &DescribeTransactionsRequest::default().with_transactional_ids(ids),
            )
            .await?;
        for t in d.transaction_states {
            if t.error_code != 0 {
                continue;
            }
            let open =
                if t.transaction_state.as_str() == "Ongoing" && t.transaction_start_time_ms > 0 {
                    (now - t.transaction_start_time_ms).max(0).to_string()
                } else {
                    "-".to_string()
                };
            let parts: Vec<String> = t
                .topics
                .iter()
                .flat_map(|tp| {
                    tp.partitions
                        .iter()
                        .map(move |p| format!("{}-{p}", tp.topic.0))
                })
                .collect();
            let parts = if parts.is_empty() {
                "-".to_string()
            } else {
                parts.join(",")
            };
            let id: &StrBytes = &t.transactional_id.0;
            rows.push(row(&[
                &id.as_str(),
                &t.transaction_state.as_str(),
                &t.producer_id.0,
                &t.producer_epoch,
                &open,
                &parts,
                broker,
            ]));
        }
    }
    Ok(table(&rows))
}
