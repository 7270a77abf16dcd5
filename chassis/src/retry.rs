//! One retry policy for every loop that waits out a dependency (the schema registry, ClickHouse,
//! broker metadata): exponential backoff with full jitter and a cap, computed by `backon`, and a
//! wait that ends the moment shutdown starts, so no retry loop can keep a process from stopping.
//!
//! Loops keep their own shape (what to retry, what to report while waiting); they take their
//! delays from a [`Backoff`] and wait with [`Backoff::wait`], never with a bare `sleep`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use crate::Shutdown;

/// How a loop retries: delays grow from `min_delay` by doubling up to `max_delay`, each randomly
/// jittered so that many clients waiting on one dependency do not retry in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First delay.
    pub min_delay: Duration,
    /// Largest delay.
    pub max_delay: Duration,
    /// Attempts after which the loop gives up; `None` retries until shutdown.
    pub max_attempts: Option<usize>,
}

impl RetryPolicy {
    /// Waiting out a dependency that comes back by itself (registry, ClickHouse, brokers):
    /// 100 ms doubling to 5 s, until it returns or shutdown starts.
    pub const DEPENDENCY: Self = Self {
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(5),
        max_attempts: None,
    };

    /// Waiting for something that should settle within seconds (a just-created topic's
    /// leaders): 50 ms doubling to 1 s, at most 15 attempts (about 10 s).
    pub const SETTLING: Self = Self {
        min_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(1),
        max_attempts: Some(15),
    };

    /// A fresh backoff following this policy.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            delays: self.delays(),
            attempts: 0,
        }
    }

    fn delays(&self) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// Why a retry loop stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetryStop {
    /// Shutdown started: stop retrying and return.
    #[error("shutdown started")]
    Cancelled,
    /// The policy's attempts are used up.
    #[error("gave up after {0} attempts")]
    Exhausted(usize),
}

/// The state of one retry loop.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    delays: ExponentialBackoff,
    attempts: usize,
}

impl Backoff {
    /// The delay before the next attempt, or `None` once the attempts are used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self
            .policy
            .max_attempts
            .is_some_and(|max| self.attempts >= max)
        {
            return None;
        }
        self.attempts += 1;
        // Without a maximum count, backon's iterator never ends; the cap is the fallback.
        Some(
            self.delays
                .next()
                .unwrap_or(self.policy.max_delay)
                .min(self.policy.max_delay * 2),
        )
    }

    /// Waits the next delay, returning it; returns early with [`RetryStop::Cancelled`] when
    /// shutdown starts, or [`RetryStop::Exhausted`] when no attempt is left.
    pub async fn wait(&mut self, shutdown: &Shutdown) -> Result<Duration, RetryStop> {
        if shutdown.is_triggered() {
            return Err(RetryStop::Cancelled);
        }
        let delay = self
            .next_delay()
            .ok_or(RetryStop::Exhausted(self.attempts))?;
        tokio::select! {
            () = shutdown.wait() => Err(RetryStop::Cancelled),
            () = tokio::time::sleep(delay) => Ok(delay),
        }
    }

    /// Attempts waited for so far.
    pub fn attempts(&self) -> usize {
        self.attempts
    }

    /// Starts over from the first delay (after a success).
    pub fn reset(&mut self) {
        self.delays = self.policy.delays();
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
        max_attempts: None,
    };

    #[test]
    fn delays_grow_with_jitter_up_to_the_cap() {
        let mut backoff = POLICY.backoff();
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay().unwrap()).collect();
        // Jitter adds up to one more delay's worth; the base doubles from min to max.
        for (i, delay) in delays.iter().enumerate() {
            let base = (POLICY.min_delay * 2u32.pow(i.min(10) as u32)).min(POLICY.max_delay);
            assert!(*delay >= base, "attempt {i}: {delay:?} < {base:?}");
            assert!(
                *delay <= base * 2,
                "attempt {i}: {delay:?} > {:?}",
                base * 2
            );
        }
        assert!(
            delays[11] >= POLICY.max_delay,
            "capped at the maximum: {delays:?}"
        );
        // Two loops starting together do not retry in step.
        let mut other = POLICY.backoff();
        let others: Vec<Duration> = (0..12).map(|_| other.next_delay().unwrap()).collect();
        assert_ne!(delays, others, "jittered");
    }

    #[test]
    fn attempts_run_out_and_reset_starts_over() {
        let policy = RetryPolicy {
            max_attempts: Some(3),
            ..POLICY
        };
        let mut backoff = policy.backoff();
        for _ in 0..3 {
            assert!(backoff.next_delay().is_some());
        }
        assert_eq!(backoff.next_delay(), None);
        assert_eq!(backoff.attempts(), 3);
        backoff.reset();
        assert_eq!(backoff.attempts(), 0);
        let first = backoff.next_delay().unwrap();
        assert!(
            first >= policy.min_delay && first <= policy.min_delay * 2,
            "{first:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ends_at_shutdown() {
        let shutdown = Shutdown::new();
        let mut backoff = RetryPolicy {
            min_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(60),
            max_attempts: None,
        }
        .backoff();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            trigger.trigger();
        });
        let started = tokio::time::Instant::now();
        assert_eq!(backoff.wait(&shutdown).await, Err(RetryStop::Cancelled));
        assert!(started.elapsed() < Duration::from_secs(2));
        // Already shut down: no wait at all.
        assert_eq!(backoff.wait(&shutdown).await, Err(RetryStop::Cancelled));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_sleeps_the_delay_and_reports_exhaustion() {
        let shutdown = Shutdown::new();
        let mut backoff = RetryPolicy {
            max_attempts: Some(1),
            ..POLICY
        }
        .backoff();
        let started = tokio::time::Instant::now();
        let waited = backoff.wait(&shutdown).await.unwrap();
        assert!(started.elapsed() >= waited);
        assert_eq!(backoff.wait(&shutdown).await, Err(RetryStop::Exhausted(1)));
    }
}
