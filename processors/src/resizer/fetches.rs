//! Sources fetched by reference, on the loop's task: each request with a `source_url` waits here
//! while its source downloads (async I/O, never on the CPU pool and never blocking the loop),
//! then goes to the pool with the fetched bytes as its image, or is answered with the fetch's
//! error. Polled beside the pool in the loop's `select!`, like the pool's jobs: no task per
//! request, and the loop's `max_in_flight` counts these too, so at most that many bodies of at
//! most `max_input_bytes` each are held at once.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::Instrument as _;

use super::job::{Pending, now_ms};
use chassis::source::{FetchError, Fetched, Fetcher};

/// A fetch in flight: its request, the result and how long it took.
type FetchFuture =
    Pin<Box<dyn Future<Output = (Pending, Result<Fetched, FetchError>, Duration)> + Send + Sync>>;

/// The fetches in flight.
pub(super) struct SourceFetches {
    fetcher: Fetcher,
    max_bytes: usize,
    fetches: FuturesUnordered<FetchFuture>,
}

impl SourceFetches {
    pub(super) fn new(fetcher: Fetcher, max_bytes: usize) -> Self {
        Self {
            fetcher,
            max_bytes,
            fetches: FuturesUnordered::new(),
        }
    }

    /// Starts fetching `url` for `pending`, bounded by its request's deadline.
    pub(super) fn submit(&mut self, pending: Pending, url: String) {
        let fetcher = self.fetcher.clone();
        let max_bytes = self.max_bytes;
        let left = pending
            .request
            .deadline_at_ms
            .saturating_sub(now_ms())
            .max(0);
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0));
        let span = pending.span.clone();
        self.fetches.push(Box::pin(
            async move {
                let started = Instant::now();
                let fetched = fetcher.fetch(&url, deadline, max_bytes).await;
                (pending, fetched, started.elapsed())
            }
            .instrument(span),
        ));
    }

    /// The next finished fetch; `None` at once when none is in flight. Cancel-safe.
    pub(super) async fn next(
        &mut self,
    ) -> Option<(Pending, Result<Fetched, FetchError>, Duration)> {
        self.fetches.next().await
    }

    /// Fetches in flight.
    pub(super) fn len(&self) -> usize {
        self.fetches.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.fetches.is_empty()
    }
}
