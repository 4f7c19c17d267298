//! Offsets below the raw log start, served from the Parquet archive (`silt.archive.serve`).
//!
//! A topic that serves its archive keeps raw data for its retention and its Parquet files for as
//! long as they exist. Its log start as clients see it (ListOffsets earliest, a fetch's
//! `log_start_offset`) is the first archived offset; a fetch below the raw log start is answered
//! with record batches rebuilt from the archive file holding the offset
//! ([`silt_archive::rebuild`]), reading only the row group and the pages the fetch needs
//! (Parquet's page index, range reads through the block cache).
//!
//! What this module owns: which visible archive files a partition has (listed from the object
//! store and cached briefly; files only appear at the end and disappear at the start), their
//! footers, and the offsets column of the row groups last read.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelector};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;
use silt_meta::layout::archive;
use silt_meta::layout::index::IndexEntry;
use silt_meta::Txn;
use silt_storage::Storage;
use uuid::Uuid;

use crate::broker::Broker;
use crate::cache::ObjectCache;
use crate::error::PartitionError;
use crate::partition::Partition;
use crate::read::{self, ReadResult};
use crate::topics::Topic;

/// How long a partition's file listing is trusted.
const LISTING_TTL: Duration = Duration::from_secs(5);
/// Footers kept (a few KiB each).
const FOOTERS: usize = 1024;
/// Row groups whose offsets column is kept (512 KiB each at most).
const OFFSET_COLUMNS: usize = 32;
/// Top-level columns a rebuilt batch needs: `partition` .. `producer_epoch`.
const RECORD_COLUMNS: usize = 9;

/// One visible archive file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    /// Its first offset.
    pub base: i64,
    /// Its object path.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What a partition serves from its archive: its visible files, by first offset, and the
/// start DeleteRecords set (0 if never).
#[derive(Debug, Default)]
pub struct Served {
    /// The files.
    pub files: Vec<ArchiveFile>,
    /// Offsets below it are out of range.
    pub floor: i64,
}

impl Served {
    /// The log start clients see: the first archived offset (or the raw log start if the
    /// archive starts later or holds nothing), raised to the floor.
    pub fn start(&self, raw_start: i64) -> i64 {
        let archived = self
            .files
            .first()
            .map_or(raw_start, |f| f.base.min(raw_start));
        archived.max(self.floor.min(raw_start))
    }
}

type Listing = (Instant, Arc<Served>);
/// An archive file's path and row group.
type RowGroupKey = (String, usize);

/// Cached listings, footers and offsets columns.
#[derive(Default)]
pub struct ArchiveReads {
    listings: Mutex<HashMap<(Uuid, i32), Listing>>,
    footers: Mutex<HashMap<String, ArrowReaderMetadata>>,
    offsets: Mutex<HashMap<RowGroupKey, Arc<Vec<i64>>>>,
}

impl std::fmt::Debug for ArchiveReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveReads").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first offset of the archive file named `name` if it is one of `topic_id`'s.
fn base_of(name: &str, topic_id: &Uuid) -> Option<i64> {
    let id = topic_id.simple().to_string();
    let stem = name.strip_suffix(".parquet")?;
    let (base, owner) = stem.split_once('-')?;
    (owner == &id[..8] && base.len() == 20)
        .then(|| base.parse().ok())
        .flatten()
}

/// What a partition serves from its archive (listed again after [`LISTING_TTL`], or now if
/// `fresh`).
pub async fn served(
    b: &Broker,
    topic: &Topic,
    p: &Partition,
    fresh: bool,
) -> Result<Arc<Served>, PartitionError> {
    let key = (p.topic_id, p.index);
    if !fresh {
        if let Some((at, files)) = lock(&b.archive.reads.listings).get(&key) {
            if at.elapsed() < LISTING_TTL {
                return Ok(files.clone());
            }
        }
    }
    let prefix = format!(
        "{}/topic={}/partition={}/",
        b.settings.archive.prefix, topic.record.name, p.index
    );
    let mut files: Vec<ArchiveFile> = b
        .storage
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|(path, size)| {
            let base = base_of(path.filename()?, &p.topic_id)?;
            Some(ArchiveFile {
                base,
                path: path.to_string(),
                size,
            })
        })
        .collect();
    files.sort_by_key(|f| f.base);
    let floor = archive::load_floor(b.meta.as_ref(), &p.topic_id, p.index).await?;
    let served = Arc::new(Served { files, floor });
    lock(&b.archive.reads.listings).insert(key, (Instant::now(), served.clone()));
    Ok(served)
}

/// The log start of a partition of a topic serving its archive.
pub async fn start(b: &Broker, topic: &Topic, p: &Partition) -> Result<i64, PartitionError> {
    let raw_start = p.lock().log_start;
    Ok(served(b, topic, p, false).await?.start(raw_start))
}

/// DeleteRecords on a topic serving its archive: offsets below `target` are out of range from
/// now on, archived or not (a fenced floor next to the archive progress), and the raw log start
/// moves too. Returns the start clients now see.
pub async fn delete_below(
    b: &Broker,
    topic: &Topic,
    p: &Partition,
    target: i64,
) -> Result<i64, PartitionError> {
    if target > served(b, topic, p, true).await?.floor {
        let txn = Txn {
            compares: vec![b.cluster.registered(), p.fence()],
            success: vec![archive::floor_op(&p.topic_id, p.index, target)],
            failure: vec![],
        };
        crate::lifecycle::commit_answered(b, p, txn, "moving the archive's served start").await?;
    }
    crate::lifecycle::retention::move_log_start(b, p, target).await?;
    let raw_start = p.lock().log_start;
    Ok(served(b, topic, p, true).await?.start(raw_start))
}

/// A fetch at `offset` (below the raw log start) of a topic serving its archive: up to
/// `max_bytes` of rebuilt batches (at least one), or none when `max_bytes` is 0. Offsets below
/// the archive's start are out of range.
pub async fn read(
    b: &Broker,
    topic: &Topic,
    p: &Partition,
    offset: i64,
    max_bytes: usize,
    isolation: read::Isolation,
) -> Result<ReadResult, PartitionError> {
    let served = served(b, topic, p, false).await?;
    let files = &served.files;
    let (raw_start, hw, last_stable) = {
        let st = p.lock();
        (
            st.log_start,
            st.high_watermark,
            st.txns.last_stable(st.high_watermark),
        )
    };
    let start = served.start(raw_start);
    if offset < start || offset > hw {
        return Err(PartitionError::OffsetOutOfRange {
            offset,
            log_start: start,
            high_watermark: hw,
        });
    }
    let mut result = ReadResult {
        records: None,
        high_watermark: hw,
        log_start: start,
        last_stable,
        aborted: Vec::new(),
    };
    if max_bytes == 0 {
        return Ok(result);
    }
    // A listing up to LISTING_TTL old may lack the file retention just let the raw log drop:
    // before skipping ahead, list again.
    let mut found = from_files(b, p, files, offset, max_bytes, raw_start).await?;
    if found.is_none() {
        let again = self::served(b, topic, p, true).await?;
        found = from_files(b, p, &again.files, offset, max_bytes, raw_start).await?;
    }
    if found.is_some() {
        result.records = found.map(silt_wire::rope::Rope::from);
        return Ok(result);
    }
    // Nothing archived at or after `offset` below the raw log start (files deleted, or the
    // offsets were never archivable): the next batch there is is the raw log's first.
    let raw = read::read_isolated(&b.storage, &b.cache, p, raw_start, max_bytes, isolation).await?;
    Ok(ReadResult {
        log_start: start,
        ..raw
    })
}

/// Rebuilt batches from the first of `files` (below `raw_start`) holding `offset` or later.
async fn from_files(
    b: &Broker,
    p: &Partition,
    files: &[ArchiveFile],
    offset: i64,
    max_bytes: usize,
    raw_start: i64,
) -> Result<Option<Bytes>, PartitionError> {
    let first = files
        .partition_point(|f| f.base <= offset)
        .saturating_sub(1);
    for f in files[first..].iter().take_while(|f| f.base < raw_start) {
        match read_file(b, f, offset, max_bytes).await {
            Ok(Some(records)) => return Ok(Some(records)),
            Ok(None) => {}
            Err(e) => {
                // A file deleted (by an operator) since the listing: list again next time.
                lock(&b.archive.reads.listings).remove(&(p.topic_id, p.index));
                return Err(e);
            }
        }
    }
    Ok(None)
}

/// The first offset at or after `offset` whose timestamp is at least `ts`, in the archive below
/// the raw log start, with its timestamp.
pub async fn offset_for_time(
    b: &Broker,
    topic: &Topic,
    p: &Partition,
    ts: i64,
) -> Result<Option<(i64, i64)>, PartitionError> {
    let served = served(b, topic, p, false).await?;
    let raw_start = p.lock().log_start;
    let start = served.start(raw_start);
    for f in served.files.iter().take_while(|f| f.base < raw_start) {
        let meta = footer(b, f).await?;
        let pm = meta.metadata().clone();
        let (Some(off_col), Some(ts_col)) = (leaf(&pm, "offset"), leaf(&pm, "timestamp")) else {
            continue;
        };
        for (i, rg) in pm.row_groups().iter().enumerate() {
            if max_i64(rg.column(ts_col).statistics()).is_some_and(|m| m < ts) {
                continue;
            }
            let mask = ProjectionMask::leaves(pm.file_metadata().schema_descr(), [off_col, ts_col]);
            let mut stream =
                ParquetRecordBatchStreamBuilder::new_with_metadata(reader(b, f), meta.clone())
                    .with_row_groups(vec![i])
                    .with_projection(mask)
                    .build()
                    .map_err(|e| corrupt(f, e))?;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| corrupt(f, e))?;
                let records = silt_archive::rebuild::columns_offset_time(&batch)
                    .map_err(|e| corrupt(f, e))?;
                if let Some(hit) = records
                    .into_iter()
                    .find(|(o, t)| *t >= ts && *o >= start && *o < raw_start)
                {
                    return Ok(Some(hit));
                }
            }
        }
    }
    Ok(None)
}

/// Rebuilt batches of `f` from `offset`, or `None` if it holds nothing at or after it.
async fn read_file(
    b: &Broker,
    f: &ArchiveFile,
    offset: i64,
    max_bytes: usize,
) -> Result<Option<Bytes>, PartitionError> {
    let meta = footer(b, f).await?;
    let pm = meta.metadata().clone();
    let Some(off_col) = leaf(&pm, "offset") else {
        return Err(corrupt(f, "the file has no offset column"));
    };
    for (i, rg) in pm.row_groups().iter().enumerate() {
        if max_i64(rg.column(off_col).statistics()).is_some_and(|m| m < offset) {
            continue;
        }
        let offsets = offsets_of(b, f, &meta, i, off_col).await?;
        let row = offsets.partition_point(|o| *o < offset);
        if row == offsets.len() {
            continue;
        }
        // Rows a fetch of `max_bytes` needs, from the row group's average row size; a fetch
        // short of its budget only means the consumer asks again sooner.
        let per_row = (rg.total_byte_size().max(1) as usize / offsets.len().max(1)).max(1);
        let take = (max_bytes / per_row + 1).clamp(1, offsets.len() - row);
        let selection = vec![
            RowSelector::skip(row),
            RowSelector::select(take),
            RowSelector::skip(offsets.len() - row - take),
        ];
        let mask = ProjectionMask::roots(pm.file_metadata().schema_descr(), 0..RECORD_COLUMNS);
        let mut stream =
            ParquetRecordBatchStreamBuilder::new_with_metadata(reader(b, f), meta.clone())
                .with_row_groups(vec![i])
                .with_row_selection(selection.into())
                .with_projection(mask)
                .with_batch_size(take.min(8192))
                .build()
                .map_err(|e| corrupt(f, e))?;
        let mut records = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| corrupt(f, e))?;
            records
                .extend(silt_archive::rebuild::records(&batch, offset).map_err(|e| corrupt(f, e))?);
        }
        if records.is_empty() {
            continue;
        }
        let encoded = silt_archive::rebuild::encode(&mut records).map_err(|e| corrupt(f, e))?;
        return Ok(Some(encoded));
    }
    Ok(None)
}

fn corrupt(f: &ArchiveFile, e: impl std::fmt::Display) -> PartitionError {
    PartitionError::CorruptStored {
        object: f.path.clone(),
        pos: 0,
        reason: format!("archive file: {e}"),
    }
}

fn leaf(pm: &ParquetMetaData, name: &str) -> Option<usize> {
    pm.file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().string() == name)
}

fn max_i64(s: Option<&Statistics>) -> Option<i64> {
    match s {
        Some(Statistics::Int64(v)) => v.max_opt().copied(),
        _ => None,
    }
}

/// The footer (with its page index, if written) of `f`, cached.
async fn footer(b: &Broker, f: &ArchiveFile) -> Result<ArrowReaderMetadata, PartitionError> {
    if let Some(m) = lock(&b.archive.reads.footers).get(&f.path) {
        return Ok(m.clone());
    }
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let m = ArrowReaderMetadata::load_async(&mut reader(b, f), options)
        .await
        .map_err(|e| corrupt(f, e))?;
    let mut footers = lock(&b.archive.reads.footers);
    if footers.len() >= FOOTERS {
        footers.clear();
    }
    footers.insert(f.path.clone(), m.clone());
    Ok(m)
}

/// The offsets column of row group `rg` of `f`, cached.
async fn offsets_of(
    b: &Broker,
    f: &ArchiveFile,
    meta: &ArrowReaderMetadata,
    rg: usize,
    col: usize,
) -> Result<Arc<Vec<i64>>, PartitionError> {
    let key = (f.path.clone(), rg);
    if let Some(o) = lock(&b.archive.reads.offsets).get(&key) {
        return Ok(o.clone());
    }
    let mask = ProjectionMask::leaves(meta.metadata().file_metadata().schema_descr(), [col]);
    let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader(b, f), meta.clone())
        .with_row_groups(vec![rg])
        .with_projection(mask)
        .with_batch_size(1 << 16)
        .build()
        .map_err(|e| corrupt(f, e))?;
    let mut offsets = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| corrupt(f, e))?;
        offsets.extend(silt_archive::rebuild::offsets(&batch).map_err(|e| corrupt(f, e))?);
    }
    let offsets = Arc::new(offsets);
    let mut cached = lock(&b.archive.reads.offsets);
    if cached.len() >= OFFSET_COLUMNS {
        cached.clear();
    }
    cached.insert(key, offsets.clone());
    Ok(offsets)
}

fn reader(b: &Broker, f: &ArchiveFile) -> FileReader {
    FileReader {
        storage: b.storage.clone(),
        cache: b.cache.clone(),
        path: f.path.clone(),
        size: f.size,
    }
}

/// Range reads of one archive file, through the block cache.
struct FileReader {
    storage: Storage,
    cache: Arc<ObjectCache>,
    path: String,
    size: u64,
}

impl AsyncFileReader for FileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            let r = IndexEntry {
                object: self.path.clone(),
                pos: range.start,
                len: range.end.saturating_sub(range.start),
                base_offset: 0,
                last_offset: 0,
                max_timestamp: -1,
                producers: Vec::new(),
                marks: Vec::new(),
                txns: Vec::new(),
                pieces: Vec::new(),
            };
            read::range_bytes(&self.storage, &self.cache, &r)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let m = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(m))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_files_are_told_apart_by_topic_id() {
        let id = Uuid::parse_str("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            base_of("00000000000000000042-01234567.parquet", &id),
            Some(42)
        );
        assert_eq!(base_of("00000000000000000042-89abcdef.parquet", &id), None);
        assert_eq!(base_of("00000000000000000042-01234567.json", &id), None);
        assert_eq!(base_of("42-01234567.parquet", &id), None);
        let f = |base| ArchiveFile {
            base,
            path: String::new(),
            size: 0,
        };
        let s = |files, floor| Served { files, floor };
        assert_eq!(s(vec![f(0), f(100)], 0).start(500), 0);
        assert_eq!(s(vec![f(700)], 0).start(500), 500, "archive starts later");
        assert_eq!(s(vec![], 0).start(500), 500, "nothing archived");
        assert_eq!(s(vec![f(0), f(100)], 120).start(500), 120, "DeleteRecords");
        assert_eq!(
            s(vec![f(0)], 900).start(500),
            500,
            "floor past the raw start"
        );
    }
}
