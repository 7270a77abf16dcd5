//! The usage aggregator (`imgpipe aggregator`, consumer group `usage-aggregator`): reads
//! `usage.events` and keeps ClickHouse's usage tables exact under crashes, rebalances and replays;
//! plus the ClickHouse migrations (`imgpipe migrate`) and the tenant usage query the api serves.
//!
//! The modules read like the data path: [`config`] → [`consumer`] (rebalances, the loop) →
//! [`batcher`] (per-partition batches, ownership) → [`sink`] (`UsageSink`, offsets in
//! ClickHouse) → [`migrations`] (the tables and views) → [`rollup`] (settled usage windows);
//! beside it, [`audit`] copies the admin audit trail into ClickHouse.

pub mod audit;
pub mod batcher;
pub mod config;
pub mod consumer;
pub mod metrics;
pub mod migrations;
pub mod rollup;
pub mod sink;

use chassis::clickhouse::ClickHouseConfig;
use chassis::kafka::{KafkaConfig, KafkaSetupError};
use chassis::{ServiceContext, Validate};
use schemas::{Codec, RegistryConfig};

pub use config::{AggregatorConfig, GROUP_ID};
pub use migrations::{MigrationError, MigrationReport, migrate};
pub use sink::{SinkError, UsageSink};

use crate::consumer::{AggregatorContext, CLICKHOUSE_CHECK, REGISTRY_CHECK, UsageLoop};
use crate::metrics::Metrics;

/// Why the aggregator stopped. Retryable failures (ClickHouse or the registry down) never end up
/// here: the aggregator waits them out. What does is permanent and needs an operator.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// The `[aggregator]` section breaks a rule; every broken rule is listed.
    #[error("invalid aggregator configuration:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    /// Metrics could not be registered (a name registered twice).
    #[error("registering aggregator metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The Kafka consumer could not be created.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// Subscribing to the topic failed.
    #[error("subscribing to {topic}: {source}")]
    Subscribe {
        /// Topic.
        topic: String,
        /// Why.
        source: rdkafka::error::KafkaError,
    },
    /// Migrations failed permanently (bad SQL for this server, no permission).
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// ClickHouse refused usage data permanently (schema mismatch, authentication).
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl AggregatorError {
    /// Whether restarting the service may help. Everything returned is permanent by design.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Runs the usage aggregator (consumer group [`GROUP_ID`]) until shutdown, and beside it the
/// copy of the admin audit trail into ClickHouse ([`audit`]).
pub async fn run(
    kafka: KafkaConfig,
    registry: RegistryConfig,
    clickhouse: ClickHouseConfig,
    config: AggregatorConfig,
    ctx: ServiceContext,
) -> Result<(), AggregatorError> {
    ctx.tasks.spawn(
        "audit-trail",
        audit::run(
            kafka.clone(),
            Codec::new(&registry, &kafka.namespace),
            clickhouse.clone(),
            ctx.clone(),
        ),
    );
    run_in_group(kafka, registry, clickhouse, config, ctx, GROUP_ID).await
}

/// Runs the aggregator as a member of consumer group `group` (namespaced) instead of
/// [`GROUP_ID`]: `imgpipe ops usage rebuild` fills a fresh database this way while the real
/// group stays as it is. Positions still come from ClickHouse, so the group only shares out
/// partitions.
pub async fn run_in_group(
    kafka: KafkaConfig,
    registry: RegistryConfig,
    clickhouse: ClickHouseConfig,
    config: AggregatorConfig,
    ctx: ServiceContext,
    group: &str,
) -> Result<(), AggregatorError> {
    let mut errors = Vec::new();
    config.validate(&mut errors);
    if !errors.is_empty() {
        return Err(AggregatorError::Config(errors));
    }
    let metrics = Metrics::register(&ctx.metrics)?;
    ctx.readiness
        .register(CLICKHOUSE_CHECK, "connecting to ClickHouse");
    ctx.readiness.ready(REGISTRY_CHECK);

    let Some(sink) = connect(&clickhouse, &config, &ctx, &metrics).await? else {
        return Ok(());
    };
    metrics.clickhouse_up.set(1);
    ctx.readiness.ready(CLICKHOUSE_CHECK);
    let mark = rollup::SettleMark::default();
    let rollup = rollup::Rollup::new(
        sink.client().clone(),
        sink.database(),
        usage_partitions(),
        config.rollup_lateness,
        config.rollup_max_window,
    )
    .with_raw_retention(config.usage_raw_retention)
    .with_mark(mark.clone());
    ctx.tasks.spawn_until_shutdown(
        "usage-rollup",
        rollup.run(ctx.shutdown.clone(), config.rollup_interval),
    );

    let topic = kafka.name(schemas::topics::USAGE_EVENTS);
    let context = AggregatorContext::new(topic.clone(), metrics.lag.clone());
    let handles = context.handles();
    let mut consumer_config =
        kafka.group_consumer_config(group, chassis::kafka::ConsumerProfile::AtLeastOnce);
    // Lag per partition comes from librdkafka's statistics (see `AggregatorContext::stats`).
    consumer_config.set("statistics.interval.ms", "5000");
    // Nobody waits on a single usage record: let the broker hold a fetch until 64 KiB are there
    // or 100 ms passed, instead of answering (and being asked again) on every append. Batches
    // are written every `batch_max_age` anyway, so freshness barely moves.
    consumer_config
        .set("fetch.min.bytes", "65536")
        .set("fetch.wait.max.ms", "100");
    let consumer = kafka.consumer(&consumer_config, context)?;
    let codec = Codec::new(&registry, &kafka.namespace);
    tracing::info!(%topic, group = %kafka.name(group), "Usage aggregator consuming");
    UsageLoop::new(handles, sink, codec, config, metrics, ctx)?
        .with_mark(mark)
        .run(consumer)
        .await
}

/// How many partitions `usage.events` is created with (the rollup job waits for each).
pub fn usage_partitions() -> u32 {
    schemas::topics::spec(schemas::topics::USAGE_EVENTS)
        .and_then(|spec| u32::try_from(spec.partitions).ok())
        .unwrap_or(1)
}

/// Connects to ClickHouse and applies migrations, retrying while it is unavailable. `None`:
/// shutdown came first.
async fn connect(
    clickhouse: &ClickHouseConfig,
    config: &AggregatorConfig,
    ctx: &ServiceContext,
    metrics: &Metrics,
) -> Result<Option<UsageSink>, AggregatorError> {
    let mut backoff = config.retry_policy().backoff();
    loop {
        let attempt = async {
            let sink = UsageSink::connect(clickhouse, config.insert_timeout)
                .await
                .map_err(StartError::Sink)?;
            if config.migrate_on_start {
                let report = migrations::apply(sink.client(), sink.server(), sink.database())
                    .await
                    .map_err(StartError::Migration)?;
                tracing::info!(applied = ?report.applied, skipped = ?report.skipped, server = %report.server_version, "ClickHouse schema up to date");
            }
            Ok::<_, StartError>(sink)
        };
        let error = tokio::select! {
            () = ctx.shutdown.wait() => return Ok(None),
            result = attempt => match result {
                Ok(sink) => return Ok(Some(sink)),
                Err(error) if error.is_retryable() => error,
                Err(StartError::Sink(error)) => return Err(error.into()),
                Err(StartError::Migration(error)) => return Err(error.into()),
            },
        };
        metrics.clickhouse_up.set(0);
        ctx.readiness.not_ready(
            CLICKHOUSE_CHECK,
            &format!("ClickHouse unavailable at start: {error}"),
        );
        tracing::warn!(%error, attempt = backoff.attempts() + 1, "ClickHouse unavailable at start; retrying");
        if backoff.wait(&ctx.shutdown).await.is_err() {
            return Ok(None);
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Sink(SinkError),
    #[error(transparent)]
    Migration(MigrationError),
}

impl StartError {
    fn is_retryable(&self) -> bool {
        match self {
            Self::Sink(error) => error.is_retryable(),
            Self::Migration(error) => error.is_retryable(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The host spawns `run` on a multi-threaded runtime, so its future must be `Send`.
    #[test]
    fn run_is_send() {
        let future = run(
            KafkaConfig::default(),
            RegistryConfig::default(),
            ClickHouseConfig::default(),
            AggregatorConfig::default(),
            ServiceContext::new(chassis::Shutdown::new()),
        );
        assert_send(&future);
    }
}
