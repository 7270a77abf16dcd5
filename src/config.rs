//! The complete configuration of an imgpipe process: one section per component. Every service
//! accepts the whole file, so one file (or one set of `IMGPIPE_*` variables) serves a deployment.

pub mod reference;

use std::net::SocketAddr;

use aggregators::AggregatorConfig;
use chassis::Validate;
use chassis::clickhouse::ClickHouseConfig;
use chassis::http::HttpConfig;
use chassis::kafka::KafkaConfig;
use chassis::telemetry::TelemetryConfig;
use ingest::api::ApiConfig;
use ingest::auth::AuthConfig;
use ingest::identity::IdentityConfig;
use ingest::signing::SigningConfig;
use processors::ResizerConfig;
use schemas::RegistryConfig;
use schemas::topics::{IMAGE_TOPIC_MAX_MESSAGE_BYTES, RECORD_ENVELOPE_BYTES};
use serde::{Deserialize, Serialize};

use crate::host::Service;

/// Everything an imgpipe process can be configured with.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Logging and trace export.
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
    /// Signed GET URLs: the secret signing keys are derived from (identity and every api).
    pub signing: SigningConfig,
    /// Resizers.
    pub resizer: ResizerConfig,
    /// The usage aggregator.
    pub aggregator: AggregatorConfig,
    /// Limits of every HTTP server (api, identity, ops).
    pub http: HttpConfig,
}

/// Where the ops endpoint listens.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
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
        self.http.validate(errors);
        self.telemetry.validate(errors);
    }
}

impl Config {
    /// Every rule that running `services` depends on, checked before anything connects: the
    /// common sections ([`Validate`]), each selected service's own section, and the rules that
    /// tie sections together (an image the api accepts must fit one Kafka record, which the
    /// topic must accept, and the resizers must be willing to read it). One message per broken
    /// rule, all of them at once.
    pub fn problems_for(&self, services: &[Service]) -> Vec<String> {
        let mut errors = Vec::new();
        self.validate(&mut errors);
        let kafka = &self.kafka;
        if kafka.max_message_bytes > IMAGE_TOPIC_MAX_MESSAGE_BYTES {
            errors.push(format!(
                "kafka.max_message_bytes ({}) must not exceed the image topics' max.message.bytes \
                 ({IMAGE_TOPIC_MAX_MESSAGE_BYTES}): the broker would refuse the largest records",
                kafka.max_message_bytes
            ));
        }
        if kafka.max_message_bytes <= RECORD_ENVELOPE_BYTES {
            errors.push(format!(
                "kafka.max_message_bytes ({}) must exceed the {RECORD_ENVELOPE_BYTES}-byte record \
                 envelope",
                kafka.max_message_bytes
            ));
        }
        for service in services {
            match service {
                Service::Api => {
                    self.api.validate(&mut errors);
                    self.auth.validate(&mut errors);
                    self.signing.validate(&mut errors);
                    let room = kafka
                        .max_message_bytes
                        .saturating_sub(RECORD_ENVELOPE_BYTES);
                    if self.api.max_body_bytes > room {
                        errors.push(format!(
                            "api.max_body_bytes ({}) must fit one request record: at most \
                             kafka.max_message_bytes ({}) less the {RECORD_ENVELOPE_BYTES}-byte \
                             envelope = {room}",
                            self.api.max_body_bytes, kafka.max_message_bytes
                        ));
                    }
                    if self.api.max_body_bytes > self.resizer.max_input_bytes {
                        errors.push(format!(
                            "api.max_body_bytes ({}) must not exceed resizer.max_input_bytes ({}): \
                             the api would accept images every resizer refuses",
                            self.api.max_body_bytes, self.resizer.max_input_bytes
                        ));
                    }
                }
                Service::Identity => {
                    self.identity.validate(&mut errors);
                    self.signing.validate(&mut errors);
                }
                Service::Resizer => self.resizer.validate(&mut errors),
                Service::Aggregator => self.aggregator.validate(&mut errors),
            }
        }
        errors
    }

    /// The sections `imgpipe ops` reads, so the tools see what the services use.
    pub fn ops(&self) -> imgpipe_ops::OpsConfig {
        imgpipe_ops::OpsConfig {
            kafka: self.kafka.clone(),
            registry: self.registry.clone(),
            clickhouse: self.clickhouse.clone(),
            aggregator: self.aggregator.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        let mut config = Config::default();
        config.identity.admin_token = "an-admin-token-long-enough-0123".into();
        config
    }

    #[test]
    fn the_defaults_run_every_service() {
        assert_eq!(valid().problems_for(&Service::ALL), Vec::<String>::new());
    }

    #[test]
    fn an_image_the_api_accepts_must_fit_a_record_the_topic_takes() {
        let mut config = valid();
        config.kafka.max_message_bytes = 4 * 1024 * 1024;
        let problems = config.problems_for(&[Service::Api]);
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("api.max_body_bytes")
                    && p.contains("kafka.max_message_bytes")),
            "{problems:?}"
        );

        let mut config = valid();
        config.kafka.max_message_bytes = IMAGE_TOPIC_MAX_MESSAGE_BYTES + 1;
        let problems = config.problems_for(&[Service::Resizer]);
        assert!(
            problems.iter().any(|p| p.contains("max.message.bytes")),
            "{problems:?}"
        );

        let mut config = valid();
        config.resizer.max_input_bytes = 1024 * 1024;
        let problems = config.problems_for(&[Service::Api]);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("resizer.max_input_bytes")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_bad_signing_secret_stops_the_api_and_identity_without_being_printed() {
        let mut config = valid();
        config.signing.secret = "0123456789abcdef".into();
        for service in [Service::Api, Service::Identity] {
            let problems = config.problems_for(&[service]);
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with("signing.secret") && p.contains("at least 32 bytes")),
                "{service:?}: {problems:?}"
            );
            assert!(!format!("{problems:?}").contains("0123456789abcdef"));
        }
        assert_eq!(
            config.problems_for(&[Service::Resizer]),
            Vec::<String>::new()
        );
        assert!(!format!("{config:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn only_the_selected_services_sections_are_checked_and_all_at_once() {
        let mut config = valid();
        config.identity.admin_token = String::new();
        config.resizer.transaction_max_records = 0;
        config.http.max_connections = 0;
        assert_eq!(config.problems_for(&[Service::Aggregator]).len(), 1);
        let problems = config.problems_for(&Service::ALL);
        for field in [
            "identity.admin_token",
            "resizer.transaction_max_records",
            "http.max_connections",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(field)),
                "{field}: {problems:?}"
            );
        }
    }
}
