//! The resizer's consume → resize → produce loop, exactly once.
//!
//! One task owns the consumer, the transactional producer and an [`OffsetTracker`]. Records are
//! decoded here, their image work runs on the bounded CPU pool, and finished results wait in the
//! tracker until every earlier record of their partition is finished too. A flush (by count or
//! age) writes the replies, usage records and DLQ records of that contiguous run, plus the input
//! offsets, in one Kafka transaction. So a crash at any point either commits all of a record's
//! effects or none: another resizer re-does exactly the uncommitted ones.
//!
//! Backpressure: at most `max_in_flight` records are decoded and not yet finished; at that bound
//! the loop stops taking records until work drains, and librdkafka's prefetch stops at its own
//! bound (`queued.max.messages.kbytes`), so memory stays flat however far behind we fall.
//! Partitions are deliberately not paused with `Consumer::pause`: measured here, every
//! resume stalled fetching for 1–4 s (concurrency 16: 15 req/s and p50 930 ms with pausing,
//! 119 req/s and p50 132 ms without). A revoked partition's unfinished work is abandoned, not
//! committed: its new owner redoes it from the committed offset.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chassis::kafka::{ConsumerProfile, KafkaConfig, log_rebalance};
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
    /// The transactional producer was fenced by a newer instance with the same id, or hit a
    /// fatal error: this process must stop so that it cannot write stale results.
    #[error("transactional producer failed fatally (fenced or broken): {0}")]
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

/// One record to write in the next transaction.
#[derive(Debug)]
struct OutRecord {
    /// The input record (partition, offset) this output answers.
    source: (i32, i64),
    topic: String,
    partition: Option<i32>,
    key: String,
    payload: Vec<u8>,
    headers: OwnedHeaders,
}

/// Input records one of whose outputs failed permanently inside a transaction that then had to
/// abort (a delivery failure makes the whole transaction abortable). When such a record is read
/// again it is dead-lettered instead of processed, so the partition moves on rather than
/// retrying the same failing transaction forever. Bounded: an entry lives until its record comes
/// back or its partition is revoked, and at most [`UnwritableInputs::CAPACITY`] are kept (a
/// forgotten one only costs one more aborted transaction).
#[derive(Debug, Default)]
struct UnwritableInputs(std::collections::HashMap<(i32, i64), Unwritable>);

/// An output that failed permanently: where it was going and why it could not get there.
#[derive(Debug, Clone)]
struct Unwritable {
    topic: String,
    partition: Option<i32>,
    error: String,
}

impl Unwritable {
    fn of(out: &OutRecord, error: &KafkaError) -> Self {
        Self {
            topic: out.topic.clone(),
            partition: out.partition,
            error: error.to_string(),
        }
    }
}

impl UnwritableInputs {
    const CAPACITY: usize = 1024;

    fn insert(&mut self, source: (i32, i64), unwritable: Unwritable) {
        if self.0.len() >= Self::CAPACITY {
            self.0.clear();
        }
        self.0.insert(source, unwritable);
    }

    fn take(&mut self, source: (i32, i64)) -> Option<Unwritable> {
        self.0.remove(&source)
    }

    fn forget_partition(&mut self, partition: i32) {
        self.0.retain(|&(p, _), _| p != partition);
    }
}

/// Why a transaction could not commit.
struct CommitFailure {
    error: KafkaError,
    /// The input whose output failed permanently, and how, if that was the cause.
    unwritable: Option<((i32, i64), Unwritable)>,
}

impl From<KafkaError> for CommitFailure {
    fn from(error: KafkaError) -> Self {
        Self {
            error,
            unwritable: None,
        }
    }
}

/// What a finished request produces: its reply and usage record, or a DLQ record.
type Outputs = Vec<OutRecord>;

/// A pool job's completion. `Sync` because the loop's futures hold `&Worker` across awaits.
type JobFuture = std::pin::Pin<Box<dyn Future<Output = (Pending, Option<JobDone>)> + Send + Sync>>;

/// What a pool job sends back.
struct JobDone {
    result: Result<Resized, JobError>,
    cpu: Duration,
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
    queue: Duration,
    /// This resizer's hop of the request's trace (continued from the record's `traceparent`).
    trace: TraceContext,
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
    let producer = producer_kafka
        .transactional_producer(&format!("resizer-{instance}"))
        .await?;

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

    let mut worker = Worker {
        codec: Codec::new(&registry, &kafka.namespace),
        dlq_topic: kafka.name(IMAGE_REQUESTS_DLQ),
        requests_topic,
        // An image bigger than one record would fail inside the transaction; the kernel refuses
        // it instead, as a per-request 4xx.
        limits: config.limits(
            kafka
                .max_message_bytes
                .min(schemas::topics::IMAGE_TOPIC_MAX_MESSAGE_BYTES),
        ),
        max_in_flight: config.effective_max_in_flight(),
        consumer: Arc::new(consumer),
        producer,
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
    requests_topic: String,
    dlq_topic: String,
    limits: Limits,
    max_in_flight: usize,
    consumer: Arc<StreamConsumer<RebalanceLog>>,
    producer: FutureProducer,
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
            let has_room = self.jobs.len() < self.max_in_flight;
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
                    let span = pending.trace.span(&pending.request.request_id);
                    self.finish(pending, done).instrument(span).await?;
                }
                _ = flush_tick.tick() => self.flush().await?,
                _ = lag_tick.tick() => self.update_lag(),
            }
            if self.tracker.ready_count() >= self.config.transaction_max_records {
                self.flush().await?;
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
                    let span = pending.trace.span(&pending.request.request_id);
                    self.finish(pending, done).instrument(span).await?;
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(abandoned = self.jobs.len(), "Drain deadline passed");
                    break;
                }
            }
        }
        while self.tracker.ready_count() > 0 {
            self.flush().await?;
        }
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
        self.stall.busy();
        let (partition, offset) = (message.partition(), message.offset());
        if let Some(unwritable) = self.unwritable.take((partition, offset)) {
            self.tracker.start(partition, offset);
            let mut dlq = self.dead_letter(message, "unwritable_output", &unwritable.error);
            dlq.headers = with_target(dlq.headers, &unwritable);
            self.tracker.complete(partition, offset, vec![dlq]);
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
                    self.tracker.complete(partition, offset, vec![dlq]);
                    return;
                }
            }
        };
        self.tracker.start(partition, offset);
        let queue = message
            .timestamp()
            .to_millis()
            .map_or(Duration::ZERO, |sent| {
                Duration::from_millis(now_ms().saturating_sub(sent).max(0) as u64)
            });
        let traceparent = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == TRACEPARENT)
                .and_then(|h| h.value)
                .and_then(|value| std::str::from_utf8(value).ok())
        });
        let trace = TraceContext::continue_or_start(traceparent);
        self.submit(Pending {
            partition,
            offset,
            bytes_in: request.image.len(),
            request,
            queue,
            trace,
        });
    }

    /// Moves the image to the pool; the job checks the deadline before starting work.
    fn submit(&mut self, mut pending: Pending) {
        let (tx, rx) = oneshot::channel();
        let image = std::mem::take(&mut pending.request.image);
        let params = pending.request.params.clone();
        let deadline_ms = pending.request.deadline_at_ms;
        let limits = self.limits;
        let span = pending.trace.span(&pending.request.request_id);
        self.pool.spawn(move || {
            // The kernel's own log lines carry the request's trace id.
            let _entered = span.enter();
            let cpu = cpu_time::ThreadTime::now();
            let result = if now_ms() > deadline_ms {
                Err(JobError::DeadlineExceeded)
            } else {
                guarded(|| kernel::resize(&image, &params, &limits))
            };
            // The receiver is gone only if the partition was revoked; nothing to do then.
            let _ = tx.send(JobDone {
                result,
                cpu: cpu.elapsed(),
            });
        });
        self.metrics.in_flight.set(self.jobs.len() as i64 + 1);
        self.jobs
            .push(Box::pin(async move { (pending, rx.await.ok()) }));
    }

    /// Turns a finished job into its reply and usage record and hands them to the tracker.
    async fn finish(
        &mut self,
        pending: Pending,
        done: Option<JobDone>,
    ) -> Result<(), ResizerError> {
        self.metrics.in_flight.set(self.jobs.len() as i64);
        let Some(done) = done else { return Ok(()) };
        let request = &pending.request;
        let mut timings = StageTimings {
            queue_us: micros(pending.queue),
            ..StageTimings::default()
        };
        let (image, error, input, outcome) = match done.result {
            Ok(resized) => {
                timings = StageTimings {
                    queue_us: timings.queue_us,
                    ..resized.timings
                };
                let input = Some((
                    resized.input_format,
                    resized.input_width,
                    resized.input_height,
                ));
                let image = ResizedImage {
                    format: resized.format,
                    width: dim(resized.width),
                    height: dim(resized.height),
                    bytes: resized.bytes,
                };
                (Some(image), None, input, "ok")
            }
            Err(JobError::Kernel(error)) => {
                if error.status() >= 500 {
                    tracing::error!(request_id = %request.request_id, %error, "Resize failed");
                }
                let failure = ResizeError {
                    status: i32::from(error.status()),
                    code: error.code().to_owned(),
                    message: if error.status() >= 500 {
                        "The image could not be processed.".to_owned()
                    } else {
                        error.to_string()
                    },
                };
                (None, Some(failure), None, error.code())
            }
            Err(JobError::Panicked(panic)) => {
                tracing::error!(request_id = %request.request_id, %panic, "Resize kernel panicked on this input; answered 500");
                let failure = ResizeError {
                    status: 500,
                    code: "internal_error".to_owned(),
                    message: "The image could not be processed.".to_owned(),
                };
                (None, Some(failure), None, "internal_error")
            }
            Err(JobError::DeadlineExceeded) => {
                let failure = ResizeError {
                    status: 504,
                    code: "deadline_exceeded".to_owned(),
                    message: "The request was not processed before its deadline.".to_owned(),
                };
                (None, Some(failure), None, "deadline_exceeded")
            }
        };
        self.metrics.jobs.with_label_values(&[outcome]).inc();
        self.observe(&timings);

        let status = error.as_ref().map_or(200, |e| e.status);
        let usage = UsageRecorded {
            request_id: request.request_id.clone(),
            tenant_id: request.tenant_id.clone(),
            key_id: request.key_id.clone(),
            event_time_ms: now_ms(),
            // Not `ok`: only the api, which sees the client take the image, may say that.
            outcome: if image.is_some() {
                schemas::events::outcomes::RESIZED.to_owned()
            } else {
                outcome.to_owned()
            },
            status,
            bytes_in: pending.bytes_in as i64,
            bytes_out: image.as_ref().map_or(0, |i| i.bytes.len() as i64),
            pixels_in: input.map_or(0, |(_, w, h)| i64::from(w) * i64::from(h)),
            pixels_out: image
                .as_ref()
                .map_or(0, |i| i64::from(i.width) * i64::from(i.height)),
            cpu_time_us: micros(done.cpu),
            input_format: input.map(|(f, _, _)| f.name().to_owned()),
            output_format: image
                .as_ref()
                .map(|i| ImageFormat::name(i.format).to_owned()),
            latency_us: now_ms().saturating_sub(request.received_at_ms).max(0) * 1000,
            source: UsageSource::Resizer,
        };
        let result = ResizeResult {
            request_id: request.request_id.clone(),
            tenant_id: request.tenant_id.clone(),
            completed_at_ms: now_ms(),
            image,
            error,
            timings,
        };
        // Shutdown while the registry is down: the record is left unfinished, so it is never
        // committed and is redone by the partition's next owner.
        let Some(reply) = self.encode_retrying(&result).await? else {
            return Ok(());
        };
        let Some(usage_payload) = self.encode_retrying(&usage).await? else {
            return Ok(());
        };
        let traceparent = pending.trace.header();
        let headers = OwnedHeaders::new().insert(Header {
            key: TRACEPARENT,
            value: Some(&traceparent),
        });
        let source = (pending.partition, pending.offset);
        let outputs = vec![
            OutRecord {
                source,
                topic: request.reply_topic.clone(),
                partition: Some(request.reply_partition),
                key: request.request_id.clone(),
                payload: reply,
                headers: headers.clone(),
            },
            OutRecord {
                source,
                topic: self.codec.topic::<UsageRecorded>(),
                partition: None,
                key: request.tenant_id.clone(),
                payload: usage_payload,
                headers,
            },
        ];
        self.tracker
            .complete(pending.partition, pending.offset, outputs);
        Ok(())
    }

    fn observe(&self, timings: &StageTimings) {
        for (stage, us) in timings.stages() {
            self.metrics
                .stage_seconds
                .with_label_values(&[stage])
                .observe(us as f64 / 1e6);
        }
    }

    /// Encodes a result. The registry is only needed on first use per schema, so retrying only
    /// ever waits while it is down at start-up. A permanent failure means our own output does
    /// not fit its schema (a bug, or a registry refusing the schema): no record of this
    /// partition could ever be committed, so the resizer stops loudly instead of stalling.
    /// `None` when shutdown started while waiting: the record is abandoned uncommitted.
    async fn encode_retrying<E: schemas::Event>(
        &self,
        event: &E,
    ) -> Result<Option<Vec<u8>>, ResizerError> {
        let mut backoff = RetryPolicy::DEPENDENCY.backoff();
        loop {
            match self.codec.encode(event).await {
                Ok(bytes) => return Ok(Some(bytes)),
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, attempt = backoff.attempts() + 1, "Schema registry unavailable; retrying the encode");
                    if backoff.wait(&self.shutdown).await.is_err() {
                        return Ok(None);
                    }
                }
                Err(error) => {
                    tracing::error!(%error, topic = E::TOPIC, "Result does not fit its schema; stopping");
                    return Err(ResizerError::Encode(error));
                }
            }
        }
    }

    /// A record that cannot be processed: its original bytes, with the error class (e.g.
    /// `undecodable_request`), the error and its origin in headers.
    fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        class: &'static str,
        error: &dyn std::fmt::Display,
    ) -> OutRecord {
        self.metrics.dlq_records.inc();
        self.metrics.jobs.with_label_values(&[class]).inc();
        tracing::warn!(
            partition = message.partition(),
            offset = message.offset(),
            class,
            %error,
            "Record sent to the dead-letter topic"
        );
        let source = (message.partition(), message.offset());
        let headers = with_error(
            OwnedHeaders::new(),
            class,
            &error.to_string(),
            message.topic(),
            source,
        );
        OutRecord {
            source,
            topic: self.dlq_topic.clone(),
            partition: None,
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }

    /// Writes every ready output and its input offsets in one transaction.
    async fn flush(&mut self) -> Result<(), ResizerError> {
        let (outputs, ranges) = self.tracker.take_ready(self.config.transaction_max_records);
        if outputs.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let count = outputs.len();
        let outputs: Outputs = outputs.into_iter().flatten().collect();
        match self.commit(outputs, &ranges).await {
            Ok(()) => {
                self.metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
                self.metrics
                    .transaction_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.transaction_records.observe(count as f64);
                self.stall.progressed(!self.tracker.is_empty());
                Ok(())
            }
            Err(CommitFailure { error, .. }) if is_fatal(&error) => {
                tracing::error!(%error, "Transactional producer fenced or failed fatally; stopping");
                Err(ResizerError::Fatal(error))
            }
            Err(CommitFailure { error, unwritable }) => {
                if let Some((source, reason)) = unwritable {
                    // Re-read, this input is dead-lettered instead of failing the same way again.
                    self.unwritable.insert(source, reason);
                }
                self.metrics
                    .transactions
                    .with_label_values(&["aborted"])
                    .inc();
                tracing::warn!(%error, "Transaction failed; aborting and re-reading its records");
                let producer = self.producer.clone();
                let aborted = tokio::task::spawn_blocking(move || {
                    producer.abort_transaction(KAFKA_CALL_TIMEOUT)
                })
                .await
                .unwrap_or(Err(KafkaError::Canceled));
                if let Err(error) = aborted {
                    tracing::error!(%error, "Aborting the transaction failed; stopping");
                    return Err(ResizerError::Fatal(error));
                }
                self.rewind(&ranges);
                Ok(())
            }
        }
    }

    /// One transaction: every output, then the input offsets. An output refused at once for a
    /// permanent reason (say, a reply partition that does not exist) is replaced by a DLQ
    /// record in the same transaction; one that fails permanently on delivery aborts the
    /// transaction, and the failure names its input so that input is dead-lettered when re-read.
    async fn commit(&self, outputs: Outputs, ranges: &[TakenRange]) -> Result<(), CommitFailure> {
        self.producer.begin_transaction()?;
        let mut deliveries = Vec::with_capacity(outputs.len());
        for out in outputs {
            let delivery = match self.send(&out) {
                Ok(delivery) => delivery,
                Err(error) if chassis::kafka::is_permanent_record_error(&error) => {
                    let dlq = self.dead_letter_output(out, &error);
                    let delivery = self.send(&dlq).map_err(|error| CommitFailure {
                        unwritable: Some((dlq.source, Unwritable::of(&dlq, &error))),
                        error,
                    })?;
                    deliveries.push((dlq.source, dlq.topic, dlq.partition, delivery));
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            deliveries.push((out.source, out.topic, out.partition, delivery));
        }
        // Wait for every record's acknowledgement before committing. rust-rdkafka's
        // commit_transaction first flushes by polling in 100 ms steps, and with a threaded
        // producer the events it waits for are taken by the background thread: with anything
        // still outstanding, every transaction would cost 100 ms. With nothing outstanding the
        // flush returns at once.
        for (source, topic, partition, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) if chassis::kafka::is_permanent_record_error(&error) => {
                    let unwritable = Unwritable {
                        topic,
                        partition,
                        error: error.to_string(),
                    };
                    return Err(CommitFailure {
                        unwritable: Some((source, unwritable)),
                        error,
                    });
                }
                Ok(Err((error, _))) => return Err(error.into()),
                Err(_) => return Err(KafkaError::Canceled.into()),
            }
        }
        let mut offsets = TopicPartitionList::new();
        for range in ranges {
            offsets.add_partition_offset(
                &self.requests_topic,
                range.partition,
                Offset::Offset(range.next),
            )?;
        }
        let group = self.consumer.group_metadata().ok_or(KafkaError::Canceled)?;
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer.send_offsets_to_transaction(&offsets, &group, KAFKA_CALL_TIMEOUT)?;
            producer.commit_transaction(KAFKA_CALL_TIMEOUT)
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
        .map_err(CommitFailure::from)
    }

    /// Hands one record to the transactional producer.
    fn send(&self, out: &OutRecord) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
        let mut record = FutureRecord::to(&out.topic)
            .key(&out.key)
            .payload(&out.payload)
            .headers(out.headers.clone());
        if let Some(partition) = out.partition {
            record = record.partition(partition);
        }
        self.producer
            .send_result(record)
            .map_err(|(error, _)| error)
    }

    /// An output that can never be written, as a DLQ record: its bytes, with where it was going
    /// and why it could not get there in headers.
    fn dead_letter_output(&self, out: OutRecord, error: &KafkaError) -> OutRecord {
        self.metrics.dlq_records.inc();
        self.metrics
            .jobs
            .with_label_values(&["unwritable_output"])
            .inc();
        tracing::warn!(
            source_partition = out.source.0,
            source_offset = out.source.1,
            topic = %out.topic,
            partition = ?out.partition,
            %error,
            "Output cannot be written; sent to the dead-letter topic"
        );
        let unwritable = Unwritable::of(&out, error);
        let headers = with_error(
            out.headers,
            "unwritable_output",
            &unwritable.error,
            &self.requests_topic,
            out.source,
        );
        OutRecord {
            source: out.source,
            topic: self.dlq_topic.clone(),
            partition: None,
            key: out.key,
            payload: out.payload,
            headers: with_target(headers, &unwritable),
        }
    }

    /// After an abort: forget the partitions' tracked work and read them again from the first
    /// record of the aborted transaction (its results were never visible).
    fn rewind(&mut self, ranges: &[TakenRange]) {
        for range in ranges {
            self.tracker.forget(range.partition);
            if let Err(error) = self.consumer.seek(
                &self.requests_topic,
                range.partition,
                Offset::Offset(range.first),
                KAFKA_CALL_TIMEOUT,
            ) {
                // The partition was probably revoked; its new owner starts from the commit.
                tracing::warn!(partition = range.partition, %error, "Rewind failed");
            }
        }
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
                let lag: i64 = positions
                    .elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(position) => consumer
                            .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(1))
                            .ok()
                            .map(|(_, high)| (high - position).max(0)),
                        _ => None,
                    })
                    .sum();
                gauge.set(lag);
            }
            busy.store(false, Ordering::Release);
        });
    }
}

/// `headers` plus why a record is dead-lettered (`error.class`, `error.message`) and which input
/// it comes from (`source.topic`, `source.partition`, `source.offset`).
fn with_error(
    headers: OwnedHeaders,
    class: &str,
    error: &str,
    source_topic: &str,
    source: (i32, i64),
) -> OwnedHeaders {
    let (partition, offset) = (source.0.to_string(), source.1.to_string());
    headers
        .insert(Header {
            key: "error.class",
            value: Some(class),
        })
        .insert(Header {
            key: "error.message",
            value: Some(error),
        })
        .insert(Header {
            key: "source.topic",
            value: Some(source_topic),
        })
        .insert(Header {
            key: "source.partition",
            value: Some(&partition),
        })
        .insert(Header {
            key: "source.offset",
            value: Some(&offset),
        })
}

/// `headers` plus where an unwritable output was going (`target.topic`, `target.partition`).
fn with_target(headers: OwnedHeaders, unwritable: &Unwritable) -> OwnedHeaders {
    let partition = unwritable
        .partition
        .map(|p| p.to_string())
        .unwrap_or_default();
    headers
        .insert(Header {
            key: "target.topic",
            value: Some(&unwritable.topic),
        })
        .insert(Header {
            key: "target.partition",
            value: Some(&partition),
        })
}

/// Whether a transaction error means this producer can never commit again.
fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(rd) => rd.is_fatal(),
        _ => false,
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

fn dim(pixels: u32) -> i32 {
    i32::try_from(pixels).unwrap_or(i32::MAX)
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
