//! [`Storage`]: the one door to object storage. Counts requests, retries transient failures
//! with exponential backoff and full jitter, and lets tests inject latency and failures.

use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use rand::Rng;

/// One object-store request slower than this is logged (with what it was).
const SLOW_OP: Duration = Duration::from_secs(5);

/// Request counters, readable at any time.
#[derive(Debug, Default)]
pub struct StorageStats {
    /// Successful PUTs.
    pub puts: AtomicU64,
    /// Bytes PUT.
    pub put_bytes: AtomicU64,
    /// Successful GETs (whole or ranged).
    pub gets: AtomicU64,
    /// Bytes read.
    pub get_bytes: AtomicU64,
    /// Failed attempts (each retry counts).
    pub errors: AtomicU64,
    /// Per request kind: attempts, failures, latency.
    pub put: OpStats,
    /// GETs.
    pub get: OpStats,
    /// DELETEs.
    pub delete: OpStats,
    /// Unix ms of the last successful request (0: none yet).
    pub last_ok_ms: AtomicU64,
    /// Unix ms of the last failed attempt (0: none).
    pub last_error_ms: AtomicU64,
    /// Requests under way now.
    pub in_flight: AtomicU64,
    /// The most requests ever under way at once.
    pub peak_in_flight: AtomicU64,
}

/// Counters of one kind of object-store request.
#[derive(Debug)]
pub struct OpStats {
    /// Attempts made (retries count).
    pub attempts: AtomicU64,
    /// Attempts that failed (not-found answers are not failures).
    pub errors: AtomicU64,
    /// Time per attempt.
    pub latency: silt_common::metrics::Histogram,
}

impl Default for OpStats {
    fn default() -> Self {
        Self {
            attempts: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: silt_common::metrics::Histogram::latency(),
        }
    }
}

impl StorageStats {
    fn op(&self, op: &str) -> Option<&OpStats> {
        match op {
            "PUT" => Some(&self.put),
            "GET" => Some(&self.get),
            "DELETE" => Some(&self.delete),
            _ => None,
        }
    }

    /// Whether the object store answered more recently than it failed.
    pub fn healthy(&self) -> bool {
        self.last_error_ms.load(Ordering::Relaxed) <= self.last_ok_ms.load(Ordering::Relaxed)
    }
}

/// One request counted in [`StorageStats::in_flight`] while it lives (a cancelled request too).
struct InFlight<'a>(&'a StorageStats);

impl<'a> InFlight<'a> {
    fn new(stats: &'a StorageStats) -> Self {
        let now = stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Faults injected into every call; all zero in production.
#[derive(Debug, Default)]
pub struct Faults {
    /// Added to every call, in milliseconds.
    pub latency_ms: AtomicU64,
    /// The next this-many PUT attempts fail with a transient error.
    pub fail_puts: AtomicU32,
    /// A pause after every successful PUT, in milliseconds.
    pub after_put_ms: AtomicU64,
}

/// An object-store failure after retries.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist.
    #[error("object {path} not found")]
    NotFound {
        /// Its path.
        path: String,
    },
    /// Every attempt failed.
    #[error("object store {op} of {path} failed after {attempts} attempts: {source}")]
    Failed {
        /// `PUT`, `GET` or `DELETE`.
        op: &'static str,
        /// The path.
        path: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: object_store::Error,
    },
}

/// The wrapped object store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Storage {
    inner: Arc<dyn ObjectStore>,
    stats: Arc<StorageStats>,
    faults: Arc<Faults>,
    max_attempts: u32,
    base_backoff: Duration,
}

impl Storage {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            stats: Arc::default(),
            faults: Arc::default(),
            max_attempts: 8,
            base_backoff: Duration::from_millis(50),
        }
    }

    /// A store in process memory (tests).
    pub fn in_memory() -> Self {
        Self::new(Arc::new(object_store::memory::InMemory::new()))
    }

    /// A store in a local directory, fsyncing every write and writing around the page cache
    /// ([`crate::direct`]).
    pub fn local(dir: &std::path::Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        match crate::direct::sweep_staging(dir, std::time::Duration::from_secs(600)) {
            Ok(0) => {}
            Ok(n) => tracing::info!(dir = %dir.display(), files = n,
                "deleted staging files of writes interrupted by a crash"),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e,
                "could not sweep staging files of interrupted writes; they only take space"),
        }
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(std::io::Error::other)?
            .with_fsync(true);
        Ok(Self::new(Arc::new(crate::direct::DirectLocal::new(fs))))
    }

    /// A store in an S3-compatible bucket. Settings left unset come from the `AWS_*`
    /// environment variables. Writes use conditional create (`If-None-Match`).
    pub fn s3(s: &silt_common::config::S3Settings) -> Result<Self, StorageError> {
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&s.bucket)
            .with_allow_http(s.allow_http)
            .with_virtual_hosted_style_request(s.virtual_hosted_style);
        if let Some(e) = &s.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &s.region {
            b = b.with_region(r);
        }
        if let Some(k) = &s.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &s.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        let store = b.build().map_err(|source| StorageError::Failed {
            op: "configure",
            path: format!("s3://{}", s.bucket),
            attempts: 0,
            source,
        })?;
        Ok(Self::new(Arc::new(store)))
    }

    /// Proves the store accepts writes, reads and deletes: writes, reads back and deletes a
    /// small object under `_silt/probe/`.
    pub async fn probe(&self, id: &str) -> Result<(), StorageError> {
        let path = Path::from(format!("_silt/probe/{id}"));
        let data = Bytes::from(format!("silt probe {id}"));
        self.put(&path, data.clone()).await?;
        let got = self.get(&path, None).await?;
        if got != data {
            return Err(StorageError::Failed {
                op: "GET",
                path: path.to_string(),
                attempts: 1,
                source: object_store::Error::Generic {
                    store: "probe",
                    source: "the probe object read back different bytes".into(),
                },
            });
        }
        self.delete(&path).await
    }

    /// Deletes an object (a missing object is not an error).
    pub async fn delete(&self, path: &Path) -> Result<(), StorageError> {
        match self.retry("DELETE", path, || self.inner.delete(path)).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<StorageStats> {
        &self.stats
    }

    /// The fault switches.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Sets the number of attempts per call (at least 1).
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    async fn delay(&self) {
        let ms = self.faults.latency_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    async fn backoff(&self, attempt: u32) {
        let cap = self.base_backoff * 2u32.saturating_pow(attempt.min(6));
        let ms = rand::rng().random_range(0..=cap.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Runs `attempt` until it succeeds, fails permanently, or `max_attempts` is reached,
    /// backing off with full jitter between attempts.
    async fn retry<T, F, Fut>(
        &self,
        op: &'static str,
        path: &Path,
        mut attempt: F,
    ) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, object_store::Error>>,
    {
        let mut n = 0;
        loop {
            n += 1;
            let counted = InFlight::new(&self.stats);
            self.delay().await;
            let started = std::time::Instant::now();
            let res = attempt().await;
            drop(counted);
            let took = started.elapsed();
            if took >= SLOW_OP {
                tracing::warn!(
                    op,
                    %path,
                    took_ms = took.as_millis() as u64,
                    ok = res.is_ok(),
                    "a slow object-store request (is the object store overloaded or far away?)"
                );
            }
            let stats = self.stats.op(op);
            if let Some(s) = stats {
                s.attempts.fetch_add(1, Ordering::Relaxed);
                s.latency.observe_duration(started.elapsed());
            }
            if !matches!(res, Err(ref e) if !matches!(e, object_store::Error::NotFound { .. })) {
                self.stats.last_ok_ms.store(unix_ms(), Ordering::Relaxed);
            }
            match res {
                Ok(v) => return Ok(v),
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(StorageError::NotFound {
                        path: path.to_string(),
                    })
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.stats.last_error_ms.store(unix_ms(), Ordering::Relaxed);
                    if let Some(s) = stats {
                        s.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if n >= self.max_attempts {
                        return Err(StorageError::Failed {
                            op,
                            path: path.to_string(),
                            attempts: n,
                            source: e,
                        });
                    }
                    tracing::warn!(%path, attempt = n, error = %e, "object {op} failed; retrying");
                    self.backoff(n).await;
                }
            }
        }
    }

    /// Writes a new object. Writing the same path twice with the same bytes (a retry after a lost
    /// response) is treated as success.
    pub async fn put(&self, path: &Path, data: Bytes) -> Result<(), StorageError> {
        self.put_payload(path, PutPayload::from_bytes(data)).await
    }

    /// [`Self::put`] of an object made of several chunks, written in order without first being
    /// copied into one buffer.
    pub async fn put_chunks(&self, path: &Path, chunks: Vec<Bytes>) -> Result<(), StorageError> {
        self.put_payload(path, chunks.into_iter().collect()).await
    }

    async fn put_payload(&self, path: &Path, data: PutPayload) -> Result<(), StorageError> {
        self.retry("PUT", path, || async {
            if self
                .faults
                .fail_puts
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(object_store::Error::Generic {
                    store: "fault-injection",
                    source: "injected PUT failure".into(),
                });
            }
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match self.inner.put_opts(path, data.clone(), opts).await {
                // Paths are unique per agent session, so an existing object is our own earlier
                // attempt whose response was lost.
                Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await?;
        self.stats.puts.fetch_add(1, Ordering::Relaxed);
        self.stats
            .put_bytes
            .fetch_add(data.content_length() as u64, Ordering::Relaxed);
        let pause = self.faults.after_put_ms.load(Ordering::Relaxed);
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Ok(())
    }

    /// Writes an object, replacing any object at `path` (archive files made visible: the same
    /// bytes may be written again after a crash).
    pub async fn put_overwrite(&self, path: &Path, data: Bytes) -> Result<(), StorageError> {
        self.retry("PUT", path, || async {
            self.inner
                .put_opts(
                    path,
                    PutPayload::from_bytes(data.clone()),
                    PutOptions::default(),
                )
                .await
                .map(|_| ())
        })
        .await?;
        self.stats.puts.fetch_add(1, Ordering::Relaxed);
        self.stats
            .put_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes `range` of an object, or fewer when the object ends inside it (block reads).
    pub async fn get_bounded(&self, path: &Path, range: Range<u64>) -> Result<Bytes, StorageError> {
        let b = self
            .retry("GET", path, || async {
                let opts = object_store::GetOptions {
                    range: Some(object_store::GetRange::Bounded(range.clone())),
                    ..Default::default()
                };
                self.inner.get_opts(path, opts).await?.bytes().await
            })
            .await?;
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        self.stats
            .get_bytes
            .fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b)
    }

    /// Every object under `prefix`, with its size.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(Path, u64)>, StorageError> {
        use futures::TryStreamExt;
        let p = Path::from(prefix);
        self.retry("LIST", &p, || async {
            self.inner
                .list(Some(&p))
                .map_ok(|m| (m.location, m.size))
                .try_collect::<Vec<_>>()
                .await
        })
        .await
    }

    /// Reads `range` of an object (the whole object if `None`).
    pub async fn get(&self, path: &Path, range: Option<Range<u64>>) -> Result<Bytes, StorageError> {
        let b = self
            .retry("GET", path, || async {
                match &range {
                    Some(r) => self.inner.get_range(path, r.clone()).await,
                    None => self.inner.get(path).await?.bytes().await,
                }
            })
            .await?;
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        self.stats
            .get_bytes
            .fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The S3 secret never shows in the store's Debug output.
    #[test]
    fn s3_debug_output_hides_the_secret() {
        let st = Storage::s3(&silt_common::config::S3Settings {
            bucket: "b".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            region: Some("us-east-1".into()),
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some("very-secret-key-123".into()),
            allow_http: true,
            virtual_hosted_style: false,
        })
        .unwrap();
        let shown = format!("{st:?}");
        assert!(!shown.contains("very-secret-key-123"), "{shown}");
    }

    #[tokio::test]
    async fn put_get_range_and_counters() {
        let s = Storage::in_memory();
        let p = Path::from("a/b");
        s.put(&p, Bytes::from_static(b"hello world")).await.unwrap();
        assert_eq!(s.get(&p, Some(6..11)).await.unwrap(), &b"world"[..]);
        assert_eq!(s.get(&p, None).await.unwrap().len(), 11);
        assert_eq!(s.stats().puts.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats().gets.load(Ordering::Relaxed), 2);
        assert!(matches!(
            s.get(&Path::from("nope"), None).await,
            Err(StorageError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn injected_put_failures_are_retried_then_surface() {
        let s = Storage::in_memory();
        s.faults().fail_puts.store(2, Ordering::SeqCst);
        s.put(&Path::from("x"), Bytes::from_static(b"1"))
            .await
            .unwrap();
        assert_eq!(s.stats().errors.load(Ordering::Relaxed), 2);
        assert_eq!(s.stats().put.attempts.load(Ordering::Relaxed), 3);
        assert_eq!(s.stats().put.errors.load(Ordering::Relaxed), 2);
        assert_eq!(s.stats().put.latency.count(), 3);
        assert!(s.stats().healthy(), "the last attempt succeeded");

        let s = Storage::in_memory().with_max_attempts(2);
        s.faults().fail_puts.store(5, Ordering::SeqCst);
        let err = s
            .put(&Path::from("y"), Bytes::from_static(b"1"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("after 2 attempts"), "{err}");
    }

    #[tokio::test]
    async fn local_store_writes_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::local(dir.path()).unwrap();
        s.put(&Path::from("flush/0/s/1.silt"), Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert!(dir.path().join("flush/0/s/1.silt").exists());
        // A retried PUT of an object that already landed is not an error.
        s.put(&Path::from("flush/0/s/1.silt"), Bytes::from_static(b"abc"))
            .await
            .unwrap();
    }
}
