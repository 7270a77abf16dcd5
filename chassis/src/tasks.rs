//! Supervised background tasks. A service's helpers (the identity tail, watchers, reply readers)
//! run as tasks spawned here rather than with a bare `tokio::spawn`, so none can die unnoticed:
//! the first one that fails, panics, or returns while the process is not shutting down is
//! logged at ERROR with its name and reason, recorded, and triggers shutdown, so the host stops
//! every service and exits non-zero instead of running half alive.

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::Shutdown;

/// Why a supervised task ended the process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {task} {reason}")]
pub struct TaskFailure {
    /// The task's name, as given to [`Tasks::spawn`].
    pub task: &'static str,
    /// What happened: `failed: …`, `panicked: …` or `stopped on its own`.
    pub reason: String,
}

/// The supervisor of one process's background tasks. Clones share it.
#[derive(Debug, Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    shutdown: Shutdown,
    first_failure: Arc<Mutex<Option<TaskFailure>>>,
}

impl Tasks {
    /// A supervisor whose failures trigger `shutdown`.
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            tracker: TaskTracker::new(),
            shutdown,
            first_failure: Arc::default(),
        }
    }

    /// Runs `task` until it returns. It must run until shutdown: an error, a panic, or an
    /// `Ok` return before shutdown is a failure of the whole process.
    pub fn spawn<F, E>(&self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let inner = self.tracker.spawn(task);
        let supervisor = self.clone();
        self.tracker.spawn(async move {
            let reason = match inner.await {
                Ok(Ok(())) if supervisor.shutdown.is_triggered() => None,
                Ok(Ok(())) => Some("stopped on its own".to_owned()),
                Ok(Err(error)) => Some(format!("failed: {error}")),
                Err(join) if join.is_panic() => Some(format!(
                    "panicked: {}",
                    panic_message(join.into_panic().as_ref())
                )),
                // Cancelled: only when the runtime itself is going away.
                Err(_) => None,
            };
            if let Some(reason) = reason {
                supervisor.fail(TaskFailure { task: name, reason });
            }
        });
    }

    /// Like [`Tasks::spawn`], for a task that has no error of its own to report.
    pub fn spawn_until_shutdown<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, async move {
            task.await;
            Ok::<(), std::convert::Infallible>(())
        });
    }

    fn fail(&self, failure: TaskFailure) {
        tracing::error!(task = failure.task, reason = %failure.reason, "Background task ended; stopping the process");
        self.first_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(failure);
        self.shutdown.trigger();
    }

    /// The first failure, if any task failed.
    pub fn failure(&self) -> Option<TaskFailure> {
        self.first_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// After shutdown: waits up to `deadline` for every task to finish (consumers leave their
    /// groups, producers flush). Returns whether they all did.
    pub async fn wait(&self, deadline: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// The message of a panic payload (`panic!` with a literal or a formatted string).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn settle(tasks: &Tasks) {
        assert!(tasks.wait(Duration::from_secs(5)).await, "tasks finished");
    }

    #[tokio::test]
    async fn a_panic_stops_the_process_with_the_task_named() {
        let shutdown = Shutdown::new();
        let tasks = Tasks::new(shutdown.clone());
        tasks.spawn_until_shutdown("watcher", async {
            let shutdown = Shutdown::new();
            shutdown.wait().await;
        });
        tasks.spawn_until_shutdown("tail", async { panic!("index out of range") });
        tokio::time::timeout(Duration::from_secs(5), shutdown.wait())
            .await
            .expect("shutdown triggered by the panic");
        assert_eq!(
            tasks.failure(),
            Some(TaskFailure {
                task: "tail",
                reason: "panicked: index out of range".into()
            })
        );
    }

    #[tokio::test]
    async fn an_error_or_an_early_return_is_a_failure() {
        let shutdown = Shutdown::new();
        let tasks = Tasks::new(shutdown.clone());
        tasks.spawn("reader", async { Err::<(), _>("broker gone for good") });
        settle(&tasks).await;
        assert!(shutdown.is_triggered());
        assert_eq!(
            tasks.failure().map(|f| f.to_string()),
            Some("task reader failed: broker gone for good".into())
        );

        let shutdown = Shutdown::new();
        let tasks = Tasks::new(shutdown.clone());
        tasks.spawn_until_shutdown("health", async {});
        settle(&tasks).await;
        assert!(shutdown.is_triggered());
        assert_eq!(
            tasks.failure().map(|f| f.reason),
            Some("stopped on its own".into())
        );
    }

    #[tokio::test]
    async fn returning_at_shutdown_is_not_a_failure() {
        let shutdown = Shutdown::new();
        let tasks = Tasks::new(shutdown.clone());
        for name in ["a", "b"] {
            let shutdown = shutdown.clone();
            tasks.spawn_until_shutdown(name, async move { shutdown.wait().await });
        }
        shutdown.trigger();
        settle(&tasks).await;
        assert_eq!(tasks.failure(), None);
    }
}
