//! One batch of a `redrive`/`purge` run: its records written and the cursor moved past them in
//! one Kafka transaction, with the headers each written record carries.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use schemas::topics::DLQ_HEADERS;

use super::entry::DlqEntry;
use super::plan::Disposition;
use super::{KEPT_FROM, REDRIVE_COUNT, REDRIVE_ERROR_CLASS, REDRIVE_FROM};
use crate::{KAFKA_CALL_TIMEOUT, OpsError};

/// Writes one batch's outputs and the cursor past it in one transaction.
pub async fn commit_batch(
    producer: &FutureProducer,
    consumer: &StreamConsumer<crate::ScanContext>,
    dlq_topic: &str,
    batch: &[(DlqEntry, Disposition)],
) -> Result<(), OpsError> {
    let txn = producer.clone();
    blocking(move || txn.begin_transaction(), "beginning a transaction").await?;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for (entry, disposition) in batch {
        next.insert(entry.partition, entry.offset + 1);
        let (topic, headers, timestamp) = match disposition {
            Disposition::Purge => continue,
            Disposition::Redrive(topic) => {
                (topic.as_str(), redriven_headers(entry, dlq_topic), None)
            }
            // Kept records keep everything, their dead-letter time included.
            Disposition::Keep(_) => (
                dlq_topic,
                kept_headers(entry, dlq_topic),
                Some(entry.timestamp_ms),
            ),
        };
        let mut record = FutureRecord::to(topic)
            .payload(&entry.payload)
            .headers(headers);
        if let Some(key) = &entry.key {
            record = record.key(key);
        }
        if let Some(timestamp) = timestamp {
            record = record.timestamp(timestamp);
        }
        // Delivery is confirmed by the commit below, which fails if any send failed.
        producer
            .send_result(record)
            .map_err(|(source, _)| OpsError::Kafka {
                operation: format!("producing to {topic}"),
                source,
            })?;
    }
    fail::fail_point!("ops-dlq-before-commit", |_| Err(OpsError::Task(
        "failpoint ops-dlq-before-commit: the run dies before its commit".into()
    )));
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in next {
        offsets
            .add_partition_offset(dlq_topic, partition, Offset::Offset(offset))
            .map_err(OpsError::kafka("building the cursor"))?;
    }
    let metadata = consumer
        .group_metadata()
        .ok_or_else(|| OpsError::Task("the cursor consumer has no group metadata".into()))?;
    let txn = producer.clone();
    blocking(
        move || txn.send_offsets_to_transaction(&offsets, &metadata, KAFKA_CALL_TIMEOUT),
        "moving the cursor in the transaction",
    )
    .await?;
    let txn = producer.clone();
    blocking(
        move || txn.commit_transaction(Duration::from_secs(60)),
        "committing the transaction",
    )
    .await
}

async fn blocking(
    call: impl FnOnce() -> Result<(), KafkaError> + Send + 'static,
    operation: &str,
) -> Result<(), OpsError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| OpsError::Task(e.to_string()))?
        .map_err(OpsError::kafka(operation))
}

/// A kept record's headers, plus where this copy was kept from (`dlq.kept.from`), so a listing
/// of the whole topic tells the pending copy from the settled original.
fn kept_headers(entry: &DlqEntry, dlq_topic: &str) -> OwnedHeaders {
    let from = format!("{dlq_topic}/{}/{}", entry.partition, entry.offset);
    entry
        .headers
        .iter()
        .filter(|(key, _)| key != KEPT_FROM)
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: value.as_deref(),
            })
        })
        .insert(Header {
            key: KEPT_FROM,
            value: Some(&from),
        })
}

/// The record's own headers (the DLQ's removed) plus where it was redriven from.
fn redriven_headers(entry: &DlqEntry, dlq_topic: &str) -> OwnedHeaders {
    let from = format!("{dlq_topic}/{}/{}", entry.partition, entry.offset);
    let count = (entry.redrive_count() + 1).to_string();
    entry
        .headers
        .iter()
        .filter(|(key, _)| {
            !DLQ_HEADERS.contains(&key.as_str())
                && key != REDRIVE_COUNT
                && key != REDRIVE_FROM
                && key != REDRIVE_ERROR_CLASS
                && key != KEPT_FROM
        })
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: value.as_deref(),
            })
        })
        .insert(Header {
            key: REDRIVE_COUNT,
            value: Some(&count),
        })
        .insert(Header {
            key: REDRIVE_FROM,
            value: Some(&from),
        })
        .insert(Header {
            key: REDRIVE_ERROR_CLASS,
            value: Some(entry.error_class()),
        })
}
