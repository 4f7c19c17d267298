//! State the background services own and the core exposes: the counters and status of
//! compaction, garbage collection and the archiver, read by the metrics exposition and the admin
//! port. Kept apart from the services' code so the core ([`crate::broker`]) never imports a
//! service module: services depend on the core, never the other way round.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use silt_meta::layout::archive::Progress;
use uuid::Uuid;

/// Compaction counters.
#[derive(Debug, Default)]
pub struct CompactionStats {
    /// Segments committed.
    pub segments: AtomicU64,
    /// Index entries folded away.
    pub entries_folded: AtomicU64,
    /// Bytes rewritten into segments.
    pub bytes: AtomicU64,
    /// Steps that failed (retried next interval).
    pub failures: AtomicU64,
    /// Steps started (numbers segment objects).
    pub started: AtomicU64,
    /// Every step up to this number is done: its commit was answered for good.
    pub finished: AtomicU64,
    /// Key-compaction passes completed (compacted topics).
    pub key_passes: AtomicU64,
    /// Records key compaction took out (superseded, or expired tombstones).
    pub key_records_removed: AtomicU64,
}

/// GC counters.
#[derive(Debug, Default)]
pub struct GcStats {
    /// Passes run (on the controller).
    pub passes: AtomicU64,
    /// Objects deleted.
    pub deleted: AtomicU64,
    /// Bytes of objects deleted.
    pub deleted_bytes: AtomicU64,
    /// Unreferenced objects waiting out the grace period after the last pass.
    pub candidates: AtomicU64,
    /// Offset-index keys in the metadata store at the last pass.
    pub index_keys: AtomicU64,
    /// Milliseconds the last pass took.
    pub last_pass_ms: AtomicU64,
}

/// Where one partition's archive stands (for `/archive` and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset not archived.
    pub next_offset: i64,
    /// High watermark when last looked at.
    pub high_watermark: i64,
    /// Visible files written.
    pub files: u64,
}

/// Archiver counters and status.
#[derive(Debug, Default)]
pub struct ArchiveState {
    /// Files made visible.
    pub files: AtomicU64,
    /// Records archived.
    pub records: AtomicU64,
    /// Parquet bytes written.
    pub bytes: AtomicU64,
    /// Passes over a partition that failed (retried next interval).
    pub failures: AtomicU64,
    /// Values that did not match their topic's declared schema, per topic.
    pub invalid: Mutex<BTreeMap<String, u64>>,
    /// Batches left out because they could not be decoded, per topic.
    pub quarantined: Mutex<BTreeMap<String, u64>>,
    /// Progress of partitions archived here, with the assignment revision it was read under.
    pub(crate) progress: Mutex<HashMap<(Uuid, i32), Tracked>>,
    /// What serving offsets from the archive keeps (listings, footers, offsets columns).
    pub reads: crate::archive_reads::ArchiveReads,
}

/// A partition's progress, the assignment revision it was read under, and its status.
pub(crate) type Tracked = (i64, Progress, PartitionStatus);

impl ArchiveState {
    /// Status of every partition archived by this agent, sorted.
    pub fn status(&self) -> Vec<PartitionStatus> {
        let mut v: Vec<PartitionStatus> = self
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|x| x.2.clone())
            .collect();
        v.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        v
    }

    /// The first offset of a partition not archived yet, as this agent last knew it.
    pub fn archived_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|x| x.2.topic == topic && x.2.partition == partition)
            .map(|x| x.2.next_offset)
    }

    /// Invalid values per topic.
    pub fn invalid(&self) -> BTreeMap<String, u64> {
        self.invalid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
