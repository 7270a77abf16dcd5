//! Reading the DLQ: from the cursor (or the oldest record kept) to the end the topic had when
//! the scan began, and one record by position.

use std::collections::{BTreeMap, BTreeSet};

use chassis::kafka::KafkaConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use schemas::Codec;
use schemas::topics::IMAGE_REQUESTS_DLQ;

use super::CURSOR_GROUP;
use super::entry::DlqEntry;
use crate::{KAFKA_CALL_TIMEOUT, OpsError};

/// Where a scan starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At the cursor (the oldest pending record).
    Cursor,
    /// At the oldest record still in the topic.
    Earliest,
}

/// Reads the DLQ from a start to the end it had when opened (committed records only).
pub struct DlqScan {
    pub consumer: StreamConsumer<crate::ScanContext>,
    /// Partitions not yet read to the end.
    pub pending: BTreeSet<i32>,
    /// Each partition's end when the scan began: records from there on (among them those this
    /// very run appends again) belong to the next run.
    pub ends: BTreeMap<i32, i64>,
    pub progress: indicatif::ProgressBar,
}

impl DlqScan {
    pub fn open(kafka: &KafkaConfig, start: Start) -> Result<Self, OpsError> {
        let topic = kafka.name(IMAGE_REQUESTS_DLQ);
        let mut config = kafka.client_config();
        // The cursor group's id, but never joined: assign-only, offsets committed only inside
        // the redrive transactions.
        config
            .set("group.id", kafka.name(CURSOR_GROUP))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set(
                "fetch.message.max.bytes",
                kafka.max_message_bytes.to_string(),
            )
            .set("queued.max.messages.kbytes", "65536");
        let consumer = crate::scan_consumer(&config, "DLQ reader")?;
        let partitions = crate::topic_partitions(&consumer, &topic)?;
        let mut cursor = TopicPartitionList::new();
        for p in &partitions {
            cursor.add_partition(&topic, *p);
        }
        let committed = consumer
            .committed_offsets(cursor, KAFKA_CALL_TIMEOUT)
            .map_err(OpsError::kafka("reading the DLQ cursor"))?;
        let mut assignment = TopicPartitionList::new();
        let mut pending = BTreeSet::new();
        let mut ends = BTreeMap::new();
        let mut total = 0u64;
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, KAFKA_CALL_TIMEOUT)
                .map_err(OpsError::kafka(format!(
                    "reading the log bounds of {topic}/{p}"
                )))?;
            let from = match (
                start,
                committed.find_partition(&topic, p).map(|e| e.offset()),
            ) {
                (Start::Cursor, Some(Offset::Offset(offset))) => offset.max(low),
                _ => low,
            };
            if from < high {
                pending.insert(p);
                total += u64::try_from(high - from).unwrap_or(0);
            }
            ends.insert(p, high);
            assignment
                .add_partition_offset(&topic, p, Offset::Offset(from))
                .map_err(OpsError::kafka("building the assignment"))?;
        }
        consumer
            .assign(&assignment)
            .map_err(OpsError::kafka("assigning the DLQ"))?;
        let progress = indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} records ({eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        progress.set_message("reading the DLQ");
        Ok(Self {
            consumer,
            pending,
            ends,
            progress,
        })
    }

    /// The next record, or `None` once every partition was read to its end.
    pub async fn next(&mut self, codec: &Codec) -> Result<Option<DlqEntry>, OpsError> {
        while !self.pending.is_empty() {
            let message = tokio::time::timeout(KAFKA_CALL_TIMEOUT, self.consumer.recv())
                .await
                .map_err(|_| OpsError::Kafka {
                    operation: "reading the DLQ (no answer from the broker)".into(),
                    source: KafkaError::Canceled,
                })?;
            let message = match message {
                Ok(message) => message,
                Err(KafkaError::PartitionEOF(partition)) => {
                    self.pending.remove(&partition);
                    continue;
                }
                Err(source) => {
                    return Err(OpsError::Kafka {
                        operation: "reading the DLQ".into(),
                        source,
                    });
                }
            };
            let partition = message.partition();
            if !self.pending.contains(&partition) {
                continue;
            }
            if self
                .ends
                .get(&partition)
                .is_some_and(|end| message.offset() >= *end)
            {
                // Written after this scan began: the next run's business.
                self.pending.remove(&partition);
                continue;
            }
            self.progress.inc(1);
            let payload = message.payload().unwrap_or_default().to_vec();
            let tenant = tenant_of(codec, &payload).await;
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            return Ok(Some(DlqEntry {
                partition: message.partition(),
                offset: message.offset(),
                timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
                key: message.key().map(<[u8]>::to_vec),
                payload,
                headers,
                tenant,
            }));
        }
        Ok(None)
    }
}

/// The tenant of a record whose value decodes and has a `tenant_id` field.
async fn tenant_of(codec: &Codec, payload: &[u8]) -> Option<String> {
    let (_, value) = codec.decode_json(payload).await.ok()?;
    value.get("tenant_id")?.as_str().map(str::to_owned)
}

/// One record by position.
pub async fn read_one(
    kafka: &KafkaConfig,
    codec: &Codec,
    partition: i32,
    offset: i64,
) -> Result<DlqEntry, OpsError> {
    let mut scan = DlqScan::open(kafka, Start::Earliest)?;
    let topic = kafka.name(IMAGE_REQUESTS_DLQ);
    if !scan.ends.contains_key(&partition) {
        return Err(OpsError::BadArgument(format!(
            "{topic} has no partition {partition} (it has {})",
            scan.ends.len()
        )));
    }
    let mut only = TopicPartitionList::new();
    only.add_partition_offset(&topic, partition, Offset::Offset(offset))
        .map_err(OpsError::kafka("building the assignment"))?;
    scan.consumer
        .assign(&only)
        .map_err(OpsError::kafka("assigning the DLQ"))?;
    scan.pending = BTreeSet::from([partition]);
    scan.ends.insert(partition, offset + 1);
    scan.progress = indicatif::ProgressBar::hidden();
    match scan.next(codec).await? {
        Some(entry) if entry.offset == offset => Ok(entry),
        _ => Err(OpsError::BadArgument(format!(
            "no record at {topic}/{partition}/{offset} (settled records stay until retention)"
        ))),
    }
}
