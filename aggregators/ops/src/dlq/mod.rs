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
//!
//! By role: [`args`] (what the commands take), [`entry`] (one record read), `scan` (reading the
//! DLQ from the cursor to its end), [`plan`] (what happens to each record, a pure decision),
//! `transaction` (a batch's writes and the cursor in one Kafka transaction) and [`render`]
//! (tables); this module runs the commands.

pub mod args;
pub mod entry;
pub mod plan;
pub mod render;
mod scan;
mod transaction;

use std::collections::BTreeMap;

use chassis::kafka::KafkaConfig;
use rdkafka::consumer::Consumer;
use schemas::Codec;
use schemas::topics::IMAGE_REQUESTS_DLQ;

use crate::{KAFKA_CALL_TIMEOUT, OpsError};
pub use args::{ActArgs, DlqAction, DlqFilter, ListArgs, PurgeArgs};
pub use entry::DlqEntry;
pub use plan::{Disposition, Outcome};
use plan::{count, decide};
pub use render::{render_list, render_outcome, render_show};
use scan::{DlqScan, Start, read_one};
use transaction::commit_batch;

/// The group whose committed offsets are the DLQ's cursor (namespaced).
pub const CURSOR_GROUP: &str = "ops-dlq-redrive";
/// The transactional id of `redrive` and `purge`: one run at a time, a new one fences the old.
pub const TRANSACTIONAL_ID: &str = "ops-dlq-redrive";

/// How often a record has been redriven (absent: never).
pub const REDRIVE_COUNT: &str = "redrive.count";
/// Where a redriven record came from: `<dlq topic>/<partition>/<offset>`.
pub const REDRIVE_FROM: &str = "redrive.from";
/// On a record appended again to the DLQ by a run that did not select it: its previous place.
pub const KEPT_FROM: &str = "dlq.kept.from";
/// The error class the record had in the DLQ.
pub const REDRIVE_ERROR_CLASS: &str = "redrive.error.class";

/// Runs one `dlq` command and prints its result.
pub async fn run(config: &crate::OpsConfig, action: DlqAction) -> Result<(), OpsError> {
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
            println!("{}", render_show(&entry, value));
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
    config: &crate::OpsConfig,
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
