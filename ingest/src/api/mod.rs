//! The api (data plane): authenticates a tenant, validates the request, writes it to
//! `image.requests` and answers the HTTP call when the reply arrives on the correlation topic.
//! Stateless apart from its identity view and the requests waiting for replies.
//!
//! - [`routes`]: the HTTP handlers (`app(state) -> Router`).
//! - [`call`]: one image request from arrival to answer (produce, await the reply, answer, bill).
//! - [`signed_get`]: `GET /v1/img/...`, signed URLs in imgproxy's format ([`imgproxy`] parses them).
//! - [`web_cache`]: how signed GETs' answers are cached and negotiated (`Cache-Control`, `ETag`,
//!   `Vary: Accept`, the 304 of a revalidation).
//! - [`replies`]: reply partition ownership and routing ([`ReplyRouter`]).
//! - [`publisher`]: producing requests and api-side usage records.
//! - [`params`]: query parameters → the contract's `ResizeParams`.
//! - [`imgproxy`]: signed GET URLs in imgproxy's format → the contract's `ResizeParams`.
//! - [`problem`]: the api's refusals (the shared `chassis::http::Problem`).
//! - [`usage`]: `GET /v1/usage`.
//! - [`openapi`]: the `/openapi.json` document.

pub mod call;
pub mod config;
pub mod imgproxy;
pub mod metrics;
pub mod openapi;
pub mod params;
pub mod problem;
pub mod publisher;
pub mod replies;
pub mod routes;
pub mod signed_get;
pub mod state;
pub mod usage;
pub mod web_cache;

use std::sync::Arc;

use chassis::ServiceContext;
use chassis::clickhouse::ClickHouseConfig;
use chassis::kafka::KafkaConfig;
use chassis::source::{FetchSettings, Fetcher};
use schemas::{Codec, RegistryConfig};

pub use config::ApiConfig;
pub use replies::ReplyRouter;
pub use routes::app;
pub use state::AppState;

use crate::auth::{AuthConfig, IdentityView};

/// Readiness check of the Kafka producer.
const KAFKA_READINESS: &str = "kafka-producer";

/// Why the api stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Invalid `[api]` settings.
    #[error("invalid api configuration: {0}")]
    Config(String),
    /// Kafka clients could not be created.
    #[error(transparent)]
    Kafka(#[from] chassis::kafka::KafkaSetupError),
    /// The reply reader could not start.
    #[error(transparent)]
    Replies(#[from] replies::ReplyReaderError),
    /// The identity view could not start.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthSetupError),
    /// Metrics could not be registered.
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The HTTP listener failed.
    #[error(transparent)]
    Serve(#[from] chassis::http::ServeError),
    /// The HTTP client for origins could not be built (no TLS roots).
    #[error("building the origin client: {0}")]
    Sources(#[source] reqwest::Error),
}

/// What `imgpipe api` runs with: its own section and the shared ones it reads.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Brokers and topics.
    pub kafka: KafkaConfig,
    /// The schema registry.
    pub registry: RegistryConfig,
    /// Where `GET /v1/usage` reads.
    pub clickhouse: ClickHouseConfig,
    /// The `[api]` section.
    pub api: ApiConfig,
    /// The identity view's bounds.
    pub auth: AuthConfig,
    /// The secret signing keys are derived from.
    pub signing: crate::signing::SigningConfig,
    /// How origins are asked whether a source changed: the resizers' own rules
    /// (`resizer.source_*`), so the api reaches no origin a resizer would not.
    pub sources: FetchSettings,
}

/// Runs the api until shutdown: in-flight requests finish (up to their deadline) before it returns.
pub async fn run(settings: ApiSettings, ctx: ServiceContext) -> Result<(), ApiError> {
    let ApiSettings {
        kafka,
        registry,
        clickhouse,
        api: config,
        auth,
        signing,
        sources,
    } = settings;
    let mut errors = Vec::new();
    config.validate(&mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Config(errors.join("; ")));
    }
    let metrics = metrics::ApiMetrics::register(&ctx.metrics)?;
    let codec = Arc::new(Codec::new(&registry, &kafka.namespace));
    let view = IdentityView::start(&kafka, &registry, &auth, &signing, &ctx).await?;
    let publisher = Arc::new(publisher::KafkaPublisher::new(
        &kafka,
        codec.clone(),
        metrics.clone(),
    )?);
    let router = ReplyRouter::new(replies::reply_topic(&kafka), config.max_concurrent_requests);
    replies::start_reader(
        &kafka,
        &config.instance_id,
        router.clone(),
        codec,
        metrics.clone(),
        &ctx,
    )?;
    ctx.tasks.spawn_until_shutdown(
        "broker-health",
        watch_broker_health(publisher.clone(), ctx.clone()),
    );

    let state = AppState {
        auth: view,
        publisher: publisher.clone(),
        replies: router,
        usage: Some(usage::ClickHouseUsage::new(clickhouse)),
        metrics,
        config: Arc::new(config),
        sources: Fetcher::new(&sources).map_err(ApiError::Sources)?,
        // Checked with the rest of the configuration at start-up; a bad secret refuses every GET.
        signing: signing.secret().ok().flatten().map(Arc::new),
    };
    let listen = state.config.listen;
    let router = app(state, &ctx.http);
    let served =
        chassis::http::bind_and_serve("Api", listen, router, &ctx.http, ctx.shutdown.clone()).await;
    // Usage records of the last answers may still be queued (the usage producer lingers). Bounded:
    // with Kafka gone, shutdown must not hang.
    publisher.flush(std::time::Duration::from_secs(5)).await;
    served?;
    Ok(())
}

/// Probes Kafka while it is down and mirrors its health into readiness, so a load balancer stops
/// sending while Kafka is gone and resumes by itself when it returns.
async fn watch_broker_health(publisher: Arc<publisher::KafkaPublisher>, ctx: ServiceContext) {
    let health = publisher.health();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let mut was_up = None;
    loop {
        tokio::select! {
            () = ctx.shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let up = health.is_up() || publisher.probe().await;
        if was_up != Some(up) {
            if up {
                ctx.readiness.ready(KAFKA_READINESS);
            } else {
                tracing::warn!("No Kafka broker is up; refusing resize requests with 503");
                ctx.readiness
                    .not_ready(KAFKA_READINESS, "no Kafka broker is up");
            }
            was_up = Some(up);
        }
    }
}

#[cfg(test)]
mod tests;
