//! The transactional producer's APIs: AddPartitionsToTxn (v0-3, the client's form),
//! AddOffsetsToTxn and EndTxn, answered by the coordinator of the transactional id
//! (`crate::txn::coordinator`), and TxnOffsetCommit, answered by the group's coordinator
//! (from EndTxn v5 and TxnOffsetCommit v5, transaction version 2: KIP-890 part 2);
//! InitProducerId with a transactional id is in `producer_id`. DescribeTransactions and
//! ListTransactions answer from the records of the ids coordinated here.

use std::sync::Arc;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeTransactionsRequest, DescribeTransactionsResponse,
    EndTxnRequest, EndTxnResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::ResponseError;
use silt_meta::layout::group_offsets::Committed;

use crate::broker::Broker;

/// Kafka's error code of a coordinator's answer (0 for success).
fn code(r: Result<(), ResponseError>) -> i16 {
    r.err().map_or(0, |e| e.code())
}

/// An AddPartitionsToTxn response (v0-3) with `code(topic, partition)` for each partition.
pub(crate) fn add_partitions_response(
    topics: &[kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic],
    mut code: impl FnMut(&str, i32) -> i16,
) -> AddPartitionsToTxnResponse {
    let results = topics
        .iter()
        .map(|t| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|p| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*p)
                                .with_partition_error_code(code(&t.name.0, *p))
                        })
                        .collect(),
                )
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

/// A TxnOffsetCommit response with `code(topic)` for each partition of the topic.
pub(crate) fn txn_offset_commit_response(
    topics: &[kafka_protocol::messages::txn_offset_commit_request::TxnOffsetCommitRequestTopic],
    mut code: impl FnMut(&str) -> i16,
) -> TxnOffsetCommitResponse {
    let topics = topics
        .iter()
        .map(|t| {
            let c = code(&t.name.0);
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(c)
                        })
                        .collect(),
                )
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

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
    let decided = if unknown {
        None
    } else {
        Some(code(
            b.txns
                .add(&crate::txn::deps(b), &tid, producer, &wanted, &[])
                .await,
        ))
    };
    add_partitions_response(&req.v3_and_below_topics, |t, p| {
        decided.unwrap_or_else(|| {
            let known = b.topics.get(t).is_some_and(|x| x.has_partition(p));
            if known {
                ResponseError::OperationNotAttempted.code()
            } else {
                ResponseError::UnknownTopicOrPartition.code()
            }
        })
    })
}

/// Handles EndTxn. From v5 (transaction version 2, KIP-890 part 2) ending moves the producer
/// on to a new epoch, which the answer carries.
pub async fn end(b: &Arc<Broker>, req: EndTxnRequest, version: i16) -> EndTxnResponse {
    let tid = req.transactional_id.0.to_string();
    let r = b
        .txns
        .end(
            &crate::txn::deps(b),
            &tid,
            (req.producer_id.0, req.producer_epoch),
            req.committed,
            version >= 5,
        )
        .await;
    let (pid, epoch) = *r.as_ref().unwrap_or(&(-1, -1));
    EndTxnResponse::default()
        .with_error_code(code(r.map(|_| ())))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
}

/// Handles AddOffsetsToTxn: the group joins the transaction (its offsets are ended with it).
pub async fn add_offsets(b: &Arc<Broker>, req: AddOffsetsToTxnRequest) -> AddOffsetsToTxnResponse {
    let tid = req.transactional_id.0.to_string();
    let group = req.group_id.0.to_string();
    let r = b
        .txns
        .add(
            &crate::txn::deps(b),
            &tid,
            (req.producer_id.0, req.producer_epoch),
            &[],
            &[group],
        )
        .await;
    AddOffsetsToTxnResponse::default().with_error_code(code(r))
}

/// Handles TxnOffsetCommit, on the group's coordinator: the offsets stay pending until the
/// producer's transaction ends. From v5 (transaction version 2) the group joins the
/// producer's transaction here, without AddOffsetsToTxn.
pub async fn offset_commit(
    b: &Arc<Broker>,
    req: TxnOffsetCommitRequest,
    version: i16,
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
    let tid = req.transactional_id.0.to_string();
    let group = req.group_id.0.to_string();
    let producer = (req.producer_id.0, req.producer_epoch);
    let mut c = ResponseError::ConcurrentTransactions.code();
    // KIP-447 (v3+): the consumer whose positions these are must still be the group's member
    // at that generation.
    if version >= 3 && (req.generation_id >= 0 || !req.member_id.is_empty()) {
        if let Err(code) = b.groups.check_txn_member(
            &group,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
        ) {
            return txn_offset_commit_response(&req.topics, |_| code);
        }
    }
    if version >= 5 {
        let deps = crate::txn::deps(b);
        let added = b
            .txns
            .add_implicitly(&deps, &tid, producer, &[], std::slice::from_ref(&group))
            .await;
        if let Err(e) = added {
            // A fenced producer: INVALID_PRODUCER_EPOCH, as TxnOffsetCommit answers it.
            let e = match e {
                ResponseError::ProducerFenced => ResponseError::InvalidProducerEpoch,
                e => e,
            };
            return txn_offset_commit_response(&req.topics, |_| e.code());
        }
    }
    // The transaction record may move between the check and the write (a partition added):
    // check again a few times; past that the client retries (CONCURRENT_TRANSACTIONS).
    for _ in 0..5 {
        let txn = match crate::txn::coordinator::TxnCoordinator::verify_offsets(
            &crate::txn::deps(b),
            &tid,
            producer,
            &group,
        )
        .await
        {
            Ok(t) => t,
            Err(e) => {
                c = e.code();
                break;
            }
        };
        match b
            .groups
            .txn_commit(&group, producer.0, offsets.clone(), (&txn.0, txn.1))
            .await
        {
            Ok(true) => {
                c = 0;
                break;
            }
            Ok(false) => continue,
            Err(e) => {
                c = e;
                break;
            }
        }
    }
    txn_offset_commit_response(&req.topics, |_| c)
}

/// Handles DescribeTransactions: the records of ids coordinated here (NOT_COORDINATOR for
/// others, TRANSACTIONAL_ID_NOT_FOUND for ids never used).
pub async fn describe(
    b: &Arc<Broker>,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
    let mut states = Vec::with_capacity(req.transactional_ids.len());
    for id in req.transactional_ids {
        let s = TransactionState::default().with_transactional_id(id.clone());
        if let Err(code) = b.groups.check(&id.0) {
            states.push(s.with_error_code(code));
            continue;
        }
        match silt_meta::layout::txns::load(b.meta.as_ref(), &id.0).await {
            Ok(Some((r, _))) => {
                let mut topics: Vec<TopicData> = Vec::new();
                for (t, p) in &r.partitions {
                    match topics.iter_mut().find(|x| x.topic.0.as_str() == t) {
                        Some(x) => x.partitions.push(*p),
                        None => topics.push(
                            TopicData::default()
                                .with_topic(super::topic_name(t))
                                .with_partitions(vec![*p]),
                        ),
                    }
                }
                states.push(
                    s.with_transaction_state(super::str_bytes(r.status.kafka_name()))
                        .with_transaction_timeout_ms(r.timeout_ms)
                        .with_transaction_start_time_ms(if r.started_ms > 0 {
                            r.started_ms
                        } else {
                            -1
                        })
                        .with_producer_id(ProducerId(r.pid))
                        .with_producer_epoch(r.epoch)
                        .with_topics(topics),
                );
            }
            Ok(None) => {
                states.push(s.with_error_code(ResponseError::TransactionalIdNotFound.code()))
            }
            Err(_) => states.push(s.with_error_code(ResponseError::CoordinatorNotAvailable.code())),
        }
    }
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

/// Handles ListTransactions: the ids coordinated here, filtered by state, producer id and (v1+)
/// by running longer than `duration_filter` ms.
pub async fn list(b: &Arc<Broker>, req: ListTransactionsRequest) -> ListTransactionsResponse {
    use kafka_protocol::messages::list_transactions_response::TransactionState;
    const STATES: [&str; 6] = [
        "Empty",
        "Ongoing",
        "PrepareCommit",
        "PrepareAbort",
        "CompleteCommit",
        "CompleteAbort",
    ];
    let unknown: Vec<_> = req
        .state_filters
        .iter()
        .filter(|s| !STATES.contains(&s.as_str()))
        .cloned()
        .collect();
    let records = match crate::txn::coordinator::TxnCoordinator::records(&crate::txn::deps(b)).await
    {
        Ok(r) => r,
        Err(_) => {
            return ListTransactionsResponse::default()
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
        }
    };
    let now = b.clock.now_ms();
    let states = records
        .into_iter()
        .filter(|(_, r)| {
            req.state_filters.is_empty()
                || req
                    .state_filters
                    .iter()
                    .any(|s| s.as_str() == r.status.kafka_name())
        })
        .filter(|(_, r)| {
            req.producer_id_filters.is_empty()
                || req.producer_id_filters.iter().any(|p| p.0 == r.pid)
        })
        .filter(|(_, r)| {
            req.duration_filter < 0
                || (r.status == silt_meta::layout::txns::TxnStatus::Ongoing
                    && now - r.started_ms >= req.duration_filter)
        })
        .map(|(id, r)| {
            TransactionState::default()
                .with_transactional_id(TransactionalId(super::str_bytes(id)))
                .with_producer_id(ProducerId(r.pid))
                .with_transaction_state(super::str_bytes(r.status.kafka_name()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(states)
}
