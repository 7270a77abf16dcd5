//! The schema registry seen through Confluent's REST API (Apicurio serves it under
//! `/apis/ccompat/v7`). Registration itself goes through `schema_registry_converter`; setting a
//! subject's compatibility level is the one call that crate does not offer.

use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{SrSettings, post_schema};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use serde::{Deserialize, Serialize};

/// Where the registry is.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible API.
    pub url: String,
    /// Timeout of one registry call.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String", extend("format" = "duration"))]
    pub timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081/apis/ccompat/v7".to_owned(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached or answered 5xx. Retryable.
    #[error("schema registry unreachable at {url}: {detail}")]
    Unreachable {
        /// Endpoint.
        url: String,
        /// What happened.
        detail: String,
    },
    /// The registry refused the schema (incompatible evolution, invalid schema). Permanent.
    #[error("schema registry refused {subject}: {detail}")]
    Refused {
        /// Subject.
        subject: String,
        /// The registry's message.
        detail: String,
    },
}

impl RegistryError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

impl RegistryConfig {
    /// Settings for `schema_registry_converter`.
    pub fn sr_settings(&self) -> SrSettings {
        SrSettings::new_builder(self.url.clone())
            .no_proxy()
            .set_timeout(self.timeout)
            .build()
            .unwrap_or_else(|_| SrSettings::new(self.url.clone()))
    }

    /// Sets `subject`'s compatibility level (BACKWARD for every imgpipe subject).
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let url = format!("{}/config/{subject}", self.url);
        let unreachable = |detail: String| RegistryError::Unreachable {
            url: url.clone(),
            detail,
        };
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .no_proxy()
            .build()
            .map_err(|e| unreachable(e.to_string()))?;
        // Apicurio creates a subject's rule on the first PUT; two services starting at once
        // can both try to create it, and the loser gets 409 "already exists". The rule exists
        // then, so the same PUT again updates it.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let response = client
                .put(&url)
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .body(serde_json::json!({ "compatibility": level }).to_string())
                .send()
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if status.is_success() {
                return Ok(());
            } else if status == reqwest::StatusCode::CONFLICT && attempts < 3 {
                continue;
            } else if status.is_server_error() {
                return Err(unreachable(format!("{status}: {body}")));
            }
            return Err(RegistryError::Refused {
                subject: subject.to_owned(),
                detail: format!("{status}: {body}"),
            });
        }
    }

    /// Registers `schema` under `subject` (idempotent: an identical schema returns its existing id).
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned());
        post_schema(&self.sr_settings(), subject.to_owned(), supplied)
            .await
            .map(|registered| registered.id)
            .map_err(|error| self.classify(subject, error))
    }

    /// Sorts a `schema_registry_converter` error into retryable or refused.
    pub fn classify(&self, subject: &str, error: SRCError) -> RegistryError {
        if error.retriable {
            RegistryError::Unreachable {
                url: self.url.clone(),
                detail: error.to_string(),
            }
        } else {
            RegistryError::Refused {
                subject: subject.to_owned(),
                detail: error.to_string(),
            }
        }
    }
}

/// The Confluent subject of a topic's values.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}
