//! Fetch: committed batches from each requested partition, long-polling until `min_bytes` are
//! available or `max_wait_ms` passes. Every request it sees is a full one: incremental fetch
//! sessions (KIP-227) are a layer in front of it ([`crate::fetch_sessions`]). Fetch v0–3 gets
//! its records as message sets ([`crate::old_formats`]).

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId, ResponseKind};
use tokio::time::Instant;
use tracing::Instrument;

use silt_wire::rope::Rope;

use super::{topic_name, Answer, Reply};
use crate::broker::Broker;
use crate::error::PartitionError;
use crate::partition::Partition;
use crate::read;

/// Kafka's default `fetch.max.bytes`: the most record bytes one Fetch response carries (one
/// batch may overshoot, as in Kafka).
const FETCH_MAX_BYTES: usize = 57_671_680;

/// How old a copy of a partition led elsewhere may be when a consumer reads it here (KIP-392):
/// how far reads from the consumer's zone may trail the leader.
const FOLLOWER_FRESH: Duration = Duration::from_millis(250);

/// Handles Fetch.
pub fn handle(b: &Arc<Broker>, req: FetchRequest, version: i16) -> Reply {
    let b = b.clone();
    Reply::Later(Box::pin(async move {
        let stage = Stage::default();
        let fetch = answer(&b, &req, version, &stage);
        tokio::pin!(fetch);
        // A fetch unanswered long past its wait blocks every later response on its connection
        // (they go out in order): say where it is, once, and keep waiting.
        let slow = Duration::from_millis(req.max_wait_ms.max(0) as u64) + SLOW;
        tokio::select! {
            resp = &mut fetch => return resp,
            _ = tokio::time::sleep(slow) => {}
        }
        tracing::warn!(
            partitions = %describe(&req),
            stage = stage.get(),
            waited_ms = slow.as_millis() as u64,
            "a fetch is still unanswered; the responses after it on its connection wait too"
        );
        fetch.await
    }))
}

/// How far past its `max_wait_ms` a fetch may run before the agent says so.
const SLOW: Duration = Duration::from_secs(15);

/// Where a fetch is, for the slow-fetch warning.
#[derive(Default)]
struct Stage(std::sync::atomic::AtomicU8);

impl Stage {
    const RESOLVING: u8 = 0;
    const READING: u8 = 1;
    const WAITING: u8 = 2;
    const RELOADING: u8 = 3;

    fn set(&self, stage: u8) {
        self.0.store(stage, std::sync::atomic::Ordering::Relaxed);
    }

    fn get(&self) -> &'static str {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            Self::RESOLVING => {
                "resolving the partitions (loading copies of partitions led elsewhere)"
            }
            Self::READING => "reading batches",
            Self::WAITING => "waiting for commits",
            _ => "reloading copies of partitions led elsewhere",
        }
    }
}

/// `topic[partition]@offset, …` of a request, for logs.
fn describe(req: &FetchRequest) -> String {
    let mut out = Vec::new();
    for t in &req.topics {
        let name = if t.topic.0.is_empty() {
            t.topic_id.to_string()
        } else {
            t.topic.0.to_string()
        };
        for p in t.partitions.iter().take(16) {
            out.push(format!("{name}[{}]@{}", p.partition, p.fetch_offset));
        }
    }
    out.join(", ")
}

/// The fetch itself: resolve, read, and long-poll until there is something to answer.
async fn answer(b: &Broker, req: &FetchRequest, version: i16, stage: &Stage) -> Answer {
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let mut halted = b.flusher.halted();
    let mut parts = resolve(b, req, version).await;
    // Partitions read here but led elsewhere change without a local commit: looked at
    // again every FOLLOWER_FRESH.
    let follows = parts.iter().any(|p| matches!(p, Some((_, true))));
    loop {
        stage.set(Stage::READING);
        // Armed before the response is built, so a commit meanwhile wakes the wait below.
        // Only this request's partitions wake it: a commit elsewhere costs it nothing.
        let mut changes = arm(&parts);
        let (resp, bytes, errors) = build(b, req, version, &parts).await;
        if bytes >= req.min_bytes.max(0) as usize || errors || Instant::now() >= deadline {
            return done(b, resp, &parts);
        }
        // Not answered: the blocks its records hold go back before the wait.
        drop(resp);
        let seen = marks(&parts);
        loop {
            stage.set(Stage::WAITING);
            let wake = if follows {
                deadline.min(Instant::now() + FOLLOWER_FRESH)
            } else {
                deadline
            };
            let woke = tokio::select! {
                _ = halted.wait_for(|h| *h) => Wake::Halted,
                Some(()) = changes.next() => Wake::Changed,
                _ = tokio::time::sleep_until(wake) => Wake::Timer,
            };
            match woke {
                Wake::Changed => {
                    b.metrics
                        .long_poll_wakeups
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                Wake::Halted => {
                    // The flusher stopped; nothing new will arrive.
                    tokio::time::sleep_until(deadline).await;
                    return done(b, build(b, req, version, &parts).await.0, &parts);
                }
                Wake::Timer if Instant::now() < deadline => {
                    stage.set(Stage::RELOADING);
                    parts = resolve(b, req, version).await;
                    // Armed again before looking: the partitions may have been resolved
                    // anew (a copy reloaded, leadership arrived), and a commit from here
                    // on wakes the wait.
                    changes = arm(&parts);
                    if marks(&parts) != seen {
                        break;
                    }
                }
                Wake::Timer => return done(b, build(b, req, version, &parts).await.0, &parts),
            }
        }
    }
}

/// One wait per resolved partition for its next change, armed now.
fn arm(
    parts: &[Resolved],
) -> FuturesUnordered<std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>> {
    parts
        .iter()
        .flatten()
        .map(|(p, _)| p.next_change())
        .collect()
}

/// What ended a long-poll's wait.
enum Wake {
    /// One of the request's partitions changed.
    Changed,
    /// The flusher stopped.
    Halted,
    /// The deadline, or time to look at copies of partitions led elsewhere again.
    Timer,
}

/// A requested topic: by id from v13, by name before.
fn topic_of(
    b: &Broker,
    ft: &kafka_protocol::messages::fetch_request::FetchTopic,
    version: i16,
) -> Option<Arc<crate::topics::Topic>> {
    if version >= 13 {
        b.topics.get_by_id(&ft.topic_id)
    } else {
        b.topics.get(&ft.topic.0)
    }
}

/// A partition of the request as it is read here: led here (`false`), or a copy of one led
/// elsewhere (`true`) for a consumer in this agent's zone.
type Resolved = Option<(Arc<Partition>, bool)>;

/// The client's rack from Fetch v11 (`client.rack`), if it sent one.
fn client_rack(req: &FetchRequest, version: i16) -> Option<&str> {
    (version >= 11)
        .then(|| req.rack_id.as_str())
        .filter(|r| !r.is_empty())
}

/// The partitions of a request that can be read here, in request order (`None` for the rest):
/// those led here, and — for a consumer that named its rack — those led elsewhere, read from
/// a copy of their committed state (KIP-392; the leader pointed the consumer here).
async fn resolve(b: &Broker, req: &FetchRequest, version: i16) -> Vec<Resolved> {
    let rack = client_rack(req, version);
    let mut out = Vec::new();
    for ft in &req.topics {
        let topic = topic_of(b, ft, version);
        for fp in &ft.partitions {
            let Some(t) = topic.as_ref() else {
                out.push(None);
                continue;
            };
            if let Ok(p) = b.cluster.partition(t, fp.partition) {
                out.push(Some((p, false)));
                continue;
            }
            let led_elsewhere = b
                .cluster
                .leader(&t.record.id, fp.partition)
                .filter(|a| a.leader != b.node.id && rack.is_some());
            out.push(match led_elsewhere {
                Some(a) => b
                    .followers
                    .get(b.meta.as_ref(), t, fp.partition, a.epoch, FOLLOWER_FRESH)
                    .await
                    .ok()
                    .map(|p| (p, true)),
                None => None,
            });
        }
    }
    out
}

/// What a waiting fetch watches of each partition: high watermark, log start, and whether
/// it is still led here.
fn marks(parts: &[Resolved]) -> Vec<Option<(i64, i64, bool)>> {
    parts
        .iter()
        .map(|p| {
            p.as_ref().map(|(p, _)| {
                let st = p.lock();
                (st.high_watermark, st.log_start, p.is_closed())
            })
        })
        .collect()
}

/// A response built, with the records its partitions name by marker.
struct Built {
    resp: FetchResponse,
    records: Vec<Rope>,
}

impl Built {
    /// The record bytes of a partition of the response.
    fn records_len(&self, p: &PartitionData) -> usize {
        p.records
            .as_deref()
            .and_then(silt_wire::response::marker_index)
            .and_then(|i| self.records.get(i as usize))
            .map_or(0, Rope::len)
    }
}

/// Counts the bytes a response returns, per topic and (for placement by load) per partition
/// led here — `parts` are the request's partitions as resolved, in response order — and wraps
/// it.
fn done(b: &Broker, built: Built, parts: &[Resolved]) -> Answer {
    let mut at = 0usize;
    for t in &built.resp.responses {
        let mut bytes = 0usize;
        for p in &t.partitions {
            let n = built.records_len(p);
            bytes += n;
            if let Some(Some((part, false))) = parts.get(at) {
                if n > 0 {
                    part.traffic
                        .fetched
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            at += 1;
        }
        let name = if t.topic.0.is_empty() {
            b.topics
                .get_by_id(&t.topic_id)
                .map(|x| x.record.name.clone())
                .unwrap_or_default()
        } else {
            t.topic.0.to_string()
        };
        if b.topics.get(&name).is_some() {
            b.metrics.fetched(&name, bytes as u64);
        }
    }
    Answer {
        body: ResponseKind::Fetch(built.resp),
        records: built.records,
    }
}

/// One pass over the request; returns the response, the record bytes in it, and whether any
/// partition had an error or a preferred read replica (which answers the fetch at once, as
/// Kafka does).
async fn build(
    b: &Broker,
    req: &FetchRequest,
    version: i16,
    parts: &[Resolved],
) -> (Built, usize, bool) {
    let rack = client_rack(req, version);
    // Kafka caps a response at the broker's fetch.max.bytes (55 MiB) whatever the client asks.
    let max_total = if req.max_bytes <= 0 {
        FETCH_MAX_BYTES
    } else {
        (req.max_bytes as usize).min(FETCH_MAX_BYTES)
    };
    let mut used = 0usize;
    let mut records: Vec<Rope> = Vec::new();
    let mut errors = false;
    let isolation = if req.isolation_level == 1 {
        read::Isolation::ReadCommitted
    } else {
        read::Isolation::ReadUncommitted
    };
    let mut topics = Vec::with_capacity(req.topics.len());
    let mut at = 0usize;
    for ft in &req.topics {
        let topic = topic_of(b, ft, version);
        let mut out = Vec::with_capacity(ft.partitions.len());
        for fp in &ft.partitions {
            let resolved = parts.get(at).cloned().flatten();
            at += 1;
            let pd = PartitionData::default().with_partition_index(fp.partition);
            let found = match &topic {
                None if version >= 13 => Err(PartitionError::UnknownTopicId(ft.topic_id)),
                None => Err(PartitionError::UnknownTopicOrPartition {
                    topic: ft.topic.0.to_string(),
                    partition: fp.partition,
                }),
                // Fetch v0-3 reads message sets, converted down from the stored batches.
                Some(t) if version < 4 && !t.config.downconversion => {
                    Err(PartitionError::UnsupportedVersion(format!(
                        "topic {} sets message.downconversion.enable=false: Fetch v{version} (message format v0/v1) is not served",
                        t.record.name
                    )))
                }
                // Resolved when the request arrived, unless closed since.
                Some(t) => match resolved.filter(|(p, _)| !p.is_closed()) {
                    Some(p) => Ok(p),
                    None => b.cluster.partition(t, fp.partition).map(|p| (p, false)),
                },
            };
            // KIP-392: a consumer in another zone than this leader's is pointed at an agent in
            // its own zone, with the offsets and no records, as Kafka's leader answers.
            let mut preferred = None;
            let res = match found {
                Err(e) => Err(e),
                Ok((p, follower)) => {
                    let p = &p;
                    if !follower {
                        preferred = rack.and_then(|r| {
                            b.cluster
                                .preferred_reader(&p.topic_id, p.index, b.node.id, r)
                        });
                    }
                    let (epoch, caught_up, below_raw) = {
                        let st = p.lock();
                        (
                            st.leader_epoch,
                            fp.fetch_offset == st.high_watermark,
                            fp.fetch_offset < st.log_start,
                        )
                    };
                    // Below the raw log start of a topic serving its archive: from Parquet.
                    let archived = topic
                        .as_ref()
                        .filter(|t| below_raw && t.config.archive_serve);
                    if fp.current_leader_epoch > epoch {
                        Err(PartitionError::UnknownLeaderEpoch(fp.current_leader_epoch))
                    } else if fp.current_leader_epoch >= 0 && fp.current_leader_epoch < epoch {
                        Err(PartitionError::FencedLeaderEpoch(fp.current_leader_epoch))
                    } else if let Some(t) = archived {
                        let room = if used >= max_total || preferred.is_some() {
                            0
                        } else {
                            (fp.partition_max_bytes.max(0) as usize)
                                .min(max_total - used)
                                .max(1)
                        };
                        crate::archive_reads::read(b, t, p, fp.fetch_offset, room, isolation).await
                    } else if used >= max_total || caught_up || preferred.is_some() {
                        // Nothing to read (a caught-up consumer, the common case of a wide
                        // fetch) or no room left: the offsets only, without a read.
                        read::check_offset(p, fp.fetch_offset).map(|(log_start, hw)| {
                            read::ReadResult {
                                records: None,
                                high_watermark: hw,
                                log_start,
                                last_stable: p.lock().txns.last_stable(hw),
                                aborted: Vec::new(),
                            }
                        })
                    } else {
                        let limit = (fp.partition_max_bytes.max(0) as usize).min(max_total - used);
                        let span = tracing::debug_span!("partition", topic = %p.topic, partition = p.index);
                        read::read_isolated(
                            &b.storage,
                            &b.cache,
                            p,
                            fp.fetch_offset,
                            limit.max(1),
                            isolation,
                        )
                        .instrument(span)
                        .await
                    }
                }
            };
            out.push(match res {
                Ok(mut r) => {
                    used += r.records.as_ref().map_or(0, Rope::len);
                    if version < 4 {
                        if let Some(data) = r.records.take().filter(|d| !d.is_empty()) {
                            b.metrics
                                .converted_down
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let magic = if version < 2 { 0 } else { 1 };
                            let max = (fp.partition_max_bytes.max(1) as usize).min(max_total);
                            r.records = Some(Rope::from(crate::old_formats::down_convert(
                                &data.contiguous(),
                                fp.fetch_offset,
                                magic,
                                max,
                            )));
                        }
                    }
                    let aborted = (req.isolation_level == 1).then(|| {
                        r.aborted
                            .iter()
                            .map(|a| {
                                AbortedTransaction::default()
                                    .with_producer_id(ProducerId(a.pid))
                                    .with_first_offset(a.first_offset)
                            })
                            .collect()
                    });
                    let pd = match preferred {
                        Some(id) if r.records.is_none() => {
                            // Answered at once, as Kafka does, so the consumer moves now.
                            errors = true;
                            pd.with_preferred_read_replica(kafka_protocol::messages::BrokerId(id))
                        }
                        _ => pd,
                    };
                    pd.with_high_watermark(r.high_watermark)
                        .with_last_stable_offset(r.last_stable)
                        .with_log_start_offset(if version >= 5 { r.log_start } else { -1 })
                        .with_aborted_transactions(aborted)
                        .with_records(Some(match r.records.filter(|r| !r.is_empty()) {
                            // Written in place of the marker, as it was read.
                            Some(rope) => {
                                records.push(rope);
                                silt_wire::response::records_marker(records.len() as u32 - 1)
                            }
                            None => bytes::Bytes::new(),
                        }))
                }
                Err(e) => {
                    errors = true;
                    tracing::debug!(topic = %ft.topic.0, partition = fp.partition, error = %e, "fetch error");
                    pd.with_error_code(e.code().code())
                        .with_high_watermark(-1)
                        .with_records(Some(bytes::Bytes::new()))
                }
            });
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(if version < 13 {
                    ft.topic.clone()
                } else {
                    topic_name("")
                })
                .with_topic_id(ft.topic_id)
                .with_partitions(out),
        );
    }
    (
        Built {
            resp: FetchResponse::default().with_responses(topics),
            records,
        },
        used,
        errors,
    )
}
