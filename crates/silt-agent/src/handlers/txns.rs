//! The transactional producer's APIs: AddPartitionsToTxn (v0-3, the client's form) and EndTxn,
//! answered by the coordinator of the transactional id (`crate::txn::coordinator`);
//! InitProducerId with a transactional id is in `producer_id`. Sending offsets in a transaction
//! (AddOffsetsToTxn, TxnOffsetCommit) is not served yet.

use std::sync::Arc;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse,
    ProducerId,
};
use kafka_protocol::ResponseError;

use crate::broker::Broker;

/// Handles AddPartitionsToTxn: every partition gets the coordinator's answer, or
/// UNKNOWN_TOPIC_OR_PARTITION (then the others OPERATION_NOT_ATTEMPTED, as Kafka answers).
pub async fn add_partitions(
    b: &Arc<Broker>,
    req: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let tid = req.v3_and_below_transactional_id.0.to_string();
    let producer = (
        req.v3_and_below_producer_id.0,
        req.v3_and_below_producer_epoch,
    );
    let mut wanted = Vec::new();
    let mut unknown = false;
    for t in &req.v3_and_below_topics {
        let topic = b.topics.get(&t.name.0);
        for p in &t.partitions {
            if !topic.as_ref().is_some_and(|x| x.has_partition(*p)) {
                unknown = true;
            }
            wanted.push((t.name.0.to_string(), *p));
        }
    }
    let code = if unknown {
        None
    } else {
        Some(match b.txns.add(b, &tid, producer, &wanted, &[]).await {
            Ok(()) => 0,
            Err(e) => e.code(),
        })
    };
    let results = req
        .v3_and_below_topics
        .into_iter()
        .map(|t| {
            let topic = b.topics.get(&t.name.0);
            let parts = t
                .partitions
                .iter()
                .map(|p| {
                    let c = code.unwrap_or_else(|| {
                        if topic.as_ref().is_some_and(|x| x.has_partition(*p)) {
                            ResponseError::OperationNotAttempted.code()
                        } else {
                            ResponseError::UnknownTopicOrPartition.code()
                        }
                    });
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*p)
                        .with_partition_error_code(c)
                })
                .collect();
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name)
                .with_results_by_partition(parts)
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

/// Handles EndTxn.
pub async fn end(b: &Arc<Broker>, req: EndTxnRequest) -> EndTxnResponse {
    let tid = req.transactional_id.0.to_string();
    let code = match b
        .txns
        .end(
            b,
            &tid,
            (req.producer_id.0, req.producer_epoch),
            req.committed,
        )
        .await
    {
        Ok(()) => 0,
        Err(e) => e.code(),
    };
    EndTxnResponse::default()
        .with_error_code(code)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}
