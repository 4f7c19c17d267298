//! DescribeProducers: the producers with state on each requested partition led here — producer
//! id, epoch, last sequence appended, when it last wrote, and the first offset of its open
//! transaction — as `kafka-transactions describe-producers` and admin clients show them.
//! Answered by the partition's leader; other agents answer NOT_LEADER_OR_FOLLOWER.

use std::sync::Arc;

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};

use crate::broker::Broker;
use crate::error::PartitionError;

/// Handles DescribeProducers (v0).
pub fn handle(b: &Arc<Broker>, req: DescribeProducersRequest) -> DescribeProducersResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = b.topics.get(&t.name.0);
            let partitions = t
                .partition_indexes
                .iter()
                .map(|&index| {
                    let r = PartitionResponse::default().with_partition_index(index);
                    let found = match &topic {
                        None => Err(PartitionError::UnknownTopicOrPartition {
                            topic: t.name.0.to_string(),
                            partition: index,
                        }),
                        Some(tp) => b.cluster.partition(tp, index),
                    };
                    match found {
                        Err(e) => r.with_error_code(e.code().code()),
                        Ok(p) => {
                            let st = p.lock();
                            let open: std::collections::HashMap<i64, i64> =
                                st.txns.open().into_iter().collect();
                            r.with_active_producers(
                                st.producers
                                    .active()
                                    .into_iter()
                                    .map(|a| {
                                        ProducerState::default()
                                            .with_producer_id(ProducerId(a.pid))
                                            .with_producer_epoch(a.epoch as i32)
                                            .with_last_sequence(a.last_seq)
                                            .with_last_timestamp(a.last_write_ms)
                                            .with_coordinator_epoch(-1)
                                            .with_current_txn_start_offset(
                                                open.get(&a.pid).copied().unwrap_or(-1),
                                            )
                                    })
                                    .collect(),
                            )
                        }
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
