//! The block cache for reads that miss the tail cache (catch-up consumers, the archiver,
//! compaction): objects are read in fixed-size blocks (`cache.block_bytes`) through a foyer
//! hybrid cache — memory, then local disk (`cache.memory_bytes`, `cache.disk_bytes`) — so a
//! block is fetched from the object store once however many readers want it: concurrent misses
//! of one block share one GET (foyer's single flight), later ones hit memory or disk. Fetches
//! also read the next `cache.read_ahead_ranges` committed ranges ahead ([`BlockCache::prefetch`])
//! so a catch-up consumer finds them cached.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    NoopDeviceBuilder, Source,
};
use object_store::path::Path;
use silt_storage::{Storage, StorageError};
use silt_wire::rope::Rope;

/// Block cache counters, per tier.
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Blocks served from memory.
    pub memory_hits: AtomicU64,
    /// Blocks served from the local disk.
    pub disk_hits: AtomicU64,
    /// Blocks fetched from the object store (one GET each).
    pub fetches: AtomicU64,
    /// Read-ahead fetches started.
    pub read_ahead: AtomicU64,
}

/// The cache. Cheap to share.
pub struct BlockCache {
    hybrid: HybridCache<String, Bytes>,
    block: u64,
    /// Committed ranges read ahead by fetches.
    pub read_ahead: u64,
    /// Counters.
    pub stats: Arc<BlockStats>,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("block", &self.block)
            .field("read_ahead", &self.read_ahead)
            .finish()
    }
}

impl BlockCache {
    /// Opens a cache with `memory` bytes in memory and `disk` bytes under `dir` (0: no disk
    /// tier).
    pub async fn open(
        memory: usize,
        disk: usize,
        dir: &FsPath,
        block: u64,
        read_ahead: u64,
    ) -> Result<Self, String> {
        let device = if disk > 0 {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("creating the cache directory {}: {e}", dir.display()))?;
            FsDeviceBuilder::new(dir)
                .with_capacity(disk)
                .build()
                .map_err(|e| format!("opening the disk cache in {}: {e}", dir.display()))?
        } else {
            NoopDeviceBuilder::default()
                .build()
                .map_err(|e| e.to_string())?
        };
        let hybrid = HybridCacheBuilder::new()
            .with_name("silt-blocks")
            .memory(memory)
            .with_weighter(|k: &String, v: &Bytes| k.len() + v.len())
            .storage()
            .with_engine_config(BlockEngineConfig::new(device))
            .build()
            .await
            .map_err(|e| format!("building the block cache: {e}"))?;
        Ok(Self {
            hybrid,
            block: block.max(4096),
            read_ahead,
            stats: Arc::default(),
        })
    }

    /// Bytes `range` of object `path`, as a slice of each block it spans (no copy).
    pub async fn read(
        &self,
        storage: &Storage,
        path: &str,
        range: Range<u64>,
    ) -> Result<Rope, StorageError> {
        if range.is_empty() {
            return Ok(Rope::default());
        }
        let (first, last) = (range.start / self.block, (range.end - 1) / self.block);
        // Every block of the range at once.
        let fetched =
            futures::future::join_all((first..=last).map(|b| self.fetch(storage, path, b))).await;
        let mut out = Rope::default();
        for (b, data) in (first..=last).zip(fetched) {
            let data = data?;
            let base = b * self.block;
            let from = (range.start.max(base) - base) as usize;
            let to = ((range.end.min(base + self.block) - base) as usize).min(data.len());
            if from >= to {
                return Err(short_read(path, &range));
            }
            out.push(data.slice(from..to));
        }
        if out.len() as u64 != range.end - range.start {
            return Err(short_read(path, &range));
        }
        Ok(out)
    }

    /// Starts fetching `range` of `path` into the cache, in the background.
    pub fn prefetch(&self, storage: &Storage, path: &str, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        for b in range.start / self.block..=(range.end - 1) / self.block {
            self.stats.read_ahead.fetch_add(1, Ordering::Relaxed);
            let fut = self.fetch(storage, path, b);
            tokio::spawn(async move {
                // A failure here costs nothing: the read that needs the block fetches it again.
                let _ = fut.await;
            });
        }
    }

    /// One block, from memory, disk or the object store (one GET shared by concurrent misses).
    fn fetch(
        &self,
        storage: &Storage,
        path: &str,
        b: u64,
    ) -> impl std::future::Future<Output = Result<Bytes, StorageError>> + Send + 'static {
        let key = format!("{path}#{b}");
        let st = storage.clone();
        let p = Path::from(path);
        let span = b * self.block..(b + 1) * self.block;
        let stats = self.stats.clone();
        let fetching = stats.clone();
        let get = self.hybrid.get_or_fetch(&key, move || async move {
            fetching.fetches.fetch_add(1, Ordering::Relaxed);
            st.get_bounded(&p, span).await
        });
        let path = path.to_string();
        async move {
            let started = std::time::Instant::now();
            let got = get.await;
            let took = started.elapsed();
            if took >= SLOW_BLOCK {
                tracing::warn!(
                    %path,
                    block = b,
                    took_ms = took.as_millis() as u64,
                    source = ?got.as_ref().ok().map(|e| e.source()),
                    "a slow block-cache read"
                );
            }
            match got {
                Ok(e) => {
                    match e.source() {
                        Source::Memory => stats.memory_hits.fetch_add(1, Ordering::Relaxed),
                        Source::Disk => stats.disk_hits.fetch_add(1, Ordering::Relaxed),
                        Source::Outer => 0,
                    };
                    Ok(e.value().clone())
                }
                Err(e) => Err(StorageError::Failed {
                    op: "GET",
                    path,
                    attempts: 1,
                    source: object_store::Error::Generic {
                        store: "block-cache",
                        source: e.to_string().into(),
                    },
                }),
            }
        }
    }
}

/// A block read slower than this is logged.
const SLOW_BLOCK: std::time::Duration = std::time::Duration::from_secs(5);

fn short_read(path: &str, range: &Range<u64>) -> StorageError {
    StorageError::Failed {
        op: "GET",
        path: path.to_string(),
        attempts: 1,
        source: object_store::Error::Generic {
            store: "block-cache",
            source: format!("the object ended before {range:?}").into(),
        },
    }
}
