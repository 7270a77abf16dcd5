//! The resizer's Kafka transaction: the outputs of a contiguous run of finished records (usage
//! records, DLQ records) and their input offsets are written and committed together, or aborted
//! and re-read together; replies go out before it, on their own ([`SentReply`]). An output that
//! can never be written (its partition does not exist, it is too large) is classified permanent
//! once ([`chassis::kafka::is_permanent_record_error`]): its input is dead-lettered on the retry,
//! so the partition moves on.

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::DeliveryFuture;

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

impl OutRecord {
    /// A record librdkafka handed back with its delivery failure.
    fn returned(source: (i32, i64), message: &rdkafka::message::OwnedMessage) -> Self {
        Self {
            source,
            topic: message.topic().to_owned(),
            partition: Some(message.partition()),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers: message.headers().cloned().unwrap_or_default(),
        }
    }
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
    /// The commit never returned: the producer must be replaced, not asked to abort.
    pub(super) stuck: bool,
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

/// What a finished request produces.
#[derive(Default)]
pub(super) struct Outputs {
    /// Written inside the transaction: the usage record, or a DLQ record (and the reply when it
    /// could not be sent on its own, see [`SentReply`]).
    pub(super) records: Vec<OutRecord>,
    /// The reply, already sent outside the transaction.
    pub(super) reply: Option<SentReply>,
}

impl Outputs {
    /// Outputs that are all written in the transaction.
    pub(super) fn committed(record: OutRecord) -> Self {
        Self {
            records: vec![record],
            reply: None,
        }
    }
}

/// A reply sent the moment its work finished, by the plain idempotent reply producer, so the
/// requester never waits for a transaction to commit. Its input's offset is committed only once
/// its delivery is confirmed: a reply that failed for good is dead-lettered in the transaction,
/// one that failed for now aborts it, and the input is redone. A crash before the commit redoes
/// the input too, so a reply can be written twice; the api answers the first and drops the
/// second (nobody waits for it any more). Usage stays exactly once: it is in the transaction.
/// Nothing of the reply is kept here: librdkafka holds its bytes until delivered and hands them
/// back with a failure.
pub(super) struct SentReply {
    /// The input record it answers.
    pub(super) source: (i32, i64),
    pub(super) delivery: DeliveryFuture,
}

/// How a transaction ended.
pub(super) enum Committed {
    /// Outputs written and input offsets committed.
    Ok,
    /// Aborted (and the abort completed): its inputs must be read again.
    Aborted(CommitFailure),
    /// The producer is fenced or broken (or could not abort): it must be replaced.
    Fatal(KafkaError),
}

/// A finished transaction, with what the loop needs to act on it.
pub(super) struct CommitDone {
    outcome: Committed,
    ranges: Vec<TakenRange>,
    records: usize,
    started: Instant,
}

/// A transaction runs in its own task, so the loop goes on taking records and sending replies
/// while it commits. One at a time: a transactional producer has one open transaction.
pub(super) type InFlightCommit = tokio::task::JoinHandle<CommitDone>;

/// What a transaction needs, cloned out of the loop.
#[derive(Clone)]
pub(super) struct Committer {
    pub(super) producer: FutureProducer,
    pub(super) consumer: Arc<StreamConsumer<RebalanceLog>>,
    pub(super) requests_topic: String,
    pub(super) dlq_topic: String,
    pub(super) metrics: ResizerMetrics,
}

impl Worker {
    /// Starts a transaction with the ready outputs (at most `transaction_max_records`), unless
    /// one is still committing: the next flush after it takes what became ready meanwhile.
    pub(super) fn flush(&mut self) {
        if self.committing.is_some() {
            return;
        }
        let (outputs, ranges) = self.tracker.take_ready(self.config.transaction_max_records);
        if outputs.is_empty() {
            return;
        }
        let committer = self.committer.clone();
        self.committing = Some(tokio::spawn(async move {
            let (records, started) = (outputs.len(), Instant::now());
            let outcome = committer.run(outputs, &ranges).await;
            CommitDone {
                outcome,
                ranges,
                records,
                started,
            }
        }));
    }

    /// Waits for the transaction in flight (pending forever when there is none). A commit task
    /// that panicked counts as a fatal failure.
    pub(super) async fn commit_finished(committing: &mut Option<InFlightCommit>) -> CommitDone {
        let Some(handle) = committing.as_mut() else {
            return std::future::pending().await;
        };
        let done = handle.await.unwrap_or_else(|_| CommitDone {
            outcome: Committed::Fatal(KafkaError::Canceled),
            ranges: Vec::new(),
            records: 0,
            started: Instant::now(),
        });
        *committing = None;
        done
    }

    /// Acts on a finished transaction: counts it, or forgets and re-reads an aborted one's
    /// inputs, or replaces a producer that failed fatally (see [`ProducerRebuild`]).
    pub(super) async fn committed(&mut self, commit: CommitDone) -> Result<(), ResizerError> {
        match commit.outcome {
            Committed::Ok => {
                self.metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
                self.metrics
                    .transaction_seconds
                    .observe(commit.started.elapsed().as_secs_f64());
                self.metrics
                    .transaction_records
                    .observe(commit.records as f64);
                self.stall.progressed(!self.tracker.is_empty());
                Ok(())
            }
            Committed::Fatal(error) => self.replace_producer(error).await,
            Committed::Aborted(CommitFailure {
                error, unwritable, ..
            }) => {
                if let Some((source, reason)) = unwritable {
                    // Re-read, this input is dead-lettered instead of failing the same way again.
                    self.unwritable.insert(source, reason);
                }
                self.metrics
                    .transactions
                    .with_label_values(&["aborted"])
                    .inc();
                tracing::warn!(%error, "Transaction aborted; re-reading its records");
                self.rewind(&commit.ranges);
                Ok(())
            }
        }
    }

    /// Shutdown: waits for the transaction in flight, then commits what is ready.
    pub(super) async fn commit_all(&mut self) -> Result<(), ResizerError> {
        loop {
            if self.committing.is_some() {
                let commit = Self::commit_finished(&mut self.committing).await;
                self.committed(commit).await?;
            }
            if self.tracker.ready_count() == 0 {
                return Ok(());
            }
            self.flush();
        }
    }

    /// After a fatal transactional error the producer can never commit again, but the process
    /// can go on with a new one, as Kafka Streams does. Such errors come from outside this
    /// process: after a broker outage the coordinator may have aborted the open transaction
    /// itself (`transaction.timeout.ms`) and bumped the producer's epoch, or an abort may have
    /// failed while no broker answered. So: the new producer's `init_transactions` (same
    /// transactional id) finishes whatever the old one left open; every tracked record is
    /// forgotten, uncommitted; and every assigned partition is read again from the group's
    /// committed offset, fetched only after that init so it includes a commit that was in doubt.
    /// Nothing is lost (no uncommitted output is kept) and nothing is billed twice (the
    /// committed offsets and the committed outputs are one transaction). Readiness is red
    /// meanwhile. If the producer is fenced more than [`ProducerRebuild::MAX_FENCES`] times in
    /// [`ProducerRebuild::WINDOW`], something keeps fencing it (most likely another
    /// resizer with the same `instance_id`), and the resizer stops with [`ResizerError::Fatal`].
    /// A commit that never returns counts as fatal too (see [`Committer::commit`]).
    pub(super) async fn replace_producer(&mut self, error: KafkaError) -> Result<(), ResizerError> {
        self.metrics
            .transactions
            .with_label_values(&["fatal"])
            .inc();
        if is_fence(&error) && !self.rebuild.allow_fence(Instant::now()) {
            tracing::error!(
                %error,
                fences = ProducerRebuild::MAX_FENCES,
                window_s = ProducerRebuild::WINDOW.as_secs(),
                "Transactional producer fenced again after being replaced; stopping (is another \
                 resizer running with the same instance_id?)"
            );
            return Err(ResizerError::Fatal(error));
        }
        tracing::warn!(%error, "Transactional producer failed fatally; replacing it and re-reading every uncommitted record");
        self.readiness.not_ready(
            "resizer",
            &format!("replacing the transactional producer after: {error}"),
        );
        self.tracker.forget_all();
        let mut backoff = RetryPolicy::DEPENDENCY.backoff();
        let producer = loop {
            match self.rebuild.producer().await {
                Ok(producer) => break producer,
                Err(setup) => {
                    tracing::warn!(error = %setup, attempt = backoff.attempts() + 1, "New transactional producer not ready yet; retrying");
                    if backoff.wait(&self.shutdown).await.is_err() {
                        // Shutdown: nothing is tracked, so nothing is left to commit.
                        return Err(ResizerError::Fatal(error));
                    }
                }
            }
        };
        self.committer.producer = producer;
        loop {
            let consumer = Arc::clone(&self.consumer);
            let topic = self.committer.requests_topic.clone();
            let rewound =
                tokio::task::spawn_blocking(move || rewind_to_committed(&consumer, &topic))
                    .await
                    .unwrap_or(Err(KafkaError::Canceled));
            match rewound {
                Ok(partitions) => {
                    // librdkafka's own FATAL "fenced by a newer instance" from the old producer
                    // may follow: that newer instance is this replacement.
                    tracing::warn!(
                        partitions,
                        "New transactional producer ready; re-reading from the committed \
                         offsets (the old producer's \"fenced by a newer instance\" is this \
                         replacement, not another process)"
                    );
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "Reading the committed offsets failed; retrying");
                    if backoff.wait(&self.shutdown).await.is_err() {
                        return Err(ResizerError::Fatal(error));
                    }
                }
            }
        }
        self.readiness.ready("resizer");
        Ok(())
    }

    /// After an abort: forget the partitions' tracked work and read them again from the first
    /// record of the aborted transaction (its outputs were never committed).
    pub(super) fn rewind(&mut self, ranges: &[TakenRange]) {
        for range in ranges {
            self.tracker.forget(range.partition);
            if let Err(error) = self.consumer.seek(
                &self.committer.requests_topic,
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

/// Seeks every assigned partition of `topic` to the group's committed offset (the earliest one
/// when the group never committed there: `auto.offset.reset`). Blocking. Returns how many.
fn rewind_to_committed(
    consumer: &StreamConsumer<RebalanceLog>,
    topic: &str,
) -> Result<usize, KafkaError> {
    let assignment = consumer.assignment()?;
    let committed = consumer.committed_offsets(assignment, KAFKA_CALL_TIMEOUT)?;
    let mut partitions = 0;
    for element in committed.elements_for_topic(topic) {
        let offset = match element.offset() {
            Offset::Offset(offset) => Offset::Offset(offset),
            _ => Offset::Beginning,
        };
        consumer.seek(topic, element.partition(), offset, KAFKA_CALL_TIMEOUT)?;
        partitions += 1;
    }
    Ok(partitions)
}

/// Builds a replacement for a transactional producer that failed fatally, and bounds how often
/// a fenced one is replaced (other fatal errors come from broker trouble, and each replacement
/// waits for the brokers, so they need no bound).
pub(super) struct ProducerRebuild {
    kafka: KafkaConfig,
    transactional_id: String,
    /// When a fenced producer was last replaced, newest last; none older than [`Self::WINDOW`].
    recent: std::collections::VecDeque<Instant>,
}

impl ProducerRebuild {
    /// Fences answered with a replacement within [`Self::WINDOW`]; one more means something
    /// keeps fencing us.
    pub(super) const MAX_FENCES: usize = 3;
    /// See [`Self::MAX_FENCES`].
    pub(super) const WINDOW: Duration = Duration::from_secs(600);

    pub(super) fn new(kafka: KafkaConfig, transactional_id: String) -> Self {
        Self {
            kafka,
            transactional_id,
            recent: std::collections::VecDeque::new(),
        }
    }

    /// Whether a fenced producer may be replaced at `now`; counts it if so.
    pub(super) fn allow_fence(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Self::WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= Self::MAX_FENCES {
            return false;
        }
        self.recent.push_back(now);
        true
    }

    /// A new producer with the same transactional id, its transactions initialised (which
    /// fences the old one and completes or aborts what it left open).
    async fn producer(&self) -> Result<FutureProducer, chassis::kafka::KafkaSetupError> {
        self.kafka
            .transactional_producer(&self.transactional_id)
            .await
    }
}

impl Committer {
    /// One transaction, aborted on failure.
    async fn run(self, outputs: Vec<Outputs>, ranges: &[TakenRange]) -> Committed {
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

/// Hands one record to a producer (transactional or not).
pub(super) fn send(
    producer: &FutureProducer,
    out: &OutRecord,
) -> Result<DeliveryFuture, KafkaError> {
    let mut record = FutureRecord::to(&out.topic)
        .key(&out.key)
        .payload(&out.payload)
        .headers(out.headers.clone());
    if let Some(partition) = out.partition {
        record = record.partition(partition);
    }
    producer.send_result(record).map_err(|(error, _)| error)
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
pub(super) fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(rd) => rd.is_fatal(),
        _ => false,
    }
}
