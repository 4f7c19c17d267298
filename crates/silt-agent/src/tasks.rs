//! The one place an agent's background work is started and stopped.
//!
//! A periodic job (compaction, retention, garbage collection, the archiver, session progress,
//! group timeouts) implements [`Periodic`]: a name, an interval and one step. A long-running
//! loop (the lease keeper, the leadership reactor, the controller election) is a plain future.
//! A [`TaskRunner`] starts both and owns their cancellation: [`TaskRunner::stop`] signals every
//! task, lets a periodic job finish the step it is in, waits a bounded grace period and aborts
//! (saying so in the log) only what did not stop by then. Nothing else in the agent starts a
//! background loop with a bare `tokio::spawn` or ends one with `abort()`.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Work done every [`Periodic::interval`], one [`Periodic::step`] at a time.
pub trait Periodic: Send + 'static {
    /// For logs.
    fn name(&self) -> &'static str;
    /// Time between the starts of two steps (a slow step delays the next; steps never overlap).
    fn interval(&self) -> Duration;
    /// One step. A stop waits for the step in progress to end (within the grace period).
    fn step(&mut self) -> impl Future<Output = ()> + Send + '_;
    /// Whether the first step runs as the job starts (the default) or one interval later.
    /// Storage maintenance waits: a fresh agent has nothing to maintain before it has loaded
    /// its partitions, and a step racing that load would only add work to a take-over.
    fn first_step_at_once(&self) -> bool {
        true
    }
}

/// A task's view of the runner's stop signal.
#[derive(Debug, Clone)]
pub struct Cancel(watch::Receiver<bool>);

impl Cancel {
    /// Resolves once the runner is stopping.
    pub async fn cancelled(&mut self) {
        let _ = self.0.wait_for(|c| *c).await;
    }

    /// Whether the runner is stopping.
    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }
}

/// Starts tasks and stops them together. See the module docs.
#[derive(Debug)]
pub struct TaskRunner {
    cancel: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Default for TaskRunner {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskRunner {
    /// A runner with no task.
    pub fn new() -> Self {
        Self {
            cancel: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// The stop signal, for a task that wants to end on its own terms.
    pub fn cancel(&self) -> Cancel {
        Cancel(self.cancel.subscribe())
    }

    /// Runs `fut` until it ends or the runner stops (it is then dropped at its next await).
    pub fn spawn(&mut self, name: &'static str, fut: impl Future<Output = ()> + Send + 'static) {
        let mut cancel = self.cancel();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = fut => {}
            }
        });
        self.tasks.push((name, task));
    }

    /// Runs `job` every interval until the runner stops; a step in progress finishes first.
    pub fn every(&mut self, mut job: impl Periodic) {
        let name = job.name();
        let mut cancel = self.cancel();
        let task = tokio::spawn(async move {
            let period = job.interval();
            let first = if job.first_step_at_once() {
                tokio::time::Instant::now()
            } else {
                tokio::time::Instant::now() + period
            };
            let mut iv = tokio::time::interval_at(first, period);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = iv.tick() => {}
                }
                job.step().await;
                if cancel.is_cancelled() {
                    return;
                }
            }
        });
        self.tasks.push((name, task));
    }

    /// Names of the tasks started, in order.
    #[cfg(test)]
    pub fn names(&self) -> Vec<&'static str> {
        self.tasks.iter().map(|(n, _)| *n).collect()
    }

    /// Stops every task: signals them, waits up to `grace` for each to end, aborts the rest.
    pub async fn stop(self, grace: Duration) {
        let _ = self.cancel.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        for (name, mut task) in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(
                    task = name,
                    "a background task did not stop within {grace:?}; aborting it"
                );
                task.abort();
                let _ = task.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    struct Counter {
        steps: Arc<AtomicU32>,
        finished: Arc<AtomicU32>,
    }

    impl Periodic for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }
        fn interval(&self) -> Duration {
            Duration::from_millis(5)
        }
        async fn step(&mut self) {
            self.steps.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Once {
        at_once: bool,
        steps: Arc<AtomicU32>,
    }

    impl Periodic for Once {
        fn name(&self) -> &'static str {
            "once"
        }
        fn interval(&self) -> Duration {
            Duration::from_secs(60)
        }
        fn first_step_at_once(&self) -> bool {
            self.at_once
        }
        async fn step(&mut self) {
            self.steps.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A job that does not step at once waits a whole interval for its first step.
    #[tokio::test]
    async fn maintenance_jobs_wait_an_interval_before_their_first_step() {
        let mut r = TaskRunner::new();
        let (now, later) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        for (at_once, steps) in [(true, &now), (false, &later)] {
            r.every(Once {
                at_once,
                steps: steps.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(now.load(Ordering::SeqCst), 1);
        assert_eq!(later.load(Ordering::SeqCst), 0);
        r.stop(Duration::from_secs(1)).await;
    }

    /// A stop lets the step in progress finish (every started step ends), ends loops, and
    /// aborts a task that ignores the signal only after the grace period.
    #[tokio::test]
    async fn stop_is_graceful_and_bounded() {
        let mut r = TaskRunner::new();
        let (steps, finished) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        r.every(Counter {
            steps: steps.clone(),
            finished: finished.clone(),
        });
        r.spawn("forever", std::future::pending());
        let mut stubborn_cancel = r.cancel();
        r.spawn("stubborn", async move {
            stubborn_cancel.cancelled().await;
            // Ignores the signal (the runner's select drops it at its next await anyway).
            std::future::pending::<()>().await;
        });
        assert_eq!(r.names(), vec!["counter", "forever", "stubborn"]);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let started = std::time::Instant::now();
        r.stop(Duration::from_secs(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "stopped promptly"
        );
        assert!(steps.load(Ordering::SeqCst) >= 1);
        assert_eq!(
            steps.load(Ordering::SeqCst),
            finished.load(Ordering::SeqCst),
            "no step was cut short"
        );
    }
}
