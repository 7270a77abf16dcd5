//! The resizer's transactions, one after another: [`Transactions`] takes the ready outputs from
//! the loop's offset tracker, commits them in their own task ([`Committer`], one transaction at a
//! time, the loop going on meanwhile), and acts on how each ended: counted, aborted and re-read,
//! or the producer replaced. It owns everything that outlives one transaction: the producer and
//! how to rebuild it, the transaction in flight, and the inputs whose outputs could not be
//! written.
//!
//! Its API is what the loop does with transactions: [`flush`](Transactions::flush),
//! [`poll_committed`](Transactions::poll_committed) then [`settle`](Transactions::settle),
//! [`commit_all`](Transactions::commit_all) at shutdown; plus the two questions the loop asks of
//! unwritable inputs.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chassis::kafka::KafkaConfig;
use chassis::rebalance::InboxContext;
use chassis::{Readiness, RetryPolicy, Shutdown, StallDetector};
use rdkafka::Offset;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use super::ResizerError;
use super::commit::{CommitFailure, Committed, Committer, KAFKA_CALL_TIMEOUT, is_fence};
use super::outputs::{Outputs, Unwritable};
use crate::offsets::{OffsetTracker, TakenRange};

/// A finished transaction, with what is needed to act on it.
pub(super) struct CommitDone {
    outcome: Committed,
    ranges: Vec<TakenRange>,
    records: usize,
    started: Instant,
}

/// The transactions of one resizer.
pub(super) struct Transactions {
    /// Writes one transaction (a clone runs in each transaction's task).
    committer: Committer,
    /// The transaction committing now, if any. One at a time: a transactional producer has one
    /// open transaction.
    committing: Option<tokio::task::JoinHandle<CommitDone>>,
    /// How to replace the transactional producer after a fatal error, and how often it was.
    rebuild: ProducerRebuild,
    unwritable: UnwritableInputs,
    /// Outputs in one transaction at most.
    max_records: usize,
    readiness: Readiness,
    /// A commit is the resizer's progress.
    progress: StallDetector,
    shutdown: Shutdown,
}

impl Transactions {
    pub(super) fn new(
        committer: Committer,
        rebuild: ProducerRebuild,
        max_records: usize,
        readiness: Readiness,
        progress: StallDetector,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            committer,
            committing: None,
            rebuild,
            unwritable: UnwritableInputs::default(),
            max_records,
            readiness,
            progress,
            shutdown,
        }
    }

    /// Starts a transaction with the ready outputs (at most `max_records`), unless one is still
    /// committing: the next flush after it takes what became ready meanwhile.
    pub(super) fn flush(&mut self, tracker: &mut OffsetTracker<Outputs>) {
        if self.committing.is_some() {
            return;
        }
        let (outputs, ranges) = tracker.take_ready(self.max_records);
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

    /// Whether a transaction is committing.
    pub(super) fn is_committing(&self) -> bool {
        self.committing.is_some()
    }

    /// Waits for the transaction in flight (pending forever when there is none). Cancel-safe: a
    /// transaction not yet finished stays in flight. A commit task that panicked counts as a
    /// fatal failure.
    pub(super) async fn poll_committed(&mut self) -> CommitDone {
        let Some(handle) = self.committing.as_mut() else {
            return std::future::pending().await;
        };
        let done = handle.await.unwrap_or_else(|_| CommitDone {
            outcome: Committed::Fatal(KafkaError::Canceled),
            ranges: Vec::new(),
            records: 0,
            started: Instant::now(),
        });
        self.committing = None;
        done
    }

    /// Acts on a finished transaction: counts it, or forgets and re-reads an aborted one's
    /// inputs, or replaces a producer that failed fatally (see [`Self::replace_producer`]).
    pub(super) async fn settle(
        &mut self,
        commit: CommitDone,
        tracker: &mut OffsetTracker<Outputs>,
    ) -> Result<(), ResizerError> {
        let metrics = &self.committer.metrics;
        match commit.outcome {
            Committed::Ok => {
                metrics.transactions.with_label_values(&["committed"]).inc();
                metrics
                    .transaction_seconds
                    .observe(commit.started.elapsed().as_secs_f64());
                metrics.transaction_records.observe(commit.records as f64);
                self.progress.progressed(!tracker.is_empty());
                Ok(())
            }
            Committed::Fatal(error) => self.replace_producer(error, tracker).await,
            Committed::Aborted(CommitFailure {
                error, unwritable, ..
            }) => {
                if let Some((source, reason)) = unwritable {
                    // Re-read, this input is dead-lettered instead of failing the same way again.
                    self.unwritable.insert(source, reason);
                }
                metrics.transactions.with_label_values(&["aborted"]).inc();
                tracing::warn!(%error, "Transaction aborted; re-reading its records");
                self.rewind(&commit.ranges, tracker);
                Ok(())
            }
        }
    }

    /// Shutdown: waits for the transaction in flight, then commits what is ready.
    pub(super) async fn commit_all(
        &mut self,
        tracker: &mut OffsetTracker<Outputs>,
    ) -> Result<(), ResizerError> {
        loop {
            if self.committing.is_some() {
                let commit = self.poll_committed().await;
                self.settle(commit, tracker).await?;
            }
            if tracker.ready_count() == 0 {
                return Ok(());
            }
            self.flush(tracker);
        }
    }

    /// Why an input read again cannot be processed, if one of its outputs could never be
    /// written in an earlier, aborted transaction (see [`UnwritableInputs`]).
    pub(super) fn take_unwritable(&mut self, source: (i32, i64)) -> Option<Unwritable> {
        self.unwritable.take(source)
    }

    /// A partition was revoked: whatever its inputs were, its new owner decides again.
    pub(super) fn forget_partition(&mut self, partition: i32) {
        self.unwritable.forget_partition(partition);
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
    /// A commit that never returns counts as fatal too (see `Committer::commit`).
    async fn replace_producer(
        &mut self,
        error: KafkaError,
        tracker: &mut OffsetTracker<Outputs>,
    ) -> Result<(), ResizerError> {
        self.committer
            .metrics
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
        tracker.forget_all();
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
            let consumer = Arc::clone(&self.committer.consumer);
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
    fn rewind(&self, ranges: &[TakenRange], tracker: &mut OffsetTracker<Outputs>) {
        for range in ranges {
            tracker.forget(range.partition);
            if let Err(error) = self.committer.consumer.seek(
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
    consumer: &StreamConsumer<InboxContext>,
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

/// Input records one of whose outputs failed permanently inside a transaction that then had to
/// abort (a delivery failure makes the whole transaction abortable). When such a record is read
/// again it is dead-lettered instead of processed, so the partition moves on rather than
/// retrying the same failing transaction forever. Bounded: an entry lives until its record comes
/// back or its partition is revoked, and at most [`UnwritableInputs::CAPACITY`] are kept (a
/// forgotten one only costs one more aborted transaction).
#[derive(Debug, Default)]
struct UnwritableInputs(HashMap<(i32, i64), Unwritable>);

impl UnwritableInputs {
    const CAPACITY: usize = 1024;

    fn insert(&mut self, source: (i32, i64), unwritable: Unwritable) {
        if self.0.len() >= Self::CAPACITY {
            self.0.clear();
        }
        self.0.insert(source, unwritable);
    }

    fn take(&mut self, source: (i32, i64)) -> Option<Unwritable> {
        self.0.remove(&source)
    }

    fn forget_partition(&mut self, partition: i32) {
        self.0.retain(|&(p, _), _| p != partition);
    }
}

/// Builds a replacement for a transactional producer that failed fatally, and bounds how often
/// a fenced one is replaced (other fatal errors come from broker trouble, and each replacement
/// waits for the brokers, so they need no bound).
pub(super) struct ProducerRebuild {
    kafka: KafkaConfig,
    transactional_id: String,
    /// When a fenced producer was last replaced, newest last; none older than [`Self::WINDOW`].
    recent: VecDeque<Instant>,
}

impl ProducerRebuild {
    /// Fences answered with a replacement within [`Self::WINDOW`]; one more means something
    /// keeps fencing us.
    const MAX_FENCES: usize = 3;
    /// See [`Self::MAX_FENCES`].
    const WINDOW: Duration = Duration::from_secs(600);

    pub(super) fn new(kafka: KafkaConfig, transactional_id: String) -> Self {
        Self {
            kafka,
            transactional_id,
            recent: VecDeque::new(),
        }
    }

    /// Whether a fenced producer may be replaced at `now`; counts it if so.
    fn allow_fence(&mut self, now: Instant) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn unwritable(topic: &str) -> Unwritable {
        Unwritable {
            topic: topic.into(),
            partition: Some(1),
            error: "Unknown partition".into(),
        }
    }

    #[test]
    fn an_unwritable_input_is_remembered_once_until_its_partition_is_revoked() {
        let mut inputs = UnwritableInputs::default();
        inputs.insert((0, 5), unwritable("a"));
        inputs.insert((1, 5), unwritable("b"));
        assert_eq!(inputs.take((0, 5)), Some(unwritable("a")));
        assert_eq!(inputs.take((0, 5)), None, "taken once");
        inputs.forget_partition(1);
        assert_eq!(inputs.take((1, 5)), None, "revoked");
    }

    #[test]
    fn unwritable_inputs_stay_bounded() {
        let mut inputs = UnwritableInputs::default();
        for offset in 0..=UnwritableInputs::CAPACITY as i64 {
            inputs.insert((0, offset), unwritable("t"));
        }
        assert!(inputs.0.len() <= UnwritableInputs::CAPACITY);
        let last = UnwritableInputs::CAPACITY as i64;
        assert!(inputs.take((0, last)).is_some(), "the newest is kept");
    }

    #[test]
    fn a_fenced_producer_is_replaced_at_most_three_times_in_ten_minutes() {
        let mut rebuild = ProducerRebuild::new(KafkaConfig::default(), "resizer-x".into());
        let start = Instant::now();
        for i in 0..3 {
            assert!(rebuild.allow_fence(start + Duration::from_secs(i)));
        }
        assert!(!rebuild.allow_fence(start + Duration::from_secs(10)));
        assert!(
            rebuild.allow_fence(start + ProducerRebuild::WINDOW + Duration::from_secs(1)),
            "the oldest fence left the window"
        );
    }
}
