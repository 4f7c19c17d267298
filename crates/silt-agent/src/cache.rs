//! A bounded in-memory cache of recently written flush objects, so that consumers reading the
//! tail of a partition never cause an object-store GET. Evicts the oldest objects first.
//! (The foyer hybrid memory + disk block cache replaces this in the storage-lifecycle issue.)

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

/// The cache. Shared by the flusher (inserts) and fetches (reads).
#[derive(Debug)]
pub struct ObjectCache {
    capacity: usize,
    inner: Mutex<Inner>,
    /// Where misses go: the block cache, if configured.
    pub blocks: Option<crate::blocks::BlockCache>,
    /// Reads served from memory.
    pub hits: AtomicU64,
    /// Reads that had to GET.
    pub misses: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    objects: HashMap<String, Bytes>,
    order: VecDeque<String>,
    bytes: usize,
}

impl ObjectCache {
    /// A cache holding at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::default(),
            blocks: None,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Adds a whole object.
    pub fn insert(&self, path: &str, data: Bytes) {
        if data.len() > self.capacity {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.bytes += data.len();
        if let Some(old) = g.objects.insert(path.to_owned(), data) {
            g.bytes -= old.len();
        } else {
            g.order.push_back(path.to_owned());
        }
        while g.bytes > self.capacity {
            let Some(oldest) = g.order.pop_front() else {
                break;
            };
            if let Some(old) = g.objects.remove(&oldest) {
                g.bytes -= old.len();
            }
        }
    }

    /// A byte range of a cached object, if it is cached.
    pub fn get(&self, path: &str, pos: u64, len: u64) -> Option<Bytes> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let got = g.objects.get(path).and_then(|o| {
            let end = pos.checked_add(len)? as usize;
            (end <= o.len()).then(|| o.slice(pos as usize..end))
        });
        let counter = if got.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        got
    }

    /// Whether an object is held (no counters touched).
    pub fn holds(&self, path: &str) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .objects
            .contains_key(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_beyond_capacity() {
        let c = ObjectCache::new(10);
        c.insert("a", Bytes::from_static(b"123456"));
        c.insert("b", Bytes::from_static(b"789012"));
        assert!(c.get("a", 0, 1).is_none(), "a was evicted");
        assert_eq!(c.get("b", 1, 2).unwrap(), &b"89"[..]);
        assert!(c.get("b", 5, 2).is_none(), "range past the end");
        assert_eq!(c.hits.load(Ordering::Relaxed), 1);
    }
}
