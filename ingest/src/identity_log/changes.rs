//! Reading `identity.changes`: entity ids (`tenant:<id>`, `key:<id>`, `signing-key:<id>`), a consumer that is assigned every partition from the
//! beginning (no consumer group: every reader needs the whole topic, and nothing is committed),
//! watermark checks that say how far behind a reader is, and decoding with poison handling.
//! Shared by the api's view (which tails forever) and the identity service (which rebuilds its
//! state on start).

use std::sync::Arc;
use std::time::Duration;

use chassis::kafka::KafkaConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use schemas::events::IdentityChange;
use schemas::{Codec, CodecError, topics};

/// Entity id prefix of tenants.
const TENANT_PREFIX: &str = "tenant:";
/// Entity id prefix of API keys.
const KEY_PREFIX: &str = "key:";
/// Entity id prefix of signing keys (of signed GET URLs).
const SIGNING_KEY_PREFIX: &str = "signing-key:";

/// The record key of a tenant.
pub fn tenant_entity(tenant_id: &str) -> String {
    format!("{TENANT_PREFIX}{tenant_id}")
}

/// The record key of an API key.
pub fn key_entity(key_id: &str) -> String {
    format!("{KEY_PREFIX}{key_id}")
}

/// The record key of a signing key.
pub fn signing_key_entity(key_id: &str) -> String {
    format!("{SIGNING_KEY_PREFIX}{key_id}")
}

/// What a record key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityId<'a> {
    /// `tenant:<id>`.
    Tenant(&'a str),
    /// `key:<id>`: an API key.
    Key(&'a str),
    /// `signing-key:<id>`: a signing key of signed GET URLs.
    SigningKey(&'a str),
}

impl<'a> EntityId<'a> {
    /// Parses a record key; `None` for anything else.
    pub fn parse(entity_id: &'a str) -> Option<Self> {
        if let Some(id) = entity_id.strip_prefix(TENANT_PREFIX) {
            (!id.is_empty()).then_some(Self::Tenant(id))
        } else if let Some(id) = entity_id.strip_prefix(KEY_PREFIX) {
            (!id.is_empty()).then_some(Self::Key(id))
        } else if let Some(id) = entity_id.strip_prefix(SIGNING_KEY_PREFIX) {
            (!id.is_empty()).then_some(Self::SigningKey(id))
        } else {
            None
        }
    }
}

/// One decoded record: the entity and its state, `None` for a tombstone (deleted).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    /// The record key.
    pub entity_id: String,
    /// The entity's full state, or `None` if it was deleted.
    pub change: Option<IdentityChange>,
}

/// Why reading `identity.changes` failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    // Retryable.
    /// The consumer could not be created or assigned.
    #[error("setting up the identity.changes consumer: {0}")]
    Consumer(#[source] KafkaError),
    /// Topic metadata or watermarks did not arrive.
    #[error("reading identity.changes metadata: {0}")]
    Metadata(#[source] KafkaError),
    /// The schema registry did not answer; the same record may decode later.
    #[error("decoding identity.changes record: {0}")]
    Registry(#[source] CodecError),
    /// A blocking Kafka call was cancelled (runtime shutting down).
    #[error("blocking Kafka call did not complete")]
    Cancelled,
    // Permanent.
    /// The topic does not exist (not provisioned).
    #[error("topic {0} does not exist or has no partitions")]
    MissingTopic(String),
    /// The record can never be read: counted, logged and skipped by callers.
    #[error("poison record on identity.changes: {0}")]
    Poison(String),
}

impl ChangesError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::MissingTopic(_) | Self::Poison(_))
    }

    /// Whether this is the schema registry being unavailable while decoding a record: the
    /// record is fine, so it is decoded again once the registry answers, never skipped.
    pub fn is_registry_outage(&self) -> bool {
        matches!(self, Self::Registry(_))
    }
}

/// The high watermark of one partition at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// Partition.
    pub partition: i32,
    /// Earliest offset still in the log.
    pub low: i64,
    /// Offset the next record will get.
    pub high: i64,
}

/// A consumer holding every partition of `identity.changes`, reading from the beginning.
#[derive(Clone)]
pub struct ChangesReader {
    consumer: Arc<StreamConsumer>,
    topic: String,
    partitions: Vec<i32>,
}

impl std::fmt::Debug for ChangesReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangesReader")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl ChangesReader {
    /// Creates the consumer and assigns it every partition from the beginning. `fetch_wait_max`
    /// bounds how long the broker holds an empty fetch, i.e. the latency floor of a change that
    /// arrives while a fetch is parked on another partition.
    /// Waits a bounded time (`METADATA_WAIT`) for a just-created topic's leaders, or until
    /// `shutdown` ([`ChangesError::Cancelled`]).
    pub async fn open(
        kafka: &KafkaConfig,
        fetch_wait_max: Duration,
        shutdown: &chassis::Shutdown,
    ) -> Result<Self, ChangesError> {
        let topic = kafka.name(topics::IDENTITY_CHANGES);
        // Committed records only: aborted writes of a fenced identity instance are never applied.
        let consumer: StreamConsumer = kafka
            .reader_config(fetch_wait_max)
            .create()
            .map_err(ChangesError::Consumer)?;
        let consumer = Arc::new(consumer);
        // A topic created moments ago may not have leaders yet: wait a bounded time for them.
        let mut backoff = METADATA_WAIT.backoff();
        let partitions = loop {
            let outcome = partitions_with_leaders(consumer.clone(), topic.clone()).await;
            let waited = match outcome {
                Ok(partitions) if !partitions.is_empty() => break partitions,
                Ok(_) => ChangesError::MissingTopic(topic.clone()),
                Err(error) => error,
            };
            match backoff.wait(shutdown).await {
                Ok(_) => {}
                Err(chassis::RetryStop::Cancelled) => return Err(ChangesError::Cancelled),
                Err(chassis::RetryStop::Exhausted(_)) => return Err(waited),
            }
        };
        let mut assignment = TopicPartitionList::new();
        for &partition in &partitions {
            assignment
                .add_partition_offset(&topic, partition, Offset::Beginning)
                .map_err(ChangesError::Consumer)?;
        }
        consumer
            .assign(&assignment)
            .map_err(ChangesError::Consumer)?;
        Ok(Self {
            consumer,
            topic,
            partitions,
        })
    }

    /// The consumer, for `recv`.
    pub fn consumer(&self) -> &StreamConsumer {
        &self.consumer
    }

    /// Asks the brokers for every partition's watermarks (a network round trip, off the runtime).
    pub async fn watermarks(&self, timeout: Duration) -> Result<Vec<Watermark>, ChangesError> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let partitions = self.partitions.clone();
        blocking(move || {
            partitions
                .iter()
                .map(|&partition| {
                    consumer
                        .fetch_watermarks(&topic, partition, timeout)
                        .map(|(low, high)| Watermark {
                            partition,
                            low,
                            high,
                        })
                        .map_err(ChangesError::Metadata)
                })
                .collect()
        })
        .await?
    }

    /// Records between this reader's position and `targets` (0 when it has reached them all).
    /// The position moves past transaction markers too, so a reader that has applied every
    /// committed record reaches the high watermark.
    pub fn lag(&self, targets: &[Watermark]) -> Result<i64, ChangesError> {
        Ok(self
            .partition_lags(targets)?
            .into_iter()
            .map(|(_, lag)| lag)
            .sum())
    }

    /// [`Self::lag`] of each target, as (partition, records).
    pub fn partition_lags(&self, targets: &[Watermark]) -> Result<Vec<(i32, i64)>, ChangesError> {
        let positions = self.consumer.position().map_err(ChangesError::Consumer)?;
        Ok(targets
            .iter()
            .map(|target| {
                let position = positions
                    .find_partition(&self.topic, target.partition)
                    .and_then(|p| match p.offset() {
                        Offset::Offset(offset) => Some(offset),
                        _ => None,
                    })
                    // Nothing fetched yet: the reader is at the start of the log.
                    .unwrap_or(target.low);
                (
                    target.partition,
                    (target.high - position.max(target.low)).max(0),
                )
            })
            .collect())
    }
}

/// How long start-up waits for `identity.changes` to exist with a leader for every partition:
/// 100 ms doubling to 1 s, 25 attempts (about 20 s).
const METADATA_WAIT: chassis::RetryPolicy = chassis::RetryPolicy {
    min_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(1),
    max_attempts: Some(25),
};

/// The topic's partitions, or none unless every partition has a leader.
async fn partitions_with_leaders(
    consumer: Arc<StreamConsumer>,
    topic: String,
) -> Result<Vec<i32>, ChangesError> {
    blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .map_err(ChangesError::Metadata)?;
        let Some(found) = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
        else {
            return Ok(Vec::new());
        };
        let all_led = found
            .partitions()
            .iter()
            .all(|p| p.error().is_none() && p.leader() >= 0);
        Ok(if all_led {
            found.partitions().iter().map(|p| p.id()).collect()
        } else {
            Vec::new()
        })
    })
    .await?
}

/// Runs a blocking librdkafka call on the blocking pool.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ChangesError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|_| ChangesError::Cancelled)
}

/// Decodes one record. A missing or malformed key, or a value that does not decode or names
/// another entity, is poison; an unreachable registry is retryable.
pub async fn decode(
    codec: &Codec,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<ChangeRecord, ChangesError> {
    let entity_id = key
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| EntityId::parse(k).is_some())
        .ok_or_else(|| {
            ChangesError::Poison("record key is not a tenant:/key:/signing-key: entity id".into())
        })?
        .to_owned();
    let Some(value) = value else {
        return Ok(ChangeRecord {
            entity_id,
            change: None,
        });
    };
    let change = codec
        .decode::<IdentityChange>(value)
        .await
        .map_err(|error| {
            if error.is_retryable() {
                ChangesError::Registry(error)
            } else {
                ChangesError::Poison(error.to_string())
            }
        })?;
    let consistent = match EntityId::parse(&entity_id) {
        Some(EntityId::Tenant(id)) => change.tenant.as_ref().is_some_and(|t| t.id == id),
        Some(EntityId::Key(id)) => change.api_key.as_ref().is_some_and(|k| k.key_id == id),
        Some(EntityId::SigningKey(id)) => {
            change.signing_key.as_ref().is_some_and(|k| k.key_id == id)
        }
        None => false,
    };
    if !consistent || change.entity_id != entity_id {
        return Err(ChangesError::Poison(format!(
            "value does not describe the entity {entity_id}"
        )));
    }
    Ok(ChangeRecord {
        entity_id,
        change: Some(change),
    })
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entity_ids_round_trip() {
        assert_eq!(
            EntityId::parse(&tenant_entity("t1")),
            Some(EntityId::Tenant("t1"))
        );
        assert_eq!(
            EntityId::parse(&key_entity("k1")),
            Some(EntityId::Key("k1"))
        );
        assert_eq!(
            EntityId::parse(&signing_key_entity("s1")),
            Some(EntityId::SigningKey("s1"))
        );
        for bad in [
            "",
            "tenant:",
            "key:",
            "signing-key:",
            "signing:1",
            "user:1",
            "t1",
        ] {
            assert_eq!(EntityId::parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn records_without_a_valid_key_or_value_are_poison() {
        let codec = Codec::new(&schemas::RegistryConfig::default(), "");
        let err = decode(&codec, None, None).await.unwrap_err();
        assert!(matches!(err, ChangesError::Poison(_)), "{err}");
        let err = decode(&codec, Some(b"user:1"), None).await.unwrap_err();
        assert!(matches!(err, ChangesError::Poison(_)), "{err}");
        let err = decode(&codec, Some(b"key:k1"), Some(b"{\"json\":1}"))
            .await
            .unwrap_err();
        assert!(matches!(err, ChangesError::Poison(_)), "{err}");
        assert!(!err.is_retryable());
        let tombstone = decode(&codec, Some(b"key:k1"), None)
            .await
            .expect("tombstone");
        assert_eq!(tombstone.change, None);
    }
}
