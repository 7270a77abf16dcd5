//! The resizer's Kafka transaction: the outputs of a contiguous run of finished records (replies,
//! usage records, DLQ records) and their input offsets are written and committed together, or
//! aborted and re-read together. An output that can never be written (its partition does not
//! exist, it is too large) is classified permanent once ([`chassis::kafka::is_permanent_record_error`]):
//! its input is dead-lettered on the retry, so the partition moves on.

use super::*;

/// One record to write in the next transaction.
#[derive(Debug)]
pub(super) struct OutRecord {
    /// The input record (partition, offset) this output answers.
    pub(super) source: (i32, i64),
    pub(super) topic: String,
    pub(super) partition: Option<i32>,
    pub(super) key: String,
    pub(super) payload: Vec<u8>,
    pub(super) headers: OwnedHeaders,
}

/// Input records one of whose outputs failed permanently inside a transaction that then had to
/// abort (a delivery failure makes the whole transaction abortable). When such a record is read
/// again it is dead-lettered instead of processed, so the partition moves on rather than
/// retrying the same failing transaction forever. Bounded: an entry lives until its record comes
/// back or its partition is revoked, and at most [`UnwritableInputs::CAPACITY`] are kept (a
/// forgotten one only costs one more aborted transaction).
#[derive(Debug, Default)]
pub(super) struct UnwritableInputs(std::collections::HashMap<(i32, i64), Unwritable>);

/// An output that failed permanently: where it was going and why it could not get there.
#[derive(Debug, Clone)]
pub(super) struct Unwritable {
    pub(super) topic: String,
    pub(super) partition: Option<i32>,
    pub(super) error: String,
}

impl Unwritable {
    pub(super) fn of(out: &OutRecord, error: &KafkaError) -> Self {
        Self {
            topic: out.topic.clone(),
            partition: out.partition,
            error: error.to_string(),
        }
    }
}

impl UnwritableInputs {
    const CAPACITY: usize = 1024;

    pub(super) fn insert(&mut self, source: (i32, i64), unwritable: Unwritable) {
        if self.0.len() >= Self::CAPACITY {
            self.0.clear();
        }
        self.0.insert(source, unwritable);
    }

    pub(super) fn take(&mut self, source: (i32, i64)) -> Option<Unwritable> {
        self.0.remove(&source)
    }

    pub(super) fn forget_partition(&mut self, partition: i32) {
        self.0.retain(|&(p, _), _| p != partition);
    }
}

/// Why a transaction could not commit.
pub(super) struct CommitFailure {
    pub(super) error: KafkaError,
    /// The input whose output failed permanently, and how, if that was the cause.
    pub(super) unwritable: Option<((i32, i64), Unwritable)>,
}

impl From<KafkaError> for CommitFailure {
    fn from(error: KafkaError) -> Self {
        Self {
            error,
            unwritable: None,
        }
    }
}

/// What a finished request produces: its reply and usage record, or a DLQ record.
pub(super) type Outputs = Vec<OutRecord>;

impl Worker {
    /// Writes every ready output and its input offsets in one transaction.
    pub(super) async fn flush(&mut self) -> Result<(), ResizerError> {
        let (outputs, ranges) = self.tracker.take_ready(self.config.transaction_max_records);
        if outputs.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let count = outputs.len();
        let outputs: Outputs = outputs.into_iter().flatten().collect();
        match self.commit(outputs, &ranges).await {
            Ok(()) => {
                self.metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
                self.metrics
                    .transaction_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.transaction_records.observe(count as f64);
                self.stall.progressed(!self.tracker.is_empty());
                Ok(())
            }
            Err(CommitFailure { error, .. }) if is_fatal(&error) => {
                tracing::error!(%error, "Transactional producer fenced or failed fatally; stopping");
                Err(ResizerError::Fatal(error))
            }
            Err(CommitFailure { error, unwritable }) => {
                if let Some((source, reason)) = unwritable {
                    // Re-read, this input is dead-lettered instead of failing the same way again.
                    self.unwritable.insert(source, reason);
                }
                self.metrics
                    .transactions
                    .with_label_values(&["aborted"])
                    .inc();
                tracing::warn!(%error, "Transaction failed; aborting and re-reading its records");
                let producer = self.producer.clone();
                let aborted = tokio::task::spawn_blocking(move || {
                    producer.abort_transaction(KAFKA_CALL_TIMEOUT)
                })
                .await
                .unwrap_or(Err(KafkaError::Canceled));
                if let Err(error) = aborted {
                    tracing::error!(%error, "Aborting the transaction failed; stopping");
                    return Err(ResizerError::Fatal(error));
                }
                self.rewind(&ranges);
                Ok(())
            }
        }
    }

    /// One transaction: every output, then the input offsets. An output refused at once for a
    /// permanent reason (say, a reply partition that does not exist) is replaced by a DLQ
    /// record in the same transaction; one that fails permanently on delivery aborts the
    /// transaction, and the failure names its input so that input is dead-lettered when re-read.
    pub(super) async fn commit(
        &self,
        outputs: Outputs,
        ranges: &[TakenRange],
    ) -> Result<(), CommitFailure> {
        self.producer.begin_transaction()?;
        let mut deliveries = Vec::with_capacity(outputs.len());
        for out in outputs {
            let delivery = match self.send(&out) {
                Ok(delivery) => delivery,
                Err(error) if chassis::kafka::is_permanent_record_error(&error) => {
                    let dlq = self.dead_letter_output(out, &error);
                    let delivery = self.send(&dlq).map_err(|error| CommitFailure {
                        unwritable: Some((dlq.source, Unwritable::of(&dlq, &error))),
                        error,
                    })?;
                    deliveries.push((dlq.source, dlq.topic, dlq.partition, delivery));
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            deliveries.push((out.source, out.topic, out.partition, delivery));
        }
        // Wait for every record's acknowledgement before committing. rust-rdkafka's
        // commit_transaction first flushes by polling in 100 ms steps, and with a threaded
        // producer the events it waits for are taken by the background thread: with anything
        // still outstanding, every transaction would cost 100 ms. With nothing outstanding the
        // flush returns at once.
        for (source, topic, partition, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) if chassis::kafka::is_permanent_record_error(&error) => {
                    let unwritable = Unwritable {
                        topic,
                        partition,
                        error: error.to_string(),
                    };
                    return Err(CommitFailure {
                        unwritable: Some((source, unwritable)),
                        error,
                    });
                }
                Ok(Err((error, _))) => return Err(error.into()),
                Err(_) => return Err(KafkaError::Canceled.into()),
            }
        }
        let mut offsets = TopicPartitionList::new();
        for range in ranges {
            offsets.add_partition_offset(
                &self.requests_topic,
                range.partition,
                Offset::Offset(range.next),
            )?;
        }
        let group = self.consumer.group_metadata().ok_or(KafkaError::Canceled)?;
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer.send_offsets_to_transaction(&offsets, &group, KAFKA_CALL_TIMEOUT)?;
            producer.commit_transaction(KAFKA_CALL_TIMEOUT)
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
        .map_err(CommitFailure::from)
    }

    /// Hands one record to the transactional producer.
    pub(super) fn send(
        &self,
        out: &OutRecord,
    ) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
        let mut record = FutureRecord::to(&out.topic)
            .key(&out.key)
            .payload(&out.payload)
            .headers(out.headers.clone());
        if let Some(partition) = out.partition {
            record = record.partition(partition);
        }
        self.producer
            .send_result(record)
            .map_err(|(error, _)| error)
    }

    /// An output that can never be written, as a DLQ record: its bytes, with where it was going
    /// and why it could not get there in headers.
    pub(super) fn dead_letter_output(&self, out: OutRecord, error: &KafkaError) -> OutRecord {
        self.metrics.dlq_records.inc();
        self.metrics
            .jobs
            .with_label_values(&["unwritable_output"])
            .inc();
        tracing::warn!(
            source_partition = out.source.0,
            source_offset = out.source.1,
            topic = %out.topic,
            partition = ?out.partition,
            %error,
            "Output cannot be written; sent to the dead-letter topic"
        );
        let unwritable = Unwritable::of(&out, error);
        let headers = with_error(
            out.headers,
            "unwritable_output",
            &unwritable.error,
            &self.requests_topic,
            out.source,
        );
        OutRecord {
            source: out.source,
            topic: self.dlq_topic.clone(),
            partition: None,
            key: out.key,
            payload: out.payload,
            headers: with_target(headers, &unwritable),
        }
    }

    /// After an abort: forget the partitions' tracked work and read them again from the first
    /// record of the aborted transaction (its results were never visible).
    pub(super) fn rewind(&mut self, ranges: &[TakenRange]) {
        for range in ranges {
            self.tracker.forget(range.partition);
            if let Err(error) = self.consumer.seek(
                &self.requests_topic,
                range.partition,
                Offset::Offset(range.first),
                KAFKA_CALL_TIMEOUT,
            ) {
                // The partition was probably revoked; its new owner starts from the commit.
                tracing::warn!(partition = range.partition, %error, "Rewind failed");
            }
        }
    }
}

/// `headers` plus where an unwritable output was going (`target.topic`, `target.partition`).
pub(super) fn with_target(headers: OwnedHeaders, unwritable: &Unwritable) -> OwnedHeaders {
    let partition = unwritable
        .partition
        .map(|p| p.to_string())
        .unwrap_or_default();
    headers
        .insert(Header {
            key: "target.topic",
            value: Some(&unwritable.topic),
        })
        .insert(Header {
            key: "target.partition",
            value: Some(&partition),
        })
}

/// Whether a transaction error means this producer can never commit again.
pub(super) fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(rd) => rd.is_fatal(),
        _ => false,
    }
}
