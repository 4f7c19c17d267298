//! ListOffsets (earliest, latest, max timestamp, by timestamp) and OffsetForLeaderEpoch.

use std::sync::Arc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
};
use silt_wire::batch;

use crate::broker::Broker;
use crate::error::PartitionError;
use crate::partition::Partition;
use crate::read;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

fn check_epoch(p: &Partition, requested: i32) -> Result<i32, PartitionError> {
    let epoch = p.lock().leader_epoch;
    if requested > epoch {
        Err(PartitionError::UnknownLeaderEpoch(requested))
    } else if requested >= 0 && requested < epoch {
        Err(PartitionError::FencedLeaderEpoch(requested))
    } else {
        Ok(epoch)
    }
}

/// Handles ListOffsets.
pub async fn handle(b: &Arc<Broker>, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let topic = b.topics.get(&t.name.0);
        let mut parts = Vec::with_capacity(t.partitions.len());
        for lp in t.partitions {
            let r =
                ListOffsetsPartitionResponse::default().with_partition_index(lp.partition_index);
            let found = match &topic {
                None => Err(PartitionError::UnknownTopicOrPartition {
                    topic: t.name.0.to_string(),
                    partition: lp.partition_index,
                }),
                Some(tp) => b.cluster.partition(tp, lp.partition_index),
            };
            let res = match found {
                Err(e) => Err(e),
                Ok(p) => match check_epoch(&p, lp.current_leader_epoch) {
                    Err(e) => Err(e),
                    Ok(epoch) => lookup(
                        b,
                        topic.as_deref(),
                        &p,
                        lp.timestamp,
                        req.isolation_level == 1,
                    )
                    .await
                    .map(|(o, ts)| (o, ts, epoch)),
                },
            };
            parts.push(match res {
                Ok((offset, ts, epoch)) => r
                    .with_offset(offset)
                    .with_timestamp(ts)
                    .with_leader_epoch(if version >= 4 { epoch } else { -1 }),
                Err(e) => r
                    .with_error_code(e.code().code())
                    .with_offset(-1)
                    .with_timestamp(-1),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// Offset and timestamp for a ListOffsets target; `committed` (read_committed) answers the last
/// stable offset for the latest offset, as Kafka does.
/// A topic serving its archive (`silt.archive.serve`) answers earliest and timestamps from the
/// archive too; earliest-local is the raw log's start, as Kafka's tiered storage answers.
async fn lookup(
    b: &Broker,
    topic: Option<&crate::topics::Topic>,
    p: &Partition,
    target: i64,
    committed: bool,
) -> Result<(i64, i64), PartitionError> {
    let (log_start, hw, lso) = {
        let st = p.lock();
        (
            st.log_start,
            st.high_watermark,
            st.txns.last_stable(st.high_watermark),
        )
    };
    let serving = topic.filter(|t| t.config.archive_serve);
    match target {
        EARLIEST => match serving {
            Some(t) => Ok((crate::archive_reads::start(b, t, p).await?, -1)),
            None => Ok((log_start, -1)),
        },
        EARLIEST_LOCAL => Ok((log_start, -1)),
        LATEST if committed => Ok((lso, -1)),
        LATEST => Ok((hw, -1)),
        MAX_TIMESTAMP => {
            let Some(seg) = p.lock().max_timestamp_segment() else {
                return Ok((-1, -1));
            };
            let data = read::range_bytes(&b.storage, &b.cache, &seg).await?;
            let best = batch::iter(&data)
                .filter(|(h, _)| h.max_timestamp == seg.max_timestamp)
                .map(|(h, r)| batch::max_timestamp_offset(&data[r], &h))
                .next()
                .unwrap_or(seg.last_offset);
            Ok((best, seg.max_timestamp))
        }
        ts if ts >= 0 => {
            if let Some(t) = serving {
                if let Some(hit) = crate::archive_reads::offset_for_time(b, t, p, ts).await? {
                    return Ok(hit);
                }
            }
            // The first range whose max timestamp reaches `ts` holds the first record that does.
            let Some(seg) = p.lock().first_segment_at_or_after(ts) else {
                return Ok((-1, -1));
            };
            let data = read::range_bytes(&b.storage, &b.cache, &seg).await?;
            let found =
                batch::iter(&data).find_map(|(h, r)| batch::first_at_or_after(&data[r], &h, ts));
            Ok(found.unwrap_or((-1, -1)))
        }
        _ => Ok((-1, -1)),
    }
}

/// Handles OffsetForLeaderEpoch. Silt never truncates a committed log, so any epoch up to the
/// current one ends, as far as a client's divergence check is concerned, at the high watermark:
/// the answer never asks a client to truncate.
pub fn offset_for_leader_epoch(
    b: &Arc<Broker>,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = b.topics.get(&t.topic.0);
            let partitions = t
                .partitions
                .into_iter()
                .map(|op| {
                    let r = EpochEndOffset::default().with_partition(op.partition);
                    let found = match &topic {
                        None => Err(PartitionError::UnknownTopicOrPartition {
                            topic: t.topic.0.to_string(),
                            partition: op.partition,
                        }),
                        Some(tp) => b.cluster.partition(tp, op.partition),
                    };
                    let res = match found {
                        Err(e) => Err(e),
                        Ok(p) => check_epoch(&p, op.current_leader_epoch).map(|epoch| {
                            if op.leader_epoch > epoch {
                                (-1, -1)
                            } else {
                                (epoch, p.lock().high_watermark)
                            }
                        }),
                    };
                    match res {
                        Ok((epoch, end)) => r.with_leader_epoch(epoch).with_end_offset(end),
                        Err(e) => r.with_error_code(e.code().code()),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
