//! The aggregator's loop over `usage.events` ([`UsageLoop`]): `select!` over records, a ticker
//! and shutdown; per-partition batches written to ClickHouse on size or age; partitions
//! positioned from ClickHouse.
//!
//! How offsets work here:
//! - On assignment the rebalance callback pauses the new partitions (so nothing is fetched from
//!   Kafka's committed offset), and the loop asks ClickHouse for the highest offset it holds per
//!   partition, seeks past it and resumes. Kafka's committed offsets are never trusted for
//!   positioning; they are stored after each acknowledged INSERT only so lag tools see progress.
//! - On revocation the partition's unwritten batch is dropped. The loop never polls Kafka while an
//!   INSERT is in flight, so a revocation can only arrive between INSERTs: no write of ours races
//!   the next owner.
//! - When ClickHouse fails (down, timed out, overloaded) every partition is paused, readiness goes
//!   red, and the loop keeps polling (rebalance callbacks keep working) while it retries with
//!   backoff. Memory stays bounded: paused partitions fetch nothing new.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chassis::ServiceContext;
use chassis::kafka::{count_rebalance, log_rebalance};
use chassis::outage::retry_while_down;
use chassis::rebalance::{PartitionMoves, RebalanceInbox};
use prometheus::IntGaugeVec;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use schemas::events::UsageRecorded;
use schemas::{Codec, CodecError};

use crate::AggregatorError;
use crate::batcher::{Admission, Batcher, NextWrite, RowKind};
use chassis::Backoff;

use crate::config::AggregatorConfig;
use crate::metrics::Metrics;
use crate::rollup::SettleMark;
use crate::sink::{RejectRow, SinkError, UsageRow, UsageSink};

/// Readiness check flipped by ClickHouse availability.
pub const CLICKHOUSE_CHECK: &str = "aggregator.clickhouse";
/// Readiness check flipped by schema registry availability.
pub const REGISTRY_CHECK: &str = "aggregator.registry";

/// Each partition's latest end as librdkafka's statistics saw it, written by the consumer's
/// statistics callback and drained by the loop when it reports idle partitions. A map, not a
/// queue: bounded by the topic's partition count. Clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct PartitionEnds(Arc<Mutex<BTreeMap<i32, PartitionEnd>>>);

impl PartitionEnds {
    fn record(&self, ends: Vec<(i32, PartitionEnd)>) {
        self.lock().extend(ends);
    }

    fn take(&self) -> BTreeMap<i32, PartitionEnd> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, PartitionEnd>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One partition's log end and how far the application has taken it, at one instant.
#[derive(Debug, Clone, Copy)]
struct PartitionEnd {
    /// When librdkafka's statistics were taken.
    seen: Instant,
    /// The same instant, wall clock, epoch seconds.
    seen_at: u32,
    /// The last stable offset (the high watermark when not reading transactions): the offset
    /// the next record produced will get, or beyond.
    stable_end: i64,
    /// One past the last record handed to the application (-1001 when none yet).
    app_offset: i64,
}

/// How far a record's event time may run ahead of its Kafka timestamp before it is taken as
/// wrong: clocks of producers and brokers differ by milliseconds when synchronised.
const FUTURE_TOLERANCE_MS: i64 = 1_000;

/// Brings `event`'s time back to `logged_at_ms` (its Kafka timestamp: the broker's append time on
/// `usage.events`) when it runs ahead of it by more than [`FUTURE_TOLERANCE_MS`]; returns the
/// time it carried. A record cannot have happened after Kafka logged it; stored as stamped, it
/// would move its partition's progress ahead of records not yet stored and make them late for
/// settling (see `rollup`). Stored at the log time, it is billed when it reached Kafka.
pub(crate) fn not_after_log_time(
    event: &mut UsageRecorded,
    logged_at_ms: Option<i64>,
) -> Option<i64> {
    let logged = logged_at_ms.filter(|t| *t > 0)?;
    (event.event_time_ms > logged.saturating_add(FUTURE_TOLERANCE_MS))
        .then(|| std::mem::replace(&mut event.event_time_ms, logged))
}

/// Rebalance and statistics callbacks of the aggregator's consumer: partitions moved go to a
/// [`RebalanceInbox`], partition ends to [`PartitionEnds`], both drained by [`UsageLoop`].
pub(crate) struct AggregatorContext {
    inbox: RebalanceInbox,
    ends: PartitionEnds,
    lag: IntGaugeVec,
}

/// The loop's side of [`AggregatorContext`]'s callbacks.
pub(crate) struct ContextHandles {
    inbox: RebalanceInbox,
    ends: PartitionEnds,
}

impl AggregatorContext {
    /// Callbacks for a consumer of `topic`, reporting lag per partition to `lag`.
    pub(crate) fn new(topic: String, lag: IntGaugeVec) -> Self {
        Self {
            inbox: RebalanceInbox::new(topic),
            ends: PartitionEnds::default(),
            lag,
        }
    }

    /// What the loop drains.
    pub(crate) fn handles(&self) -> ContextHandles {
        ContextHandles {
            inbox: self.inbox.clone(),
            ends: self.ends.clone(),
        }
    }
}

impl ClientContext for AggregatorContext {
    /// librdkafka's own view of lag: high watermark minus the offset we stored after ClickHouse
    /// acknowledged, i.e. exactly what is not yet durable.
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(self.inbox.topic()) else {
            return;
        };
        let seen = Instant::now();
        let seen_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        let mut ends = Vec::new();
        for (partition, stats) in &topic.partitions {
            if *partition >= 0 && stats.fetch_state == "active" && stats.consumer_lag_stored >= 0 {
                self.lag
                    .with_label_values(&[&partition.to_string()])
                    .set(stats.consumer_lag_stored);
            }
            let stable_end = if stats.ls_offset >= 0 {
                stats.ls_offset
            } else {
                stats.hi_offset
            };
            if *partition >= 0 && stats.fetch_state == "active" && stable_end >= 0 {
                let end = PartitionEnd {
                    seen,
                    seen_at,
                    stable_end,
                    app_offset: stats.app_offset,
                };
                ends.push((*partition, end));
            }
        }
        self.ends.record(ends);
    }
}

impl ConsumerContext for AggregatorContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        log_rebalance("usage-aggregator", "Rebalance starting", rebalance);
        if let Rebalance::Revoke(list) = rebalance {
            self.inbox.revoke(list);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        log_rebalance("usage-aggregator", "Rebalance done", rebalance);
        count_rebalance("aggregator", rebalance);
        if let Rebalance::Assign(list) = rebalance {
            // Paused until the loop has sought past what ClickHouse holds: nothing is fetched
            // from Kafka's committed offset, which ClickHouse, not Kafka, is the authority on.
            if let Err(error) = consumer.pause(list) {
                tracing::warn!(%error, "Pausing newly assigned partitions failed");
            }
            self.inbox.assign(list);
        }
    }
}

/// Why the loop is not writing: ClickHouse failed, next attempt at `until`.
#[derive(Debug)]
struct Stall {
    until: Instant,
}

/// The aggregator's loop over `usage.events`: everything it owns except the Kafka consumer
/// (whose messages borrow it).
pub(crate) struct UsageLoop {
    topic: String,
    /// Partitions moved by rebalances, as the consumer's callbacks saw them.
    inbox: RebalanceInbox,
    /// Partition ends, as the consumer's statistics saw them.
    ends: PartitionEnds,
    pub(crate) sink: UsageSink,
    pub(crate) codec: Codec,
    pub(crate) config: AggregatorConfig,
    pub(crate) metrics: Metrics,
    pub(crate) ctx: ServiceContext,
    pub(crate) batcher: Batcher,
    stall: Option<Stall>,
    progress: chassis::StallDetector,
    backoff: Backoff,
    query_prefix: String,
    query_seq: u64,
    /// When each partition was last positioned: statistics older than that describe a previous
    /// assignment and say nothing about what this one stored.
    activated: BTreeMap<i32, Instant>,
    /// When idle partitions were last reported to ClickHouse.
    idle_reported: Option<Instant>,
    /// The rollup job's settle mark: rows stored behind it are counted as late.
    mark: SettleMark,
    /// Records stamped ahead of Kafka's log time since the last warning, and when that was.
    future_records: u64,
    future_logged: Option<Instant>,
}

impl UsageLoop {
    pub(crate) fn new(
        handles: ContextHandles,
        sink: UsageSink,
        codec: Codec,
        config: AggregatorConfig,
        metrics: Metrics,
        ctx: ServiceContext,
    ) -> Result<Self, prometheus::Error> {
        let progress = chassis::StallDetector::start("aggregator", config.stall_after, &ctx)?;
        Ok(Self {
            batcher: Batcher::new(
                config.batch_max_records,
                config.batch_max_age,
                config.max_pending_records,
            ),
            backoff: config.retry_policy().backoff(),
            query_prefix: format!("usage-aggregator-{}", uuid::Uuid::new_v4().simple()),
            query_seq: 0,
            activated: BTreeMap::new(),
            idle_reported: None,
            mark: SettleMark::default(),
            future_records: 0,
            future_logged: None,
            stall: None,
            progress,
            topic: handles.inbox.topic().to_owned(),
            inbox: handles.inbox,
            ends: handles.ends,
            sink,
            codec,
            config,
            metrics,
            ctx,
        })
    }

    /// Counts rows stored behind `mark` (the rollup job's) as late.
    pub(crate) fn with_mark(mut self, mark: SettleMark) -> Self {
        self.mark = mark;
        self
    }

    /// Consumes until shutdown, then writes what it holds (one attempt) and commits.
    pub(crate) async fn run(
        mut self,
        consumer: StreamConsumer<AggregatorContext>,
    ) -> Result<(), AggregatorError> {
        consumer
            .subscribe(&[&self.topic])
            .map_err(|source| AggregatorError::Subscribe {
                topic: self.topic.clone(),
                source,
            })?;
        // A tick a fraction of the batch age keeps the freshness bound tight.
        let period = (self.config.batch_max_age / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(100));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.ctx.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                () = shutdown.wait() => break,
                message = consumer.recv() => match message {
                    Ok(message) => {
                        let partition = message.partition();
                        let offset = message.offset();
                        let logged_at_ms = message.timestamp().to_millis();
                        let payload = message.payload().unwrap_or_default();
                        if !self.on_record(partition, offset, logged_at_ms, payload).await {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "Kafka consumer error");
                    }
                },
                _ = ticker.tick() => {}
            }
            self.maintain(&consumer).await?;
        }
        self.drain(&consumer).await
    }

    /// Takes one record (`logged_at_ms`: its Kafka timestamp); `false` when shutdown interrupted
    /// a registry retry.
    async fn on_record(
        &mut self,
        partition: i32,
        offset: i64,
        logged_at_ms: Option<i64>,
        payload: &[u8],
    ) -> bool {
        self.progress.busy();
        self.metrics.consumed.inc();
        match self.batcher.admit(partition, offset) {
            Admission::Take => {}
            Admission::AlreadyStored => {
                self.metrics.skipped.inc();
                return true;
            }
            Admission::NotReady => return true,
        }
        let mut registry_down = false;
        let (codec, readiness) = (&self.codec, &self.ctx.readiness);
        let decoded = retry_while_down(
            self.config.retry_policy(),
            &self.ctx.shutdown,
            CodecError::is_retryable,
            |error, attempt| {
                // The record is fine, the registry is not: retry, never skip.
                tracing::warn!(partition, offset, %error, attempt, "Schema registry unavailable; retrying");
                readiness.not_ready(
                    REGISTRY_CHECK,
                    &format!("schema registry unavailable: {error}"),
                );
                registry_down = true;
            },
            || codec.decode::<UsageRecorded>(payload),
        )
        .await;
        match decoded {
            Ok(Ok(mut event)) => {
                if let Some(stamped_ms) = not_after_log_time(&mut event, logged_at_ms) {
                    self.warn_stamped_ahead(partition, offset, stamped_ms, event.event_time_ms);
                }
                self.batcher
                    .push_row(UsageRow::new(partition, offset, event));
            }
            Ok(Err(error)) => {
                tracing::warn!(partition, offset, %error, "Rejected undecodable usage record");
                self.metrics.rejected.inc();
                self.batcher.push_reject(RejectRow {
                    kafka_partition: partition,
                    kafka_offset: offset,
                    error: error.to_string(),
                    payload_size: i64::try_from(payload.len()).unwrap_or(i64::MAX),
                });
            }
            Err(_) => return false,
        }
        if registry_down {
            self.ctx.readiness.ready(REGISTRY_CHECK);
        }
        self.metrics.pending.set(gauge(self.batcher.pending()));
        true
    }

    /// Applies rebalances, positions new partitions, writes due batches.
    async fn maintain(
        &mut self,
        consumer: &StreamConsumer<AggregatorContext>,
    ) -> Result<(), AggregatorError> {
        self.apply_rebalances();
        if self
            .stall
            .as_ref()
            .is_some_and(|s| Instant::now() < s.until)
        {
            return Ok(());
        }
        let result = match self.position(consumer).await {
            Ok(()) => match self.flush_due(consumer, false).await {
                Ok(()) => self.report_idle().await,
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => {
                if self.stall.take().is_some() {
                    self.recovered(consumer);
                }
                Ok(())
            }
            Err(error) => self.failed(consumer, error),
        }
    }

    fn apply_rebalances(&mut self) {
        let PartitionMoves { assigned, revoked } = self.inbox.take();
        for partition in revoked {
            let dropped = self.batcher.revoke(partition);
            self.activated.remove(&partition);
            let _ = self
                .metrics
                .lag
                .remove_label_values(&[&partition.to_string()]);
            tracing::info!(
                partition,
                dropped,
                "Partition revoked; its unwritten records are left to the next owner"
            );
        }
        for partition in assigned {
            self.batcher.assign(partition);
        }
        self.metrics.pending.set(gauge(self.batcher.pending()));
    }

    /// Reports idle partitions to ClickHouse (at most once per `rollup_interval`), so that the
    /// rollup job settles windows that only traffic on them could hold back; a partition that
    /// never gets traffic would otherwise stop settling for good.
    ///
    /// Idle, exactly: librdkafka's statistics at instant `T` (after this assignment began) put
    /// the partition's stable end at `E`, every record before `E` had reached the application
    /// by then (`app_offset >= E`, or the position ClickHouse gave is already `E`), and now
    /// nothing of it is waiting to be written. Then every record produced before `T` is in
    /// ClickHouse, and a later one carries an event time of at least `T - rollup_lateness`,
    /// the bound settling already assumes of a partition's records. So `T` counts as the
    /// partition's event-time progress (`usage_offsets.max_event_time`); its resume offset is
    /// left as it is.
    async fn report_idle(&mut self) -> Result<(), SinkError> {
        if self
            .idle_reported
            .is_some_and(|at| at.elapsed() < self.config.rollup_interval)
        {
            return Ok(());
        }
        self.idle_reported = Some(Instant::now());
        let ends = self.ends.take();
        let idle: Vec<(i32, u32)> = ends
            .into_iter()
            .filter(|(partition, end)| {
                let Some(durable_until) = self.batcher.durable_until(*partition) else {
                    return false;
                };
                let current = self
                    .activated
                    .get(partition)
                    .is_some_and(|activated| end.seen > *activated);
                current && end.app_offset.max(durable_until) >= end.stable_end
            })
            .map(|(partition, end)| (partition, end.seen_at))
            .collect();
        if idle.is_empty() {
            return Ok(());
        }
        self.sink.report_idle(&idle).await
    }

    /// Seeks every newly assigned partition past the highest offset ClickHouse holds for it.
    async fn position(
        &mut self,
        consumer: &StreamConsumer<AggregatorContext>,
    ) -> Result<(), SinkError> {
        let awaiting = self.batcher.awaiting();
        if awaiting.is_empty() {
            return Ok(());
        }
        let stored = self.sink.stored_offsets(&awaiting).await?;
        for partition in awaiting {
            let stored = stored.get(&partition).copied();
            let target = stored.map_or(Offset::Beginning, |s| Offset::Offset(s + 1));
            // A local librdkafka operation (no broker round trip); the timeout only bounds a
            // wedged client.
            if let Err(error) =
                consumer.seek(&self.topic, partition, target, Duration::from_secs(5))
            {
                // Stays paused and awaiting: the next tick tries again.
                tracing::warn!(partition, %error, "Seeking to ClickHouse's offset failed; will retry");
                continue;
            }
            let Some(next) = self.batcher.activate(partition, stored) else {
                continue;
            };
            self.activated.insert(partition, Instant::now());
            if next > 0 {
                // So lag tools and committed offsets agree with ClickHouse at once.
                let _ = consumer.store_offset(&self.topic, partition, next);
            }
            if self.stall.is_none() {
                set_paused(consumer, &self.topic, &[partition], false);
            }
            tracing::info!(
                partition,
                next_offset = next,
                "Partition positioned from ClickHouse"
            );
        }
        Ok(())
    }

    async fn flush_due(
        &mut self,
        consumer: &StreamConsumer<AggregatorContext>,
        all: bool,
    ) -> Result<(), SinkError> {
        let mut wrote = false;
        for partition in self.batcher.due(Instant::now(), all) {
            self.flush(consumer, partition).await?;
            wrote = true;
        }
        let pending = self.batcher.pending();
        self.metrics.pending.set(gauge(pending));
        if wrote {
            self.progress.progressed(pending > 0);
        } else if pending == 0 {
            self.progress.idle();
        }
        Ok(())
    }

    /// Writes one partition's batch: rows first (at most `batch_max_records` per INSERT), then
    /// rejects, then stores the Kafka offset. Rows go first so that the highest stored offset
    /// never covers a usage row that is not stored: a lost reject row is only a lost log entry.
    async fn flush(
        &mut self,
        consumer: &StreamConsumer<AggregatorContext>,
        partition: i32,
    ) -> Result<(), SinkError> {
        let Some(last_offset) = self.batcher.last_offset(partition) else {
            return Ok(());
        };
        loop {
            let query_id = self.next_query_id();
            let max = self.config.batch_max_records;
            let (kind, count, result) = match self.batcher.next_write(partition, max) {
                NextWrite::Done => break,
                NextWrite::Recheck { query_id } => {
                    // The previous attempt may have been applied without us hearing so: wait
                    // until the server no longer runs it, then re-send only what ClickHouse does
                    // not hold.
                    if let Some(query_id) = query_id {
                        self.sink.wait_until_finished(&query_id).await?;
                    }
                    let stored = self.sink.stored_offsets(&[partition]).await?;
                    let dropped = self
                        .batcher
                        .rechecked(partition, stored.get(&partition).copied());
                    if dropped > 0 {
                        tracing::info!(
                            partition,
                            dropped,
                            "A retried INSERT had been applied; not sending it again"
                        );
                        self.metrics.skipped.inc_by(dropped as u64);
                    }
                    continue;
                }
                NextWrite::Rows(rows) => {
                    let started = Instant::now();
                    let result = self.sink.insert_rows(partition, rows, &query_id).await;
                    if result.is_ok() {
                        self.metrics.inserted.inc_by(rows.len() as u64);
                        self.count_late(partition, rows);
                        self.metrics
                            .insert_duration
                            .observe(started.elapsed().as_secs_f64());
                        self.metrics.batch_size.observe(rows.len() as f64);
                    }
                    (RowKind::Usage, rows.len(), result)
                }
                NextWrite::Rejects(rejects) => {
                    let result = self
                        .sink
                        .insert_rejects(partition, rejects, &query_id)
                        .await;
                    (RowKind::Rejects, rejects.len(), result)
                }
            };
            self.batcher
                .sent(partition, kind, count, &query_id, result.is_ok());
            result?;
        }
        if let Err(error) = consumer.store_offset(&self.topic, partition, last_offset + 1) {
            // Revoked meanwhile: harmless, commits only feed lag metrics.
            tracing::debug!(partition, %error, "Storing the Kafka offset failed");
        }
        Ok(())
    }

    /// Logs a record whose event time was ahead of Kafka's log time (at most one line a minute,
    /// with how many since the last one).
    fn warn_stamped_ahead(&mut self, partition: i32, offset: i64, stamped_ms: i64, logged_ms: i64) {
        self.future_records += 1;
        if self
            .future_logged
            .is_some_and(|at| at.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.future_logged = Some(Instant::now());
        tracing::warn!(
            partition,
            offset,
            stamped_ms,
            logged_ms,
            records = std::mem::take(&mut self.future_records),
            "Usage records stamped ahead of Kafka's log time (a producer clock ahead?): stored at the log time"
        );
    }

    /// Counts (and logs, once per batch) rows just stored whose minute the rollups had already
    /// settled: the views miss them until a usage rebuild. They are records stored more than
    /// `rollup_lateness` behind newer ones of their partition (a producer's clock far behind,
    /// or records held back longer than the bound).
    fn count_late(&self, partition: i32, rows: &[UsageRow]) {
        let late = rows.iter().filter(|row| self.mark.late(row.event_time));
        let (count, oldest) = late.fold((0_u64, u32::MAX), |(n, oldest), row| {
            (n + 1, oldest.min(row.event_time))
        });
        if count > 0 {
            self.metrics.late.inc_by(count);
            tracing::warn!(
                partition,
                count,
                oldest_event_time = oldest,
                settled_until = self.mark.get(),
                "Stored usage records whose minute was already settled: the usage views miss them (see runbooks/usage-late-records.md)"
            );
        }
    }

    fn next_query_id(&mut self) -> String {
        self.query_seq += 1;
        format!("{}-{}", self.query_prefix, self.query_seq)
    }

    /// A ClickHouse failure: permanent ones stop the service (a restart re-applies migrations);
    /// retryable ones pause consumption and schedule a retry.
    fn failed(
        &mut self,
        consumer: &StreamConsumer<AggregatorContext>,
        error: SinkError,
    ) -> Result<(), AggregatorError> {
        self.metrics.insert_failures.inc();
        if !error.is_retryable() {
            tracing::error!(%error, "ClickHouse refused usage data; stopping");
            return Err(AggregatorError::Sink(error));
        }
        // An unbounded policy always has a next delay; the cap is only a fallback.
        let delay = self
            .backoff
            .next_delay()
            .unwrap_or(self.config.retry_backoff_max);
        tracing::warn!(%error, ?delay, pending = self.batcher.pending(), "ClickHouse unavailable; consumption paused");
        self.metrics.clickhouse_up.set(0);
        self.ctx.readiness.not_ready(
            CLICKHOUSE_CHECK,
            &format!("ClickHouse unavailable, consumption paused: {error}"),
        );
        if self.stall.is_none() {
            let active = self.batcher.active();
            set_paused(consumer, &self.topic, &active, true);
        }
        self.stall = Some(Stall {
            until: Instant::now() + delay,
        });
        Ok(())
    }

    fn recovered(&mut self, consumer: &StreamConsumer<AggregatorContext>) {
        self.backoff.reset();
        self.metrics.clickhouse_up.set(1);
        self.ctx.readiness.ready(CLICKHOUSE_CHECK);
        let active = self.batcher.active();
        set_paused(consumer, &self.topic, &active, false);
        tracing::info!("ClickHouse answers again; consumption resumed");
    }

    /// Shutdown: one attempt to write everything held, then a synchronous commit.
    async fn drain(
        mut self,
        consumer: &StreamConsumer<AggregatorContext>,
    ) -> Result<(), AggregatorError> {
        self.apply_rebalances();
        if let Err(error) = self.flush_due(consumer, true).await {
            // Nothing is lost: the records are read again from ClickHouse's offsets.
            tracing::warn!(%error, pending = self.batcher.pending(), "Could not write the last batches before stopping");
        }
        if let Err(error) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            tracing::debug!(%error, "Final commit failed (commits only feed lag metrics)");
        }
        tracing::info!("Usage aggregator stopped");
        Ok(())
    }
}

fn set_paused(
    consumer: &StreamConsumer<AggregatorContext>,
    topic: &str,
    partitions: &[i32],
    paused: bool,
) {
    if partitions.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        list.add_partition(topic, *partition);
    }
    let result = if paused {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    if let Err(error) = result {
        tracing::warn!(%error, paused, ?partitions, "Pausing or resuming partitions failed");
    }
}

fn gauge(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stamped(ms: i64) -> UsageRecorded {
        UsageRecorded {
            request_id: "r".into(),
            tenant_id: "t".into(),
            key_id: "k".into(),
            event_time_ms: ms,
            outcome: "ok".into(),
            status: 200,
            bytes_in: 1,
            bytes_out: 1,
            pixels_in: 1,
            pixels_out: 1,
            cpu_time_us: 1,
            input_format: None,
            output_format: None,
            latency_us: 1,
            source: schemas::events::UsageSource::Api,
            source_host: None,
        }
    }

    #[test]
    fn event_times_ahead_of_the_log_time_are_brought_back_to_it() {
        let logged = 1_764_547_200_000;
        let mut ahead = stamped(logged + 600_000);
        assert_eq!(
            not_after_log_time(&mut ahead, Some(logged)),
            Some(logged + 600_000)
        );
        assert_eq!(ahead.event_time_ms, logged);
        // Clock jitter within the tolerance, and records stamped before they were logged (as
        // every record is), stay as stamped.
        for ms in [logged + FUTURE_TOLERANCE_MS, logged, logged - 5_000] {
            let mut event = stamped(ms);
            assert_eq!(not_after_log_time(&mut event, Some(logged)), None);
            assert_eq!(event.event_time_ms, ms);
        }
        // No timestamp (or Kafka's -1): nothing to compare with.
        let mut unknown = stamped(logged + 600_000);
        assert_eq!(not_after_log_time(&mut unknown, None), None);
        assert_eq!(not_after_log_time(&mut unknown, Some(-1)), None);
    }
}
