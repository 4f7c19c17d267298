//! The transactional producer's APIs: AddPartitionsToTxn (v0-3, the client's form),
//! AddOffsetsToTxn and EndTxn, answered by the coordinator of the transactional id
//! (`crate::txn::coordinator`), and TxnOffsetCommit, answered by the group's coordinator;
//! InitProducerId with a transactional id is in `producer_id`.

use std::sync::Arc;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse, ProducerId, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse,
};
use kafka_protocol::ResponseError;
use silt_meta::layout::group_offsets::Committed;

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

/// Handles AddOffsetsToTxn: the group joins the transaction (its offsets are ended with it).
pub async fn add_offsets(b: &Arc<Broker>, req: AddOffsetsToTxnRequest) -> AddOffsetsToTxnResponse {
    let tid = req.transactional_id.0.to_string();
    let group = req.group_id.0.to_string();
    let code = match b
        .txns
        .add(
            b,
            &tid,
            (req.producer_id.0, req.producer_epoch),
            &[],
            &[group],
        )
        .await
    {
        Ok(()) => 0,
        Err(e) => e.code(),
    };
    AddOffsetsToTxnResponse::default().with_error_code(code)
}

/// Handles TxnOffsetCommit, on the group's coordinator: the offsets stay pending until the
/// producer's transaction ends.
pub async fn offset_commit(
    b: &Arc<Broker>,
    req: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let now = b.clock.now_ms();
    let mut offsets = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            offsets.push((
                t.name.0.to_string(),
                p.partition_index,
                Committed {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    commit_ms: now,
                },
            ));
        }
    }
    let code = match b
        .groups
        .txn_commit(&req.group_id.0, req.producer_id.0, offsets)
        .await
    {
        Ok(()) => 0,
        Err(c) => c,
    };
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}
