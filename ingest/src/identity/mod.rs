//! The identity service (management plane): tenants, API keys, quotas; the only writer of
//! `identity.changes` (being written).

use serde::{Deserialize, Serialize};

/// Settings of `imgpipe identity`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {}

/// Why the identity service stopped.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {}

/// Runs the identity service until shutdown.
pub async fn run(
    _kafka: chassis::kafka::KafkaConfig,
    _registry: schemas::RegistryConfig,
    _config: IdentityConfig,
    ctx: chassis::ServiceContext,
) -> Result<(), IdentityError> {
    ctx.shutdown.wait().await;
    Ok(())
}
