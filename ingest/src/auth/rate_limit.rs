//! Per-tenant rate limiting: one token bucket per tenant, refilled at the tenant's
//! `rate_limit_per_second` up to `burst`.
//!
//! A small bucket of our own rather than `governor`: governor's keyed limiter applies one quota to
//! every key, while each tenant here has its own quota that the identity service can change at
//! any moment; reconfiguring a bucket in place keeps the tokens the tenant already has.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One tenant's bucket. Shared (behind an `Arc`) by every cached key of the tenant.
#[derive(Debug)]
pub struct TokenBucket {
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens the bucket holds.
    burst: f64,
    /// Tokens now (fractional: refill is continuous).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket. Non-positive settings are raised to 1: the identity service never writes
    /// them, and a bucket that admits nothing would fail every request of the tenant silently.
    pub fn new(rate_per_second: i32, burst: i32, now: Instant) -> Self {
        let (rate, burst) = sanitise(rate_per_second, burst);
        Self {
            state: Mutex::new(BucketState {
                rate,
                burst,
                tokens: burst,
                updated: now,
            }),
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Duration> {
        // Held for a few arithmetic operations, never across an await.
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.refill(now);
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - s.tokens) / s.rate;
            // Round up to whole milliseconds: Retry-After is coarse and early retries fail again.
            Err(Duration::from_millis((wait * 1000.0).ceil() as u64).max(Duration::from_millis(1)))
        }
    }

    /// Applies a tenant's new quota, keeping the tokens it has (capped at the new burst).
    pub fn reconfigure(&self, rate_per_second: i32, burst: i32, now: Instant) {
        let (rate, burst) = sanitise(rate_per_second, burst);
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.refill(now);
        s.rate = rate;
        s.burst = burst;
        s.tokens = s.tokens.min(burst);
    }
}

impl BucketState {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = self.updated.max(now);
    }
}

fn sanitise(rate_per_second: i32, burst: i32) -> (f64, f64) {
    (f64::from(rate_per_second.max(1)), f64::from(burst.max(1)))
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn admits_a_burst_then_refuses_with_the_wait() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(10, 3, t0);
        for _ in 0..3 {
            assert_eq!(bucket.try_acquire(t0), Ok(()));
        }
        // 10/s: the next token is 100 ms away.
        assert_eq!(bucket.try_acquire(t0), Err(100 * MS));
        assert_eq!(bucket.try_acquire(t0 + 40 * MS), Err(60 * MS));
        assert_eq!(bucket.try_acquire(t0 + 100 * MS), Ok(()));
        assert!(bucket.try_acquire(t0 + 100 * MS).is_err());
    }

    #[test]
    fn refills_at_the_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(100, 5, t0);
        for _ in 0..5 {
            bucket.try_acquire(t0).expect("burst");
        }
        // An hour idle still only refills the burst.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..5 {
            bucket.try_acquire(later).expect("refilled");
        }
        assert!(bucket.try_acquire(later).is_err());
    }

    #[test]
    fn reconfiguring_keeps_tokens_and_applies_the_new_rate() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(1, 10, t0);
        bucket.reconfigure(1000, 2, t0);
        bucket.try_acquire(t0).expect("token 1");
        bucket.try_acquire(t0).expect("token 2");
        assert_eq!(bucket.try_acquire(t0), Err(MS));
        assert_eq!(bucket.try_acquire(t0 + MS), Ok(()));
    }

    #[test]
    fn nonsense_settings_still_admit_one_per_second() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(0, -5, t0);
        assert_eq!(bucket.try_acquire(t0), Ok(()));
        assert_eq!(bucket.try_acquire(t0), Err(Duration::from_secs(1)));
    }

    #[test]
    fn time_going_backwards_does_not_mint_tokens() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let bucket = TokenBucket::new(10, 1, t0);
        bucket.try_acquire(t0).expect("first");
        assert!(bucket.try_acquire(t0 - Duration::from_secs(5)).is_err());
    }
}
