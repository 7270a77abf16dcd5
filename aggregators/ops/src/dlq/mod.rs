//! `imgpipe ops dlq list|show|redrive|purge`: the dead-letter topic `image.requests.dlq`.
//!
//! The consumer group `ops-dlq-redrive` is the DLQ's cursor: every record before its committed
//! offset is settled (redriven, purged, or kept by being appended again at the tail); the
//! records after it are pending. `redrive` and `purge` move the cursor in the same Kafka
//! transaction as the records they write, so a run that dies half-way has either done a batch
//! completely or not at all, and the next run (whose transactional id fences the dead one and
//! aborts its open transaction) continues from the cursor: nothing lost, nothing written twice.
//! A record a filter does not select is appended again to the DLQ in that transaction, so the
//! cursor can move past it without losing it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use chassis::kafka::KafkaConfig;
use clap::{Args, Subcommand};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use schemas::Codec;
use schemas::topics::IMAGE_REQUESTS_DLQ;

use super::{KAFKA_CALL_TIMEOUT, OpsError};

/// The group whose committed offsets are the DLQ's cursor (namespaced).
pub const CURSOR_GROUP: &str = "ops-dlq-redrive";
/// The transactional id of `redrive` and `purge`: one run at a time, a new one fences the old.
pub const TRANSACTIONAL_ID: &str = "ops-dlq-redrive";

/// Headers the resizer adds when it dead-letters a record; removed again on redrive.
const DLQ_HEADERS: &[&str] = &[
    "error.class",
    "error.message",
    "source.topic",
    "source.partition",
    "source.offset",
    "target.topic",
    "target.partition",
];
/// How often a record has been redriven (absent: never).
pub const REDRIVE_COUNT: &str = "redrive.count";
/// Where a redriven record came from: `<dlq topic>/<partition>/<offset>`.
pub const REDRIVE_FROM: &str = "redrive.from";
/// On a record appended again to the DLQ by a run that did not select it: its previous place.
pub const KEPT_FROM: &str = "dlq.kept.from";
/// The error class the record had in the DLQ.
pub const REDRIVE_ERROR_CLASS: &str = "redrive.error.class";

/// `imgpipe ops dlq …`
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Pending records (after the cursor), one line each; --all from the oldest kept.
    List(ListArgs),
    /// One record in full: headers and its value decoded (images as sizes).
    Show {
        /// Partition of the DLQ.
        #[arg(long)]
        partition: i32,
        /// Offset in that partition.
        #[arg(long)]
        offset: i64,
    },
    /// Re-publishes selected pending records to where they came from (or --to-topic), with
    /// their original key, bytes and headers plus redrive.count/redrive.from.
    Redrive(ActArgs),
    /// Drops selected pending records for good (moves the cursor past them).
    Purge(PurgeArgs),
}

/// Which records a command applies to; all given conditions must hold.
#[derive(Debug, Clone, Default, Args)]
pub struct DlqFilter {
    /// Only records dead-lettered with this error class (e.g. `undecodable_request`).
    #[arg(long)]
    pub error_class: Option<String>,
    /// Only records dead-lettered at or after this time (RFC 3339 or Unix ms).
    #[arg(long, value_parser = super::parse_datetime)]
    pub since: Option<SystemTime>,
    /// Only records dead-lettered before this time.
    #[arg(long, value_parser = super::parse_datetime)]
    pub until: Option<SystemTime>,
    /// Only records of this tenant (read from the decoded value; undecodable records have none).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only the record with this key (the request id).
    #[arg(long)]
    pub key: Option<String>,
}

/// `list` options.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: DlqFilter,
    /// Every record still in the topic, settled ones included.
    #[arg(long)]
    pub all: bool,
}

/// `redrive`/`purge` options.
#[derive(Debug, Clone, Args)]
pub struct ActArgs {
    #[command(flatten)]
    pub filter: DlqFilter,
    /// Redrive to this topic (base name) instead of each record's origin.
    #[arg(long)]
    pub to_topic: Option<String>,
    /// Records redriven this often already stay in the DLQ (a poison record must not loop).
    #[arg(long, default_value_t = 3)]
    pub max_redrives: u32,
    /// Records per transaction.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Carry out the plan; without it nothing changes.
    #[arg(long)]
    pub execute: bool,
}

/// `purge` options.
#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub filter: DlqFilter,
    /// Purge every pending record (required when no filter is given).
    #[arg(long)]
    pub all: bool,
    /// Records per transaction.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Carry out the plan; without it nothing changes.
    #[arg(long)]
    pub execute: bool,
}

/// One DLQ record, read.
#[derive(Debug, Clone)]
pub struct DlqEntry {
    /// DLQ partition.
    pub partition: i32,
    /// DLQ offset.
    pub offset: i64,
    /// When it was dead-lettered (ms since the epoch).
    pub timestamp_ms: i64,
    /// The original key (request id).
    pub key: Option<Vec<u8>>,
    /// The original bytes.
    pub payload: Vec<u8>,
    /// Every header, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The tenant, if the value decodes and has a `tenant_id`.
    pub tenant: Option<String>,
}

impl DlqEntry {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Why it was dead-lettered.
    pub fn error_class(&self) -> &str {
        self.header("error.class").unwrap_or("unknown")
    }

    /// How often it has been redriven already.
    pub fn redrive_count(&self) -> u32 {
        self.header(REDRIVE_COUNT)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Where a redrive sends it: the topic an unwritable output was going to, else the topic
    /// the input came from.
    pub fn origin(&self) -> Option<&str> {
        self.header("target.topic")
            .filter(|t| !t.is_empty())
            .or_else(|| self.header("source.topic"))
            .filter(|t| !t.is_empty())
    }

    /// The key as text.
    pub fn key_text(&self) -> String {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default()
    }
}

impl DlqFilter {
    /// Whether no condition is given (every record is selected).
    pub fn is_empty(&self) -> bool {
        self.error_class.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.tenant.is_none()
            && self.key.is_none()
    }

    /// Refuses a time range that selects nothing by construction.
    pub fn check(&self) -> Result<(), OpsError> {
        match (self.since, self.until) {
            (Some(since), Some(until)) if since >= until => Err(OpsError::BadArgument(
                "--since must be before --until".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Whether `entry` is selected.
    pub fn matches(&self, entry: &DlqEntry) -> bool {
        let at = |t: SystemTime| super::unix_ms(t);
        self.error_class
            .as_deref()
            .is_none_or(|class| entry.error_class() == class)
            && self.since.is_none_or(|t| entry.timestamp_ms >= at(t))
            && self.until.is_none_or(|t| entry.timestamp_ms < at(t))
            && self
                .tenant
                .as_deref()
                .is_none_or(|tenant| entry.tenant.as_deref() == Some(tenant))
            && self
                .key
                .as_deref()
                .is_none_or(|key| entry.key.as_deref() == Some(key.as_bytes()))
    }
}

/// What `redrive`/`purge` does with one pending record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Re-published to this (namespaced) topic.
    Redrive(String),
    /// Dropped.
    Purge,
    /// Appended again to the DLQ: not selected, or over the redrive limit, or of unknown origin.
    Keep(&'static str),
}

/// What a `redrive`/`purge` run did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Records per (error class, what happens to them).
    pub by_class: BTreeMap<(String, String), u64>,
    /// Records redriven per destination topic.
    pub redriven: BTreeMap<String, u64>,
    /// Records purged.
    pub purged: u64,
    /// Records appended again to the DLQ.
    pub kept: u64,
    /// Transactions committed.
    pub transactions: u64,
    /// Stopped by Ctrl-C after a committed transaction; the rest stays pending.
    pub interrupted: bool,
}

/// Runs one `dlq` command and prints its result.
pub async fn run(config: &crate::Config, action: DlqAction) -> Result<(), OpsError> {
    let codec = Codec::new(&config.registry, &config.kafka.namespace);
    match action {
        DlqAction::List(args) => {
            let entries = list(&config.kafka, &codec, &args.filter, args.all).await?;
            print!("{}", render_list(&entries));
            Ok(())
        }
        DlqAction::Show { partition, offset } => {
            let entry = read_one(&config.kafka, &codec, partition, offset).await?;
            let value = match codec.decode_json(&entry.payload).await {
                Ok((schema, value)) => serde_json::json!({ "schema": schema, "value": value }),
                Err(error) => serde_json::json!({
                    "bytes": entry.payload.len(),
                    "undecodable": error.to_string(),
                }),
            };
            let headers: serde_json::Map<String, serde_json::Value> = entry
                .headers
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .as_deref()
                        .map(|v| String::from_utf8_lossy(v).into_owned());
                    (k.clone(), v.into())
                })
                .collect();
            let shown = serde_json::json!({
                "partition": entry.partition,
                "offset": entry.offset,
                "timestamp": super::format_ms(entry.timestamp_ms),
                "key": entry.key_text(),
                "headers": headers,
                "payload": value,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&shown).unwrap_or_default()
            );
            Ok(())
        }
        DlqAction::Redrive(args) => {
            let outcome = settle(config, &codec, &args, Mode::Redrive).await?;
            print!("{}", render_outcome(&outcome, args.execute));
            Ok(())
        }
        DlqAction::Purge(purge) => {
            if purge.filter.is_empty() && !purge.all {
                return Err(OpsError::BadArgument(
                    "purge needs a filter (--error-class, --since, --until, --tenant, --key) or --all".into(),
                ));
            }
            let args = ActArgs {
                filter: purge.filter,
                to_topic: None,
                max_redrives: 0,
                batch: purge.batch,
                execute: purge.execute,
            };
            let outcome = settle(config, &codec, &args, Mode::Purge).await?;
            print!("{}", render_outcome(&outcome, args.execute));
            Ok(())
        }
    }
}

/// Pending records (or, with `all`, every record still kept) that `filter` selects.
pub async fn list(
    kafka: &KafkaConfig,
    codec: &Codec,
    filter: &DlqFilter,
    all: bool,
) -> Result<Vec<DlqEntry>, OpsError> {
    filter.check()?;
    let mut scan = DlqScan::open(kafka, if all { Start::Earliest } else { Start::Cursor })?;
    let mut selected = Vec::new();
    while let Some(mut entry) = scan.next(codec).await? {
        if filter.matches(&entry) {
            // A listing keeps metadata only: a DLQ of images would not fit in memory.
            entry.payload = Vec::new();
            selected.push(entry);
        }
    }
    scan.progress.finish_and_clear();
    Ok(selected)
}

/// `redrive` or `purge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Re-publish selected records.
    Redrive,
    /// Drop selected records.
    Purge,
}

/// Redrives or purges the pending records `args.filter` selects, in transactions of
/// `args.batch` records that also move the cursor; without `args.execute`, only counts.
pub async fn settle(
    config: &crate::Config,
    codec: &Codec,
    args: &ActArgs,
    mode: Mode,
) -> Result<Outcome, OpsError> {
    let kafka = &config.kafka;
    args.filter.check()?;
    let dlq_topic = kafka.name(IMAGE_REQUESTS_DLQ);
    let to_topic = args.to_topic.as_deref().map(|t| kafka.name(t));
    let mut destinations = Destinations::new(kafka)?;
    if let Some(topic) = &to_topic
        && !destinations.exists(topic)?
    {
        return Err(OpsError::BadArgument(format!(
            "--to-topic: topic {topic} does not exist"
        )));
    }
    // Ctrl-C stops the run after the transaction in flight: what is done stays done.
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = tokio::spawn({
        let interrupted = interrupted.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    // First, so that a run that died half-way is fenced and its open transaction aborted
    // before the cursor is read.
    let producer = if args.execute {
        Some(kafka.transactional_producer(TRANSACTIONAL_ID).await?)
    } else {
        None
    };
    let mut scan = DlqScan::open(kafka, Start::Cursor)?;
    let mut outcome = Outcome::default();
    let mut batch: Vec<(DlqEntry, Disposition)> = Vec::with_capacity(args.batch.max(1));
    loop {
        let entry = scan.next(codec).await?;
        let done = entry.is_none();
        if let Some(entry) = entry {
            let mut disposition = decide(&entry, args, mode, to_topic.as_deref());
            if let Disposition::Redrive(topic) = &disposition
                && !destinations.exists(topic)?
            {
                disposition = Disposition::Keep("its origin topic does not exist");
            }
            count(&mut outcome, &entry, &disposition);
            batch.push((entry, disposition));
        }
        if batch.len() >= args.batch.max(1) || (done && !batch.is_empty()) {
            if let Some(producer) = &producer {
                commit_batch(producer, &scan.consumer, &dlq_topic, &batch).await?;
                outcome.transactions += 1;
            }
            batch.clear();
        }
        if done {
            break;
        }
        if batch.is_empty() && interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            outcome.interrupted = true;
            break;
        }
    }
    listener.abort();
    scan.progress.finish_and_clear();
    Ok(outcome)
}

/// Which destination topics exist, asked once each.
struct Destinations {
    client: rdkafka::consumer::BaseConsumer,
    known: BTreeMap<String, bool>,
}

impl Destinations {
    fn new(kafka: &KafkaConfig) -> Result<Self, OpsError> {
        let client = kafka.client_config().create().map_err(|source| {
            OpsError::Setup(chassis::kafka::KafkaSetupError::Create {
                role: "ops metadata client",
                source,
            })
        })?;
        Ok(Self {
            client,
            known: BTreeMap::new(),
        })
    }

    fn exists(&mut self, topic: &str) -> Result<bool, OpsError> {
        if let Some(known) = self.known.get(topic) {
            return Ok(*known);
        }
        let metadata = self
            .client
            .fetch_metadata(Some(topic), KAFKA_CALL_TIMEOUT)
            .map_err(OpsError::kafka(format!("reading metadata of {topic}")))?;
        let exists = metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        self.known.insert(topic.to_owned(), exists);
        Ok(exists)
    }
}

fn decide(entry: &DlqEntry, args: &ActArgs, mode: Mode, to_topic: Option<&str>) -> Disposition {
    if !args.filter.matches(entry) {
        return Disposition::Keep("not selected");
    }
    match mode {
        Mode::Purge => Disposition::Purge,
        Mode::Redrive if entry.redrive_count() >= args.max_redrives => {
            Disposition::Keep("redrive limit reached")
        }
        Mode::Redrive => match to_topic.or_else(|| entry.origin()) {
            Some(topic) => Disposition::Redrive(topic.to_owned()),
            None => Disposition::Keep("no origin header: use --to-topic"),
        },
    }
}

fn count(outcome: &mut Outcome, entry: &DlqEntry, disposition: &Disposition) {
    let what = match disposition {
        Disposition::Redrive(topic) => {
            *outcome.redriven.entry(topic.clone()).or_default() += 1;
            format!("redrive to {topic}")
        }
        Disposition::Purge => {
            outcome.purged += 1;
            "purge".to_owned()
        }
        Disposition::Keep(why) => {
            outcome.kept += 1;
            format!("keep ({why})")
        }
    };
    *outcome
        .by_class
        .entry((entry.error_class().to_owned(), what))
        .or_default() += 1;
}

/// Writes one batch's outputs and the cursor past it in one transaction.
async fn commit_batch(
    producer: &FutureProducer,
    consumer: &StreamConsumer<super::ScanContext>,
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

/// Where a scan starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// At the cursor (the oldest pending record).
    Cursor,
    /// At the oldest record still in the topic.
    Earliest,
}

/// Reads the DLQ from a start to the end it had when opened (committed records only).
struct DlqScan {
    consumer: StreamConsumer<super::ScanContext>,
    /// Partitions not yet read to the end.
    pending: BTreeSet<i32>,
    /// Each partition's end when the scan began: records from there on (among them those this
    /// very run appends again) belong to the next run.
    ends: BTreeMap<i32, i64>,
    progress: indicatif::ProgressBar,
}

impl DlqScan {
    fn open(kafka: &KafkaConfig, start: Start) -> Result<Self, OpsError> {
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
        let consumer = super::scan_consumer(&config, "DLQ reader")?;
        let partitions = super::topic_partitions(&consumer, &topic)?;
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
    async fn next(&mut self, codec: &Codec) -> Result<Option<DlqEntry>, OpsError> {
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
async fn read_one(
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

/// `list` as a table.
pub fn render_list(entries: &[DlqEntry]) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header([
        "PARTITION",
        "OFFSET",
        "DEAD-LETTERED",
        "KEY",
        "ERROR-CLASS",
        "TENANT",
        "REDRIVES",
        "ORIGIN",
        "ERROR",
    ]);
    for e in entries {
        let mut error = e.header("error.message").unwrap_or_default().to_owned();
        if error.len() > 80 {
            let cut = (0..=80)
                .rev()
                .find(|&i| error.is_char_boundary(i))
                .unwrap_or(0);
            error.truncate(cut);
            error.push('…');
        }
        table.add_row([
            e.partition.to_string(),
            e.offset.to_string(),
            super::format_ms(e.timestamp_ms),
            e.key_text(),
            e.error_class().to_owned(),
            e.tenant.clone().unwrap_or_else(|| "-".into()),
            e.redrive_count().to_string(),
            e.origin().unwrap_or("-").to_owned(),
            error,
        ]);
    }
    format!("{table}\n{} record(s)\n", entries.len())
}

/// A `redrive`/`purge` outcome as a table.
pub fn render_outcome(outcome: &Outcome, executed: bool) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(["ERROR-CLASS", "ACTION", "RECORDS"]);
    for ((class, action), n) in &outcome.by_class {
        table.add_row([class.clone(), action.clone(), n.to_string()]);
    }
    let redriven: u64 = outcome.redriven.values().sum();
    let mut text = format!(
        "{table}\nredrive {redriven}, purge {}, keep {} (appended again to the DLQ)\n",
        outcome.purged, outcome.kept
    );
    if outcome.interrupted {
        text.push_str(&format!(
            "Interrupted after {} transaction(s): what they hold is done; the rest is still pending (run again to continue).\n",
            outcome.transactions
        ));
    } else if executed {
        text.push_str(&format!(
            "Done in {} transaction(s); the cursor is past every record read.\n",
            outcome.transactions
        ));
    } else {
        text.push_str(super::DRY_RUN_NOTICE);
        text.push('\n');
    }
    text
}
