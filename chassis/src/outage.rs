//! One call made again until a dependency's outage is over: the loop "decode this record; if the
//! schema registry is unavailable, wait with backoff and decode it again" that every consumer
//! needs (the record is fine, the registry is not: skipping it would lose it, dead-lettering it
//! would call a good record poison).
//!
//! The call decides what an outage is (`is_outage`, usually `CodecError::is_retryable`); each
//! caller says what it reports while waiting (`on_outage`: a log line, readiness, a counter).
//! The waits are a [`RetryPolicy`]'s and end the moment shutdown starts, as every retry loop's.

use std::future::Future;

use crate::{RetryPolicy, RetryStop, Shutdown};

/// Makes `call` until its answer is not an outage, waiting `policy`'s backoff between attempts;
/// `on_outage(error, attempt)` hears of each outage before its wait (`attempt` counts from 1).
///
/// Returns the call's answer (a value, or an error that is not an outage), or [`RetryStop`] when
/// shutdown started (or the policy's attempts ran out) while waiting. The first attempt is made
/// even when shutdown has already started: an answer that needs no wait is never thrown away.
pub async fn retry_while_down<T, E, F, Fut>(
    policy: RetryPolicy,
    shutdown: &Shutdown,
    is_outage: impl Fn(&E) -> bool,
    mut on_outage: impl FnMut(&E, usize),
    mut call: F,
) -> Result<Result<T, E>, RetryStop>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = policy.backoff();
    loop {
        match call().await {
            Err(error) if is_outage(&error) => {
                on_outage(&error, backoff.attempts() + 1);
                backoff.wait(shutdown).await?;
            }
            answer => return Ok(answer),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use super::*;

    #[derive(Debug, PartialEq)]
    enum Answer {
        Down,
        Poison,
    }

    fn is_down(error: &Answer) -> bool {
        *error == Answer::Down
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_waited_out_with_backoff() {
        let shutdown = Shutdown::new();
        let count = Cell::new(0);
        let calls = &count;
        let mut heard = Vec::new();
        let started = tokio::time::Instant::now();
        let answer = retry_while_down(
            RetryPolicy::DEPENDENCY,
            &shutdown,
            is_down,
            |error, attempt| heard.push((format!("{error:?}"), attempt)),
            move || async move {
                calls.set(calls.get() + 1);
                if calls.get() < 3 {
                    Err(Answer::Down)
                } else {
                    Ok(42)
                }
            },
        )
        .await;
        assert_eq!(answer, Ok(Ok(42)));
        assert_eq!(count.get(), 3);
        assert_eq!(heard, vec![("Down".into(), 1), ("Down".into(), 2)]);
        assert!(
            started.elapsed() >= RetryPolicy::DEPENDENCY.min_delay * 3,
            "two waits of at least 100 ms and 200 ms: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_that_is_not_an_outage_is_answered_at_once() {
        let shutdown = Shutdown::new();
        let count = Cell::new(0);
        let calls = &count;
        let answer: Result<Result<(), Answer>, _> = retry_while_down(
            RetryPolicy::DEPENDENCY,
            &shutdown,
            is_down,
            |_, _| panic!("not an outage"),
            move || async move {
                calls.set(calls.get() + 1);
                Err(Answer::Poison)
            },
        )
        .await;
        assert_eq!(answer, Ok(Err(Answer::Poison)));
        assert_eq!(count.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait() {
        let shutdown = Shutdown::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            trigger.trigger();
        });
        let started = tokio::time::Instant::now();
        let answer: Result<Result<(), Answer>, _> = retry_while_down(
            RetryPolicy::DEPENDENCY,
            &shutdown,
            is_down,
            |_, _| {},
            || async { Err(Answer::Down) },
        )
        .await;
        assert_eq!(answer, Err(RetryStop::Cancelled));
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_attempt_is_made_even_during_shutdown() {
        let shutdown = Shutdown::new();
        shutdown.trigger();
        let answer: Result<Result<u8, Answer>, _> = retry_while_down(
            RetryPolicy::DEPENDENCY,
            &shutdown,
            is_down,
            |_, _| {},
            || async { Ok(7) },
        )
        .await;
        assert_eq!(answer, Ok(Ok(7)));
        let down: Result<Result<u8, Answer>, _> = retry_while_down(
            RetryPolicy::DEPENDENCY,
            &shutdown,
            is_down,
            |_, _| {},
            || async { Err(Answer::Down) },
        )
        .await;
        assert_eq!(down, Err(RetryStop::Cancelled), "no wait once shut down");
    }
}
