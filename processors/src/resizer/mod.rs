//! The resizer's consume → resize → produce loop, exactly once.
//!
//! One task owns the consumer and an [`OffsetTracker`]. Records are decoded here, their image
//! work runs on the bounded CPU pool, and each finished request's reply is sent at once by a
//! plain idempotent producer: the requester never waits for a commit. Its usage record (or a DLQ
//! record) waits in the tracker until every earlier record of its partition is finished too. A
//! flush (by count or age) writes the usage and DLQ records of that contiguous run, plus the
//! input offsets, in one Kafka transaction, which commits in its own task while the loop goes on.
//! So a crash at any point either commits all of a record's usage and its offset or none:
//! another resizer redoes exactly the uncommitted ones (a redone reply reaches nobody twice: the
//! api answers each request once and drops late replies).
//!
//! Backpressure: at most `max_in_flight` records are decoded and not yet finished; at that bound
//! the loop stops taking records until work drains, and librdkafka's prefetch stops at its own
//! bound (`queued.max.messages.kbytes`), so memory stays flat however far behind we fall.
//! Partitions are deliberately not paused with `Consumer::pause`: measured here, every
//! resume stalled fetching for 1–4 s (concurrency 16: 15 req/s and p50 930 ms with pausing,
//! 119 req/s and p50 132 ms without). A revoked partition's unfinished work is abandoned, not
//! committed: its new owner redoes it from the committed offset.
//!
//! This module is the loop (consume, decode, hand to the pool, drain); [`outputs`] turns a finished
//! job into the reply it sends and the records it commits; [`transaction`] writes a run of them
//! with their offsets.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chassis::kafka::{
    ConsumerProfile, KafkaConfig, ProducerProfile, count_rebalance, log_rebalance,
};
use chassis::trace::{TRACEPARENT, TraceContext};
use chassis::{RetryPolicy, ServiceContext};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use schemas::events::{
    ImageFormat, ResizeError, ResizeRequested, ResizeResult, ResizedImage, StageTimings,
    UsageRecorded, UsageSource,
};
use schemas::topics::{IMAGE_REQUESTS, IMAGE_REQUESTS_DLQ};
use schemas::{Codec, CodecError};
use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::config::ResizerConfig;
use crate::kernel::{self, KernelError, Limits, Resized};
use crate::metrics::ResizerMetrics;
use crate::offsets::{OffsetTracker, TakenRange};

mod outputs;
mod transaction;

use outputs::with_error;
use transaction::{
    Committer, InFlightCommit, OutRecord, Outputs, SentReply, UnwritableInputs, with_target,
};

/// Consumer group of all resizers.
pub const GROUP: &str = "resizers";
const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the resizer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ResizerError {
    /// Invalid `[resizer]` settings.
    #[error("invalid resizer configuration: {0}")]
    Config(String),
    /// Kafka clients could not be created or transactions initialised.
    #[error(transparent)]
    Setup(#[from] chassis::kafka::KafkaSetupError),
    /// Subscribing to image.requests failed.
    #[error("subscribing to {topic}: {source}")]
    Subscribe {
        /// Topic.
        topic: String,
        /// Why.
        source: KafkaError,
    },
    /// The transactional producer was fenced more often than a replacement can explain (see
    /// `transaction::ProducerRebuild`), or shutdown came while replacing it: most likely another
    /// resizer runs with the same `instance_id`, so this one stops rather than fence it back
    /// forever.
    #[error("transactional producer fenced again after being replaced: {0}")]
    Fatal(KafkaError),
    /// A result could not be encoded for a permanent reason (see `encode_retrying`).
    #[error("encoding a result: {0}")]
    Encode(CodecError),
    /// Metrics could not be registered.
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The CPU pool could not be built.
    #[error("building the CPU pool: {0}")]
    Pool(#[from] rayon::ThreadPoolBuildError),
}

/// A pool job's completion. `Sync` because the loop's futures hold `&Worker` across awaits.
type JobFuture = std::pin::Pin<Box<dyn Future<Output = (Pending, Option<JobDone>)> + Send + Sync>>;

/// What a pool job sends back.
struct JobDone {
    result: Result<Resized, JobError>,
    /// CPU time of the kernel's work on this thread; zero for a request past its deadline.
    cpu: Duration,
    /// From the record's receipt by the loop to its work starting on the pool.
    queue: Duration,
}

enum JobError {
    Kernel(KernelError),
    DeadlineExceeded,
    /// The kernel panicked (a bug in it or in a decoder, triggered by this input).
    Panicked(String),
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

/// A request on the pool, with what is needed to answer it (the image itself moved to the job).
struct Pending {
    partition: i32,
    offset: i64,
    request: ResizeRequested,
    bytes_in: usize,
    /// When the loop received the record.
    received: Instant,
    /// This resizer's hop of the request's trace (continued from the record's `traceparent`).
    trace: TraceContext,
    /// The request's span in this resizer, for the pool job and the outputs.
    span: tracing::Span,
}

/// Rebalances seen by the consumer, drained by the loop after every poll.
#[derive(Clone, Default)]
struct RebalanceLog {
    revoked: Arc<Mutex<Vec<i32>>>,
}

impl rdkafka::ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        log_rebalance("resizer", "Rebalance starting", rebalance);
        if let Rebalance::Revoke(list) = rebalance {
            self.revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(list.elements().iter().map(|e| e.partition()));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        log_rebalance("resizer", "Rebalance done", rebalance);
        count_rebalance("resizer", rebalance);
    }
}

/// Runs a resizer until shutdown (after draining and committing in-flight work) or a fatal error.
pub async fn run(
    kafka: KafkaConfig,
    registry: schemas::RegistryConfig,
    config: ResizerConfig,
    ctx: ServiceContext,
) -> Result<(), ResizerError> {
    let mut errors = Vec::new();
    config.validate(&mut errors);
    if !errors.is_empty() {
        return Err(ResizerError::Config(errors.join("; ")));
    }
    let metrics = ResizerMetrics::register(&ctx.metrics)?;
    let stall = chassis::StallDetector::start("resizer", config.stall_after, &ctx)?;
    ctx.readiness.register("resizer", "joining consumer group");

    let instance = if config.instance_id.is_empty() {
        uuid::Uuid::new_v4().simple().to_string()
    } else {
        config.instance_id.clone()
    };
    let mut producer_kafka = kafka.clone();
    producer_kafka
        .properties
        .entry("transaction.timeout.ms".into())
        .or_insert_with(|| config.transaction_timeout.as_millis().to_string());
    let transactional_id = format!("resizer-{instance}");
    let producer = producer_kafka
        .transactional_producer(&transactional_id)
        .await?;
    // Replies are sent outside the transactions (see `transaction::SentReply`), as soon as each
    // is ready: no linger, a client waits on every one.
    let reply_producer = kafka.producer_for(ProducerProfile::LowLatency, "reply producer")?;

    let context = RebalanceLog::default();
    let consumer_config = kafka.group_consumer_config(GROUP, ConsumerProfile::Transactional);
    let consumer: StreamConsumer<RebalanceLog> =
        kafka.consumer(&consumer_config, context.clone())?;
    let requests_topic = kafka.name(IMAGE_REQUESTS);
    consumer
        .subscribe(&[&requests_topic])
        .map_err(|source| ResizerError::Subscribe {
            topic: requests_topic.clone(),
            source,
        })?;

    let workers = config.effective_workers();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("resize-{i}"))
        .build()?;
    tracing::info!(
        instance,
        workers,
        max_in_flight = config.effective_max_in_flight(),
        "Resizer started"
    );
    ctx.readiness.ready("resizer");

    let consumer = Arc::new(consumer);
    let mut worker = Worker {
        codec: Codec::new(&registry, &kafka.namespace),
        committer: Committer {
            producer,
            consumer: Arc::clone(&consumer),
            requests_topic,
            dlq_topic: kafka.name(IMAGE_REQUESTS_DLQ),
            metrics: metrics.clone(),
        },
        committing: None,
        rebuild: transaction::ProducerRebuild::new(producer_kafka, transactional_id),
        readiness: ctx.readiness.clone(),
        reply_producer,
        // An image bigger than one record would fail inside the transaction; the kernel refuses
        // it instead, as a per-request 4xx.
        limits: config.limits(
            kafka
                .max_message_bytes
                .min(schemas::topics::IMAGE_TOPIC_MAX_MESSAGE_BYTES),
        ),
        max_in_flight: config.effective_max_in_flight(),
        consumer,
        pool,
        lag_probe_busy: Arc::default(),
        rebalances: context,
        tracker: OffsetTracker::default(),
        unwritable: UnwritableInputs::default(),
        shutdown: ctx.shutdown.clone(),
        stall,
        jobs: FuturesUnordered::new(),
        metrics,
        config,
    };
    let result = worker.run_loop(&ctx).await;
    ctx.readiness.not_ready("resizer", "stopped");
    result
}

struct Worker {
    codec: Codec,
    /// Writes transactions (its own task per transaction, one at a time).
    committer: Committer,
    /// The transaction committing now, if any.
    committing: Option<InFlightCommit>,
    /// How to replace the transactional producer after a fatal error, and how often it was.
    rebuild: transaction::ProducerRebuild,
    readiness: chassis::Readiness,
    /// Sends replies outside the transactions.
    reply_producer: FutureProducer,
    limits: Limits,
    max_in_flight: usize,
    consumer: Arc<StreamConsumer<RebalanceLog>>,
    pool: rayon::ThreadPool,
    lag_probe_busy: Arc<std::sync::atomic::AtomicBool>,
    rebalances: RebalanceLog,
    tracker: OffsetTracker<Outputs>,
    unwritable: UnwritableInputs,
    shutdown: chassis::Shutdown,
    stall: chassis::StallDetector,
    jobs: FuturesUnordered<JobFuture>,
    metrics: ResizerMetrics,
    config: ResizerConfig,
}

impl Worker {
    async fn run_loop(&mut self, ctx: &ServiceContext) -> Result<(), ResizerError> {
        let mut flush_tick = tokio::time::interval(self.config.transaction_max_delay);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lag_tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            // Finished records wait in the tracker for their transaction; while one is slow to
            // commit (say, a broker failing over) they must not pile up without bound either.
            let has_room =
                self.jobs.len() < self.max_in_flight && self.tracker.len() < self.max_uncommitted();
            self.metrics.pool_saturated.set(i64::from(!has_room));
            // A received message borrows the consumer; a local handle keeps `self` free.
            let consumer = Arc::clone(&self.consumer);
            tokio::select! {
                () = ctx.shutdown.wait() => break,
                received = consumer.recv(), if has_room => {
                    self.handle_revocations();
                    match received {
                        Ok(message) => self.accept(&message).await,
                        Err(error) => tracing::warn!(%error, "Consumer error; retrying"),
                    }
                }
                Some((pending, done)) = self.jobs.next() => {
                    let span = pending.span.clone();
                    self.finish(pending, done).instrument(span).await?;
                }
                commit = Self::commit_finished(&mut self.committing),
                    if self.committing.is_some() => self.committed(commit).await?,
                _ = flush_tick.tick() => self.flush(),
                _ = lag_tick.tick() => {
                    self.update_lag();
                    self.explain_stall();
                }
            }
            if self.tracker.ready_count() >= self.config.transaction_max_records {
                self.flush();
            }
            if self.tracker.is_empty() && self.jobs.is_empty() {
                self.stall.idle();
            }
        }
        self.drain().await
    }

    /// Shutdown: finish what is on the pool (bounded), commit it, stop.
    async fn drain(&mut self) -> Result<(), ResizerError> {
        tracing::info!(in_flight = self.jobs.len(), "Resizer draining");
        let deadline = tokio::time::Instant::now() + chassis::shutdown::DRAIN_DEADLINE;
        while !self.jobs.is_empty() {
            match tokio::time::timeout_at(deadline, self.jobs.next()).await {
                Ok(Some((pending, done))) => {
                    let span = pending.span.clone();
                    self.finish(pending, done).instrument(span).await?;
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(abandoned = self.jobs.len(), "Drain deadline passed");
                    break;
                }
            }
        }
        self.commit_all().await?;
        tracing::info!("Resizer stopped");
        Ok(())
    }

    fn handle_revocations(&mut self) {
        let revoked: Vec<i32> = std::mem::take(
            &mut *self
                .rebalances
                .revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for partition in revoked {
            // Unfinished and uncommitted work of a revoked partition is abandoned: its new owner
            // resumes from the committed offset, so committing it here would duplicate it.
            self.tracker.forget(partition);
            self.unwritable.forget_partition(partition);
        }
    }

    /// Decodes one record and puts its work on the pool, or turns it into a DLQ record.
    async fn accept(&mut self, message: &BorrowedMessage<'_>) {
        let received = Instant::now();
        self.stall.busy();
        let (partition, offset) = (message.partition(), message.offset());
        if let Some(unwritable) = self.unwritable.take((partition, offset)) {
            self.tracker.start(partition, offset);
            let mut dlq = self.dead_letter(message, "unwritable_output", &unwritable.error);
            dlq.headers = with_target(dlq.headers, &unwritable);
            self.tracker
                .complete(partition, offset, Outputs::committed(dlq));
            return;
        }
        let payload = message.payload().unwrap_or_default();
        let mut backoff = RetryPolicy::DEPENDENCY.backoff();
        let request = loop {
            match self.codec.decode::<ResizeRequested>(payload).await {
                Ok(request) => break request,
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, partition, offset, "Schema registry unavailable; retrying");
                    if backoff.wait(&self.shutdown).await.is_err() {
                        // Shutdown: the record stays untracked and uncommitted; whoever owns
                        // the partition next reads it again.
                        return;
                    }
                }
                Err(error) => {
                    self.tracker.start(partition, offset);
                    let dlq = self.dead_letter(message, "undecodable_request", &error);
                    self.tracker
                        .complete(partition, offset, Outputs::committed(dlq));
                    return;
                }
            }
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
        self.submit(Pending {
            partition,
            offset,
            bytes_in: request.image.len(),
            request,
            received,
            trace,
            span,
        });
    }

    /// Moves the image to the pool; the job checks the deadline before starting work.
    fn submit(&mut self, mut pending: Pending) {
        let (tx, rx) = oneshot::channel();
        let image = std::mem::take(&mut pending.request.image);
        let params = pending.request.params.clone();
        let deadline_ms = pending.request.deadline_at_ms;
        let limits = self.limits;
        let span = pending.span.clone();
        let received = pending.received;
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
            // The receiver is gone only if the partition was revoked; nothing to do then.
            let _ = tx.send(JobDone { result, cpu, queue });
        });
        self.metrics.in_flight.set(self.jobs.len() as i64 + 1);
        self.jobs
            .push(Box::pin(async move { (pending, rx.await.ok()) }));
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
            jobs = self.jobs.len(),
            committing = self.committing.is_some(),
            "Stalled: (partition, first uncommitted offset, finished, tracked) per partition"
        );
    }

    /// Refreshes the lag gauge. Watermark look-ups are blocking network calls: they run off the
    /// runtime, one probe at a time.
    fn update_lag(&self) {
        use std::sync::atomic::Ordering;
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
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
