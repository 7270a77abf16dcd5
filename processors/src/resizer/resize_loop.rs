//! The resizer's loop over `image.requests`: one task owns the consumer, the CPU pool, the offset
//! tracker and the transactions, waits for the next [`Event`] and hands it to its `process_*`
//! method. Nothing else touches that state, so no lock is held and no event races another.
//!
//! A record's path through it: [`ResizeLoop::process_record`] decodes it and puts its work on
//! the pool (or turns it into a dead letter), first fetching its source when it comes by
//! reference ([`ResizeLoop::process_fetched`]); [`ResizeLoop::process_job_done`] answers it (see
//! `answer`), sends the reply at once and leaves its usage record in the tracker;
//! [`ResizeLoop::process_flush`] hands the tracker's ready run to a transaction, and
//! [`ResizeLoop::process_commit`] acts on how that transaction ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chassis::outage::retry_while_down;
use chassis::rebalance::{InboxContext, RebalanceInbox};
use chassis::trace::{TRACEPARENT, TraceContext};
use chassis::{RetryPolicy, Shutdown, StallDetector};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset};
use schemas::events::{ResizeRequested, UsageRecorded};
use schemas::{Codec, CodecError};
use tokio::time::{Interval, MissedTickBehavior};
use tracing::Instrument as _;

use super::ResizerError;
use super::answer::answer;
use super::dead_letter;
use super::fetches::SourceFetches;
use super::job::{JobDone, JobError, Pending, ResizePool, now_ms};
use super::outputs::{OutRecord, Outputs, SentReply, send};
use super::transaction::{CommitDone, Transactions};
use crate::config::ResizerConfig;
use crate::metrics::ResizerMetrics;
use crate::offsets::OffsetTracker;
use chassis::source::{FetchError, Fetched};

/// What the loop waits for; each has its `process_*` method.
enum Event<'c> {
    /// Shutdown started: drain and stop.
    Shutdown,
    /// The consumer's poll returned (its rebalance callbacks ran inside it).
    Record(KafkaResult<BorrowedMessage<'c>>),
    /// A job finished on the pool (boxed: an event is moved on every turn of the loop, and this
    /// one is twice the size of the next).
    JobDone(Box<Pending>, Option<JobDone>),
    /// A source given by reference was fetched (or failed), after the time given.
    Fetched(Box<Pending>, Result<Fetched, FetchError>, Duration),
    /// The transaction in flight ended.
    Committed(CommitDone),
    /// `transaction_max_delay` passed: commit what is ready, however little.
    FlushDue,
    /// Time to refresh the lag gauge and check for a stall.
    LagTick,
}

/// The loop's parts, built by `run`.
pub(super) struct Parts {
    pub(super) consumer: Arc<StreamConsumer<InboxContext>>,
    pub(super) inbox: RebalanceInbox,
    pub(super) codec: Codec,
    pub(super) pool: ResizePool,
    pub(super) fetches: SourceFetches,
    pub(super) transactions: Transactions,
    pub(super) reply_producer: FutureProducer,
    pub(super) dlq_topic: String,
    pub(super) max_in_flight: usize,
    pub(super) stall: StallDetector,
    pub(super) shutdown: Shutdown,
    pub(super) metrics: ResizerMetrics,
    pub(super) config: ResizerConfig,
}

/// Consumes `image.requests` until shutdown.
pub(super) struct ResizeLoop {
    consumer: Arc<StreamConsumer<InboxContext>>,
    /// Partitions revoked, as the consumer's rebalance callbacks saw them.
    inbox: RebalanceInbox,
    codec: Codec,
    pool: ResizePool,
    /// Requests whose source is downloading; they count against `max_in_flight` with the pool.
    fetches: SourceFetches,
    /// Every record received and not yet committed, in offset order per partition.
    tracker: OffsetTracker<Outputs>,
    transactions: Transactions,
    /// Sends replies outside the transactions.
    reply_producer: FutureProducer,
    dlq_topic: String,
    max_in_flight: usize,
    flush_tick: Interval,
    lag_tick: Interval,
    lag_probe_busy: Arc<AtomicBool>,
    stall: StallDetector,
    shutdown: Shutdown,
    metrics: ResizerMetrics,
    config: ResizerConfig,
}

impl ResizeLoop {
    pub(super) fn new(parts: Parts) -> Self {
        let mut flush_tick = tokio::time::interval(parts.config.transaction_max_delay);
        flush_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            consumer: parts.consumer,
            inbox: parts.inbox,
            codec: parts.codec,
            pool: parts.pool,
            fetches: parts.fetches,
            tracker: OffsetTracker::default(),
            transactions: parts.transactions,
            reply_producer: parts.reply_producer,
            dlq_topic: parts.dlq_topic,
            max_in_flight: parts.max_in_flight,
            flush_tick,
            lag_tick: tokio::time::interval(Duration::from_secs(5)),
            lag_probe_busy: Arc::default(),
            stall: parts.stall,
            shutdown: parts.shutdown,
            metrics: parts.metrics,
            config: parts.config,
        }
    }

    /// Runs until shutdown (then drains and commits) or a fatal error.
    pub(super) async fn run(mut self) -> Result<(), ResizerError> {
        // A received message borrows the consumer; a local handle keeps `self` free.
        let consumer = Arc::clone(&self.consumer);
        loop {
            match self.next_event(&consumer).await {
                Event::Shutdown => break,
                Event::Record(received) => self.process_record(received).await,
                Event::JobDone(pending, done) => {
                    let span = pending.span.clone();
                    self.process_job_done(*pending, done)
                        .instrument(span)
                        .await?;
                }
                Event::Fetched(pending, fetched, took) => {
                    let span = pending.span.clone();
                    self.process_fetched(*pending, fetched, took)
                        .instrument(span)
                        .await?;
                }
                Event::Committed(commit) => self.process_commit(commit).await?,
                Event::FlushDue => self.process_flush(),
                Event::LagTick => self.process_lag_tick(),
            }
            if self.tracker.ready_count() >= self.config.transaction_max_records {
                self.process_flush();
            }
            if self.tracker.is_empty() && self.pool.is_empty() && self.fetches.is_empty() {
                self.stall.idle();
            }
        }
        self.drain().await
    }

    async fn next_event<'c>(&mut self, consumer: &'c StreamConsumer<InboxContext>) -> Event<'c> {
        // Finished records wait in the tracker for their transaction; while one is slow to
        // commit (say, a broker failing over) they must not pile up without bound either.
        let has_room =
            self.in_flight() < self.max_in_flight && self.tracker.len() < self.max_uncommitted();
        self.metrics.pool_saturated.set(i64::from(!has_room));
        tokio::select! {
            () = self.shutdown.wait() => Event::Shutdown,
            received = consumer.recv(), if has_room => Event::Record(received),
            Some((pending, done)) = self.pool.next() => Event::JobDone(Box::new(pending), done),
            Some((pending, fetched, took)) = self.fetches.next() => {
                Event::Fetched(Box::new(pending), fetched, took)
            }
            commit = self.transactions.poll_committed(), if self.transactions.is_committing() => {
                Event::Committed(commit)
            }
            _ = self.flush_tick.tick() => Event::FlushDue,
            _ = self.lag_tick.tick() => Event::LagTick,
        }
    }

    /// Requests fetching their source or on the pool: what `max_in_flight` bounds.
    fn in_flight(&self) -> usize {
        self.pool.len() + self.fetches.len()
    }

    /// Shutdown: finish what is fetching or on the pool (bounded), commit it, stop.
    async fn drain(mut self) -> Result<(), ResizerError> {
        tracing::info!(in_flight = self.in_flight(), "Resizer draining");
        let deadline = tokio::time::Instant::now() + chassis::shutdown::DRAIN_DEADLINE;
        while !(self.pool.is_empty() && self.fetches.is_empty()) {
            let next = async {
                tokio::select! {
                    Some((pending, done)) = self.pool.next() => {
                        Event::JobDone(Box::new(pending), done)
                    }
                    Some((pending, fetched, took)) = self.fetches.next() => {
                        Event::Fetched(Box::new(pending), fetched, took)
                    }
                    else => Event::Shutdown,
                }
            };
            match tokio::time::timeout_at(deadline, next).await {
                Ok(Event::JobDone(pending, done)) => {
                    let span = pending.span.clone();
                    self.process_job_done(*pending, done)
                        .instrument(span)
                        .await?;
                }
                // A fetch that finishes now still has its image work done (or its failure
                // answered) within the drain deadline.
                Ok(Event::Fetched(pending, fetched, took)) => {
                    let span = pending.span.clone();
                    self.process_fetched(*pending, fetched, took)
                        .instrument(span)
                        .await?;
                }
                Ok(_) => break,
                Err(_) => {
                    tracing::warn!(abandoned = self.in_flight(), "Drain deadline passed");
                    break;
                }
            }
        }
        self.transactions.commit_all(&mut self.tracker).await?;
        tracing::info!("Resizer stopped");
        Ok(())
    }

    /// The consumer's poll returned: first what its rebalance callbacks revoked, then the record.
    async fn process_record(&mut self, received: KafkaResult<BorrowedMessage<'_>>) {
        for partition in self.inbox.take().revoked {
            // Unfinished and uncommitted work of a revoked partition is abandoned: its new owner
            // resumes from the committed offset, so committing it here would duplicate it.
            self.tracker.forget(partition);
            self.transactions.forget_partition(partition);
        }
        match received {
            Ok(message) => self.accept(&message).await,
            Err(error) => tracing::warn!(%error, "Consumer error; retrying"),
        }
    }

    /// Decodes one record and puts its work on the pool, or turns it into a DLQ record.
    async fn accept(&mut self, message: &BorrowedMessage<'_>) {
        let received = Instant::now();
        self.stall.busy();
        let (partition, offset) = (message.partition(), message.offset());
        if let Some(unwritable) = self.transactions.take_unwritable((partition, offset)) {
            self.tracker.start(partition, offset);
            self.count_dead_letter(message, dead_letter::UNWRITABLE_OUTPUT, &unwritable.error);
            let dlq = dead_letter::of_unwritable_input(message, &unwritable, &self.dlq_topic);
            self.tracker
                .complete(partition, offset, Outputs::committed(dlq));
            return;
        }
        let payload = message.payload().unwrap_or_default();
        let codec = &self.codec;
        let decoded = retry_while_down(
            RetryPolicy::DEPENDENCY,
            &self.shutdown,
            CodecError::is_retryable,
            |error, _| tracing::warn!(%error, partition, offset, "Schema registry unavailable; retrying"),
            || codec.decode::<ResizeRequested>(payload),
        )
        .await;
        let request = match decoded {
            Ok(Ok(request)) => request,
            Ok(Err(error)) => {
                self.tracker.start(partition, offset);
                let class = "undecodable_request";
                let error = error.to_string();
                self.count_dead_letter(message, class, &error);
                let dlq = dead_letter::of_input(message, class, &error, &self.dlq_topic);
                self.tracker
                    .complete(partition, offset, Outputs::committed(dlq));
                return;
            }
            // Shutdown: the record stays untracked and uncommitted; whoever owns the partition
            // next reads it again.
            Err(_) => return,
        };
        self.tracker.start(partition, offset);
        let traceparent = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == TRACEPARENT)
                .and_then(|h| h.value)
                .and_then(|value| std::str::from_utf8(value).ok())
        });
        let mut trace = TraceContext::continue_or_start(traceparent);
        let span = trace.span(&request.request_id);
        let source_url = request.source_url.clone();
        let pending = Pending {
            partition,
            offset,
            bytes_in: request.image.len(),
            request,
            received,
            fetch: Duration::ZERO,
            source_validator: None,
            trace,
            span,
        };
        match source_url {
            Some(url) => self.fetches.submit(pending, url),
            None => self.pool.submit(pending),
        }
        self.metrics.in_flight.set(self.pool.len() as i64);
    }

    /// A source finished downloading: its bytes go to the pool as the request's image (the
    /// kernel sniffs them, as it does inline images; the origin's `Content-Type` is ignored),
    /// or the fetch's error is the request's answer.
    async fn process_fetched(
        &mut self,
        mut pending: Pending,
        fetched: Result<Fetched, FetchError>,
        took: Duration,
    ) -> Result<(), ResizerError> {
        let outcome = fetched.as_ref().map_or_else(FetchError::code, |_| "ok");
        self.metrics
            .source_fetch_seconds
            .with_label_values(&[outcome])
            .observe(took.as_secs_f64());
        match fetched {
            Ok(fetched) => {
                self.metrics.source_bytes.inc_by(fetched.bytes.len() as u64);
                pending.bytes_in = fetched.bytes.len();
                pending.request.image = fetched.bytes;
                // The pool's queue time starts now; the fetch is its own stage (and histogram).
                pending.received = Instant::now();
                pending.fetch = took;
                pending.source_validator = fetched.validator;
                self.pool.submit(pending);
                self.metrics.in_flight.set(self.pool.len() as i64);
                Ok(())
            }
            Err(error) => {
                tracing::info!(
                    request_id = %pending.request.request_id,
                    code = error.code(),
                    %error,
                    "Source not fetched"
                );
                let done = JobDone {
                    result: Err(JobError::Source(error)),
                    cpu: Duration::ZERO,
                    queue: Duration::ZERO,
                    fetch: took,
                };
                self.process_job_done(pending, Some(done)).await
            }
        }
    }

    /// A job finished: its answer's reply goes out at once, its usage record (with the reply
    /// if that could not be sent) waits in the tracker for a transaction.
    async fn process_job_done(
        &mut self,
        pending: Pending,
        done: Option<JobDone>,
    ) -> Result<(), ResizerError> {
        self.metrics.in_flight.set(self.pool.len() as i64);
        let Some(done) = done else { return Ok(()) };
        let request = &pending.request;
        log_failure(&request.request_id, &done.result);
        let mut answer = answer(request, pending.bytes_in, done, now_ms());
        if answer.reply.image.is_some() {
            // The api builds the answer's ETag from it; an error is never revalidated.
            answer.reply.source_validator = pending.source_validator.clone();
        }
        self.metrics.jobs.with_label_values(&[answer.outcome]).inc();
        for (stage, us) in answer.reply.timings.stages() {
            self.metrics
                .stage_seconds
                .with_label_values(&[stage])
                .observe(us as f64 / 1e6);
        }
        // Shutdown while the registry is down: the record is left unfinished, so it is never
        // committed and is redone by the partition's next owner.
        let Some(reply) = self.encode(&answer.reply).await? else {
            return Ok(());
        };
        let Some(usage_payload) = self.encode(&answer.usage).await? else {
            return Ok(());
        };
        let traceparent = pending.trace.header();
        let headers = OwnedHeaders::new().insert(Header {
            key: TRACEPARENT,
            value: Some(&traceparent),
        });
        let source = (pending.partition, pending.offset);
        let reply = OutRecord {
            source,
            topic: request.reply_topic.clone(),
            partition: Some(request.reply_partition),
            key: request.request_id.clone(),
            payload: reply,
            headers: headers.clone(),
        };
        let mut outputs = Outputs::committed(OutRecord {
            source,
            topic: self.codec.topic::<UsageRecorded>(),
            partition: None,
            key: request.tenant_id.clone(),
            payload: usage_payload,
            headers,
        });
        match send(&self.reply_producer, &reply) {
            Ok(delivery) => outputs.reply = Some(SentReply { source, delivery }),
            // Refused before it was queued (a partition that does not exist, a full queue): it
            // goes into the transaction instead, which dead-letters or retries it as any output.
            Err(error) => {
                tracing::debug!(%error, "Reply not sent on its own; it goes in the transaction");
                outputs.records.insert(0, reply);
            }
        }
        self.tracker
            .complete(pending.partition, pending.offset, outputs);
        Ok(())
    }

    /// Starts a transaction with what is ready, if none is committing.
    fn process_flush(&mut self) {
        self.transactions.flush(&mut self.tracker);
    }

    async fn process_commit(&mut self, commit: CommitDone) -> Result<(), ResizerError> {
        self.transactions.settle(commit, &mut self.tracker).await
    }

    fn process_lag_tick(&self) {
        self.update_lag();
        self.explain_stall();
    }

    /// Encodes a result. The registry is only needed on first use per schema, so retrying only
    /// ever waits while it is down at start-up. A permanent failure means our own output does
    /// not fit its schema (a bug, or a registry refusing the schema): no record of this
    /// partition could ever be committed, so the resizer stops loudly instead of stalling.
    /// `None` when shutdown started while waiting: the record is abandoned uncommitted.
    async fn encode<E: schemas::Event>(&self, event: &E) -> Result<Option<Vec<u8>>, ResizerError> {
        let encoded = retry_while_down(
            RetryPolicy::DEPENDENCY,
            &self.shutdown,
            CodecError::is_retryable,
            |error, attempt| tracing::warn!(%error, attempt, "Schema registry unavailable; retrying the encode"),
            || self.codec.encode(event),
        )
        .await;
        match encoded {
            Ok(Ok(bytes)) => Ok(Some(bytes)),
            Ok(Err(error)) => {
                tracing::error!(%error, topic = E::TOPIC, "Result does not fit its schema; stopping");
                Err(ResizerError::Encode(error))
            }
            Err(_) => Ok(None),
        }
    }

    /// Counts and logs an input leaving for the dead-letter topic.
    fn count_dead_letter(&self, message: &BorrowedMessage<'_>, class: &'static str, error: &str) {
        self.metrics.dlq_records.inc();
        self.metrics.jobs.with_label_values(&[class]).inc();
        tracing::warn!(
            partition = message.partition(),
            offset = message.offset(),
            class,
            %error,
            "Record sent to the dead-letter topic"
        );
    }

    /// Records received and not yet committed at which the loop stops taking more: two full
    /// transactions (one committing, one filling) plus what is on the pool.
    fn max_uncommitted(&self) -> usize {
        2 * self.config.transaction_max_records + self.max_in_flight
    }

    /// While the stall detector sees no progress, says what the loop waits for: the head of
    /// each partition (an unfinished record holds back everything after it), the jobs on the
    /// pool and whether a transaction is committing.
    fn explain_stall(&self) {
        if self.stall.stalled_for(self.config.stall_after).is_none() {
            return;
        }
        tracing::warn!(
            heads = ?self.tracker.heads(),
            jobs = self.pool.len(),
            fetches = self.fetches.len(),
            committing = self.transactions.is_committing(),
            "Stalled: (partition, first uncommitted offset, finished, tracked) per partition"
        );
    }

    /// Refreshes the lag gauge. Watermark look-ups are blocking network calls: they run off the
    /// runtime, one probe at a time.
    fn update_lag(&self) {
        if self.lag_probe_busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let consumer = Arc::clone(&self.consumer);
        let gauge = self.metrics.consumer_lag.clone();
        let busy = Arc::clone(&self.lag_probe_busy);
        tokio::task::spawn_blocking(move || {
            if let Ok(positions) = consumer.position() {
                let assigned: Vec<i32> =
                    positions.elements().iter().map(|e| e.partition()).collect();
                let measured: Vec<(i32, i64)> = positions
                    .elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(position) => consumer
                            .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(1))
                            .ok()
                            .map(|(_, high)| (e.partition(), (high - position).max(0))),
                        _ => None,
                    })
                    .collect();
                chassis::metrics::set_partition_lags(&gauge, &assigned, &measured);
            }
            busy.store(false, Ordering::Release);
        });
    }
}

/// Logs a job that failed on our side (the answer says only "internal error"; the detail is
/// here). A client's bad input is not logged: its answer says what was wrong.
fn log_failure(request_id: &str, result: &Result<crate::kernel::Resized, JobError>) {
    match result {
        Err(JobError::Kernel(error)) if error.status() >= 500 => {
            tracing::error!(request_id = %request_id, %error, "Resize failed");
        }
        Err(JobError::Panicked(panic)) => {
            tracing::error!(request_id = %request_id, %panic, "Resize kernel panicked on this input; answered 500");
        }
        _ => {}
    }
}
