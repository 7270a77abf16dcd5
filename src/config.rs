//! The complete configuration of an imgpipe process: one section per component. Every service
//! accepts the whole file, so one file (or one set of `IMGPIPE_*` variables) serves a deployment.

use std::net::SocketAddr;

use aggregators::AggregatorConfig;
use chassis::Validate;
use chassis::clickhouse::ClickHouseConfig;
use chassis::kafka::KafkaConfig;
use chassis::telemetry::TelemetryConfig;
use ingest::api::ApiConfig;
use ingest::auth::AuthConfig;
use ingest::identity::IdentityConfig;
use processors::ResizerConfig;
use schemas::RegistryConfig;
use serde::{Deserialize, Serialize};

/// Everything an imgpipe process can be configured with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Logging.
    pub telemetry: TelemetryConfig,
    /// Kafka connection and namespace.
    pub kafka: KafkaConfig,
    /// Schema registry.
    pub registry: RegistryConfig,
    /// ClickHouse (aggregator, usage queries, migrations).
    pub clickhouse: ClickHouseConfig,
    /// The ops endpoint (`/metrics`, `/healthz`, `/readyz`).
    pub ops: OpsSection,
    /// The api (data plane).
    pub api: ApiConfig,
    /// The api's identity view and auth cache.
    pub auth: AuthConfig,
    /// The identity service (management plane).
    pub identity: IdentityConfig,
    /// Resizers.
    pub resizer: ResizerConfig,
    /// The usage aggregator.
    pub aggregator: AggregatorConfig,
}

/// Where the ops endpoint listens.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsSection {
    /// Address of the ops endpoint. Unset: a per-service default (api 9101, identity 9102,
    /// resizer 9103, aggregator 9104, all 9100), so services on one host do not collide.
    pub listen: Option<SocketAddr>,
}

impl Validate for Config {
    fn validate(&self, errors: &mut Vec<String>) {
        if self.kafka.brokers.trim().is_empty() {
            errors.push("kafka.brokers must name at least one broker".into());
        }
        if !self.registry.url.starts_with("http://") && !self.registry.url.starts_with("https://") {
            errors.push(format!(
                "registry.url must be an http(s) URL, got {:?}",
                self.registry.url
            ));
        }
        if !self.clickhouse.url.starts_with("http://")
            && !self.clickhouse.url.starts_with("https://")
        {
            errors.push(format!(
                "clickhouse.url must be an http(s) URL, got {:?}",
                self.clickhouse.url
            ));
        }
        if self
            .kafka
            .namespace
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            errors
                .push("kafka.namespace may only contain letters, digits, '.', '_' and '-'".into());
        }
    }
}
