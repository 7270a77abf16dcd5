//! Producing from the api: resize requests (awaited: the client waits on them anyway) and the
//! api's own usage records (fire and forget into librdkafka's bounded queue).
//!
//! Kafka being down must cost a client one fast 503, not a 10-second hang, so the producer's
//! context marks Kafka down the moment librdkafka reports every broker connection lost, requests
//! are refused at once while it is down, and a metadata probe marks it up again when it answers.
//! (librdkafka's statistics cannot serve here: it connects sparsely, so an idle producer shows no
//! broker "UP" although Kafka is fine.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chassis::kafka::KafkaConfig;
use futures::future::BoxFuture;
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, FutureProducer, FutureRecord, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use schemas::Codec;
use schemas::events::{ResizeRequested, UsageRecorded};

use super::metrics::ApiMetrics;

/// Why a request could not be handed to the resizers.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The cluster refused this record for good (see `chassis::kafka::is_permanent_record_error`).
    #[error("Kafka refused the request record: {0}")]
    Rejected(String),
    /// No broker is reachable, or the produce failed/timed out. Retryable (503).
    #[error("Kafka unavailable: {0}")]
    Unavailable(String),
    /// The local queue is full: too much in flight. Retryable (503).
    #[error("producer queue full")]
    Overloaded,
    /// The record could not be encoded (registry down at start-up, or a bug).
    #[error("encoding the request: {0}")]
    Encode(#[from] schemas::CodecError),
}

/// Hands requests and usage records to Kafka. A trait so handler tests run without a broker.
pub trait RequestPublisher: Send + Sync + 'static {
    /// Produces a request and waits for the broker's acknowledgement.
    fn publish<'a>(
        &'a self,
        request: &'a ResizeRequested,
        traceparent: &'a str,
    ) -> BoxFuture<'a, Result<(), PublishError>>;

    /// Queues a usage record for a request the api answered itself; never waits.
    fn record_usage<'a>(&'a self, usage: &'a UsageRecorded) -> BoxFuture<'a, ()>;
}

/// Producer context that knows whether any broker is up.
#[derive(Debug, Clone)]
pub struct BrokerHealth {
    up: Arc<AtomicBool>,
}

impl BrokerHealth {
    /// Whether Kafka is believed reachable.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

impl ClientContext for BrokerHealth {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.up.store(false, Ordering::Relaxed);
        }
        tracing::warn!(%error, reason, "Kafka client error");
    }
}

/// How long librdkafka keeps retrying an api usage record. Nobody waits on these records, and
/// each is the only record of what a client got: they ride out a leader election or a cluster
/// still starting (its producer-id coordinator loading), bounded by the producer's queue
/// (`queue.buffering.max.kbytes`), instead of the 10 s that suits records somebody waits for.
pub const USAGE_DELIVERY_TIMEOUT: Duration = Duration::from_secs(300);

/// Counts and logs the fate of every api usage record: fire and forget for the client, but a
/// record that cannot be delivered is never lost silently.
#[derive(Clone)]
pub struct UsageDeliveries {
    metrics: ApiMetrics,
}

impl ClientContext for UsageDeliveries {}

impl ProducerContext for UsageDeliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => self
                .metrics
                .usage_records
                .with_label_values(&["delivered"])
                .inc(),
            Err((error, message)) => {
                self.metrics
                    .usage_records
                    .with_label_values(&["failed"])
                    .inc();
                let key = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                tracing::error!(%error, tenant_id = %key, "An api usage record could not be delivered");
            }
        }
    }
}

/// The production publisher.
pub struct KafkaPublisher {
    /// Resize requests: no linger, a client waits on each.
    producer: FutureProducer<BrokerHealth>,
    /// The api's usage records, on their own connections with a short linger: nobody waits on
    /// them, and they must not queue in front of the next request's produce.
    usage_producer: ThreadedProducer<UsageDeliveries>,
    health: BrokerHealth,
    codec: Arc<Codec>,
    requests_topic: String,
    usage_topic: String,
    metrics: ApiMetrics,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("topic", &self.requests_topic)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// Idempotent producers (requests, usage) whose health is refreshed twice a second.
    pub fn new(
        kafka: &KafkaConfig,
        codec: Arc<Codec>,
        metrics: ApiMetrics,
    ) -> Result<Self, chassis::kafka::KafkaSetupError> {
        let health = BrokerHealth {
            up: Arc::new(AtomicBool::new(true)),
        };
        let producer = kafka
            .producer_config(chassis::kafka::ProducerProfile::LowLatency)
            .create_with_context(health.clone())
            .map_err(|source| chassis::kafka::KafkaSetupError::Create {
                role: "api producer",
                source,
            })?;
        let usage_producer = kafka
            .producer_config(chassis::kafka::ProducerProfile::Background)
            .set(
                "message.timeout.ms",
                USAGE_DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .create_with_context(UsageDeliveries {
                metrics: metrics.clone(),
            })
            .map_err(|source| chassis::kafka::KafkaSetupError::Create {
                role: "api usage producer",
                source,
            })?;
        Ok(Self {
            producer,
            usage_producer,
            health,
            requests_topic: codec.topic::<ResizeRequested>(),
            usage_topic: codec.topic::<UsageRecorded>(),
            codec,
            metrics,
        })
    }

    /// Waits up to `timeout` for every queued record (requests, usage) to be delivered; at
    /// shutdown, so no usage record is left in the queue. Logs what could not be delivered.
    pub async fn flush(&self, timeout: Duration) {
        let (requests, usage) = (self.producer.clone(), self.usage_producer.clone());
        let flushed =
            tokio::task::spawn_blocking(move || requests.flush(timeout).and(usage.flush(timeout)))
                .await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "Records still queued at shutdown were not all delivered");
        }
    }

    /// Whether a broker is up.
    pub fn health(&self) -> BrokerHealth {
        self.health.clone()
    }

    /// Asks the cluster for metadata; marks Kafka up if it answers. Called while Kafka is down.
    pub async fn probe(&self) -> bool {
        let producer = self.producer.clone();
        let answered = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(1))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        if answered {
            self.health.up.store(true, Ordering::Relaxed);
        }
        answered
    }
}

impl RequestPublisher for KafkaPublisher {
    fn publish<'a>(
        &'a self,
        request: &'a ResizeRequested,
        traceparent: &'a str,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            if !self.health.is_up() {
                return Err(PublishError::Unavailable("no broker is up".into()));
            }
            let payload = self.codec.encode(request).await?;
            let headers = OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(traceparent),
            });
            let record = FutureRecord::to(&self.requests_topic)
                .key(&request.request_id)
                .payload(&payload)
                .headers(headers);
            match self.producer.send(record, Duration::ZERO).await {
                Ok(_) => Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    Err(PublishError::Overloaded)
                }
                // One classification decides everywhere: a record the cluster will never take
                // (no such partition, too large, invalid) is this request's failure, not an
                // outage to retry.
                Err((error, _)) if chassis::kafka::is_permanent_record_error(&error) => {
                    Err(PublishError::Rejected(error.to_string()))
                }
                Err((error, _)) => Err(PublishError::Unavailable(error.to_string())),
            }
        })
    }

    fn record_usage<'a>(&'a self, usage: &'a UsageRecorded) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let payload = match self.codec.encode(usage).await {
                Ok(payload) => payload,
                Err(error) => {
                    self.metrics
                        .usage_records
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(%error, "Encoding an api usage record failed");
                    return;
                }
            };
            let record = BaseRecord::to(&self.usage_topic)
                .key(&usage.tenant_id)
                .payload(&payload);
            // Fire and forget: librdkafka retries delivery and `UsageDeliveries` accounts for
            // the outcome; the client is not kept waiting.
            match self.usage_producer.send(record) {
                Ok(()) => self
                    .metrics
                    .usage_records
                    .with_label_values(&["queued"])
                    .inc(),
                Err((error, _)) => {
                    self.metrics
                        .usage_records
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(%error, "Queueing an api usage record failed");
                }
            }
        })
    }
}
