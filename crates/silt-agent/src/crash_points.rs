//! Named points in the write, commit and lifecycle paths at which a test can stop an agent as if
//! its process had died there: the task that reaches an armed point never runs another line, and
//! the test then abandons the agent and revokes its lease. The storage-engine simulation arms
//! each point in turn (`tests/it/simulation.rs`).
//!
//! The points sit at every step whose outcome the store keeps across a crash: an object written
//! or not, an index commit applied or not, and the in-memory state that follows each. Unarmed —
//! always, outside tests — a point costs one atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::watch;

/// Before a flush object's PUT.
pub const FLUSH_PUT: &str = "flush.put";
/// After a flush object is written, before its offsets are committed.
pub const FLUSH_AFTER_PUT: &str = "flush.after_put";
/// Before a flush's index commit (one metadata-store transaction of a chunk of partitions).
pub const FLUSH_BEFORE_COMMIT: &str = "flush.before_commit";
/// After a flush's index commit applied, before the offsets become visible and are acknowledged.
pub const FLUSH_AFTER_COMMIT: &str = "flush.after_commit";
/// After a compacted segment is written, before the index swap.
pub const COMPACTION_AFTER_PUT: &str = "compaction.after_put";
/// After the compaction's index swap applied, before the in-memory index follows.
pub const COMPACTION_AFTER_COMMIT: &str = "compaction.after_commit";
/// After a retention step (entries deleted, log start moved) applied, before memory follows.
pub const RETENTION_AFTER_COMMIT: &str = "retention.after_commit";
/// After garbage collection decided what to delete, before it deletes anything.
pub const GC_BEFORE_DELETES: &str = "gc.before_deletes";

/// Every point.
pub const ALL: [&str; 8] = [
    FLUSH_PUT,
    FLUSH_AFTER_PUT,
    FLUSH_BEFORE_COMMIT,
    FLUSH_AFTER_COMMIT,
    COMPACTION_AFTER_PUT,
    COMPACTION_AFTER_COMMIT,
    RETENTION_AFTER_COMMIT,
    GC_BEFORE_DELETES,
];

/// One agent's crash points.
#[derive(Debug)]
pub struct CrashPoints {
    any_armed: AtomicBool,
    armed: Mutex<Option<&'static str>>,
    hit: watch::Sender<Option<&'static str>>,
}

impl Default for CrashPoints {
    fn default() -> Self {
        Self {
            any_armed: AtomicBool::new(false),
            armed: Mutex::new(None),
            hit: watch::channel(None).0,
        }
    }
}

impl CrashPoints {
    /// Arms `point`: the next task to reach it stops there for good.
    pub fn arm(&self, point: &'static str) {
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) = Some(point);
        self.hit.send_replace(None);
        self.any_armed.store(true, Ordering::SeqCst);
    }

    /// Disarms the armed point, if it was not reached.
    pub fn disarm(&self) {
        self.any_armed.store(false, Ordering::SeqCst);
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Waits until a task stopped at the armed point; which one.
    pub async fn reached(&self) -> &'static str {
        let mut rx = self.hit.subscribe();
        let got = rx.wait_for(Option::is_some).await.expect("sender held");
        got.expect("checked")
    }

    /// A point on a path: returns at once unless it is armed, in which case the calling task
    /// stops here and never resumes.
    pub async fn at(&self, point: &'static str) {
        if !self.any_armed.load(Ordering::Relaxed) {
            return;
        }
        {
            let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
            if *armed != Some(point) {
                return;
            }
            *armed = None;
            self.any_armed.store(false, Ordering::SeqCst);
        }
        tracing::warn!(
            point,
            "stopped at an armed crash point (a test is simulating a crash here)"
        );
        self.hit.send_replace(Some(point));
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn an_armed_point_stops_the_first_task_that_reaches_it() {
        let cp = Arc::new(CrashPoints::default());
        // Unarmed: passes.
        cp.at(FLUSH_PUT).await;
        cp.arm(FLUSH_AFTER_PUT);
        cp.at(FLUSH_PUT).await; // another point passes
        let c = cp.clone();
        let stopped = tokio::spawn(async move {
            c.at(FLUSH_AFTER_PUT).await;
            "ran past the point"
        });
        assert_eq!(cp.reached().await, FLUSH_AFTER_PUT);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!stopped.is_finished(), "the task never resumes");
        // Once reached it is disarmed: the next task passes.
        cp.at(FLUSH_AFTER_PUT).await;
        stopped.abort();
    }
}
