//! `imgpipe ops offsets show|reset`: a consumer group's committed offsets per partition, and
//! resetting them to a time, a duration ago, an offset, the earliest or the latest record.
//!
//! A reset is planned first (current, target and lag per partition) and committed only with
//! `--execute`, and only while the group has no members — the broker would otherwise see a
//! commit from outside the group racing the members' own, which is why `kafka-consumer-groups`
//! refuses it too. Re-running a reset is harmless: it commits the same targets again.

use std::time::{Duration, SystemTime};

use chassis::kafka::KafkaConfig;
use clap::{Args, Subcommand};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{KAFKA_CALL_TIMEOUT, OpsError};

/// `imgpipe ops offsets …`
#[derive(Debug, Subcommand)]
pub enum OffsetsAction {
    /// Committed offset, log end and lag per partition of a group.
    Show(GroupArgs),
    /// Plans (and with --execute commits) new offsets for a group that has no members.
    Reset(ResetArgs),
}

/// Which group, and which of its topics.
#[derive(Debug, Args)]
pub struct GroupArgs {
    /// Consumer group, without the namespace (e.g. `resizers`, `usage-aggregator`).
    #[arg(long)]
    pub group: String,
    /// Topic, without the namespace; default: every imgpipe topic the group has offsets in.
    #[arg(long)]
    pub topic: Option<String>,
}

/// `imgpipe ops offsets reset`: exactly one target.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).multiple(false)))]
pub struct ResetArgs {
    #[command(flatten)]
    pub group: GroupArgs,
    /// The first record at or after this time (RFC 3339, UTC if no zone; or Unix ms).
    #[arg(long, group = "target", value_parser = crate::parse_datetime)]
    pub to_datetime: Option<SystemTime>,
    /// The first record at or after this long ago (e.g. `15m`, `2h`).
    #[arg(long, group = "target", value_parser = humantime::parse_duration)]
    pub by_duration: Option<Duration>,
    /// This offset in every partition (clamped to what the log still holds).
    #[arg(long, group = "target")]
    pub to_offset: Option<i64>,
    /// The oldest record still in each partition.
    #[arg(long, group = "target")]
    pub to_earliest: bool,
    /// The end of each partition (skip everything not yet read).
    #[arg(long, group = "target")]
    pub to_latest: bool,
    /// Commit the plan; without it nothing changes.
    #[arg(long)]
    pub execute: bool,
}

/// Where a reset moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// The first record with a timestamp at or after this instant (the end if none).
    Datetime(SystemTime),
    /// A fixed offset, clamped to `[log start, log end]`.
    Offset(i64),
    /// The log start.
    Earliest,
    /// The log end.
    Latest,
}

impl ResetArgs {
    /// The one target given.
    pub fn target(&self) -> ResetTarget {
        if let Some(time) = self.to_datetime {
            ResetTarget::Datetime(time)
        } else if let Some(ago) = self.by_duration {
            ResetTarget::Datetime(SystemTime::now() - ago)
        } else if let Some(offset) = self.to_offset {
            ResetTarget::Offset(offset)
        } else if self.to_earliest {
            ResetTarget::Earliest
        } else {
            ResetTarget::Latest
        }
    }
}

/// The group as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// Kafka's group state: `Empty`, `Stable`, `PreparingRebalance`, `Dead` (never used) …
    pub state: String,
    /// Members currently in the group.
    pub members: usize,
}

/// One partition's committed offset and log bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// Namespaced topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's committed offset (next record to read); `None` if it never committed.
    pub committed: Option<i64>,
    /// First offset still in the log.
    pub log_start: i64,
    /// Offset the next produced record gets.
    pub log_end: i64,
    /// Where a reset would move the group (same as `committed` for `show`).
    pub target: Option<i64>,
}

impl PartitionOffsets {
    /// Records between the committed offset and the log end (from the log start if none).
    pub fn lag(&self) -> i64 {
        // A commit can run ahead of the end the broker reported a moment earlier: never below 0.
        (self.log_end - self.committed.unwrap_or(self.log_start).max(self.log_start)).max(0)
    }

    /// The lag once the reset is done.
    pub fn lag_after(&self) -> Option<i64> {
        self.target.map(|target| self.log_end - target)
    }
}

/// A group's offsets, and its state when they were read.
#[derive(Debug, Clone)]
pub struct OffsetsReport {
    /// Namespaced group id.
    pub group: String,
    /// Its state.
    pub state: GroupState,
    /// Per partition, topic by topic.
    pub partitions: Vec<PartitionOffsets>,
}

/// Runs `show` or `reset` and prints the table (blocking: call off the async runtime).
pub fn run(kafka: &KafkaConfig, action: OffsetsAction) -> Result<(), OpsError> {
    match action {
        OffsetsAction::Show(args) => {
            let report = show(kafka, &args.group, args.topic.as_deref())?;
            print!("{}", render(&report, false));
            Ok(())
        }
        OffsetsAction::Reset(args) => {
            let plan = plan_reset(
                kafka,
                &args.group.group,
                args.group.topic.as_deref(),
                args.target(),
            )?;
            print!("{}", render(&plan, true));
            if let Some(note) = note_for(kafka, &plan.group) {
                println!("{note}");
            }
            if args.execute {
                execute_reset(kafka, &plan)?;
                println!(
                    "Committed new offsets for {} partition(s) of {}.",
                    plan.partitions.len(),
                    plan.group
                );
            } else {
                if let Err(refusal) = refuse_if_owned_by_a_tool(kafka, &plan.group)
                    .and_then(|()| refuse_if_active(&plan.group, &plan.state))
                {
                    println!("Note: --execute would be {refusal}");
                }
                println!("{}", crate::DRY_RUN_NOTICE);
            }
            Ok(())
        }
    }
}

/// The committed offsets and lag of `group` (base name) on `topic` (base name), or on every
/// catalogue topic it has committed offsets in.
pub fn show(
    kafka: &KafkaConfig,
    group: &str,
    topic: Option<&str>,
) -> Result<OffsetsReport, OpsError> {
    let consumer = group_client(kafka, group)?;
    let group = kafka.name(group);
    let state = group_state(&consumer, &group)?;
    let topics = match topic {
        Some(topic) => vec![kafka.name(topic)],
        None => schemas::topics::CATALOGUE
            .iter()
            .map(|spec| kafka.name(spec.name))
            .collect(),
    };
    let explicit = topic.is_some();
    let mut partitions = Vec::new();
    for topic in topics {
        let offsets = topic_offsets(&consumer, &topic)?;
        // Without --topic, list only the topics the group has actually consumed.
        if explicit || offsets.iter().any(|p| p.committed.is_some()) {
            partitions.extend(offsets);
        }
    }
    if let Some(topic) = topic
        && partitions.is_empty()
    {
        return Err(OpsError::BadArgument(format!(
            "topic {} does not exist",
            kafka.name(topic)
        )));
    }
    if state.state == "Dead" && partitions.iter().all(|p| p.committed.is_none()) {
        return Err(OpsError::BadArgument(format!(
            "group {group} does not exist (no members, no committed offsets){}",
            namespaced_hint(kafka, &group)
        )));
    }
    for partition in &mut partitions {
        partition.target = partition.committed;
    }
    Ok(OffsetsReport {
        group,
        state,
        partitions,
    })
}

/// Plans moving `group` to `target` on `topic` (or every topic it has offsets in).
pub fn plan_reset(
    kafka: &KafkaConfig,
    group: &str,
    topic: Option<&str>,
    target: ResetTarget,
) -> Result<OffsetsReport, OpsError> {
    let consumer = group_client(kafka, group)?;
    let group_name = kafka.name(group);
    let state = group_state(&consumer, &group_name)?;
    let topics: Vec<String> = match topic {
        Some(topic) => vec![kafka.name(topic)],
        None => {
            let shown = show(kafka, group, None)?;
            let mut topics: Vec<String> = shown.partitions.into_iter().map(|p| p.topic).collect();
            topics.dedup();
            if topics.is_empty() {
                return Err(OpsError::BadArgument(format!(
                    "group {group_name} has no committed offsets on any imgpipe topic: name one with --topic"
                )));
            }
            topics
        }
    };
    let mut partitions = Vec::new();
    for topic in topics {
        let mut offsets = topic_offsets(&consumer, &topic)?;
        if offsets.is_empty() {
            return Err(OpsError::BadArgument(format!(
                "topic {topic} does not exist"
            )));
        }
        let by_time = match target {
            ResetTarget::Datetime(time) => {
                Some(offsets_for_time(&consumer, &topic, &offsets, time)?)
            }
            _ => None,
        };
        for (i, p) in offsets.iter_mut().enumerate() {
            p.target = Some(match target {
                ResetTarget::Datetime(_) => by_time.as_ref().map_or(p.log_end, |t| t[i]),
                ResetTarget::Offset(offset) => offset.clamp(p.log_start, p.log_end),
                ResetTarget::Earliest => p.log_start,
                ResetTarget::Latest => p.log_end,
            });
        }
        partitions.extend(offsets);
    }
    Ok(OffsetsReport {
        group: group_name,
        state,
        partitions,
    })
}

/// Commits a plan's targets, after checking again that the group has no members.
pub fn execute_reset(kafka: &KafkaConfig, plan: &OffsetsReport) -> Result<(), OpsError> {
    let base = plan
        .group
        .strip_prefix(&kafka.namespace)
        .unwrap_or(&plan.group);
    refuse_if_owned_by_a_tool(kafka, &plan.group)?;
    let consumer = group_client(kafka, base)?;
    // The state in the plan may be old: a consumer may have joined since.
    refuse_if_active(&plan.group, &group_state(&consumer, &plan.group)?)?;
    let mut list = TopicPartitionList::new();
    for p in &plan.partitions {
        let target = p
            .target
            .ok_or_else(|| OpsError::BadArgument("a plan without targets".into()))?;
        list.add_partition_offset(&p.topic, p.partition, Offset::Offset(target))
            .map_err(OpsError::kafka("building the offset list"))?;
    }
    // A commit from outside the group: the coordinator accepts it only while the group is
    // empty, so a member that joins in between makes this fail instead of racing it.
    consumer
        .commit(&list, CommitMode::Sync)
        .map_err(OpsError::kafka(format!(
            "committing offsets for {}",
            plan.group
        )))
}

/// Refuses groups whose offsets are another tool's state, not a consumer's position.
pub fn refuse_if_owned_by_a_tool(kafka: &KafkaConfig, group: &str) -> Result<(), OpsError> {
    let base = group.strip_prefix(&kafka.namespace).unwrap_or(group);
    if base == crate::dlq::CURSOR_GROUP {
        return Err(OpsError::Refused(format!(
            "{group} is the DLQ's cursor, moved only by `imgpipe ops dlq redrive|purge` in the \
             same transaction as what they write: moving it back would make settled records \
             pending again and redrive them twice"
        )));
    }
    Ok(())
}

/// What a reset of `group` does not do, for the plan's reader.
fn note_for(kafka: &KafkaConfig, group: &str) -> Option<&'static str> {
    let base = group.strip_prefix(&kafka.namespace).unwrap_or(group);
    (base == aggregators::GROUP_ID).then_some(
        "Note: usage-aggregator positions itself from ClickHouse, not from these offsets: a reset \
         changes only the lag it reports and re-inserts nothing. To rewrite usage from Kafka, use \
         `imgpipe ops usage rebuild`.",
    )
}

/// A hint when a name looks namespaced twice.
fn namespaced_hint(kafka: &KafkaConfig, group: &str) -> String {
    let base = group.strip_prefix(&kafka.namespace).unwrap_or(group);
    if !kafka.namespace.is_empty() && base.starts_with(&kafka.namespace) {
        format!("; give names without the namespace {:?}", kafka.namespace)
    } else {
        String::new()
    }
}

/// Refuses to touch a group that has members.
pub fn refuse_if_active(group: &str, state: &GroupState) -> Result<(), OpsError> {
    if state.members > 0 {
        return Err(OpsError::Refused(format!(
            "group {group} has {} member(s) (state {}): stop its consumers first; a consumer \
             killed without leaving is removed after its session timeout (10 s)",
            state.members, state.state
        )));
    }
    Ok(())
}

/// A client carrying the group's id that never joins it: it reads and commits offsets only.
fn group_client(kafka: &KafkaConfig, group: &str) -> Result<BaseConsumer, OpsError> {
    let mut config = kafka.client_config();
    config
        .set("group.id", kafka.name(group))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    config.create().map_err(|source| {
        OpsError::Setup(chassis::kafka::KafkaSetupError::Create {
            role: "ops offsets client",
            source,
        })
    })
}

/// The state of `group` (base name) as its coordinator sees it (blocking).
pub fn state_of(kafka: &KafkaConfig, group: &str) -> Result<GroupState, OpsError> {
    let consumer = group_client(kafka, group)?;
    group_state(&consumer, &kafka.name(group))
}

fn group_state(consumer: &BaseConsumer, group: &str) -> Result<GroupState, OpsError> {
    let list = consumer
        .fetch_group_list(Some(group), KAFKA_CALL_TIMEOUT)
        .map_err(OpsError::kafka(format!("describing group {group}")))?;
    Ok(list.groups().iter().find(|g| g.name() == group).map_or(
        GroupState {
            state: "Dead".into(),
            members: 0,
        },
        |g| GroupState {
            state: g.state().to_owned(),
            members: g.members().len(),
        },
    ))
}

/// Every partition of `topic` with its log bounds and the group's committed offset.
fn topic_offsets(consumer: &BaseConsumer, topic: &str) -> Result<Vec<PartitionOffsets>, OpsError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_CALL_TIMEOUT)
        .map_err(OpsError::kafka(format!("reading metadata of {topic}")))?;
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(Vec::new());
    };
    if meta.error().is_some() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<i32> = meta.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    let mut list = TopicPartitionList::new();
    for id in &ids {
        list.add_partition(topic, *id);
    }
    let committed = consumer
        .committed_offsets(list, KAFKA_CALL_TIMEOUT)
        .map_err(OpsError::kafka(format!(
            "reading committed offsets on {topic}"
        )))?;
    ids.into_iter()
        .map(|partition| {
            let (log_start, log_end) = consumer
                .fetch_watermarks(topic, partition, KAFKA_CALL_TIMEOUT)
                .map_err(OpsError::kafka(format!(
                    "reading the log bounds of {topic}/{partition}"
                )))?;
            let committed = match committed
                .find_partition(topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(offset)) => Some(offset),
                _ => None,
            };
            Ok(PartitionOffsets {
                topic: topic.to_owned(),
                partition,
                committed,
                log_start,
                log_end,
                target: None,
            })
        })
        .collect()
}

/// The first offset at or after `time` per partition of `offsets` (the log end where none).
fn offsets_for_time(
    consumer: &BaseConsumer,
    topic: &str,
    offsets: &[PartitionOffsets],
    time: SystemTime,
) -> Result<Vec<i64>, OpsError> {
    let ms = crate::unix_ms(time);
    let mut list = TopicPartitionList::new();
    for p in offsets {
        list.add_partition_offset(topic, p.partition, Offset::Offset(ms))
            .map_err(OpsError::kafka("building the time query"))?;
    }
    let found = consumer
        .offsets_for_times(list, KAFKA_CALL_TIMEOUT)
        .map_err(OpsError::kafka(format!(
            "looking up offsets by time on {topic}"
        )))?;
    Ok(offsets
        .iter()
        .map(
            |p| match found.find_partition(topic, p.partition).map(|e| e.offset()) {
                Some(Offset::Offset(offset)) => offset.clamp(p.log_start, p.log_end),
                // No record at or after the time: the end.
                _ => p.log_end,
            },
        )
        .collect())
}

/// The report as a table; for a plan, with the target and the lag after it.
pub fn render(report: &OffsetsReport, plan: bool) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    let mut header = vec![
        "TOPIC",
        "PARTITION",
        "COMMITTED",
        "LOG-START",
        "LOG-END",
        "LAG",
    ];
    if plan {
        header.extend(["TARGET", "LAG-AFTER"]);
    }
    table.set_header(header);
    let or_dash = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for p in &report.partitions {
        let mut row = vec![
            p.topic.clone(),
            p.partition.to_string(),
            or_dash(p.committed),
            p.log_start.to_string(),
            p.log_end.to_string(),
            p.lag().to_string(),
        ];
        if plan {
            row.extend([or_dash(p.target), or_dash(p.lag_after())]);
        }
        table.add_row(row);
    }
    format!(
        "Group {} (state {}, {} member(s))\n{table}\n",
        report.group, report.state.state, report.state.members
    )
}
