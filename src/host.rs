//! Hosts services in this process: provisions topics and schemas, starts each service with its
//! own [`ServiceContext`], serves one ops endpoint for all of them, and stops everything when any
//! service fails or shutdown is signalled. `imgpipe all` is the same code with every service.

use std::net::SocketAddr;

use chassis::{Readiness, ServiceContext, Shutdown, Tasks};
use tokio::task::JoinSet;

use crate::Config;

/// One of the long-running services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// The data plane HTTP api.
    Api,
    /// The management plane (tenants, keys).
    Identity,
    /// A member of the `resizers` consumer group.
    Resizer,
    /// A member of the `usage-aggregator` consumer group.
    Aggregator,
}

impl Service {
    /// Every service, in start order (identity first: the api's view reads what it writes).
    pub const ALL: [Service; 4] = [Self::Identity, Self::Aggregator, Self::Resizer, Self::Api];

    /// Name in logs and readiness.
    pub fn name(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Identity => "identity",
            Self::Resizer => "resizer",
            Self::Aggregator => "aggregator",
        }
    }

    fn default_ops_port(self) -> u16 {
        match self {
            Self::Api => 9101,
            Self::Identity => 9102,
            Self::Resizer => 9103,
            Self::Aggregator => 9104,
        }
    }
}

/// Why hosting stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The configuration breaks rules of the selected services; nothing was contacted.
    #[error(transparent)]
    Config(#[from] chassis::ConfigError),
    /// Topics or schemas could not be provisioned.
    #[error("provisioning topics and schemas: {0}")]
    Provision(#[from] crate::provision::ProvisionError),
    /// The ops endpoint could not bind.
    #[error("ops endpoint on {address}: {source}")]
    Ops {
        /// Address tried.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A supervised background task failed; every service was stopped.
    #[error(transparent)]
    Task(#[from] chassis::TaskFailure),
    /// A service failed; the others were stopped.
    #[error("{service} failed: {source}")]
    Service {
        /// Which.
        service: &'static str,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Runs `services` until `shutdown` triggers or one of them fails.
pub async fn run(
    config: Config,
    services: &[Service],
    shutdown: Shutdown,
) -> Result<(), HostError> {
    // Every rule first: a bad setting must not leave topics half-provisioned behind it.
    let problems = config.problems_for(services);
    if !problems.is_empty() {
        return Err(chassis::ConfigError::Invalid(problems).into());
    }
    let report = crate::provision::ensure_all(&config.kafka, &config.registry).await?;
    tracing::info!(
        created = ?report.created,
        schemas = report.schemas.len(),
        "Topics and schemas provisioned"
    );

    let ops_address = config.ops.listen.unwrap_or_else(|| {
        let port = match services {
            [one] => one.default_ops_port(),
            _ => 9100,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    });
    let readiness = Readiness::default();
    let background = Tasks::new(shutdown.clone());
    let mut registries = Vec::new();
    let mut tasks: JoinSet<Result<(), HostError>> = JoinSet::new();

    for &service in services {
        let ctx = ServiceContext {
            readiness: readiness.clone(),
            metrics: prometheus::Registry::new(),
            shutdown: shutdown.clone(),
            tasks: background.clone(),
            http: config.http.clone(),
        };
        registries.push(ctx.metrics.clone());
        let config = config.clone();
        tasks.spawn(async move {
            let name = service.name();
            tracing::info!(service = name, "Starting");
            let result = run_one(service, config, ctx).await;
            result.map_err(|source| HostError::Service {
                service: name,
                source,
            })
        });
    }

    let listener = tokio::net::TcpListener::bind(ops_address)
        .await
        .map_err(|source| HostError::Ops {
            address: ops_address,
            source,
        })?;
    let ops_shutdown = shutdown.clone();
    let http = config.http.clone();
    tasks.spawn(async move {
        chassis::ops::serve(listener, registries, readiness, &http, ops_shutdown)
            .await
            .map_err(|source| HostError::Ops {
                address: ops_address,
                source,
            })
    });

    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|join| {
            Err(HostError::Service {
                service: "task",
                source: Box::new(join),
            })
        });
        if let Err(error) = result {
            tracing::error!(%error, "Service failed; stopping the others");
            shutdown.trigger();
            first_error.get_or_insert(error);
        } else if !shutdown.is_triggered() {
            // A service that returns on its own without shutdown is a bug; stop cleanly anyway.
            tracing::warn!("A service stopped on its own; stopping the others");
            shutdown.trigger();
        }
    }
    // Background tasks stop with shutdown; wait (bounded) so consumers leave their groups.
    if !background.wait(chassis::shutdown::DRAIN_DEADLINE).await {
        tracing::warn!("Background tasks still running after the drain deadline");
    }
    if let Some(failure) = background.failure() {
        first_error.get_or_insert(HostError::Task(failure));
    }
    first_error.map_or(Ok(()), Err)
}

async fn run_one(
    service: Service,
    c: Config,
    ctx: ServiceContext,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match service {
        Service::Api => {
            let settings = ingest::api::ApiSettings {
                sources: c.resizer.fetch_settings(),
                kafka: c.kafka,
                registry: c.registry,
                clickhouse: c.clickhouse,
                api: c.api,
                auth: c.auth,
                signing: c.signing,
            };
            ingest::api::run(settings, ctx).await?
        }
        Service::Identity => {
            ingest::identity::run(c.kafka, c.registry, c.identity, c.signing, ctx).await?
        }
        Service::Resizer => processors::run(c.kafka, c.registry, c.resizer, ctx).await?,
        Service::Aggregator => {
            aggregators::run(c.kafka, c.registry, c.clickhouse, c.aggregator, ctx).await?
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bad setting stops start-up before any connection: with no broker listening, reaching
    /// the network would take the provisioning timeout; the refusal is immediate.
    #[tokio::test]
    async fn a_bad_config_is_refused_before_any_network_call() {
        let mut config = Config::default();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        config.kafka.brokers = closed.local_addr().unwrap().to_string();
        drop(closed);
        config.api.max_body_bytes = 64 * 1024 * 1024;
        let started = std::time::Instant::now();
        let result = run(config, &[Service::Api], Shutdown::new()).await;
        let Err(HostError::Config(chassis::ConfigError::Invalid(problems))) = result else {
            panic!("expected a config error, got {result:?}");
        };
        assert!(problems.iter().any(|p| p.starts_with("api.max_body_bytes")));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
