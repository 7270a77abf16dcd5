//! A stall detector per consumer: readiness and a metric go red when the consumer has work
//! pending and has made no progress (no commit) for longer than its bound, and say why. A
//! consumer can be connected and "ready" while it is wedged (retrying one transaction forever,
//! waiting on a dependency inside its loop); only progress proves it is working.
//!
//! The consumer's loop reports with two cheap calls, [`StallDetector::busy`] when it takes work
//! and [`StallDetector::progressed`] when it commits; a supervised task compares the two against
//! the clock, so a loop that is itself blocked is still caught.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::ServiceContext;
use crate::metrics::{self, consumer};

/// One consumer's detector. Clones share it.
#[derive(Debug, Clone)]
pub struct StallDetector {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    /// Milliseconds since `started` of the last progress, or of the moment work arrived while
    /// idle (the bound counts from then).
    last_progress_ms: AtomicU64,
    pending: AtomicBool,
}

impl StallDetector {
    /// Registers the readiness check `<consumer>_progress` and `imgpipe_consumer_stalled{consumer}`
    /// on `ctx`, and starts the supervised task that watches them; it stops with shutdown.
    pub fn start(
        consumer: &'static str,
        bound: Duration,
        ctx: &ServiceContext,
    ) -> Result<Self, prometheus::Error> {
        let gauge = metrics::gauge_vec(&ctx.metrics, consumer::STALLED, &["consumer"])?;
        let gauge = gauge.with_label_values(&[consumer]);
        gauge.set(0);
        let check = format!("{consumer}_progress");
        ctx.readiness.ready(&check);
        let detector = Self {
            inner: Arc::new(Inner {
                started: Instant::now(),
                last_progress_ms: AtomicU64::new(0),
                pending: AtomicBool::new(false),
            }),
        };
        let (watched, readiness, shutdown) = (
            detector.clone(),
            ctx.readiness.clone(),
            ctx.shutdown.clone(),
        );
        ctx.tasks
            .spawn_until_shutdown("stall-detector", async move {
                let mut tick = tokio::time::interval((bound / 5).max(Duration::from_millis(100)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut was_stalled = false;
                loop {
                    tokio::select! {
                        () = shutdown.wait() => return,
                        _ = tick.tick() => {}
                    }
                    let stalled_for = watched.stalled_for(bound);
                    match (stalled_for, was_stalled) {
                        (Some(idle), false) => {
                            let reason = format!(
                                "stalled: work pending and no progress for {}s (bound {}s)",
                                idle.as_secs(),
                                bound.as_secs_f64()
                            );
                            tracing::warn!(
                                consumer,
                                ?idle,
                                ?bound,
                                "Consumer stalled: work pending, no progress"
                            );
                            readiness.not_ready(&check, &reason);
                            gauge.set(1);
                        }
                        (None, true) => {
                            tracing::info!(consumer, "Consumer makes progress again");
                            readiness.ready(&check);
                            gauge.set(0);
                        }
                        _ => {}
                    }
                    was_stalled = stalled_for.is_some();
                }
            });
        Ok(detector)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The consumer took work. If it was idle, the bound starts counting now.
    pub fn busy(&self) {
        if !self.inner.pending.swap(true, Ordering::AcqRel) {
            self.inner
                .last_progress_ms
                .store(self.now_ms(), Ordering::Release);
        }
    }

    /// The consumer committed work; `still_pending` says whether more is waiting.
    pub fn progressed(&self, still_pending: bool) {
        self.inner
            .last_progress_ms
            .store(self.now_ms(), Ordering::Release);
        self.inner.pending.store(still_pending, Ordering::Release);
    }

    /// The consumer has nothing pending (say, its partitions were revoked).
    pub fn idle(&self) {
        self.inner.pending.store(false, Ordering::Release);
    }

    /// How long the consumer has been stalled, if it is: work pending and no progress for
    /// longer than `bound`.
    pub fn stalled_for(&self, bound: Duration) -> Option<Duration> {
        if !self.inner.pending.load(Ordering::Acquire) {
            return None;
        }
        let since = self.inner.last_progress_ms.load(Ordering::Acquire);
        let idle = Duration::from_millis(self.now_ms().saturating_sub(since));
        (idle > bound).then_some(idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Shutdown;

    fn ready(ctx: &ServiceContext, check: &str) -> Option<bool> {
        ctx.readiness.snapshot().1.get(check).map(|c| c.ready)
    }

    #[tokio::test]
    async fn pending_work_without_progress_turns_readiness_and_the_metric_red() {
        let ctx = ServiceContext::new(Shutdown::new());
        let bound = Duration::from_millis(300);
        let detector = StallDetector::start("resizer", bound, &ctx).unwrap();
        assert_eq!(ready(&ctx, "resizer_progress"), Some(true));

        // Idle: never stalled, however long.
        tokio::time::sleep(bound * 2).await;
        assert_eq!(detector.stalled_for(bound), None);

        // Work that keeps committing: fine.
        detector.busy();
        for _ in 0..4 {
            tokio::time::sleep(bound / 3).await;
            detector.progressed(true);
        }
        assert_eq!(detector.stalled_for(bound), None);
        assert_eq!(ready(&ctx, "resizer_progress"), Some(true));

        // Work with no progress: red within the bound plus a tick, and says why.
        tokio::time::sleep(bound * 2).await;
        assert!(detector.stalled_for(bound).is_some());
        let (all, checks) = ctx.readiness.snapshot();
        assert!(!all);
        assert!(
            checks["resizer_progress"].reason.contains("no progress"),
            "{checks:?}"
        );
        let metrics = prometheus::TextEncoder::new()
            .encode_to_string(&ctx.metrics.gather())
            .unwrap();
        assert!(
            metrics.contains("imgpipe_consumer_stalled{consumer=\"resizer\"} 1"),
            "{metrics}"
        );

        // Progress clears it.
        detector.progressed(false);
        tokio::time::sleep(bound).await;
        assert_eq!(ready(&ctx, "resizer_progress"), Some(true));
        ctx.shutdown.trigger();
    }
}
