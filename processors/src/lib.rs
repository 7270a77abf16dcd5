//! The resizer: consumer group `resizers` turns `image.requests` into replies on `image.results`
//! and usage records, doing the image work in [`kernel`] on a bounded CPU pool.

pub mod kernel;

/// Settings of `imgpipe resizer` (being written).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ResizerConfig {}

/// Why the resizer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ResizerError {}

/// Runs a resizer until shutdown.
pub async fn run(
    _kafka: chassis::kafka::KafkaConfig,
    _registry: schemas::RegistryConfig,
    _config: ResizerConfig,
    ctx: chassis::ServiceContext,
) -> Result<(), ResizerError> {
    ctx.shutdown.wait().await;
    Ok(())
}
