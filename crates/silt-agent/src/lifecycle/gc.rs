//! Garbage collection, run by the controller (one agent at a time): deletes flush objects and
//! compacted segments no index entry references, and archive staging files no progress record
//! references.
//!
//! An object is deleted only when all of these hold:
//! - no index entry (or pending archive file) references it, read *after* listing, so an object
//!   committed meanwhile is seen as referenced;
//! - its writer is finished with it: the writing session is gone (its commits can never land,
//!   they compare its registration), or it is live and published a finished flush generation at
//!   or past the object's (segments and archive staging files: the session is gone);
//! - it stayed unreferenced for `lifecycle.gc_grace_ms` on this controller, so a fetch that
//!   located it just before retention dropped its entry still reads it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use silt_meta::layout::{agents, archive, index};

use crate::broker::Broker;

pub use crate::service_state::GcStats;

/// Garbage collection as a periodic job: a pass every `lifecycle.gc_interval_ms` while this
/// agent is the controller.
pub struct GcJob {
    b: Arc<Broker>,
    since: HashMap<String, Instant>,
}

impl GcJob {
    /// The job for this agent.
    pub fn new(b: Arc<Broker>) -> Self {
        Self {
            b,
            since: HashMap::new(),
        }
    }
}

impl crate::tasks::Periodic for GcJob {
    fn name(&self) -> &'static str {
        "gc"
    }

    fn first_step_at_once(&self) -> bool {
        false
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.b.settings.lifecycle.gc_interval_ms)
    }

    async fn step(&mut self) {
        let b = &self.b;
        if b.cluster.controller_id() != Some(b.node.id) {
            self.since.clear();
            return;
        }
        let started = std::time::Instant::now();
        match pass(b, &mut self.since).await {
            Ok(_) => {
                b.gc.last_pass_ms
                    .store(started.elapsed().as_millis() as u64, Ordering::Relaxed)
            }
            Err(e) => {
                tracing::warn!(error = %e, "garbage collection pass failed; retrying at the next interval")
            }
        }
    }
}

/// `segments/{topic}/{p}/{session}/{step:012}-{base}-{last}.silt` -> (session, step).
fn segment_writer(path: &str) -> Option<(&str, u64)> {
    let parts: Vec<&str> = path.strip_prefix("segments/")?.split('/').collect();
    if parts.len() != 4 {
        return None;
    }
    let step = parts[3]
        .strip_suffix(".silt")?
        .split('-')
        .next()?
        .parse()
        .ok()?;
    Some((parts[2], step))
}

/// `flush/{node}/{session}/{seq:012}.silt` -> (session, seq).
fn flush_writer(path: &str) -> Option<(&str, u64)> {
    let mut parts = path.strip_prefix("flush/")?.split('/');
    let (_node, session, file) = (parts.next()?, parts.next()?, parts.next()?);
    Some((session, file.strip_suffix(".silt")?.parse().ok()?))
}

/// `_silt/archive-staging/{topic}/{p}/{base}-{last}-{session}.parquet` -> session.
fn staging_writer(path: &str) -> Option<&str> {
    let file = path.rsplit('/').next()?;
    file.strip_suffix(".parquet")?.splitn(3, '-').nth(2)
}

/// One pass; returns how many objects it deleted.
pub async fn pass(b: &Broker, since: &mut HashMap<String, Instant>) -> Result<usize, String> {
    let flushes = b.storage.list("flush/").await.map_err(|e| e.to_string())?;
    let mut staged = b
        .storage
        .list("_silt/archive-staging/")
        .await
        .map_err(|e| e.to_string())?;
    let segments = b
        .storage
        .list("segments/")
        .await
        .map_err(|e| e.to_string())?;
    staged.extend(segments);
    // Writers' progress, then references, both after listing: an object committed meanwhile
    // is seen as referenced, and one its writer finished is finished for good.
    let meta = b.meta.as_ref();
    let registered: HashSet<String> = agents::list(meta)
        .await
        .map_err(|e| e.to_string())?
        .into_values()
        .map(|r| r.session)
        .collect();
    let finished = agents::session_progress(meta)
        .await
        .map_err(|e| e.to_string())?;
    let (referenced, index_keys) = index::referenced_objects(meta)
        .await
        .map_err(|e| e.to_string())?;
    b.gc.index_keys.store(index_keys as u64, Ordering::Relaxed);
    let mut pending = HashSet::new();
    for kv in meta
        .range_all(format!("{}/archive/", silt_meta::layout::ROOT).as_bytes())
        .await
        .map_err(|e| e.to_string())?
    {
        if let Ok(p) = serde_json_progress(&kv.value) {
            if let Some(f) = p.pending {
                pending.insert(f.staging);
            }
        }
    }
    let grace = Duration::from_millis(b.settings.lifecycle.gc_grace_ms);
    let now = Instant::now();
    let mut doomed = Vec::new();
    let mut seen = HashSet::new();
    for (path, size) in flushes.iter().chain(&staged) {
        let p = path.as_ref();
        seen.insert(p.to_string());
        let done = if let Some((session, seq)) = flush_writer(p) {
            !referenced.contains(p)
                && (!registered.contains(session)
                    || finished.get(session).is_some_and(|f| f.flush >= seq))
        } else if let Some((session, step)) = segment_writer(p) {
            !referenced.contains(p)
                && (!registered.contains(session)
                    || finished.get(session).is_some_and(|f| f.compact >= step))
        } else if let Some(session) = staging_writer(p) {
            !pending.contains(p) && !referenced.contains(p) && !registered.contains(session)
        } else {
            false
        };
        if !done {
            since.remove(p);
            continue;
        }
        let first = *since.entry(p.to_string()).or_insert(now);
        if now.duration_since(first) >= grace {
            doomed.push((path.clone(), *size));
        }
    }
    since.retain(|k, _| seen.contains(k));
    tracing::debug!(
        listed = flushes.len() + staged.len(),
        referenced = referenced.len(),
        waiting = since.len(),
        due = doomed.len(),
        "garbage collection pass"
    );
    b.crash_points
        .at(crate::crash_points::GC_BEFORE_DELETES)
        .await;
    let mut deleted = 0;
    for (path, size) in doomed {
        match b.storage.delete(&path).await {
            Ok(()) => {
                deleted += 1;
                since.remove(path.as_ref());
                b.gc.deleted.fetch_add(1, Ordering::Relaxed);
                b.gc.deleted_bytes.fetch_add(size, Ordering::Relaxed);
                tracing::debug!(%path, "garbage object deleted");
            }
            Err(e) => tracing::warn!(%path, error = %e, "deleting a garbage object failed"),
        }
    }
    b.gc.passes.fetch_add(1, Ordering::Relaxed);
    b.gc.candidates.store(since.len() as u64, Ordering::Relaxed);
    if deleted > 0 {
        tracing::info!(
            deleted,
            waiting = since.len(),
            "garbage collection deleted unreferenced objects"
        );
    }
    Ok(deleted)
}

fn serde_json_progress(v: &[u8]) -> Result<archive::Progress, ()> {
    archive::decode(v).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_are_read_from_paths() {
        assert_eq!(
            flush_writer("flush/3/abc/000000000042.silt"),
            Some(("abc", 42))
        );
        assert_eq!(flush_writer("flush/3/abc"), None);
        assert_eq!(
            staging_writer(
                "_silt/archive-staging/t/0/00000000000000000010-00000000000000000020-sess.parquet"
            ),
            Some("sess")
        );
        assert_eq!(
            segment_writer(
                "segments/t/0/sess/000000000007-00000000000000000010-00000000000000000020.silt"
            ),
            Some(("sess", 7))
        );
    }
}
