//! `imgpipe ops`: the operators' tools, built on the same config as the services — consumer-group
//! offsets, the dead-letter topic, usage rebuilds, decoded topic tails and the admin audit trail.
//! A crate of its own beside the aggregator whose tables it rebuilds and whose inputs it
//! replays; the `imgpipe` binary parses [`OpsArgs`] and calls [`run`] with the sections of its
//! configuration that the tools read ([`OpsConfig`]).
//!
//! Every command that changes state first computes and prints a plan, and carries it out only
//! with `--execute`; each refuses what would corrupt state (resetting a group that has members)
//! and can be re-run after a crash without losing or repeating work.

pub mod audit;
pub mod dlq;
pub mod offsets;
pub mod tail;
pub mod usage;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aggregators::AggregatorConfig;
use chassis::clickhouse::ClickHouseConfig;
use chassis::kafka::KafkaConfig;
use clap::{Args, Subcommand};
use schemas::RegistryConfig;

/// The sections of the deployment's configuration that the tools read: the very values the
/// services run with, so a tool sees the topics, groups and tables they use.
#[derive(Debug, Clone)]
pub struct OpsConfig {
    /// Kafka connection and namespace.
    pub kafka: KafkaConfig,
    /// Schema registry (decoding records).
    pub registry: RegistryConfig,
    /// ClickHouse (usage rebuilds).
    pub clickhouse: ClickHouseConfig,
    /// The usage aggregator's settings (a rebuild runs one).
    pub aggregator: AggregatorConfig,
}

/// Why an ops command could not do its work. Every variant says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// A Kafka call failed (broker down, timed out, refused).
    #[error("{operation}: {source}")]
    Kafka {
        /// What was being done.
        operation: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// Creating a Kafka client failed.
    #[error(transparent)]
    Setup(#[from] chassis::kafka::KafkaSetupError),
    /// The command would corrupt state and was refused; nothing was changed.
    #[error("refused: {0}")]
    Refused(String),
    /// An argument names something that does not exist or does not parse.
    #[error("{0}")]
    BadArgument(String),
    /// A dependency (ClickHouse, Kafka) does not answer; nothing was changed by this step.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A blocking task panicked or was cancelled.
    #[error("ops task failed: {0}")]
    Task(String),
}

impl OpsError {
    pub(crate) fn kafka(
        operation: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let operation = operation.into();
        move |source| Self::Kafka { operation, source }
    }
}

/// The client context of the ops readers: they ask librdkafka to report the end of each
/// partition (`enable.partition.eof`) to know when a scan is done, and librdkafka also reports
/// that as a client error, which the default context would log at ERROR. Everything else is
/// logged as usual.
pub(crate) struct ScanContext;

impl rdkafka::ClientContext for ScanContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!(%error, reason, "Kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ScanContext {}

/// A consumer for a scan to the end, from `config`.
pub(crate) fn scan_consumer(
    config: &rdkafka::ClientConfig,
    role: &'static str,
) -> Result<rdkafka::consumer::StreamConsumer<ScanContext>, OpsError> {
    config
        .create_with_context(ScanContext)
        .map_err(|source| OpsError::Setup(chassis::kafka::KafkaSetupError::Create { role, source }))
}

/// The partition ids of `topic` (namespaced), from the cluster's metadata; an error naming the
/// topic if it does not exist.
pub(crate) fn topic_partitions<
    C: rdkafka::consumer::Consumer<X>,
    X: rdkafka::consumer::ConsumerContext,
>(
    consumer: &C,
    topic: &str,
) -> Result<Vec<i32>, OpsError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_CALL_TIMEOUT)
        .map_err(OpsError::kafka(format!("reading metadata of {topic}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(OpsError::BadArgument(format!(
            "topic {topic} does not exist"
        )));
    }
    Ok(partitions)
}

/// How long a single Kafka admin or offset call may take before the command gives up.
pub(crate) const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `imgpipe ops …`
#[derive(Debug, Args)]
pub struct OpsArgs {
    /// The tool to run.
    #[command(subcommand)]
    pub command: OpsCommand,
}

/// The operators' tools.
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Consumer-group offsets: show them, or reset them (the group must have no members).
    Offsets {
        /// Show or reset.
        #[command(subcommand)]
        action: offsets::OffsetsAction,
    },
    /// The dead-letter topic image.requests.dlq: list, show, redrive or purge its records.
    Dlq {
        /// What to do.
        #[command(subcommand)]
        action: dlq::DlqAction,
    },
    /// Prints a topic's records as JSON lines, decoded from Avro through the schema registry.
    Tail(tail::TailArgs),
    /// The admin audit trail (identity.audit): who did what to a tenant, from where.
    Audit(audit::AuditArgs),
    /// ClickHouse's usage tables: rebuild them from usage.events.
    Usage {
        /// What to do.
        #[command(subcommand)]
        action: usage::UsageAction,
    },
}

/// Runs one ops command, printing its plan or result on stdout.
pub async fn run(config: &OpsConfig, args: OpsArgs) -> Result<(), OpsError> {
    match args.command {
        OpsCommand::Offsets { action } => {
            let kafka = config.kafka.clone();
            tokio::task::spawn_blocking(move || offsets::run(&kafka, action))
                .await
                .map_err(|e| OpsError::Task(e.to_string()))?
        }
        OpsCommand::Dlq { action } => dlq::run(config, action).await,
        OpsCommand::Tail(args) => tail::run(config, args).await,
        OpsCommand::Usage { action } => usage::run(config, action).await,
        OpsCommand::Audit(args) => audit::run(config, args).await,
    }
}

/// A point in time given on the command line: RFC 3339 with any offset
/// (`2026-11-30T17:00:00Z`, `…+02:00`), a date and time without an offset (taken as UTC), or a
/// Unix timestamp in milliseconds.
pub fn parse_datetime(text: &str) -> Result<SystemTime, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_millis(ms));
    }
    let timestamp = text.parse::<jiff::Timestamp>().or_else(|_| {
        text.parse::<jiff::civil::DateTime>()
            .and_then(|civil| civil.to_zoned(jiff::tz::TimeZone::UTC))
            .map(|zoned| zoned.timestamp())
    });
    timestamp
        .map(SystemTime::from)
        .map_err(|e| format!("{text:?} is neither RFC 3339 nor Unix milliseconds: {e}"))
}

/// Milliseconds since the Unix epoch, as Kafka timestamps count.
pub(crate) fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A Kafka timestamp for people: RFC 3339 in UTC, to the millisecond.
pub(crate) fn format_ms(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

/// The closing line of a dry run.
pub(crate) const DRY_RUN_NOTICE: &str = "Dry run: nothing changed. Re-run with --execute to apply.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_parse_as_rfc3339_utc_or_unix_milliseconds() {
        let expected = UNIX_EPOCH + Duration::from_secs(1_764_522_000);
        assert_eq!(parse_datetime("2025-11-30T17:00:00Z"), Ok(expected));
        assert_eq!(parse_datetime("2025-11-30T17:00:00"), Ok(expected));
        assert_eq!(parse_datetime("2025-11-30 17:00:00"), Ok(expected));
        assert_eq!(parse_datetime("1764522000000"), Ok(expected));
        assert_eq!(parse_datetime("2025-11-30T19:00:00+02:00"), Ok(expected));
        assert_eq!(parse_datetime("2025-11-30t17:00:00z"), Ok(expected));
        assert!(parse_datetime("yesterday").is_err());
        assert_eq!(format_ms(1_764_522_000_123), "2025-11-30T17:00:00.123Z");
    }
}
