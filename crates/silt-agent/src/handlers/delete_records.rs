//! DeleteRecords: moves partitions' log start (on their leader), as Kafka's admin
//! `deleteRecords` does. `-1` means the high watermark; an offset past it is
//! OFFSET_OUT_OF_RANGE; one below the current log start changes nothing. On a topic serving its
//! archive (`silt.archive.serve`) the archived offsets below it stop being served too.

use std::sync::Arc;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::broker::Broker;
use crate::error::PartitionError;
use crate::lifecycle::retention::move_log_start;

/// Handles DeleteRecords.
pub async fn handle(b: &Arc<Broker>, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let topic = b.topics.get(&t.name.0);
        let mut parts = Vec::with_capacity(t.partitions.len());
        for dp in t.partitions {
            let res = async {
                let topic =
                    topic
                        .as_ref()
                        .ok_or_else(|| PartitionError::UnknownTopicOrPartition {
                            topic: t.name.0.to_string(),
                            partition: dp.partition_index,
                        })?;
                let p = b.cluster.partition(topic, dp.partition_index)?;
                let (log_start, hw) = {
                    let st = p.lock();
                    (st.log_start, st.high_watermark)
                };
                let target = if dp.offset == -1 { hw } else { dp.offset };
                if target < 0 || target > hw {
                    return Err(PartitionError::OffsetOutOfRange {
                        offset: dp.offset,
                        log_start,
                        high_watermark: hw,
                    });
                }
                if topic.config.archive_serve {
                    return crate::archive_reads::delete_below(b, topic, &p, target).await;
                }
                move_log_start(b, &p, target).await
            }
            .await;
            let r =
                DeleteRecordsPartitionResult::default().with_partition_index(dp.partition_index);
            parts.push(match res {
                Ok(low) => r.with_low_watermark(low),
                Err(e) => {
                    tracing::debug!(topic = %t.name.0, partition = dp.partition_index, error = %e, "DeleteRecords refused");
                    r.with_low_watermark(-1).with_error_code(e.code().code())
                }
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
