//! One Kafka transaction of the resizer: every reply's delivery confirmed, then the usage and
//! DLQ records of a contiguous run of finished inputs and those inputs' offsets, written and
//! committed together, or aborted together. An output refused for a permanent reason
//! ([`chassis::kafka::is_permanent_record_error`]) is dead-lettered in its place; one that fails
//! permanently on delivery aborts the transaction and names its input, which is then
//! dead-lettered when read again (see `transaction::UnwritableInputs`).
//!
//! Every call here is bounded: a transactional call that does not return within its bound is
//! taken as a stuck producer, which `transaction::Transactions` replaces.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chassis::rebalance::InboxContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::dead_letter;
use super::outputs::{OutRecord, Outputs, Unwritable, send};
use crate::metrics::ResizerMetrics;
use crate::offsets::TakenRange;

/// Bound of one blocking Kafka call (a transactional call, a seek, a committed-offsets fetch).
pub(super) const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How a transaction ended.
pub(super) enum Committed {
    /// Outputs written and input offsets committed.
    Ok,
    /// Aborted (and the abort completed): its inputs must be read again.
    Aborted(CommitFailure),
    /// The producer is fenced or broken (or could not abort): it must be replaced.
    Fatal(KafkaError),
}

/// Why a transaction could not commit.
pub(super) struct CommitFailure {
    pub(super) error: KafkaError,
    /// The input whose output failed permanently, and how, if that was the cause.
    pub(super) unwritable: Option<((i32, i64), Unwritable)>,
    /// The commit never returned: the producer must be replaced, not asked to abort.
    stuck: bool,
}

impl From<KafkaError> for CommitFailure {
    fn from(error: KafkaError) -> Self {
        Self {
            error,
            unwritable: None,
            stuck: false,
        }
    }
}

/// What one transaction needs; cloned into the task that runs it.
#[derive(Clone)]
pub(super) struct Committer {
    pub(super) producer: FutureProducer,
    /// The consumer whose group the input offsets are committed for.
    pub(super) consumer: Arc<StreamConsumer<InboxContext>>,
    pub(super) requests_topic: String,
    pub(super) dlq_topic: String,
    pub(super) metrics: ResizerMetrics,
}

impl Committer {
    /// One transaction, aborted on failure.
    pub(super) async fn run(self, outputs: Vec<Outputs>, ranges: &[TakenRange]) -> Committed {
        match self.commit(outputs, ranges).await {
            Ok(()) => Committed::Ok,
            Err(CommitFailure { error, stuck, .. }) if stuck || is_fatal(&error) => {
                Committed::Fatal(error)
            }
            Err(failure) => {
                let producer = self.producer.clone();
                let abort = tokio::task::spawn_blocking(move || {
                    retrying_transaction_call(|| producer.abort_transaction(KAFKA_CALL_TIMEOUT))
                });
                // Bounded like the commit (see `commit`): an abort that never returns is a
                // stuck producer.
                let bound = TRANSACTION_CALL_ATTEMPTS * KAFKA_CALL_TIMEOUT + Duration::from_secs(5);
                let aborted = match tokio::time::timeout(bound, abort).await {
                    Ok(result) => result.unwrap_or(Err(KafkaError::Canceled)),
                    Err(_) => Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)),
                };
                match aborted {
                    Ok(()) => Committed::Aborted(failure),
                    // Say, no broker answered: the producer cannot know the transaction's state
                    // any more, so it is replaced (a new one's init aborts the transaction).
                    Err(error) => {
                        tracing::warn!(%error, "Aborting the transaction failed");
                        Committed::Fatal(error)
                    }
                }
            }
        }
    }

    /// Every reply's delivery confirmed, then one transaction: every other output, then the
    /// input offsets. An output refused at once for a permanent reason (say, a reply partition
    /// that does not exist) is replaced by a DLQ record in the same transaction; one that fails
    /// permanently on delivery aborts the transaction, and the failure names its input so that
    /// input is dead-lettered when re-read.
    async fn commit(
        &self,
        outputs: Vec<Outputs>,
        ranges: &[TakenRange],
    ) -> Result<(), CommitFailure> {
        let mut records = Vec::with_capacity(outputs.len() * 2);
        for output in outputs {
            if let Some(reply) = output.reply {
                match watched("a reply's delivery", reply.delivery).await {
                    Ok(Ok(_)) => {}
                    Ok(Err((error, message)))
                        if chassis::kafka::is_permanent_record_error(&error) =>
                    {
                        let record = OutRecord::returned(reply.source, &message);
                        records.push(self.dead_letter_output(record, &error));
                    }
                    Ok(Err((error, _))) => return Err(error.into()),
                    Err(_) => return Err(KafkaError::Canceled.into()),
                }
            }
            records.extend(output.records);
        }
        self.producer.begin_transaction()?;
        let mut deliveries = Vec::with_capacity(records.len());
        for out in records {
            let delivery = match send(&self.producer, &out) {
                Ok(delivery) => delivery,
                Err(error) if chassis::kafka::is_permanent_record_error(&error) => {
                    let dlq = self.dead_letter_output(out, &error);
                    let delivery = send(&self.producer, &dlq).map_err(|error| CommitFailure {
                        unwritable: Some((dlq.source, Unwritable::of(&dlq, &error))),
                        error,
                        stuck: false,
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
            match watched("a transactional record's delivery", delivery).await {
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
                        stuck: false,
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
        let commit = tokio::task::spawn_blocking(move || {
            retrying_transaction_call(|| {
                producer.send_offsets_to_transaction(&offsets, &group, KAFKA_CALL_TIMEOUT)
            })?;
            retrying_transaction_call(|| producer.commit_transaction(KAFKA_CALL_TIMEOUT))
        });
        // Each attempt is bounded by KAFKA_CALL_TIMEOUT, yet after a broker failover librdkafka
        // was seen to stay inside them for minutes (the chaos suite). Past this bound the
        // producer is taken as stuck, and replaced: the new one's init fences it.
        let bound = 2 * TRANSACTION_CALL_ATTEMPTS * KAFKA_CALL_TIMEOUT + Duration::from_secs(5);
        match tokio::time::timeout(bound, watched("the commit", commit)).await {
            Ok(result) => result
                .unwrap_or(Err(KafkaError::Canceled))
                .map_err(CommitFailure::from),
            Err(_) => {
                tracing::warn!(
                    bound_s = bound.as_secs(),
                    "The commit did not return; the producer is stuck"
                );
                Err(CommitFailure {
                    error: KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
                    unwritable: None,
                    stuck: true,
                })
            }
        }
    }

    /// An output that can never be written, counted and logged, as the DLQ record that takes its
    /// place (see [`dead_letter::of_output`]).
    fn dead_letter_output(&self, out: OutRecord, error: &KafkaError) -> OutRecord {
        self.metrics.dlq_records.inc();
        self.metrics
            .jobs
            .with_label_values(&[dead_letter::UNWRITABLE_OUTPUT])
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
        dead_letter::of_output(out, &unwritable, &self.requests_topic, &self.dlq_topic)
    }
}

/// Awaits `future`, warning every 10 s while it is pending: each wait of a transaction is
/// bounded by librdkafka's own timeouts, so one that goes on is a bug worth naming.
async fn watched<F: Future>(what: &str, future: F) -> F::Output {
    let started = Instant::now();
    let mut future = std::pin::pin!(future);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), &mut future).await {
            Ok(output) => return output,
            Err(_) => tracing::warn!(
                waiting_s = started.elapsed().as_secs(),
                "Transaction still waiting for {what}"
            ),
        }
    }
}

/// Attempts of one transactional call that fails with a retriable error (a timeout while the
/// coordinator moves): librdkafka asks to call it again, which resumes it. A commit that timed
/// out must be resumed, not aborted (the abort would fail with "conflicting commit in progress").
const TRANSACTION_CALL_ATTEMPTS: u32 = 2;

/// Runs `call` again while it fails with a retriable transactional error, up to
/// [`TRANSACTION_CALL_ATTEMPTS`] times. Blocking, like the calls it wraps.
fn retrying_transaction_call(
    mut call: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    let mut attempt = 1;
    loop {
        match call() {
            Err(KafkaError::Transaction(error))
                if error.is_retriable() && attempt < TRANSACTION_CALL_ATTEMPTS =>
            {
                tracing::warn!(%error, attempt, "Transactional call timed out; resuming it");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Whether `error` says another producer with our transactional id took over (the broker's
/// `PRODUCER_FENCED`, or librdkafka's local `_FENCED` once it knows).
pub(super) fn is_fence(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::Fenced)
    )
}

/// Whether a transaction error means this producer can never commit again.
fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(rd) => rd.is_fatal(),
        _ => false,
    }
}
