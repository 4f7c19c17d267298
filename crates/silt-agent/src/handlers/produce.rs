//! Produce: validate each partition's batch, wait for buffer room (backpressure), append, and
//! answer by `acks`: 0 never, 1 once buffered, all (-1) once the flush carrying it committed.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind};
use silt_wire::batch::{self, BatchError, BatchHeader};

use super::{str_bytes, topic_name, Reply};
use crate::append::{append, Appended};
use crate::broker::Broker;
use crate::error::PartitionError;
use crate::partition::Partition;
use crate::topic_config::Resolved;
use crate::txn::coordinator::Verified;

/// Where one partition of the request stands.
enum Slot {
    Failed(PartitionError),
    Appended {
        partition: Arc<Partition>,
        appended: Appended,
        log_append_time: Option<i64>,
    },
}

/// Handles Produce.
pub async fn handle(b: &Arc<Broker>, req: ProduceRequest, version: i16) -> Reply {
    let acks = req.acks;
    // One deadline for the whole request, as Kafka's delayed produce has.
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
    let deadline = Instant::now() + timeout;
    let mut slots: Vec<(String, Vec<(i32, Slot)>)> = Vec::with_capacity(req.topic_data.len());
    for td in req.topic_data {
        let name = td.name.0.to_string();
        let topic = b.topics.get(&name);
        let mut parts = Vec::with_capacity(td.partition_data.len());
        for pd in td.partition_data {
            let slot = if !matches!(acks, -1..=1) {
                Slot::Failed(PartitionError::InvalidRequiredAcks(acks))
            } else {
                let found = match &topic {
                    None => Err(PartitionError::UnknownTopicOrPartition {
                        topic: name.clone(),
                        partition: pd.index,
                    }),
                    Some(t) => b.cluster.partition(t, pd.index).map(|p| (t, p)),
                };
                // Produce v0-2 carries message sets v0/v1: converted up to a batch v2 first.
                let records = pd.records;
                let converted = found.and_then(|(t, p)| {
                    let records = match records {
                        Some(set) if version < 3 => {
                            b.metrics
                                .converted_up
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            crate::old_formats::up_convert(&set, t.config.max_message_bytes)
                                .map(Some)?
                        }
                        other => other,
                    };
                    Ok(((t, p), records))
                });
                match converted {
                    Err(e) => Slot::Failed(e),
                    Ok((_, records)) if version < 7 && zstd(records.as_deref()) => {
                        Slot::Failed(PartitionError::UnsupportedCompression(format!(
                            "zstd needs Produce v7 or later; this request is v{version} (as in Kafka)"
                        )))
                    }
                    Ok(((t, p), records)) => {
                        let lat = t.config.log_append_time.then(|| b.clock.now_ms());
                        let span =
                            tracing::debug_span!("partition", topic = %name, partition = pd.index);
                        let tid = req.transactional_id.as_ref().map(|t| t.0.as_str());
                        match produce_one(b, &p, records, &t.config, (lat, tid, version), deadline)
                            .instrument(span)
                            .await
                        {
                            Ok(appended) => Slot::Appended {
                                partition: p.clone(),
                                appended,
                                log_append_time: lat,
                            },
                            Err(e) => Slot::Failed(e),
                        }
                    }
                }
            };
            if let Slot::Failed(e) = &slot {
                tracing::debug!(topic = %name, partition = pd.index, error = %e, "produce rejected");
            }
            parts.push((pd.index, slot));
        }
        slots.push((name, parts));
    }
    match acks {
        0 => Reply::None,
        1 => super::now(ResponseKind::Produce(respond(slots, version))),
        _ => {
            let b = b.clone();
            Reply::later(Box::pin(async move {
                let mut waited = Vec::with_capacity(slots.len());
                for (name, parts) in slots {
                    let mut out = Vec::with_capacity(parts.len());
                    for (idx, slot) in parts {
                        out.push((idx, wait_durable(&b, slot, deadline, timeout).await));
                    }
                    waited.push((name, out));
                }
                ResponseKind::Produce(respond(waited, version))
            }))
        }
    }
}

/// A compacted topic keeps the latest record per key, so Kafka refuses records without one:
/// the batch fails with INVALID_RECORD naming each keyless record. Uncompressed batches are
/// walked in place; compressed ones are decoded (bounded decompression). A batch that does not
/// decode is refused the same way.
fn null_keys(data: &bytes::Bytes, header: &BatchHeader) -> Result<(), PartitionError> {
    let missing = match batch::null_key_indices(data, header) {
        Some(missing) => missing,
        None => decoded_null_keys(data)?,
    };
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PartitionError::NullKeys(missing))
    }
}

fn decoded_null_keys(data: &bytes::Bytes) -> Result<Vec<i32>, PartitionError> {
    let decoded = silt_archive::decode::records(
        data,
        i64::MIN,
        i64::MAX,
        silt_archive::decode::DEFAULT_MAX_DECOMPRESSED,
    )
    .map_err(|e| PartitionError::InvalidRecord(e.to_string()))?;
    if let Some(q) = decoded.quarantined.first() {
        return Err(PartitionError::InvalidRecord(format!(
            "the batch's records do not decode: {}",
            q.reason
        )));
    }
    Ok(decoded
        .records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.key.is_none())
        .map(|(i, _)| i as i32)
        .collect())
}

/// Whether a batch is zstd-compressed (only Produce v7+ may carry it).
fn zstd(records: Option<&[u8]>) -> bool {
    records
        .and_then(|r| r.get(21..23))
        .is_some_and(|a| batch::compression(i16::from_be_bytes([a[0], a[1]])) == 4)
}

async fn produce_one(
    b: &Broker,
    p: &Arc<Partition>,
    records: Option<bytes::Bytes>,
    config: &Resolved,
    (log_append_time, transactional_id, version): (Option<i64>, Option<&str>, i16),
    deadline: Instant,
) -> Result<Appended, PartitionError> {
    let max_message_bytes = config.max_message_bytes;
    let data = records.unwrap_or_default();
    let header = batch::validate_single(&data).map_err(|e| match e {
        BatchError::Corrupt(m) => PartitionError::CorruptMessage(m),
        BatchError::Invalid(m) => PartitionError::InvalidRecord(m),
    })?;
    if config.compacted && !header.is_control() {
        null_keys(&data, &header)?;
    }
    if header.is_transactional() {
        let Some(tid) = transactional_id else {
            return Err(PartitionError::InvalidRecord(
                "a transactional batch in a produce request without a transactional id".into(),
            ));
        };
        // KIP-890 part 1: a transaction's first batch in a partition is accepted only while
        // the coordinator has the partition in that producer's open transaction, so a late
        // batch of an ended transaction can never open a new one. Part 2 (Produce v12+, a
        // client of transaction version 2): the partition joins the transaction here.
        if !p.lock().txns.is_open(header.producer_id) {
            let producer = (header.producer_id, header.producer_epoch);
            if version >= 12 {
                join_transaction(b, tid, producer, p, deadline).await?;
            }
            let verified = crate::txn::coordinator::TxnCoordinator::verify(
                &crate::txn::deps(b),
                tid,
                producer,
                (&p.topic, p.index),
            )
            .await
            .map_err(|_| {
                PartitionError::TransactionNotVerified(
                    "the coordinator's state could not be read; retry".into(),
                )
            })?;
            match verified {
                Verified::Yes => {}
                Verified::Fenced { current } => {
                    return Err(PartitionError::InvalidProducerEpoch {
                        pid: producer.0,
                        got: producer.1,
                        current,
                    })
                }
                Verified::No => {
                    return Err(PartitionError::TransactionNotVerified(format!(
                        "partition {}-{} is not in an open transaction of producer {} epoch {}",
                        p.topic, p.index, producer.0, producer.1
                    )))
                }
            }
        }
    }
    let refuse = |e: PartitionError| {
        // A refused idempotent batch holds back the producer's later sequences.
        if header.is_idempotent() && !header.is_transactional() {
            p.lock().producers.refused(
                header.producer_id,
                header.producer_epoch,
                header.base_sequence,
                b.clock.now_ms(),
            );
        }
        e
    };
    let limit = max_message_bytes.min(b.settings.flush.max_buffered_bytes);
    if header.size > limit {
        return Err(refuse(PartitionError::MessageTooLarge {
            size: header.size,
            max: limit,
        }));
    }
    if log_append_time.is_none() {
        check_timestamps(&header, config, b.clock.now_ms()).map_err(refuse)?;
    }
    let permit = b
        .flusher
        .reserve(
            header.size,
            deadline.saturating_duration_since(Instant::now()),
        )
        .await
        .map_err(refuse)?;
    let appended = append(
        &b.flusher,
        p,
        &data,
        &header,
        log_append_time,
        b.clock.now_ms(),
        permit,
    )?;
    if matches!(appended, Appended::Buffered { .. }) {
        p.traffic
            .produced
            .fetch_add(header.size as u64, std::sync::atomic::Ordering::Relaxed);
        b.metrics.produced(
            &p.topic,
            header.record_count.max(0) as u64,
            header.size as u64,
        );
    }
    Ok(appended)
}

/// Transaction version 2: the partition joins `producer`'s transaction. While the previous
/// transaction is still being completed the coordinator answers CONCURRENT_TRANSACTIONS and the
/// leader asks again (20 to 100 ms apart) within the request's time, as Kafka's leader does.
/// Kafka's answers to the producer: a fenced producer INVALID_PRODUCER_EPOCH, a coordinator
/// that cannot answer NOT_ENOUGH_REPLICAS (retriable), anything else as the coordinator said.
async fn join_transaction(
    b: &Broker,
    tid: &str,
    producer: (i64, i16),
    p: &Partition,
    deadline: Instant,
) -> Result<(), PartitionError> {
    use kafka_protocol::ResponseError as E;
    let mut pause = Duration::from_millis(20);
    loop {
        let joined = b
            .txns
            .add_implicitly(
                &crate::txn::deps(b),
                tid,
                producer,
                &[(p.topic.clone(), p.index)],
                &[],
            )
            .await;
        let e = match joined {
            Ok(()) => return Ok(()),
            Err(E::ConcurrentTransactions) if Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
                continue;
            }
            Err(e) => e,
        };
        return Err(match e {
            E::ProducerFenced | E::InvalidProducerEpoch => {
                PartitionError::TransactionRefused(E::InvalidProducerEpoch)
            }
            E::CoordinatorNotAvailable | E::NotCoordinator | E::CoordinatorLoadInProgress => {
                PartitionError::TransactionRefused(E::NotEnoughReplicas)
            }
            e => PartitionError::TransactionRefused(e),
        });
    }
}

/// Kafka checks every record's timestamp against the topic's window; Silt never decompresses,
/// so it checks the batch's first (base) and largest timestamps.
fn check_timestamps(h: &BatchHeader, config: &Resolved, now: i64) -> Result<(), PartitionError> {
    let min = now.saturating_sub(config.timestamp_before_max_ms);
    let max = now.saturating_add(config.timestamp_after_max_ms);
    for ts in [h.base_timestamp, h.max_timestamp] {
        if ts >= 0 && (ts < min || ts > max) {
            return Err(PartitionError::InvalidTimestamp {
                timestamp: ts,
                min,
                max,
            });
        }
    }
    Ok(())
}

async fn wait_durable(b: &Broker, slot: Slot, deadline: Instant, timeout: Duration) -> Slot {
    let Slot::Appended {
        partition,
        appended,
        ..
    } = &slot
    else {
        return slot;
    };
    let waited = tokio::time::timeout_at(deadline, async {
        match appended {
            Appended::Buffered { generation, .. } => {
                b.flusher.wait_committed(*generation, partition).await
            }
            Appended::Duplicate(seen) => {
                let mut rx = b.flusher.subscribe();
                loop {
                    if partition.lock().high_watermark > seen.last_offset {
                        return Ok(());
                    }
                    if partition.is_closed() {
                        return Err(PartitionError::NotLeader(format!(
                            "leadership of {}-{} moved",
                            partition.topic, partition.index
                        )));
                    }
                    if rx.changed().await.is_err() || rx.borrow().stopped {
                        return Err(PartitionError::NotLeader("the agent stopped".into()));
                    }
                }
            }
        }
    })
    .await;
    match waited {
        Ok(Ok(())) => slot,
        Ok(Err(e)) => Slot::Failed(e),
        Err(_) => Slot::Failed(PartitionError::Timeout(timeout.as_millis() as i32)),
    }
}

fn respond(slots: Vec<(String, Vec<(i32, Slot)>)>, version: i16) -> ProduceResponse {
    let responses = slots
        .into_iter()
        .map(|(name, parts)| {
            let partition_responses = parts
                .into_iter()
                .map(|(idx, slot)| {
                    let r = PartitionProduceResponse::default().with_index(idx);
                    match slot {
                        Slot::Failed(e) => {
                            let record_errors = match &e {
                                PartitionError::NullKeys(at) if version >= 8 => at
                                    .iter()
                                    .map(|i| {
                                        BatchIndexAndErrorMessage::default()
                                            .with_batch_index(*i)
                                            .with_batch_index_error_message(Some(str_bytes(String::from(
                                                "Compacted topic cannot accept message without key.",
                                            ))))
                                    })
                                    .collect(),
                                _ => Vec::new(),
                            };
                            r.with_error_code(e.code().code())
                                .with_base_offset(-1)
                                .with_record_errors(record_errors)
                                .with_error_message(
                                    (version >= 8).then(|| str_bytes(e.to_string())),
                                )
                        }
                        Slot::Appended {
                            partition,
                            appended,
                            log_append_time,
                        } => {
                            let base = match appended {
                                Appended::Buffered { base_offset, .. } => base_offset,
                                Appended::Duplicate(seen) => seen.base_offset,
                            };
                            r.with_base_offset(base)
                                .with_log_append_time_ms(log_append_time.unwrap_or(-1))
                                .with_log_start_offset(if version >= 5 {
                                    partition.lock().log_start
                                } else {
                                    -1
                                })
                        }
                    }
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(topic_name(&name))
                .with_partition_responses(partition_responses)
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}
