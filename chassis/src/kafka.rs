//! Kafka client set-up. The settings here carry the pipeline's delivery guarantees, so they live
//! in one place: idempotent producers with `acks=all`, transactional producers fenced by a stable
//! id, and consumers that read only committed data and store offsets by hand once work is durable.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use serde::{Deserialize, Serialize};

/// Connection and naming settings shared by every Kafka client of a service.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated `host:port`.
    pub brokers: String,
    /// Prefix of every topic, consumer group and transactional id, so several deployments (or
    /// test runs) can share one cluster without seeing each other's data. Empty in production.
    pub namespace: String,
    /// How long a produced record may wait for delivery before it fails (`message.timeout.ms`).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config::HumanDuration")]
    pub delivery_timeout: Duration,
    /// Largest record a client sends or fetches; at least the inline image limit plus headroom.
    pub max_message_bytes: usize,
    /// Extra librdkafka properties applied to every client (e.g. `"client.rack" = "a"`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: default_brokers(),
            namespace: String::new(),
            delivery_timeout: Duration::from_secs(10),
            max_message_bytes: default_max_message_bytes(),
            properties: BTreeMap::new(),
        }
    }
}

fn default_brokers() -> String {
    "127.0.0.1:9092".to_owned()
}

/// 8 MiB of inline image plus room for the rest of the record and its headers.
fn default_max_message_bytes() -> usize {
    9 * 1024 * 1024
}

/// How a producer trades latency for batching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerProfile {
    /// Sends at once (`linger.ms=0`): a client is waiting on every record (the api's requests).
    LowLatency,
    /// Waits up to 1 ms to batch (`linger.ms=1`): output of consumers under load.
    Batched,
    /// Waits up to 10 ms to batch (`linger.ms=10`): records no request waits for (the api's usage
    /// records). The broker's cost is mostly per produce request, not per record: under load
    /// this sends one request per 10 ms instead of one per record.
    Background,
}

/// How a group consumer's offsets move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerProfile {
    /// Offsets stored by the application once its work is durable, committed in the background;
    /// a new group starts at the earliest record (the usage aggregator, tests' readers).
    AtLeastOnce,
    /// Offsets committed inside the producer's transactions, never by the consumer (resizers).
    Transactional,
    /// Nothing committed; a new owner of a partition starts at its end, with minimal fetch wait,
    /// and records are read as soon as written (`read_uncommitted`): the api's reply reader.
    /// Only replies written while it owns a partition matter; replies are written outside
    /// transactions, and any duplicate of one is dropped by request id.
    LatestNoCommit,
}

/// Why a Kafka client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// librdkafka refused the configuration or could not create the client.
    #[error("creating Kafka {role} client: {source}")]
    Create {
        /// Which client (producer, consumer, admin).
        role: &'static str,
        /// The underlying error.
        source: KafkaError,
    },
    /// The transaction coordinator did not answer, or fenced this id.
    #[error("initialising transactions for {transactional_id}: {source}")]
    InitTransactions {
        /// The id that was being registered.
        transactional_id: String,
        /// The underlying error.
        source: KafkaError,
    },
}

impl KafkaConfig {
    /// The namespaced name of a topic, consumer group or transactional id.
    pub fn name(&self, base: &str) -> String {
        format!("{}{}", self.namespace, base)
    }

    /// Properties every client shares.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("message.max.bytes", self.max_message_bytes.to_string())
            // Fail fast on a broker that is gone instead of hanging on TCP timeouts.
            .set("socket.connection.setup.timeout.ms", "5000")
            // TCP_NODELAY: with Nagle on, a small request sent while an earlier one is still
            // unacknowledged on the connection waits for that ACK.
            .set("socket.nagle.disable", "true")
            .set("reconnect.backoff.max.ms", "2000");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// An idempotent producer ([`ProducerProfile::Batched`]).
    pub fn producer(&self) -> Result<FutureProducer, KafkaSetupError> {
        self.producer_for(ProducerProfile::Batched, "producer")
    }

    /// An idempotent producer with `profile`; `role` names it in the error if it cannot be
    /// created (e.g. "reply producer").
    pub fn producer_for(
        &self,
        profile: ProducerProfile,
        role: &'static str,
    ) -> Result<FutureProducer, KafkaSetupError> {
        self.producer_config(profile)
            .create()
            .map_err(|source| KafkaSetupError::Create { role, source })
    }

    /// The settings of an idempotent producer: `acks=all`, no duplicates or reordering on retry,
    /// delivery bounded by `delivery_timeout`, a bounded in-process queue, and the `profile`'s
    /// linger.
    pub fn producer_config(&self, profile: ProducerProfile) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                self.delivery_timeout.as_millis().to_string(),
            )
            .set(
                "linger.ms",
                match profile {
                    ProducerProfile::LowLatency => "0",
                    ProducerProfile::Batched => "1",
                    ProducerProfile::Background => "10",
                },
            )
            // Bounded in-process buffer: produce fails fast with QueueFull instead of growing.
            .set("queue.buffering.max.kbytes", "262144")
            .set("queue.buffering.max.messages", "100000");
        config
    }

    /// A transactional producer registered under the namespaced `transactional_id`. A second
    /// process with the same id fences this one, which is how zombies are kept from writing.
    pub async fn transactional_producer(
        &self,
        transactional_id: &str,
    ) -> Result<FutureProducer, KafkaSetupError> {
        let transactional_id = self.name(transactional_id);
        let mut config = self.producer_config(ProducerProfile::Batched);
        config.set("transactional.id", &transactional_id);
        // A caller's own `transaction.timeout.ms` (the resizer's `transaction_timeout`) wins;
        // librdkafka refuses a delivery timeout longer than it, so that one follows it down.
        if config.get("transaction.timeout.ms").is_none() {
            config.set("transaction.timeout.ms", "30000");
        }
        let transaction_ms: u64 = config
            .get("transaction.timeout.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(30_000);
        if let Some(delivery_ms) = config
            .get("message.timeout.ms")
            .and_then(|v| v.parse::<u64>().ok())
            && delivery_ms > transaction_ms
        {
            config.set("message.timeout.ms", transaction_ms.to_string());
        }
        let producer: FutureProducer =
            config.create().map_err(|source| KafkaSetupError::Create {
                role: "transactional producer",
                source,
            })?;
        let init = producer.clone();
        // init_transactions blocks while it finds the coordinator: keep it off the runtime.
        let result =
            tokio::task::spawn_blocking(move || init.init_transactions(Duration::from_secs(30)))
                .await
                .unwrap_or(Err(KafkaError::Canceled));
        result.map_err(|source| KafkaSetupError::InitTransactions {
            transactional_id,
            source,
        })?;
        Ok(producer)
    }

    /// Settings of a member of consumer group `group_id` (namespaced): reads only committed
    /// records (except [`ConsumerProfile::LatestNoCommit`]), cooperative-sticky assignment, fetch
    /// sizes that fit the largest record, a bounded prefetch buffer, and the offset handling of
    /// `profile`.
    pub fn group_consumer_config(&self, group_id: &str, profile: ConsumerProfile) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", self.name(group_id))
            // Offsets are stored by the application after its work is durable, never on receipt.
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set(
                "fetch.message.max.bytes",
                self.max_message_bytes.to_string(),
            )
            // Bound librdkafka's prefetch buffer: memory stays flat however far behind we are.
            .set("queued.max.messages.kbytes", "65536");
        match profile {
            ConsumerProfile::AtLeastOnce => config
                .set("enable.auto.commit", "true")
                .set("auto.commit.interval.ms", "1000")
                .set("auto.offset.reset", "earliest"),
            ConsumerProfile::Transactional => config
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest"),
            ConsumerProfile::LatestNoCommit => config
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "latest")
                // Latency-critical: the broker must not hold fetches to fill them, and a reply
                // must not wait behind another producer's open transaction on its partition
                // (read_committed stops at the partition's last stable offset).
                .set("isolation.level", "read_uncommitted")
                .set("fetch.wait.max.ms", "10")
                .set("fetch.min.bytes", "1"),
        };
        config
    }

    /// Settings of an assign-only reader that tails a whole topic from the beginning, as every
    /// instance's private copy: no group membership, no commits, committed records only, fetches
    /// that return within `fetch_wait_max`, and a small prefetch (for small records).
    pub fn reader_config(&self, fetch_wait_max: Duration) -> ClientConfig {
        let mut config = self.client_config();
        config
            // librdkafka's assign() wants a group id, but a consumer that only assigns and never
            // commits never joins or creates the group on the broker: no group coordination, no
            // committed offsets, and every reader sees the whole topic. Unique per reader anyway.
            .set(
                "group.id",
                self.name(&format!("reader-{}", uuid::Uuid::new_v4().simple())),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", fetch_wait_max.as_millis().to_string())
            .set("fetch.min.bytes", "1")
            .set("fetch.error.backoff.ms", "100")
            .set("queued.max.messages.kbytes", "16384");
        config
    }

    /// A stream consumer with the given context (rebalance handling lives there).
    pub fn consumer<C: ConsumerContext + 'static>(
        &self,
        config: &ClientConfig,
        context: C,
    ) -> Result<StreamConsumer<C>, KafkaSetupError> {
        config
            .create_with_context(context)
            .map_err(|source| KafkaSetupError::Create {
                role: "consumer",
                source,
            })
    }

    /// An admin client for topic management.
    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, KafkaSetupError> {
        self.client_config()
            .create()
            .map_err(|source| KafkaSetupError::Create {
                role: "admin",
                source,
            })
    }
}

/// A consumer context that logs every rebalance; consumers without their own rebalance logic use it.
#[derive(Debug, Clone, Default)]
pub struct RebalanceLogger {
    /// Which consumer this is, in log lines.
    pub consumer: &'static str,
}

impl rdkafka::ClientContext for RebalanceLogger {}

impl ConsumerContext for RebalanceLogger {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        log_rebalance(self.consumer, "Rebalance starting", rebalance);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        log_rebalance(self.consumer, "Rebalance done", rebalance);
        count_rebalance(self.consumer, rebalance);
    }
}

/// Counts a rebalance in `imgpipe_consumer_rebalances_total{consumer}`; call it from
/// `post_rebalance`, where each rebalance ends once in an assignment (possibly empty) or an
/// error, so a revoke-then-assign cycle counts one.
pub fn count_rebalance(consumer: &str, rebalance: &Rebalance<'_>) {
    if matches!(rebalance, Rebalance::Assign(_) | Rebalance::Error(_)) {
        crate::metrics::count_rebalance(consumer);
    }
}

/// Logs a rebalance with the partitions it moves.
pub fn log_rebalance(consumer: &str, message: &str, rebalance: &Rebalance<'_>) {
    match rebalance {
        Rebalance::Assign(list) => {
            tracing::info!(consumer, assigned = ?partitions(list), "{message}")
        }
        Rebalance::Revoke(list) => {
            tracing::info!(consumer, revoked = ?partitions(list), "{message}")
        }
        Rebalance::Error(error) => tracing::warn!(consumer, %error, "{message}"),
    }
}

/// `topic/partition` pairs of a list, for log lines.
pub fn partitions(list: &rdkafka::TopicPartitionList) -> Vec<String> {
    list.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect()
}

/// Whether a failure to produce one record is permanent: sending the same record again can never
/// succeed, so it must leave the pipeline (dead-lettered, counted) instead of being retried.
///
/// Permanent: the record names a partition that does not exist, is larger than the client or
/// the topic allows, or is malformed or forbidden. Everything else (brokers down, timeouts,
/// leadership moving, a full queue, an unknown topic that may still be being created) is
/// retryable, and so is any error that is not about producing a record.
pub fn is_permanent_record_error(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let code = match error {
        KafkaError::MessageProduction(code) => *code,
        _ => return false,
    };
    matches!(
        code,
        Code::UnknownPartition
            | Code::MessageSizeTooLarge
            | Code::InvalidMessageSize
            | Code::InvalidRecord
            | Code::InvalidTopic
            | Code::TopicAuthorizationFailed
            | Code::InvalidArgument
    )
}

#[cfg(test)]
mod record_error_tests {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode as Code;

    use super::is_permanent_record_error;

    #[test]
    fn record_errors_are_permanent_only_when_a_retry_cannot_help() {
        for code in [
            Code::UnknownPartition,
            Code::MessageSizeTooLarge,
            Code::InvalidRecord,
        ] {
            assert!(
                is_permanent_record_error(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
        for code in [
            Code::QueueFull,
            Code::MessageTimedOut,
            Code::AllBrokersDown,
            Code::NotLeaderForPartition,
            Code::UnknownTopicOrPartition,
            Code::RequestTimedOut,
            // CORRUPT_MESSAGE: Kafka marks it retriable (corruption in transit).
            Code::InvalidMessage,
        ] {
            assert!(
                !is_permanent_record_error(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
        assert!(!is_permanent_record_error(&KafkaError::Canceled));
    }
}

#[cfg(test)]
mod rebalance_count_tests {
    use rdkafka::TopicPartitionList;
    use rdkafka::consumer::Rebalance;

    fn count(consumer: &str) -> u64 {
        crate::metrics::process_registry()
            .gather()
            .iter()
            .filter(|f| f.name() == crate::metrics::consumer::REBALANCES_TOTAL.name)
            .flat_map(|f| f.get_metric())
            .filter(|m| m.get_label().iter().any(|l| l.value() == consumer))
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    #[test]
    fn a_revoke_then_assign_cycle_counts_once() {
        let list = TopicPartitionList::new();
        super::count_rebalance("count-test", &Rebalance::Revoke(&list));
        assert_eq!(count("count-test"), 0);
        super::count_rebalance("count-test", &Rebalance::Assign(&list));
        assert_eq!(count("count-test"), 1);
    }
}
