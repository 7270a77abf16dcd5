//! The usage aggregator, ClickHouse migrations and usage queries (being written).

use serde::{Deserialize, Serialize};

/// Settings of `imgpipe aggregator`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {}

/// Why the aggregator stopped.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {}

/// Runs the usage aggregator until shutdown.
pub async fn run(
    _kafka: chassis::kafka::KafkaConfig,
    _registry: schemas::RegistryConfig,
    _clickhouse: chassis::clickhouse::ClickHouseConfig,
    _config: AggregatorConfig,
    ctx: chassis::ServiceContext,
) -> Result<(), AggregatorError> {
    ctx.shutdown.wait().await;
    Ok(())
}
