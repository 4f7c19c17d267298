//! The archiver: every `archive.interval_ms`, each partition this agent leads whose topic has
//! `silt.archive.enable` is archived as Parquet up to its high watermark, reading committed
//! batches like any catch-up consumer (cache, then object store), never touching the produce
//! path.
//!
//! Exactly once, across crashes, retries and leadership moves: a file is first written under a
//! staging name; one fenced metadata transaction (this agent's registration and the
//! partition's assignment, as flush commits) advances `next_offset` and records the file as
//! pending; only then is it written under its visible name and the pending mark cleared. A
//! crash after the commit is finished by whoever leads next (the staging file is still there);
//! a crash before it leaves a staging file nobody references (garbage) and the same offsets are
//! archived again. A deposed leader's commit fails, so it never writes a visible file.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::Record;
use object_store::path::Path;
use silt_archive::decode::{self, Quarantined};
use silt_archive::{layout, writer};
use silt_meta::layout::archive::{self, PendingFile, Progress};
use silt_meta::{MetaError, Txn};
use silt_storage::StorageError;
use uuid::Uuid;

use crate::broker::Broker;
use crate::partition::Partition;
use crate::topics::Topic;

/// Files written per partition per pass, so one busy partition does not starve the others.
const FILES_PER_PASS: usize = 8;
/// Bytes of batches read per file at most.
const READ_BUDGET: usize = 64 << 20;

pub use crate::service_state::PartitionStatus;

/// Why a pass over a partition stopped.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("leadership of the partition moved; the next leader continues")]
    Fenced,
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Archive(#[from] silt_archive::ArchiveError),
    #[error("{0}")]
    Read(String),
}

/// Archiving as a periodic job: every `archive.interval_ms`, a pass over every partition led
/// here.
pub struct ArchiverJob(pub Arc<Broker>);

impl crate::tasks::Periodic for ArchiverJob {
    fn name(&self) -> &'static str {
        "archiver"
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.0.settings.archive.interval_ms)
    }

    async fn step(&mut self) {
        pass(&self.0).await;
    }
}

/// One pass over every partition led here.
pub async fn pass(b: &Broker) {
    let led = b.cluster.local_partitions();
    {
        // Forget partitions no longer led here.
        let keys: std::collections::HashSet<(Uuid, i32)> =
            led.iter().map(|p| (p.topic_id, p.index)).collect();
        b.archive
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| keys.contains(k));
    }
    for p in led {
        let Some(topic) = b.topics.get_by_id(&p.topic_id) else {
            continue;
        };
        if !topic.config.archive || p.is_closed() {
            continue;
        }
        if let Err(e) = archive_partition(b, &p, &topic).await {
            // The outcome of the last step may be unknown: reload progress from the metadata
            // store next time rather than trust what this pass remembered.
            b.archive
                .progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(p.topic_id, p.index));
            if !matches!(e, Failure::Fenced) {
                b.archive.failures.fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(topic = %p.topic, partition = p.index, error = %e,
                "archiving to Parquet stopped for this pass; it resumes at the next interval");
        }
    }
}

/// The first offset of `p` not yet in a visible archive file, as this agent's archiver last
/// committed it in the partition's current term (`None` before its first pass).
pub(crate) fn visible_until(b: &Broker, p: &Partition) -> Option<i64> {
    let m = b.archive.progress.lock().unwrap_or_else(|e| e.into_inner());
    m.get(&(p.topic_id, p.index))
        .filter(|(rev, _, _)| *rev == p.fence_revision)
        .map(|(_, _, shown)| shown.next_offset)
}

fn cached(b: &Broker, p: &Partition) -> Option<Progress> {
    let m = b.archive.progress.lock().unwrap_or_else(|e| e.into_inner());
    m.get(&(p.topic_id, p.index))
        .filter(|(rev, _, _)| *rev == p.fence_revision)
        .map(|(_, prog, _)| prog.clone())
}

/// Caches the progress and shows it on `/archive` — a file still pending (committed, not yet
/// visible) is not shown as archived, so a reader that waits for the lag to reach 0 finds it.
fn remember(b: &Broker, p: &Partition, prog: &Progress) {
    let hw = p.lock().high_watermark;
    let mut m = b.archive.progress.lock().unwrap_or_else(|e| e.into_inner());
    let key = (p.topic_id, p.index);
    let shown = match &prog.pending {
        None => prog.next_offset,
        Some(_) => m.get(&key).map_or(0, |(_, _, s)| s.next_offset),
    };
    let status = PartitionStatus {
        topic: p.topic.clone(),
        partition: p.index,
        next_offset: shown,
        high_watermark: hw,
        files: prog.files,
    };
    m.insert(key, (p.fence_revision, prog.clone(), status));
}

async fn commit(b: &Broker, p: &Partition, prog: &Progress) -> Result<(), Failure> {
    let r = b
        .meta
        .txn(Txn {
            compares: vec![b.cluster.registered(), p.fence()],
            success: vec![archive::put_op(&p.topic_id, p.index, prog)],
            failure: vec![],
        })
        .await?;
    if r.succeeded {
        Ok(())
    } else {
        Err(Failure::Fenced)
    }
}

async fn archive_partition(b: &Broker, p: &Arc<Partition>, topic: &Topic) -> Result<(), Failure> {
    let mut prog = match cached(b, p) {
        Some(x) => x,
        None => archive::load(b.meta.as_ref(), &p.topic_id, p.index).await?,
    };
    if prog.pending.is_some() {
        finish(b, p, &mut prog, None).await?;
    }
    remember(b, p, &prog);
    let prefix = b.settings.archive.prefix.clone();
    for _ in 0..FILES_PER_PASS {
        // Up to the last stable offset: only decided transactions are archived.
        let (hw, log_start) = {
            let st = p.lock();
            (st.txns.last_stable(st.high_watermark), st.log_start)
        };
        let from = prog.next_offset.max(log_start);
        if from >= hw {
            break;
        }
        let Collected {
            mut records,
            mut quarantined,
            skipped,
        } = collect(b, p, from, hw).await?;
        if records.is_empty() {
            let past = quarantined
                .last()
                .map(|q| q.last_offset)
                .max(skipped.last().copied());
            let Some(past) = past else {
                break;
            };
            // Only undecodable batches, markers or aborted records: move past them without a
            // file.
            report_quarantined(b, p, &quarantined);
            let next = Progress {
                next_offset: past + 1,
                pending: None,
                files: prog.files,
            };
            commit(b, p, &next).await?;
            prog = next;
            remember(b, p, &prog);
            continue;
        }
        // One file per UTC day of its first record.
        let date = layout::date(records[0].timestamp);
        if let Some(cut) = records
            .iter()
            .position(|r| layout::date(r.timestamp) > date)
        {
            records.truncate(cut.max(1));
        }
        let base = records[0].offset;
        let last = records[records.len() - 1].offset;
        quarantined.retain(|q| q.base_offset <= last);
        report_quarantined(b, p, &quarantined);
        let schema = topic.config.value_schema.clone();
        let partition = p.index;
        let built = tokio::task::spawn_blocking(move || {
            writer::build(partition, &records, schema.as_deref())
        })
        .await
        .map_err(|e| Failure::Read(format!("the Parquet writer task failed: {e}")))??;
        let staging = layout::staging(
            &p.topic_id.simple().to_string(),
            p.index,
            base,
            last,
            &b.session,
        );
        let visible = layout::visible(
            &prefix,
            &p.topic,
            &p.topic_id.simple().to_string(),
            p.index,
            &date,
            base,
        );
        b.storage
            .put(&Path::from(staging.as_str()), built.parquet.clone())
            .await?;
        let next = Progress {
            next_offset: last + 1,
            pending: Some(PendingFile { staging, visible }),
            files: prog.files,
        };
        commit(b, p, &next).await?;
        prog = next;
        remember(b, p, &prog);
        let a = &b.archive;
        a.records.fetch_add(built.rows as u64, Ordering::Relaxed);
        a.bytes
            .fetch_add(built.parquet.len() as u64, Ordering::Relaxed);
        if built.invalid > 0 {
            *a.invalid
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(p.topic.clone())
                .or_default() += built.invalid as u64;
        }
        finish(b, p, &mut prog, Some(built.parquet)).await?;
        tracing::debug!(topic = %p.topic, partition = p.index, base, last, rows = built.rows,
            invalid = built.invalid, "archived to Parquet");
        remember(b, p, &prog);
    }
    Ok(())
}

/// Makes a committed file visible and clears the pending mark.
async fn finish(
    b: &Broker,
    p: &Partition,
    prog: &mut Progress,
    bytes: Option<Bytes>,
) -> Result<(), Failure> {
    let Some(pending) = prog.pending.clone() else {
        return Ok(());
    };
    let staging = Path::from(pending.staging.as_str());
    let data = match bytes {
        Some(d) => Some(d),
        None => match b.storage.get(&staging, None).await {
            Ok(d) => Some(d),
            // Already copied and deleted: only the mark was left.
            Err(StorageError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        },
    };
    if let Some(d) = data {
        b.storage
            .put_overwrite(&Path::from(pending.visible.as_str()), d)
            .await?;
        b.storage.delete(&staging).await?;
    }
    let next = Progress {
        next_offset: prog.next_offset,
        pending: None,
        files: prog.files + 1,
    };
    commit(b, p, &next).await?;
    b.archive.files.fetch_add(1, Ordering::Relaxed);
    *prog = next;
    Ok(())
}

/// What [`collect`] read.
struct Collected {
    /// Records from the first offset asked for, dense but for the quarantined batches and the
    /// skipped offsets.
    records: Vec<Record>,
    /// Batches that could not be decoded, in offset order.
    quarantined: Vec<Quarantined>,
    /// Offsets left out of the archive, ascending: transaction markers and aborted records.
    skipped: Vec<i64>,
}

/// Records `from..until` (at most `archive.max_file_records`), read like a read_committed
/// catch-up consumer: transaction markers and records of aborted transactions are left out.
/// Batches that do not decode are quarantined, not fatal.
async fn collect(b: &Broker, p: &Partition, from: i64, until: i64) -> Result<Collected, Failure> {
    let max = b.settings.archive.max_file_records;
    let cap = b.settings.archive.max_decompressed_batch_bytes;
    let (segments, aborted) = {
        let st = p.lock();
        (
            st.locate(from, READ_BUDGET),
            st.txns.aborted_between(from, until),
        )
    };
    let mut out: Vec<Record> = Vec::new();
    let mut quarantined: Vec<Quarantined> = Vec::new();
    let mut skipped: Vec<i64> = Vec::new();
    let mut next = from;
    for seg in segments {
        if out.len() >= max || seg.base_offset >= until {
            break;
        }
        let data = crate::read::range_bytes(&b.storage, &b.cache, &seg)
            .await
            .map_err(|e| Failure::Read(e.to_string()))?;
        let d = decode::records(&data, next, until, cap)?;
        for r in d.records {
            let in_aborted = r.transactional
                && aborted.iter().any(|a| {
                    a.pid == r.producer_id
                        && r.offset >= a.first_offset
                        && r.offset <= a.last_offset
                });
            if in_aborted {
                skipped.push(r.offset);
            } else {
                out.push(r);
            }
        }
        skipped.extend(d.control);
        skipped.sort_unstable();
        quarantined.extend(d.quarantined.into_iter().filter(|q| q.last_offset >= next));
        next = out
            .last()
            .map_or(next, |r| r.offset + 1)
            .max(quarantined.last().map_or(next, |q| q.last_offset + 1))
            .max(skipped.last().map_or(next, |s| s + 1));
    }
    out.truncate(max);
    if let Some(last) = out.last().map(|r| r.offset) {
        quarantined.retain(|q| q.base_offset <= last);
    }
    // Offsets must be dense from `from` (quarantined batches and skipped offsets aside):
    // anything else means the index and data disagree — except on a compacted topic, whose
    // records key compaction may have taken out before archiving was turned on.
    let gaps_allowed = b.topics.get(&p.topic).is_some_and(|t| t.config.compacted);
    let mut gaps: Vec<(i64, i64)> = quarantined
        .iter()
        .map(|q| (q.base_offset, q.last_offset))
        .chain(skipped.iter().map(|s| (*s, *s)))
        .collect();
    gaps.sort_unstable();
    let mut expected = from;
    let mut qs = gaps.iter().peekable();
    for r in &out {
        while let Some((base, last)) = qs.peek() {
            if *base <= expected {
                expected = expected.max(last + 1);
                qs.next();
            } else {
                break;
            }
        }
        if r.offset != expected && !(gaps_allowed && r.offset > expected) {
            return Err(Failure::Read(format!(
                "expected offset {expected} but read {} in {}-{}; not archiving past it",
                r.offset, p.topic, p.index
            )));
        }
        expected = r.offset + 1;
    }
    Ok(Collected {
        records: out,
        quarantined,
        skipped,
    })
}

/// Logs and counts batches left out of the archive.
fn report_quarantined(b: &Broker, p: &Partition, quarantined: &[Quarantined]) {
    for q in quarantined {
        tracing::error!(topic = %p.topic, partition = p.index, base_offset = q.base_offset,
            last_offset = q.last_offset, reason = %q.reason,
            "a record batch could not be decoded (corrupt compressed payload, or larger than archive.max_decompressed_batch_bytes once decompressed); it is left out of the archive and archiving goes on. Consumers still read it as stored");
    }
    if !quarantined.is_empty() {
        *b.archive
            .quarantined
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(p.topic.clone())
            .or_default() += quarantined.len() as u64;
    }
}
