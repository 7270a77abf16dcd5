//! The resizer's consume → resize → produce loop, exactly once.
//!
//! One task owns the consumer and an [`OffsetTracker`](crate::offsets::OffsetTracker). Records
//! are decoded there, their image work runs on the bounded CPU pool, and each finished request's
//! reply is sent at once by a plain idempotent producer: the requester never waits for a commit.
//! Its usage record (or a DLQ record) waits in the tracker until every earlier record of its
//! partition is finished too. A flush (by count or age) writes the usage and DLQ records of that
//! contiguous run, plus the input offsets, in one Kafka transaction, which commits in its own
//! task while the loop goes on.
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
//! One type per job, in the order a record meets them:
//! - `resize_loop`: `ResizeLoop`, the loop itself (consumer, pool, tracker, `select!` over one
//!   `Event` enum, one `process_*` method per event);
//! - `fetches`: `SourceFetches`, the sources given by reference downloading (see
//!   [`chassis::source`]) before their image work goes to the pool;
//! - `job`: `ResizePool`, the image work on the CPU pool;
//! - `answer`: the reply and usage record a finished job gets (pure);
//! - `dead_letter`: the DLQ record of an input or output that cannot go on (pure);
//! - `outputs`: what a finished record leaves for its transaction;
//! - `transaction`: `Transactions`, one after another (flush, settle, producer replacement,
//!   unwritable inputs);
//! - `commit`: `Committer`, one transaction.
//!
//! This module builds the clients and the parts, and runs the loop.

use std::sync::Arc;

use chassis::ServiceContext;
use chassis::kafka::{ConsumerProfile, KafkaConfig, ProducerProfile};
use chassis::rebalance::{InboxContext, RebalanceInbox};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use schemas::topics::{IMAGE_REQUESTS, IMAGE_REQUESTS_DLQ};
use schemas::{Codec, CodecError};

use crate::config::ResizerConfig;
use crate::metrics::ResizerMetrics;

mod answer;
mod commit;
mod dead_letter;
mod fetches;
mod job;
mod outputs;
mod resize_loop;
mod transaction;

use commit::Committer;
use fetches::SourceFetches;
use job::ResizePool;
use resize_loop::{Parts, ResizeLoop};
use transaction::{ProducerRebuild, Transactions};

/// Consumer group of all resizers.
pub const GROUP: &str = "resizers";

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
    /// A result could not be encoded for a permanent reason (see `ResizeLoop::encode`).
    #[error("encoding a result: {0}")]
    Encode(CodecError),
    /// Metrics could not be registered.
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The CPU pool could not be built.
    #[error("building the CPU pool: {0}")]
    Pool(#[from] rayon::ThreadPoolBuildError),
    /// The HTTP client that fetches sources could not be built (its TLS set-up).
    #[error("building the source fetcher: {0}")]
    Fetcher(#[from] reqwest::Error),
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
    // Replies are sent outside the transactions (see `outputs::SentReply`), as soon as each
    // is ready: no linger, a client waits on every one.
    let reply_producer = kafka.producer_for(ProducerProfile::LowLatency, "reply producer")?;

    let requests_topic = kafka.name(IMAGE_REQUESTS);
    let inbox = RebalanceInbox::new(requests_topic.clone());
    let consumer_config = kafka.group_consumer_config(GROUP, ConsumerProfile::Transactional);
    let consumer: StreamConsumer<InboxContext> = kafka.consumer(
        &consumer_config,
        InboxContext::new("resizer", inbox.clone()),
    )?;
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
    let dlq_topic = kafka.name(IMAGE_REQUESTS_DLQ);
    let committer = Committer {
        producer,
        consumer: Arc::clone(&consumer),
        requests_topic,
        dlq_topic: dlq_topic.clone(),
        metrics: metrics.clone(),
    };
    let transactions = Transactions::new(
        committer,
        ProducerRebuild::new(producer_kafka, transactional_id),
        config.transaction_max_records,
        ctx.readiness.clone(),
        stall.clone(),
        ctx.shutdown.clone(),
    );
    // An image bigger than one record would fail inside the transaction; the kernel refuses it
    // instead, as a per-request 4xx.
    let limits = config.limits(
        kafka
            .max_message_bytes
            .min(schemas::topics::IMAGE_TOPIC_MAX_MESSAGE_BYTES),
    );
    let fetcher = chassis::source::Fetcher::new(&config.fetch_settings())?;
    let resize_loop = ResizeLoop::new(Parts {
        consumer,
        inbox,
        codec: Codec::new(&registry, &kafka.namespace),
        pool: ResizePool::new(pool, limits),
        fetches: SourceFetches::new(fetcher, limits.max_input_bytes),
        transactions,
        reply_producer,
        dlq_topic,
        max_in_flight: config.effective_max_in_flight(),
        stall,
        shutdown: ctx.shutdown.clone(),
        metrics,
        config,
    });
    let result = resize_loop.run().await;
    ctx.readiness.not_ready("resizer", "stopped");
    result
}
