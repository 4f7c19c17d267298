//! A live, typed copy of every key under a prefix: a watch started before a full read, changes
//! applied in revision order (each key keeps its newest revision, so the overlap between the
//! read and the watch is harmless), and a full reload whenever the watch breaks (an etcd
//! restart, a network cut). Readers take a cheap snapshot; waiters subscribe to changes.
//!
//! Used for the agent registry, the assignments and the topic catalog: every agent follows
//! them, and a snapshot is what a Metadata response is built from.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::kv::{KeyValue, MetaError, MetaKv, WatchEvent};

/// One item of a mirror: the decoded value and the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<V> {
    /// The decoded value.
    pub value: V,
    /// The key's mod revision.
    pub mod_revision: i64,
}

/// A consistent-enough view of the prefix at some revision.
#[derive(Debug)]
pub struct Snapshot<K, V> {
    /// Every decodable key.
    pub items: BTreeMap<K, Item<V>>,
    /// Bumped on every change published.
    pub version: u64,
}

impl<K, V> Default for Snapshot<K, V> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            version: 0,
        }
    }
}

/// Turns a key into the mirror's key type; `None` skips the key.
pub type ParseKey<K> = fn(&[u8]) -> Option<K>;
/// Decodes a value; `None` skips it (and logs).
pub type ParseValue<V> = fn(&[u8], &[u8]) -> Option<V>;

/// A followed prefix.
#[derive(Debug)]
pub struct Mirror<K, V> {
    rx: watch::Receiver<Arc<Snapshot<K, V>>>,
    task: JoinHandle<()>,
}

impl<K, V> Drop for Mirror<K, V> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State<K, V> {
    kv: Arc<dyn MetaKv>,
    prefix: Vec<u8>,
    parse_key: ParseKey<K>,
    parse_value: ParseValue<V>,
    tx: watch::Sender<Arc<Snapshot<K, V>>>,
}

impl<K, V> Mirror<K, V>
where
    K: Ord + Clone + Send + Sync + std::fmt::Debug + 'static,
    V: Clone + Send + Sync + std::fmt::Debug + 'static,
{
    /// Starts following `prefix`; returns once the first full read is in.
    pub async fn start(
        kv: Arc<dyn MetaKv>,
        prefix: impl Into<Vec<u8>>,
        parse_key: ParseKey<K>,
        parse_value: ParseValue<V>,
    ) -> Result<Self, MetaError> {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let st = State {
            kv,
            prefix: prefix.into(),
            parse_key,
            parse_value,
            tx,
        };
        let (items, events) = st.sync().await?;
        st.publish(items.clone());
        let task = tokio::spawn(st.run(items, events));
        Ok(Self { rx, task })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot<K, V>> {
        self.rx.borrow().clone()
    }

    /// A receiver that sees every published snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot<K, V>>> {
        self.rx.clone()
    }
}

type Events = mpsc::UnboundedReceiver<WatchEvent>;

impl<K, V> State<K, V>
where
    K: Ord + Clone + Send + Sync + std::fmt::Debug + 'static,
    V: Clone + Send + Sync + std::fmt::Debug + 'static,
{
    async fn sync(&self) -> Result<(BTreeMap<K, Item<V>>, Events), MetaError> {
        let events = self.kv.watch_prefix(&self.prefix).await?;
        let mut items = BTreeMap::new();
        for kv in self.kv.range_all(&self.prefix).await? {
            self.put(&mut items, &kv);
        }
        Ok((items, events))
    }

    fn put(&self, items: &mut BTreeMap<K, Item<V>>, kv: &KeyValue) {
        let Some(k) = (self.parse_key)(&kv.key) else {
            return;
        };
        if items
            .get(&k)
            .is_some_and(|i| i.mod_revision >= kv.mod_revision)
        {
            return;
        }
        match (self.parse_value)(&kv.key, &kv.value) {
            Some(value) => {
                items.insert(
                    k,
                    Item {
                        value,
                        mod_revision: kv.mod_revision,
                    },
                );
            }
            None => tracing::warn!(key = %String::from_utf8_lossy(&kv.key),
                "metadata value could not be decoded; ignoring it"),
        }
    }

    fn apply(&self, items: &mut BTreeMap<K, Item<V>>, ev: WatchEvent) {
        match ev {
            WatchEvent::Put(kv) => self.put(items, &kv),
            WatchEvent::Delete { key, mod_revision } => {
                if let Some(k) = (self.parse_key)(&key) {
                    if items.get(&k).is_some_and(|i| i.mod_revision < mod_revision) {
                        items.remove(&k);
                    }
                }
            }
        }
    }

    fn publish(&self, items: BTreeMap<K, Item<V>>) {
        self.tx.send_modify(|s| {
            *s = Arc::new(Snapshot {
                items,
                version: s.version + 1,
            })
        });
    }

    async fn run(self, mut items: BTreeMap<K, Item<V>>, mut events: Events) {
        let mut attempt = 0u32;
        loop {
            while let Some(ev) = events.recv().await {
                self.apply(&mut items, ev);
                while let Ok(ev) = events.try_recv() {
                    self.apply(&mut items, ev);
                }
                self.publish(items.clone());
            }
            // The watch ended: reload everything once the store answers again.
            loop {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis((100u64 << attempt.min(5)).min(1_000)))
                    .await;
                match self.sync().await {
                    Ok((fresh, ev)) => {
                        tracing::info!(prefix = %String::from_utf8_lossy(&self.prefix),
                            "metadata watch re-established");
                        items = fresh;
                        events = ev;
                        attempt = 0;
                        self.publish(items.clone());
                        break;
                    }
                    Err(e) => tracing::warn!(prefix = %String::from_utf8_lossy(&self.prefix),
                        error = %e, "metadata watch broken; retrying"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EmbeddedKv, Op, Txn};
    use silt_common::ManualClock;

    fn key(k: &[u8]) -> Option<String> {
        std::str::from_utf8(k)
            .ok()?
            .strip_prefix("/p/")
            .map(String::from)
    }

    fn value(_: &[u8], v: &[u8]) -> Option<String> {
        String::from_utf8(v.to_vec()).ok()
    }

    #[tokio::test]
    async fn follows_puts_and_deletes() {
        let kv: Arc<dyn MetaKv> = Arc::new(EmbeddedKv::in_memory(ManualClock::new(0)));
        let put = |k: &str, v: &str| Txn {
            success: vec![Op::put(k, v)],
            ..Default::default()
        };
        kv.txn(put("/p/a", "1")).await.unwrap();
        kv.txn(put("/q/x", "ignored")).await.unwrap();
        let m = Mirror::start(kv.clone(), "/p/", key, value).await.unwrap();
        assert_eq!(m.snapshot().items["a"].value, "1");
        let mut rx = m.subscribe();
        kv.txn(put("/p/b", "2")).await.unwrap();
        kv.txn(Txn {
            success: vec![Op::Delete {
                key: b"/p/a".to_vec(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
        let s = rx
            .wait_for(|s| !s.items.contains_key("a") && s.items.contains_key("b"))
            .await
            .unwrap()
            .clone();
        assert_eq!(s.items.len(), 1);
        assert_eq!(s.items["b"].value, "2");
    }
}
