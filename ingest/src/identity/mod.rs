//! The identity service (management plane): tenants, API keys, signing keys of signed GET URLs,
//! quotas and allowed sources, behind an admin HTTP API; the only writer of `identity.changes`, the compacted topic that is the system of record
//! and that every api instance replicates into its [`IdentityView`](crate::auth::IdentityView).
//!
//! - [`config`]: the `[identity]` section.
//! - [`store`]: state rebuilt from the topic, and the fenced transactional write path.
//! - [`routes`]: the admin API (`app(state) -> Router`).
//! - [`state`]: what every admin handler shares ([`AppState`]).
//! - [`audit`]: every admin call recorded on `identity.audit`.
//! - [`metrics`]: every metric name of this service.

pub mod audit;
pub mod config;
pub mod metrics;
pub mod routes;
pub mod state;
pub mod store;
#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests;

use std::sync::Arc;

use chassis::ServiceContext;
use chassis::kafka::{KafkaConfig, KafkaSetupError};
use schemas::{Codec, RegistryConfig};

use crate::identity_log::changes::{ChangesError, ChangesReader};
pub use config::IdentityConfig;
pub use routes::app;
pub use state::AppState;
use store::{IdentityStore, KafkaSink, READINESS_CHECK};

use crate::signing::SigningConfig;

/// The fixed transactional id (namespaced): every instance uses it, so the newest fences the rest.
pub const TRANSACTIONAL_ID: &str = "identity";

/// Why the identity service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    // Retryable.
    /// The transactional producer could not be created or registered.
    #[error("setting up the identity.changes producer: {0}")]
    Producer(#[source] KafkaSetupError),
    /// `identity.changes` could not be read back to rebuild state.
    #[error("rebuilding identity state from identity.changes: {0}")]
    Rebuild(#[source] ChangesError),
    // Permanent.
    /// The `[identity]` section breaks a rule; every broken rule is listed.
    #[error("invalid [identity] configuration:\n  - {}", .0.join("\n  - "))]
    InvalidConfig(Vec<String>),
    /// Metrics could not be registered.
    #[error("registering identity metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    /// The admin listener could not bind or failed.
    #[error(transparent)]
    Serve(#[from] chassis::http::ServeError),
}

impl IdentityError {
    /// Whether starting again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Producer(_) => true,
            Self::Rebuild(e) => e.is_retryable(),
            Self::InvalidConfig(_) | Self::Metrics(_) | Self::Serve(_) => false,
        }
    }
}

/// Sets the service up without serving: validates the config, registers the transactional id
/// (fencing any older instance), then rebuilds state by reading `identity.changes` to its end,
/// so the previous writer's committed writes are all seen. Serve the result with [`app`].
pub async fn open(
    kafka: &KafkaConfig,
    registry: &RegistryConfig,
    config: &IdentityConfig,
    ctx: &ServiceContext,
) -> Result<AppState, IdentityError> {
    let mut errors = Vec::new();
    config.check(&mut errors);
    if !errors.is_empty() {
        return Err(IdentityError::InvalidConfig(errors));
    }
    ctx.readiness
        .register(READINESS_CHECK, "rebuilding state from identity.changes");
    let metrics = metrics::IdentityMetrics::new(&ctx.metrics).map_err(IdentityError::Metrics)?;
    // Fence first, then read: once init_transactions returns, no older instance can commit, so
    // reading to the end offsets sees every write that will ever precede ours.
    let producer = kafka
        .transactional_producer(TRANSACTIONAL_ID)
        .await
        .map_err(IdentityError::Producer)?;
    let codec = Codec::new(registry, &kafka.namespace);
    let reader = ChangesReader::open(kafka, std::time::Duration::from_millis(100), &ctx.shutdown)
        .await
        .map_err(IdentityError::Rebuild)?;
    let state = store::rebuild(&reader, &codec, &metrics, &ctx.shutdown)
        .await
        .map_err(IdentityError::Rebuild)?;
    drop(reader);
    let audit = audit::AuditWriter::new(kafka, Codec::new(registry, &kafka.namespace))
        .map_err(IdentityError::Producer)?;
    let sink = KafkaSink::new(producer, codec, config.commit_timeout);
    let store = IdentityStore::new(
        state,
        Arc::new(sink),
        ctx.readiness.clone(),
        metrics.clone(),
    );
    ctx.readiness.ready(READINESS_CHECK);
    Ok(AppState::new(Arc::new(store), config, metrics).with_audit(audit))
}

/// Runs the identity service until shutdown: [`open`], then serves the admin API on
/// `config.listen`, issuing signing keys derived from `signing.secret` (refused while unset).
pub async fn run(
    kafka: KafkaConfig,
    registry: RegistryConfig,
    config: IdentityConfig,
    signing: SigningConfig,
    ctx: ServiceContext,
) -> Result<(), IdentityError> {
    let secret = signing
        .secret()
        .map_err(|error| IdentityError::InvalidConfig(vec![error]))?;
    if secret.is_none() {
        tracing::warn!(
            "signing.secret is not set; signing keys cannot be issued (503 signing_disabled)"
        );
    }
    let state = open(&kafka, &registry, &config, &ctx)
        .await?
        .with_signing(secret);
    let router = app(state, &ctx.http);
    chassis::http::bind_and_serve(
        "Identity admin API",
        config.listen,
        router,
        &ctx.http,
        ctx.shutdown.clone(),
    )
    .await?;
    Ok(())
}
