//! Idempotent provisioning of topics and schemas: `imgpipe topics ensure` and every service's
//! start-up call it. Existing topics are left as they are; schemas are registered with BACKWARD
//! compatibility, so an incompatible change is refused here, before any record is written.

use std::time::Duration;

use chassis::kafka::{KafkaConfig, KafkaSetupError};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use schemas::registry::{RegistryConfig, RegistryError, value_subject};
use schemas::topics::{CATALOGUE, TopicSpec};

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// No admin client.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The cluster refused or did not answer a topic creation.
    #[error("creating topic {topic}: {source}")]
    CreateTopic {
        /// Topic.
        topic: String,
        /// Why.
        source: KafkaError,
    },
    /// The cluster's brokers could not be listed.
    #[error("reading cluster metadata: {0}")]
    Metadata(KafkaError),
    /// A schema could not be registered.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// How many copies of each partition the cluster can hold: never more than 3 (what the article's
/// queue tier needs to survive one node lost while another is down for maintenance), never more
/// than there are brokers (a single development broker still works).
pub const MAX_REPLICATION_FACTOR: i32 = 3;

/// Replication of new topics on a cluster of `brokers` nodes: `(replication factor,
/// min.insync.replicas)`. With three copies a write is acknowledged once two hold it, so losing
/// one broker loses nothing and loses no availability, and losing a second makes writes fail
/// clearly (NOT_ENOUGH_REPLICAS, which the api answers as 503) instead of landing on one disk.
pub fn replication_for(brokers: usize) -> (i32, i32) {
    let factor = i32::try_from(brokers)
        .unwrap_or(i32::MAX)
        .clamp(1, MAX_REPLICATION_FACTOR);
    (factor, if factor >= 3 { 2 } else { 1 })
}

/// What `ensure` did, for the operator.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProvisionReport {
    /// Topics created now.
    pub created: Vec<String>,
    /// Topics that already existed.
    pub existing: Vec<String>,
    /// `(subject, schema id)` registered or confirmed.
    pub schemas: Vec<(String, u32)>,
    /// Replication factor given to topics created now (from the brokers in the cluster).
    pub replication_factor: i32,
}

/// Creates every catalogue topic (namespaced) that does not exist yet.
pub async fn ensure_topics(
    kafka: &KafkaConfig,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    let admin = std::sync::Arc::new(kafka.admin()?);
    let names: Vec<String> = CATALOGUE.iter().map(|t| kafka.name(t.name)).collect();
    let brokers = broker_count(&admin, &names[0]).await?;
    let (factor, min_insync) = replication_for(brokers);
    report.replication_factor = factor;
    let configs: Vec<Vec<(&str, String)>> = CATALOGUE
        .iter()
        .map(|spec| {
            let mut config = topic_config(spec);
            config.push(("min.insync.replicas", min_insync.to_string()));
            config
        })
        .collect();
    let new_topics: Vec<NewTopic<'_>> = CATALOGUE
        .iter()
        .zip(&names)
        .zip(&configs)
        .map(|((spec, name), config)| {
            config.iter().fold(
                NewTopic::new(name, spec.partitions, TopicReplication::Fixed(factor)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|source| ProvisionError::CreateTopic {
            topic: "(all)".into(),
            source,
        })?;
    for result in results {
        match result {
            Ok(topic) => report.created.push(topic),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => report.existing.push(topic),
            Err((topic, code)) => {
                return Err(ProvisionError::CreateTopic {
                    topic,
                    source: KafkaError::AdminOp(code),
                });
            }
        }
    }
    Ok(())
}

/// Brokers in the cluster's metadata. Asks about one topic only (the brokers come with any
/// answer), so a shared cluster with thousands of topics costs nothing extra; the call blocks,
/// so it runs off the async runtime.
async fn broker_count(
    admin: &std::sync::Arc<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>>,
    topic: &str,
) -> Result<usize, ProvisionError> {
    let (admin, topic) = (admin.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        admin
            .inner()
            .fetch_metadata(Some(&topic), Duration::from_secs(30))
            .map(|metadata| metadata.brokers().len())
    })
    .await
    .map_err(|_| ProvisionError::Metadata(KafkaError::Canceled))?
    .map_err(ProvisionError::Metadata)
}

/// Kafka topic settings of one catalogue entry.
fn topic_config(spec: &TopicSpec) -> Vec<(&'static str, String)> {
    let mut config = vec![
        ("cleanup.policy", spec.cleanup.as_kafka().to_owned()),
        ("max.message.bytes", spec.max_message_bytes.to_string()),
    ];
    let retention_ms = spec
        .retention
        .map_or(-1, |r| i64::try_from(r.as_millis()).unwrap_or(-1));
    config.push(("retention.ms", retention_ms.to_string()));
    if spec.log_append_time {
        config.push(("message.timestamp.type", "LogAppendTime".to_owned()));
    }
    config
}

/// Sets BACKWARD compatibility and registers every event's schema under `<topic>-value`.
pub async fn ensure_schemas(
    registry: &RegistryConfig,
    namespace: &str,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    use schemas::events::{
        AdminAudited, Event, IdentityChange, ResizeRequested, ResizeResult, UsageRecorded,
    };
    let schemas = [
        (ResizeRequested::TOPIC, ResizeRequested::SCHEMA),
        (ResizeResult::TOPIC, ResizeResult::SCHEMA),
        (UsageRecorded::TOPIC, UsageRecorded::SCHEMA),
        (IdentityChange::TOPIC, IdentityChange::SCHEMA),
        (AdminAudited::TOPIC, AdminAudited::SCHEMA),
    ];
    for (topic, schema) in schemas {
        let subject = value_subject(&format!("{namespace}{topic}"));
        registry.set_compatibility(&subject, "BACKWARD").await?;
        let id = registry.register(&subject, schema).await?;
        report.schemas.push((subject, id));
    }
    Ok(())
}

/// Topics, then schemas.
pub async fn ensure_all(
    kafka: &KafkaConfig,
    registry: &RegistryConfig,
) -> Result<ProvisionReport, ProvisionError> {
    let mut report = ProvisionReport::default();
    ensure_topics(kafka, &mut report).await?;
    ensure_schemas(registry, &kafka.namespace, &mut report).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::topics::spec;

    #[test]
    fn replication_follows_the_cluster_up_to_three_copies() {
        assert_eq!(replication_for(0), (1, 1));
        assert_eq!(replication_for(1), (1, 1));
        assert_eq!(replication_for(2), (2, 1));
        assert_eq!(replication_for(3), (3, 2));
        assert_eq!(replication_for(7), (3, 2));
    }

    #[test]
    fn compacted_topics_keep_records_forever() {
        let config = topic_config(spec(schemas::topics::IDENTITY_CHANGES).expect("listed"));
        assert!(config.contains(&("cleanup.policy", "compact".into())));
        assert!(config.contains(&("retention.ms", "-1".into())));
    }

    #[test]
    fn only_usage_events_take_the_brokers_append_time() {
        let usage = topic_config(spec(schemas::topics::USAGE_EVENTS).expect("listed"));
        assert!(usage.contains(&("message.timestamp.type", "LogAppendTime".into())));
        for other in CATALOGUE
            .iter()
            .filter(|s| s.name != schemas::topics::USAGE_EVENTS)
        {
            assert!(
                !topic_config(other)
                    .iter()
                    .any(|(key, _)| *key == "message.timestamp.type"),
                "{}",
                other.name
            );
        }
    }
}
