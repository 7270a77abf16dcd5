//! The image work of a request on the bounded CPU pool, and its completion back on the loop: the
//! runtime never resizes (a rayon thread does), and the loop never waits on one job (it polls
//! all of them in [`ResizePool::next`] beside its other events).

use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chassis::trace::TraceContext;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use schemas::events::ResizeRequested;
use tokio::sync::oneshot;

use crate::kernel::{self, KernelError, Limits, Resized};
use chassis::source::FetchError;

/// A request on the pool, with what is needed to answer it (the image itself moved to the job).
pub(super) struct Pending {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) request: ResizeRequested,
    pub(super) bytes_in: usize,
    /// When the loop received the record; for a source fetched by URL, when its bytes arrived
    /// (the pool's queue starts then).
    pub(super) received: Instant,
    /// How long the source named by `source_url` took to download; zero for an inline image.
    pub(super) fetch: Duration,
    /// The origin's validator of a source fetched by URL (`ETag`, else `Last-Modified`).
    pub(super) source_validator: Option<String>,
    /// This resizer's hop of the request's trace (continued from the record's `traceparent`).
    pub(super) trace: TraceContext,
    /// The request's span in this resizer, for the pool job and the outputs.
    pub(super) span: tracing::Span,
}

/// What a pool job sends back.
pub(super) struct JobDone {
    pub(super) result: Result<Resized, JobError>,
    /// CPU time of the kernel's work on this thread; zero for a request past its deadline.
    pub(super) cpu: Duration,
    /// From the record's receipt by the loop (or its source's arrival) to its work starting on
    /// the pool.
    pub(super) queue: Duration,
    /// The source's download, when it was given by URL (the request's [`Pending::fetch`]).
    pub(super) fetch: Duration,
}

/// Why a job produced no image.
#[derive(Debug)]
pub(super) enum JobError {
    Kernel(KernelError),
    DeadlineExceeded,
    /// The kernel panicked (a bug in it or in a decoder, triggered by this input).
    Panicked(String),
    /// The source given by reference could not be fetched (no work went to the pool).
    Source(FetchError),
}

/// Runs one kernel call, turning a panic into [`JobError::Panicked`]. A panic on the pool would
/// otherwise abort the whole process (rayon's default) and the same record would crash every
/// resizer that reads it; contained, the request is answered with a 500 and the partition moves
/// on. The kernel holds no state across calls, so nothing is left half-updated.
fn guarded(work: impl FnOnce() -> Result<Resized, KernelError>) -> Result<Resized, JobError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => result.map_err(JobError::Kernel),
        Err(payload) => Err(JobError::Panicked(chassis::tasks::panic_message(
            payload.as_ref(),
        ))),
    }
}

/// A pool job's completion: the request back, with its result (`None` only if the job was
/// dropped, which a rayon pool that lives as long as the loop never does). `Sync` because the
/// loop's futures hold `&ResizeLoop` across awaits.
type JobFuture = Pin<Box<dyn Future<Output = (Pending, Option<JobDone>)> + Send + Sync>>;

/// The CPU pool and the jobs on it.
pub(super) struct ResizePool {
    pool: rayon::ThreadPool,
    limits: Limits,
    jobs: FuturesUnordered<JobFuture>,
}

impl ResizePool {
    pub(super) fn new(pool: rayon::ThreadPool, limits: Limits) -> Self {
        Self {
            pool,
            limits,
            jobs: FuturesUnordered::new(),
        }
    }

    /// Moves the image to the pool; the job checks the deadline before starting work.
    pub(super) fn submit(&mut self, mut pending: Pending) {
        let (tx, rx) = oneshot::channel();
        let image = std::mem::take(&mut pending.request.image);
        let params = pending.request.params.clone();
        let deadline_ms = pending.request.deadline_at_ms;
        let limits = self.limits;
        let span = pending.span.clone();
        let received = pending.received;
        let fetch = pending.fetch;
        self.pool.spawn(move || {
            let queue = received.elapsed();
            // The kernel's own log lines carry the request's trace id.
            let _entered = span.enter();
            let (result, cpu) = if now_ms() > deadline_ms {
                // Not worked on: no CPU time to bill, so its usage record repeats the api's 504
                // and changes no total.
                (Err(JobError::DeadlineExceeded), Duration::ZERO)
            } else {
                let cpu = cpu_time::ThreadTime::now();
                let result = guarded(|| kernel::resize(&image, &params, &limits));
                (result, cpu.elapsed())
            };
            // The receiver is gone only if the loop stopped; nothing to do then.
            let _ = tx.send(JobDone {
                result,
                cpu,
                queue,
                fetch,
            });
        });
        self.jobs
            .push(Box::pin(async move { (pending, rx.await.ok()) }));
    }

    /// The next finished job; `None` at once when none is on the pool. Cancel-safe: a job not
    /// taken stays on the pool.
    pub(super) async fn next(&mut self) -> Option<(Pending, Option<JobDone>)> {
        self.jobs.next().await
    }

    /// Jobs on the pool (queued or running).
    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

/// The wall clock in epoch milliseconds, as records carry it.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_panic_becomes_an_error_not_a_crash() {
        let panicked = guarded(|| panic!("decoder bug at byte 42"));
        assert!(matches!(panicked, Err(JobError::Panicked(m)) if m == "decoder bug at byte 42"));
        let formatted = guarded(|| panic!("{} frames", 7));
        assert!(matches!(formatted, Err(JobError::Panicked(m)) if m == "7 frames"));
        let refused = guarded(|| Err(KernelError::UnsupportedMediaType));
        assert!(matches!(
            refused,
            Err(JobError::Kernel(KernelError::UnsupportedMediaType))
        ));
    }
}
