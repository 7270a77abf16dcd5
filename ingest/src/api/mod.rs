//! The api (data plane): authenticate, validate, produce the request, await the reply (being written).

use serde::{Deserialize, Serialize};

/// Settings of `imgpipe api`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {}

/// Why the api stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {}

/// Runs the api until shutdown.
pub async fn run(
    _kafka: chassis::kafka::KafkaConfig,
    _registry: schemas::RegistryConfig,
    _clickhouse: chassis::clickhouse::ClickHouseConfig,
    _config: ApiConfig,
    _auth: crate::auth::AuthConfig,
    ctx: chassis::ServiceContext,
) -> Result<(), ApiError> {
    ctx.shutdown.wait().await;
    Ok(())
}
