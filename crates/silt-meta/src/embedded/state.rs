//! The in-memory state of the embedded store: keys, revision, leases and watchers.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::mpsc;

use crate::kv::*;

/// One durable step: everything a transaction changed, at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub revision: i64,
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    Put(KeyValue),
    Delete(Vec<u8>),
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    ttl_ms: i64,
    expires_at_ms: i64,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub revision: i64,
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    leases: HashMap<LeaseId, Lease>,
    next_lease: LeaseId,
    watchers: Vec<(Vec<u8>, mpsc::UnboundedSender<WatchEvent>)>,
    bytes: usize,
}

impl State {
    pub fn len(&self) -> usize {
        self.kvs.len()
    }

    pub fn approx_bytes(&self) -> usize {
        self.bytes
    }

    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.kvs.get(key)
    }

    pub fn range(&self, req: &RangeRequest) -> Vec<KeyValue> {
        let start = if req.start_after_or_at.starts_with(&req.prefix) {
            req.start_after_or_at.clone()
        } else {
            req.prefix.clone()
        };
        let iter = self
            .kvs
            .range(start..)
            .take_while(|(k, _)| k.starts_with(&req.prefix))
            .map(|(_, v)| v);
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit
        };
        if req.descending {
            let all: Vec<_> = iter.collect();
            all.into_iter().rev().take(limit).cloned().collect()
        } else {
            iter.take(limit).cloned().collect()
        }
    }

    pub fn holds(&self, c: &Compare) -> bool {
        let kv = self.kvs.get(&c.key);
        let ord = match &c.target {
            CompareTarget::Version(v) => kv.map_or(0, |kv| kv.version).cmp(v),
            CompareTarget::CreateRevision(v) => kv.map_or(0, |kv| kv.create_revision).cmp(v),
            CompareTarget::ModRevision(v) => kv.map_or(0, |kv| kv.mod_revision).cmp(v),
            CompareTarget::Value(v) => match kv {
                None => return c.op == CompareOp::NotEqual,
                Some(kv) => kv.value.as_slice().cmp(v.as_slice()),
            },
        };
        use std::cmp::Ordering::*;
        match c.op {
            CompareOp::Equal => ord == Equal,
            CompareOp::NotEqual => ord != Equal,
            CompareOp::Greater => ord == Greater,
            CompareOp::Less => ord == Less,
        }
    }

    /// What `ops` would change, at the next revision; nothing is applied.
    pub fn plan(&self, ops: &[Op]) -> Record {
        let revision = self.revision + 1;
        let mut overlay: BTreeMap<Vec<u8>, Option<KeyValue>> = BTreeMap::new();
        let current =
            |overlay: &BTreeMap<Vec<u8>, Option<KeyValue>>, key: &[u8]| match overlay.get(key) {
                Some(v) => v.clone(),
                None => self.kvs.get(key).cloned(),
            };
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let prev = current(&overlay, key);
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        lease: *lease,
                    };
                    overlay.insert(key.clone(), Some(kv));
                }
                Op::Delete { key } => {
                    if current(&overlay, key).is_some() {
                        overlay.insert(key.clone(), None);
                    }
                }
                Op::DeletePrefix { prefix } => {
                    let keys: Vec<Vec<u8>> = self
                        .kvs
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(prefix))
                        .map(|(k, _)| k.clone())
                        .chain(
                            overlay
                                .iter()
                                .filter(|(k, v)| k.starts_with(prefix) && v.is_some())
                                .map(|(k, _)| k.clone()),
                        )
                        .collect();
                    for k in keys {
                        overlay.insert(k, None);
                    }
                }
            }
        }
        let changes = overlay
            .into_iter()
            .filter_map(|(k, v)| match v {
                Some(kv) => Some(Change::Put(kv)),
                None if self.kvs.contains_key(&k) => Some(Change::Delete(k)),
                None => None,
            })
            .collect();
        Record { revision, changes }
    }

    /// Applies a record (planned here, or replayed from the log); returns the watch events.
    pub fn apply(&mut self, rec: Record) -> Vec<WatchEvent> {
        self.revision = self.revision.max(rec.revision);
        let mut events = Vec::with_capacity(rec.changes.len());
        for ch in rec.changes {
            match ch {
                Change::Put(kv) => {
                    self.bytes += kv.key.len() + kv.value.len();
                    if let Some(old) = self.kvs.insert(kv.key.clone(), kv.clone()) {
                        self.bytes -= old.key.len() + old.value.len();
                    }
                    events.push(WatchEvent::Put(kv));
                }
                Change::Delete(key) => {
                    if let Some(old) = self.kvs.remove(&key) {
                        self.bytes -= old.key.len() + old.value.len();
                    }
                    events.push(WatchEvent::Delete {
                        key,
                        mod_revision: rec.revision,
                    });
                }
            }
        }
        events
    }

    pub fn replay(&mut self, rec: Record) {
        self.apply(rec);
    }

    /// Every live key as one record, for rewriting the log.
    pub fn snapshot(&self) -> Record {
        Record {
            revision: self.revision,
            changes: self.kvs.values().cloned().map(Change::Put).collect(),
        }
    }

    /// After a restart no lease survives, so neither do the keys bound to one.
    pub fn drop_leased_keys(&mut self) {
        let leased: Vec<Vec<u8>> = self
            .kvs
            .values()
            .filter(|kv| kv.lease != 0)
            .map(|kv| kv.key.clone())
            .collect();
        for k in leased {
            if let Some(old) = self.kvs.remove(&k) {
                self.bytes -= old.key.len() + old.value.len();
            }
        }
        self.next_lease = self.revision.max(self.next_lease) + 1;
    }

    pub fn notify(&mut self, events: Vec<WatchEvent>) {
        if events.is_empty() || self.watchers.is_empty() {
            return;
        }
        self.watchers.retain(|(prefix, tx)| {
            for ev in &events {
                let key = match ev {
                    WatchEvent::Put(kv) => &kv.key,
                    WatchEvent::Delete { key, .. } => key,
                };
                if key.starts_with(prefix) && tx.send(ev.clone()).is_err() {
                    return false;
                }
            }
            !tx.is_closed()
        });
    }

    pub fn watch(&mut self, prefix: Vec<u8>) -> mpsc::UnboundedReceiver<WatchEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.watchers.push((prefix, tx));
        rx
    }

    pub fn has_lease(&self, lease: LeaseId) -> bool {
        self.leases.contains_key(&lease)
    }

    pub fn grant_lease(&mut self, now: i64, ttl_ms: i64) -> LeaseId {
        self.next_lease += 1;
        let id = self.next_lease;
        self.leases.insert(
            id,
            Lease {
                ttl_ms,
                expires_at_ms: now + ttl_ms,
            },
        );
        id
    }

    pub fn keep_alive(&mut self, lease: LeaseId, now: i64) -> Result<(), MetaError> {
        let l = self
            .leases
            .get_mut(&lease)
            .ok_or(MetaError::LeaseNotFound(lease))?;
        l.expires_at_ms = now + l.ttl_ms;
        Ok(())
    }

    pub fn revoke_lease(&mut self, lease: LeaseId) -> bool {
        self.leases.remove(&lease).is_some()
    }

    pub fn take_expired_leases(&mut self, now: i64) -> Vec<LeaseId> {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires_at_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.leases.remove(id);
        }
        expired
    }

    pub fn lease_key_deletes(&self, leases: &[LeaseId]) -> Vec<Op> {
        self.kvs
            .values()
            .filter(|kv| kv.lease != 0 && leases.contains(&kv.lease))
            .map(|kv| Op::Delete {
                key: kv.key.clone(),
            })
            .collect()
    }
}
