//! The local-directory object store, writing objects with `O_DIRECT`.
//!
//! Silt keeps what it reads again in its own caches (the tail cache and the block cache), so
//! the kernel's page cache only doubles the memory and CPU a local write costs: every byte is
//! copied into freshly allocated page-cache pages before it reaches the disk. On the 2-core
//! machines this project is measured on, that copy cost 1.2–2.7 ms of kernel time per MiB
//! written, more than everything else a produce costs; `O_DIRECT` writes go from an aligned
//! user buffer straight to the device (4 MiB files with fsync: 1.3–1.5 GiB/s with almost no
//! CPU, against 0.3–0.5 GiB/s buffered; `docs/benchmarks.md`).
//!
//! [`DirectLocal`] wraps `object_store`'s [`LocalFileSystem`] and replaces only its writes
//! (`put_opts` with `Create` or `Overwrite`): the payload is written through a reused
//! 4 KiB-aligned buffer to a staging file next to the object (the last block padded, then the
//! file cut to length), fsynced, and published with a hard link (create: refused if the object
//! exists) or a rename (overwrite), and the directory fsynced. Where the filesystem refuses
//! `O_DIRECT` (tmpfs, some network filesystems) writes fall back to [`LocalFileSystem`]'s own.
//! Bounded range reads bypass the page cache too ([`crate::direct_read`]); other reads,
//! listings, deletes and multipart uploads are [`LocalFileSystem`]'s.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Alignment of `O_DIRECT` buffers, offsets and lengths (a page: enough for every block size).
const ALIGN: usize = 4096;
/// Bytes written per `O_DIRECT` write, through one reused buffer (at most [`POOL`] of them are
/// kept: 8 MiB, part of the process's own eighth of `memory_bytes`).
const CHUNK: usize = 1 << 20;
/// Buffers kept for reuse (one per concurrent write; more are allocated and dropped).
const POOL: usize = 8;

/// A local-directory object store whose writes bypass the page cache.
#[derive(Debug)]
pub struct DirectLocal {
    inner: Arc<LocalFileSystem>,
    buffers: Arc<Mutex<Vec<Vec<u8>>>>,
    /// The filesystem refused `O_DIRECT`: writes go through `inner`.
    buffered: Arc<AtomicBool>,
}

impl DirectLocal {
    /// Wraps `inner` (which should fsync, as Silt's local store does).
    pub fn new(inner: LocalFileSystem) -> Self {
        Self {
            inner: Arc::new(inner),
            buffers: Arc::default(),
            buffered: Arc::default(),
        }
    }

    /// Whether writes bypass the page cache (false once the filesystem refused `O_DIRECT`).
    pub fn is_direct(&self) -> bool {
        !self.buffered.load(Ordering::Relaxed)
    }
}

impl std::fmt::Display for DirectLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DirectLocal({})", self.inner)
    }
}

/// How a direct write ended, besides success.
enum Refused {
    /// The filesystem does not take `O_DIRECT`.
    Unsupported,
    /// Create mode, and the object exists.
    Exists,
    /// Anything else.
    Io(io::Error),
}

impl From<io::Error> for Refused {
    fn from(e: io::Error) -> Self {
        Refused::Io(e)
    }
}

#[async_trait]
impl ObjectStore for DirectLocal {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let create = match opts.mode {
            PutMode::Create => true,
            PutMode::Overwrite => false,
            PutMode::Update(_) => return self.inner.put_opts(location, payload, opts).await,
        };
        if self.buffered.load(Ordering::Relaxed) || !opts.attributes.is_empty() {
            return self.inner.put_opts(location, payload, opts).await;
        }
        let path = self.inner.path_to_filesystem(location)?;
        let buffers = self.buffers.clone();
        let data = payload.clone();
        let done =
            tokio::task::spawn_blocking(move || write_direct(&path, &data, create, &buffers))
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: "DirectLocal",
                    source: Box::new(e),
                })?;
        match done {
            Ok(()) => Ok(PutResult {
                e_tag: None,
                version: None,
                extensions: Default::default(),
            }),
            Err(Refused::Unsupported) => {
                if !self.buffered.swap(true, Ordering::Relaxed) {
                    tracing::warn!(store = %self.inner,
                        "the local object store's filesystem refuses O_DIRECT; writing through the page cache instead");
                }
                self.inner.put_opts(location, payload, opts).await
            }
            Err(Refused::Exists) => Err(object_store::Error::AlreadyExists {
                path: location.to_string(),
                source: "the object exists".into(),
            }),
            Err(Refused::Io(e)) => Err(object_store::Error::Generic {
                store: "DirectLocal",
                source: Box::new(e),
            }),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if let Some(range) = crate::direct_read::plain_range(&options) {
            let path = self.inner.path_to_filesystem(location)?;
            let at = location.clone();
            let read =
                tokio::task::spawn_blocking(move || crate::direct_read::read(&at, &path, range))
                    .await
                    .map_err(|e| object_store::Error::Generic {
                        store: "DirectLocal",
                        source: Box::new(e),
                    })?;
            if let Ok(Some(got)) = read {
                return Ok(got);
            }
            // Not for the direct path, or an error: LocalFileSystem answers (and names it).
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Whether `name` is a staging name (`object#digits`), which `LocalFileSystem` lists as no
/// object.
fn is_staging(name: &str) -> bool {
    name.rsplit_once('#')
        .is_some_and(|(_, d)| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Deletes the staging files under `root` that a process left when it died mid-write: those
/// not modified for `older_than` (no live write takes that long). Returns how many.
pub fn sweep_staging(root: &FsPath, older_than: std::time::Duration) -> io::Result<usize> {
    let mut dirs = vec![root.to_path_buf()];
    let mut swept = 0;
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() && entry.file_name().to_str().is_some_and(is_staging) {
                let age = entry.metadata()?.modified()?.elapsed().unwrap_or_default();
                if age >= older_than {
                    match std::fs::remove_file(entry.path()) {
                        Ok(()) => swept += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    Ok(swept)
}

/// A staging name next to `path` that `LocalFileSystem` lists as no object (`name#digits`).
fn staging(path: &FsPath) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut s = path.as_os_str().to_owned();
    s.push(format!("#{}{n:06}", std::process::id()));
    PathBuf::from(s)
}

/// A zeroed buffer of [`CHUNK`] bytes starting at an [`ALIGN`]ed address, from the pool.
fn take_buffer(pool: &Mutex<Vec<Vec<u8>>>) -> Vec<u8> {
    let reused = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
    reused.unwrap_or_else(|| vec![0u8; CHUNK + ALIGN])
}

fn give_back(pool: &Mutex<Vec<Vec<u8>>>, buf: Vec<u8>) {
    let mut g = pool.lock().unwrap_or_else(|p| p.into_inner());
    if g.len() < POOL {
        g.push(buf);
    }
}

/// The aligned [`CHUNK`] inside `buf`.
fn aligned(buf: &mut [u8]) -> &mut [u8] {
    let off = buf.as_ptr().align_offset(ALIGN);
    &mut buf[off..off + CHUNK]
}

fn write_direct(
    path: &FsPath,
    payload: &PutPayload,
    create: bool,
    pool: &Mutex<Vec<Vec<u8>>>,
) -> std::result::Result<(), Refused> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("an object path without a directory"))?;
    std::fs::create_dir_all(dir)?;
    let stage = staging(path);
    let file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&stage)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Err(Refused::Unsupported),
        Err(e) => return Err(e.into()),
    };
    let mut buf = take_buffer(pool);
    let written = fill_and_write(file, payload, aligned(&mut buf));
    give_back(pool, buf);
    let published = written.and_then(|()| publish(&stage, path, create, dir));
    if published.is_err() {
        let _ = std::fs::remove_file(&stage);
    }
    published
}

/// Writes `payload` to `file` through `chunk`, pads the last write to [`ALIGN`], cuts the file
/// to the payload's length and fsyncs it.
fn fill_and_write(
    mut file: File,
    payload: &PutPayload,
    chunk: &mut [u8],
) -> std::result::Result<(), Refused> {
    let mut filled = 0usize;
    let mut total = 0u64;
    let flush = |file: &mut File, chunk: &mut [u8], n: usize| -> std::result::Result<(), Refused> {
        let padded = n.div_ceil(ALIGN) * ALIGN;
        chunk[n..padded].fill(0);
        match file.write_all(&chunk[..padded]) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(Refused::Unsupported),
            Err(e) => Err(e.into()),
        }
    };
    for part in payload.iter() {
        let mut rest: &[u8] = part;
        while !rest.is_empty() {
            let n = rest.len().min(CHUNK - filled);
            chunk[filled..filled + n].copy_from_slice(&rest[..n]);
            filled += n;
            total += n as u64;
            rest = &rest[n..];
            if filled == CHUNK {
                flush(&mut file, chunk, CHUNK)?;
                filled = 0;
            }
        }
    }
    if filled > 0 {
        flush(&mut file, chunk, filled)?;
    }
    file.set_len(total)?;
    file.sync_all()?;
    Ok(())
}

/// Makes the staged file the object: a hard link (refused if the object exists) or a rename,
/// then the directory fsynced so the name is durable.
fn publish(
    stage: &FsPath,
    path: &FsPath,
    create: bool,
    dir: &FsPath,
) -> std::result::Result<(), Refused> {
    if create {
        match std::fs::hard_link(stage, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(stage);
                return Err(Refused::Exists);
            }
            Err(e) => return Err(e.into()),
        }
        std::fs::remove_file(stage)?;
    } else {
        std::fs::rename(stage, path)?;
    }
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::TryStreamExt;
    use object_store::{GetRange, GetResultPayload};

    fn store(dir: &FsPath) -> DirectLocal {
        DirectLocal::new(
            LocalFileSystem::new_with_prefix(dir)
                .unwrap()
                .with_fsync(true),
        )
    }

    fn data(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A write killed mid-way leaves a staging file nothing lists; the next start sweeps the
    /// old ones and leaves objects, other files and staging files still being written.
    #[test]
    fn staging_files_left_by_a_crash_are_swept_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("flush/0/abc");
        std::fs::create_dir_all(&sub).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for name in [
            "000001.silt#1234000001",
            "000002.silt#9",
            "000003.silt#77000002",
        ] {
            let f = File::create(sub.join(name)).unwrap();
            f.set_modified(old).unwrap();
        }
        File::create(sub.join("000004.silt#55000003")).unwrap(); // being written now
        for name in ["000001.silt", "a#b", "x#", "notes#12a"] {
            File::create(sub.join(name))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let swept = sweep_staging(dir.path(), std::time::Duration::from_secs(600)).unwrap();
        assert_eq!(swept, 3);
        let mut left: Vec<String> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "000001.silt",
                "000004.silt#55000003",
                "a#b",
                "notes#12a",
                "x#"
            ]
        );
        assert_eq!(
            sweep_staging(&dir.path().join("missing"), Default::default()).unwrap(),
            0
        );
    }

    /// Objects of every awkward size — empty, below a block, around block and chunk
    /// boundaries, several chunks, several payload parts — read back byte for byte; create
    /// refuses an existing object; overwrite replaces it; no staging file is left or listed.
    #[tokio::test]
    async fn objects_of_any_size_read_back_exactly() {
        // In the repository (a real filesystem; /tmp may be tmpfs elsewhere).
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let s = store(dir.path());
        let sizes = [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK + 12_345,
        ];
        for (i, &len) in sizes.iter().enumerate() {
            let path = Path::from(format!("a/b/o{i}.silt"));
            let want = data(len, i as u8);
            // Three parts, so a chunk is filled from several.
            let parts: PutPayload = [
                want.slice(..len / 3),
                want.slice(len / 3..len / 2),
                want.slice(len / 2..),
            ]
            .into_iter()
            .collect();
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            s.put_opts(&path, parts, opts.clone()).await.unwrap();
            let got = s.get_opts(&path, GetOptions::default()).await.unwrap();
            assert_eq!(got.bytes().await.unwrap(), want, "{len} bytes");
            let again = s.put_opts(&path, data(7, 0).into(), opts).await;
            assert!(
                matches!(again, Err(object_store::Error::AlreadyExists { .. })),
                "{again:?}"
            );
        }
        assert!(s.is_direct(), "this filesystem takes O_DIRECT");
        let path = Path::from("a/b/o0.silt");
        let over = PutOptions {
            mode: PutMode::Overwrite,
            ..Default::default()
        };
        s.put_opts(&path, data(5000, 9).into(), over).await.unwrap();
        let got = s.get_opts(&path, GetOptions::default()).await.unwrap();
        assert_eq!(got.bytes().await.unwrap(), data(5000, 9));
        let listed: Vec<ObjectMeta> = s.list(None).try_collect().await.unwrap();
        assert_eq!(listed.len(), sizes.len(), "{listed:?}");
        let files = std::fs::read_dir(dir.path().join("a/b")).unwrap().count();
        assert_eq!(files, sizes.len(), "no staging file is left");
    }

    /// Bounded range reads (the block cache's, which bypass the page cache) answer exactly as
    /// `LocalFileSystem` does, over seeded ranges of objects of awkward sizes: the same bytes,
    /// clamped end, object size and e-tag; a range past the end and a missing object are the
    /// same errors.
    #[tokio::test]
    async fn range_reads_answer_as_the_local_store_does() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let s = store(dir.path());
        let plain = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        for (i, len) in [1usize, ALIGN - 1, ALIGN + 1, CHUNK + 3, 3 * CHUNK + 777]
            .into_iter()
            .enumerate()
        {
            let path = Path::from(format!("r/o{i}.silt"));
            s.put_opts(&path, data(len, i as u8).into(), PutOptions::default())
                .await
                .unwrap();
            for _ in 0..40 {
                let start = next() % len as u64;
                let end = start + 1 + next() % (len as u64 + 2 * ALIGN as u64);
                let opts = || GetOptions {
                    range: Some(GetRange::Bounded(start..end)),
                    ..Default::default()
                };
                let a = s.get_opts(&path, opts()).await.unwrap();
                let b = plain.get_opts(&path, opts()).await.unwrap();
                assert_eq!(a.range, b.range, "{len}: {start}..{end}");
                assert_eq!(a.meta.size, b.meta.size);
                assert_eq!(a.meta.e_tag, b.meta.e_tag);
                assert!(
                    matches!(a.payload, GetResultPayload::Stream(_)),
                    "read directly"
                );
                assert_eq!(
                    a.bytes().await.unwrap(),
                    b.bytes().await.unwrap(),
                    "{len}: {start}..{end}"
                );
            }
            let past = || GetOptions {
                range: Some(GetRange::Bounded(len as u64..len as u64 + 10)),
                ..Default::default()
            };
            assert!(s.get_opts(&path, past()).await.is_err());
            assert!(plain.get_opts(&path, past()).await.is_err());
        }
        let missing = s
            .get_opts(
                &Path::from("r/none.silt"),
                GetOptions {
                    range: Some(GetRange::Bounded(0..10)),
                    ..Default::default()
                },
            )
            .await;
        assert!(
            matches!(missing, Err(object_store::Error::NotFound { .. })),
            "{missing:?}"
        );
    }

    /// On tmpfs (which takes O_DIRECT from Linux 6.6, and refuses it before, so writes fall
    /// back to the page cache) and after a refusal alike, objects round-trip.
    #[tokio::test]
    async fn writes_round_trip_on_tmpfs_and_after_a_refusal() {
        let dir = tempfile::tempdir_in("/dev/shm").expect("this test needs a tmpfs at /dev/shm");
        let s = store(dir.path());
        let path = Path::from("x/o.silt");
        s.put_opts(&path, data(10_000, 1).into(), PutOptions::default())
            .await
            .unwrap();
        let got = s.get_opts(&path, GetOptions::default()).await.unwrap();
        assert_eq!(got.bytes().await.unwrap(), data(10_000, 1));
        // As after a filesystem refused O_DIRECT: the page cache's way.
        s.buffered.store(true, Ordering::Relaxed);
        let path = Path::from("x/p.silt");
        s.put_opts(&path, data(20_000, 2).into(), PutOptions::default())
            .await
            .unwrap();
        let got = s.get_opts(&path, GetOptions::default()).await.unwrap();
        assert_eq!(got.bytes().await.unwrap(), data(20_000, 2));
        assert!(!s.is_direct());
    }
}
