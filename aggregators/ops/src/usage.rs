//! `imgpipe ops usage rebuild`: rebuilds ClickHouse's usage tables from `usage.events` into a
//! fresh database, checks them against Kafka record by record, and swaps them in with one
//! `RENAME TABLE` (the tables they replace are kept in a backup database).
//!
//! The rebuild runs the aggregator itself (its own consumer group, the fresh database), so the
//! rows are exactly what the live aggregator would have written. It refuses while the live
//! `usage-aggregator` group has members: rows they wrote during the rebuild would be missing from
//! the new tables. Usage older than the topic's retention cannot be rebuilt; the plan shows that
//! horizon and the command refuses to drop stored rows from before it unless told to.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chassis::clickhouse::{ClickHouseConfig, DatabaseName};
use clap::{Args, Subcommand};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use super::{KAFKA_CALL_TIMEOUT, OpsError};

/// The group the rebuild's aggregator runs in (namespaced).
pub const REBUILD_GROUP: &str = "ops-usage-rebuild";
/// A rebuild database younger than this may belong to a run still starting.
const LEFTOVER_AGE: Duration = Duration::from_secs(600);
/// Tables a rebuild swaps: everything derived from `usage.events` (the rows, the rejects, and
/// what the materialized views and the rollup job fill from them). Plain views stay (they name
/// the tables, so they read the swapped-in ones); materialized views are bound to the tables
/// they were created on, so they are re-created around the swap; `admin_audit` (from
/// `identity.audit`) and the migrations' bookkeeping are not usage and stay.
pub const DATA_TABLES: &[&str] = &[
    "usage_raw",
    "usage_rejects",
    "usage_recent",
    "usage_offsets",
    "usage_rollup",
];

/// `imgpipe ops usage …`
#[derive(Debug, Subcommand)]
pub enum UsageAction {
    /// Rebuilds the usage tables from usage.events and swaps them in (the live aggregators
    /// must be stopped).
    Rebuild(RebuildArgs),
}

/// `rebuild` options.
#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    /// Carry out the plan; without it nothing changes.
    #[arg(long)]
    pub execute: bool,
    /// Rebuild even though stored rows older than the topic's retention will be lost (they stay
    /// in the backup database).
    #[arg(long)]
    pub allow_loss_before_retention: bool,
    /// Give up if the rebuild has not caught up with Kafka within this long.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Why a rebuild stopped, beyond Kafka's errors.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// A ClickHouse query failed.
    #[error("{what}: {source}")]
    ClickHouse {
        /// What was being done.
        what: String,
        /// The client's error.
        source: clickhouse::error::Error,
    },
}

/// One partition of `usage.events` in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    /// Partition.
    pub partition: i32,
    /// First offset Kafka still holds (the retention horizon).
    pub log_start: i64,
    /// Offset the next record gets, when the plan was made.
    pub log_end: i64,
    /// Rows stored now with an offset below `log_start`: lost by a rebuild.
    pub rows_before_horizon: u64,
    /// Rows stored now.
    pub rows_stored: u64,
}

/// The rebuild's plan, and (executed) its result.
#[derive(Debug, Clone, Default)]
pub struct RebuildReport {
    /// The live database.
    pub database: String,
    /// Where the rebuild is written.
    pub fresh: String,
    /// Where the replaced tables go.
    pub backup: String,
    /// Per partition.
    pub partitions: Vec<PartitionPlan>,
    /// Leftover databases of rebuilds that died, dropped first.
    pub leftovers: Vec<String>,
    /// Records per partition read from Kafka, and the rows the rebuild holds for them.
    pub verified: BTreeMap<i32, (u64, u64)>,
    /// Whether the swap happened.
    pub swapped: bool,
}

/// Runs `usage rebuild` and prints its plan and result.
pub async fn run(config: &crate::OpsConfig, action: UsageAction) -> Result<(), OpsError> {
    let UsageAction::Rebuild(args) = action;
    let report = rebuild(config, &args).await?;
    print!("{}", render(&report));
    if !args.execute {
        println!("{}", crate::DRY_RUN_NOTICE);
    }
    Ok(())
}

/// Plans a rebuild and, with `args.execute`, does it.
pub async fn rebuild(
    config: &crate::OpsConfig,
    args: &RebuildArgs,
) -> Result<RebuildReport, OpsError> {
    let started = Instant::now();
    let kafka = &config.kafka;
    let (client, _) = chassis::clickhouse::connect(&config.clickhouse)
        .await
        .map_err(|e| OpsError::Unavailable(format!("ClickHouse: {e}")))?;
    let database = config.clickhouse.database.as_str().to_owned();
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':', 'T', 'Z'], "");
    // A random tail: two runs in the same second must not share a database.
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let mut report = RebuildReport {
        fresh: format!("{database}_rebuild_{stamp}_{run_id}"),
        backup: format!("{database}_backup_{stamp}"),
        database: database.clone(),
        ..Default::default()
    };

    // The live aggregators must be stopped.
    let group_kafka = kafka.clone();
    let state = tokio::task::spawn_blocking(move || {
        crate::offsets::state_of(&group_kafka, aggregators::GROUP_ID)
    })
    .await
    .map_err(|e| OpsError::Task(e.to_string()))??;
    crate::offsets::refuse_if_active(&kafka.name(aggregators::GROUP_ID), &state)?;
    // One rebuild at a time: a running one is a member of the rebuild group.
    let group_kafka = kafka.clone();
    let rebuilding =
        tokio::task::spawn_blocking(move || crate::offsets::state_of(&group_kafka, REBUILD_GROUP))
            .await
            .map_err(|e| OpsError::Task(e.to_string()))??;
    if rebuilding.members > 0 {
        return Err(OpsError::Refused(format!(
            "another rebuild is running (group {} has {} member(s)); wait for it to finish",
            kafka.name(REBUILD_GROUP),
            rebuilding.members
        )));
    }

    // What Kafka holds, and what would be lost.
    let topic = kafka.name(schemas::topics::USAGE_EVENTS);
    let stored = stored_rows(&client, &database, None).await?;
    let bounds = log_bounds(kafka, &topic)?;
    for (&partition, &(log_start, log_end)) in &bounds {
        let below = stored_rows_below(&client, &database, partition, log_start).await?;
        report.partitions.push(PartitionPlan {
            partition,
            log_start,
            log_end,
            rows_before_horizon: below,
            rows_stored: stored.get(&partition).map_or(0, |s| s.rows),
        });
    }
    // Leftovers of runs that died; a run younger than LEFTOVER_AGE may still be starting (its
    // aggregator not yet in the group), so it is left for a later run.
    let oldest_live =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() - LEFTOVER_AGE)
            .to_string()
            .replace(['-', ':', 'T', 'Z'], "");
    report.leftovers = client
        .query("SELECT name FROM system.databases WHERE startsWith(name, ?)")
        .bind(format!("{database}_rebuild_"))
        .fetch_all::<String>()
        .await
        .map_err(|source| ch("listing leftover rebuild databases", source))?
        .into_iter()
        .filter(|name| {
            let stamp = name.trim_start_matches(&format!("{database}_rebuild_"));
            stamp.get(..14).is_some_and(|s| s < oldest_live.as_str())
        })
        .collect();
    let lost: u64 = report
        .partitions
        .iter()
        .map(|p| p.rows_before_horizon)
        .sum();
    if lost > 0 && !args.allow_loss_before_retention {
        print!("{}", render(&report));
        return Err(OpsError::Refused(format!(
            "{lost} stored row(s) are older than usage.events' retention and cannot be rebuilt; \
             add --allow-loss-before-retention to rebuild anyway (they stay in the backup database)"
        )));
    }
    if !args.execute {
        return Ok(report);
    }

    for leftover in &report.leftovers {
        exec(
            &client,
            &format!("DROP DATABASE IF EXISTS {leftover}"),
            "dropping a leftover rebuild",
        )
        .await?;
    }
    // Kafka's side of the check: committed records per partition up to the plan's ends.
    let expected = count_records(kafka, &topic, &bounds).await?;

    // The aggregator fills the fresh database (its migrations create it).
    let fresh: DatabaseName = report
        .fresh
        .parse()
        .map_err(|e| OpsError::BadArgument(format!("{e}")))?;
    let fresh_clickhouse = ClickHouseConfig {
        database: fresh,
        ..config.clickhouse.clone()
    };
    let mut aggregator_config = config.aggregator.clone();
    aggregator_config.migrate_on_start = true;
    let shutdown = chassis::Shutdown::new();
    let ctx = chassis::ServiceContext::new(shutdown.clone());
    let aggregator = tokio::spawn(aggregators::run_in_group(
        kafka.clone(),
        config.registry.clone(),
        fresh_clickhouse,
        aggregator_config,
        ctx,
        REBUILD_GROUP,
    ));
    let progress = indicatif::ProgressBar::new(expected.values().map(|(n, _)| n).sum()).with_style(
        indicatif::ProgressStyle::with_template("rebuilding {bar:40} {pos}/{len} rows ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let caught_up = loop {
        if aggregator.is_finished() {
            break Err(OpsError::Task(
                "the rebuild's aggregator stopped early".into(),
            ));
        }
        // Until migrations ran the fresh tables do not exist; that is "nothing yet".
        let rows = stored_rows(&client, &report.fresh, Some(&bounds))
            .await
            .unwrap_or_default();
        progress.set_position(rows.values().map(|s| s.rows).sum());
        if expected.iter().all(|(p, (count, last))| {
            *count == 0
                || rows
                    .get(p)
                    .is_some_and(|s| s.rows >= *count && s.max_offset >= *last)
        }) {
            break Ok(rows);
        }
        if started.elapsed() > args.timeout {
            break Err(OpsError::Task(format!(
                "the rebuild did not catch up with Kafka within {}",
                humantime::format_duration(args.timeout)
            )));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => {
                break Err(OpsError::Refused(format!(
                    "interrupted: nothing was swapped; {} is left for inspection (dropped by the next run after {} minutes)",
                    report.fresh,
                    LEFTOVER_AGE.as_secs() / 60
                )));
            }
        }
    };
    shutdown.trigger();
    let stopped = tokio::time::timeout(Duration::from_secs(30), aggregator).await;
    progress.finish_and_clear();
    let rows = caught_up?;
    if let Ok(Ok(Err(error))) = stopped {
        return Err(OpsError::Task(format!(
            "the rebuild's aggregator failed: {error}"
        )));
    }

    // Every record once: as many rows as records, one per offset, no more.
    let rows = {
        let _ = rows;
        stored_rows(&client, &report.fresh, Some(&bounds)).await?
    };
    for (partition, (count, _)) in &expected {
        let stored = rows.get(partition).copied().unwrap_or_default();
        if stored.rows != *count || stored.offsets != *count {
            return Err(OpsError::Refused(format!(
                "the rebuild does not match Kafka on partition {partition}: {count} record(s) in \
                 Kafka, {} row(s) over {} offset(s) in {}; nothing was swapped",
                stored.rows, stored.offsets, report.fresh
            )));
        }
        report.verified.insert(*partition, (*count, stored.rows));
    }

    // An aggregator started meanwhile would have written rows the rebuild lacks.
    let group_kafka = kafka.clone();
    let state = tokio::task::spawn_blocking(move || {
        crate::offsets::state_of(&group_kafka, aggregators::GROUP_ID)
    })
    .await
    .map_err(|e| OpsError::Task(e.to_string()))??;
    if let Err(refusal) =
        crate::offsets::refuse_if_active(&kafka.name(aggregators::GROUP_ID), &state)
    {
        exec(
            &client,
            &format!("DROP DATABASE IF EXISTS {}", report.fresh),
            "dropping the unused rebuild",
        )
        .await?;
        return Err(OpsError::Refused(format!(
            "an aggregator started during the rebuild, nothing was swapped: {refusal}"
        )));
    }

    swap(&client, &report).await?;
    report.swapped = true;
    exec(
        &client,
        &format!("DROP DATABASE IF EXISTS {}", report.fresh),
        "dropping the emptied rebuild database",
    )
    .await?;
    Ok(report)
}

/// Puts the rebuilt tables in place of the live ones (the aggregators are stopped):
/// 1. the live database's materialized views are dropped (they are bound to the live tables);
/// 2. one `RENAME TABLE` moves the live tables to the backup database and the rebuilt ones in;
/// 3. the materialized views are created again on the live tables, from the rebuilt database's
///    own definitions (the current migrations'), with its name replaced by the live one.
async fn swap(client: &clickhouse::Client, report: &RebuildReport) -> Result<(), OpsError> {
    let (live, fresh, backup) = (&report.database, &report.fresh, &report.backup);
    let views_of = |database: &str| {
        client
            .query(
                "SELECT name FROM system.tables WHERE database = ? AND engine = 'MaterializedView' \
                 ORDER BY name",
            )
            .bind(database.to_owned())
            .fetch_all::<String>()
    };
    // Nothing is touched unless every table to swap exists on both sides.
    for database in [live, fresh] {
        let present = client
            .query("SELECT name FROM system.tables WHERE database = ?")
            .bind(database.to_owned())
            .fetch_all::<String>()
            .await
            .map_err(|source| ch("listing tables", source))?;
        if let Some(missing) = DATA_TABLES
            .iter()
            .find(|t| !present.iter().any(|p| p == *t))
        {
            return Err(OpsError::Refused(format!(
                "{database}.{missing} does not exist: run `imgpipe migrate` on {live} first; nothing was swapped"
            )));
        }
    }
    let fresh_views = views_of(fresh)
        .await
        .map_err(|source| ch("listing the rebuilt materialized views", source))?;
    let mut definitions = Vec::new();
    for view in &fresh_views {
        let create = client
            .query(&format!("SHOW CREATE TABLE {fresh}.{view}"))
            .fetch_one::<String>()
            .await
            .map_err(|source| ch("reading a materialized view's definition", source))?;
        // The rebuild database's name is unique (time and a random tail): a plain replacement
        // cannot touch anything else in the statement.
        definitions.push(
            create
                .replace(&format!("`{fresh}`."), &format!("{live}."))
                .replace(&format!("{fresh}."), &format!("{live}.")),
        );
    }
    exec(
        client,
        &format!("CREATE DATABASE IF NOT EXISTS {backup}"),
        "creating the backup database",
    )
    .await?;
    for view in views_of(live)
        .await
        .map_err(|source| ch("listing the live materialized views", source))?
    {
        exec(
            client,
            &format!("DROP TABLE IF EXISTS {live}.{view}"),
            "dropping a live materialized view",
        )
        .await?;
    }
    let renames: Vec<String> = DATA_TABLES
        .iter()
        .flat_map(|table| {
            [
                format!("{live}.{table} TO {backup}.{table}"),
                format!("{fresh}.{table} TO {live}.{table}"),
            ]
        })
        .collect();
    exec(
        client,
        &format!("RENAME TABLE {}", renames.join(", ")),
        "swapping the rebuilt tables in",
    )
    .await?;
    // One view may read from another (18.16 cascades through a view's name), so each pass
    // creates what it can until all exist.
    let mut pending = definitions;
    while !pending.is_empty() {
        let before = pending.len();
        let mut failed = Vec::new();
        let mut last_error = None;
        for create in pending {
            if let Err(source) = client.query(&create).execute().await {
                last_error = Some(source);
                failed.push(create);
            }
        }
        pending = failed;
        if pending.len() == before
            && let Some(source) = last_error
        {
            // No progress: this is not an ordering problem.
            return Err(ch(
                &format!(
                    "re-creating {} materialized view(s) on {live} (the data is swapped in; \
                     `imgpipe migrate` cannot re-create them, restore from {backup} or create them by hand)",
                    pending.len()
                ),
                source,
            ));
        }
    }
    Ok(())
}

fn ch(what: &str, source: clickhouse::error::Error) -> OpsError {
    OpsError::Unavailable(format!("ClickHouse, {what}: {source}"))
}

async fn exec(client: &clickhouse::Client, sql: &str, what: &str) -> Result<(), OpsError> {
    client
        .query(sql)
        .execute()
        .await
        .map_err(|source| ch(what, source))
}

/// Rows stored for one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// Rows.
    pub rows: u64,
    /// Distinct offsets among them.
    pub offsets: u64,
    /// Highest offset.
    pub max_offset: i64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct StoredRow {
    kafka_partition: i32,
    rows: u64,
    offsets: u64,
    max_offset: i64,
}

/// Rows per partition in `database`'s usage tables (below each partition's plan end if given).
/// Counted on `usage_raw`, a plain MergeTree since migration 12 that keeps every inserted row
/// with its offset (not on `usage_recent`, which holds only the unsettled tail): this counts
/// Kafka records, one row per offset.
async fn stored_rows(
    client: &clickhouse::Client,
    database: &str,
    below_end: Option<&BTreeMap<i32, (i64, i64)>>,
) -> Result<BTreeMap<i32, Stored>, OpsError> {
    let filter = below_end.map_or_else(String::new, |bounds| {
        let cases: Vec<String> = bounds
            .iter()
            .map(|(p, (_, end))| format!("(kafka_partition = {p} AND kafka_offset < {end})"))
            .collect();
        format!(
            "WHERE {}",
            if cases.is_empty() {
                "0".into()
            } else {
                cases.join(" OR ")
            }
        )
    });
    let sql = format!(
        "SELECT kafka_partition, count() AS rows, uniqExact(kafka_offset) AS offsets,
                max(kafka_offset) AS max_offset
         FROM (SELECT kafka_partition, kafka_offset FROM {database}.usage_raw {filter}
               UNION ALL
               SELECT kafka_partition, kafka_offset FROM {database}.usage_rejects {filter})
         GROUP BY kafka_partition"
    );
    let rows = client
        .query(&sql)
        .fetch_all::<StoredRow>()
        .await
        .map_err(|source| ch(&format!("counting rows in {database}"), source))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.kafka_partition,
                Stored {
                    rows: r.rows,
                    offsets: r.offsets,
                    max_offset: r.max_offset,
                },
            )
        })
        .collect())
}

async fn stored_rows_below(
    client: &clickhouse::Client,
    database: &str,
    partition: i32,
    offset: i64,
) -> Result<u64, OpsError> {
    let sql = format!(
        "SELECT count() FROM (SELECT kafka_offset FROM {database}.usage_raw
                               WHERE kafka_partition = {partition} AND kafka_offset < {offset}
                               UNION ALL
                               SELECT kafka_offset FROM {database}.usage_rejects
                               WHERE kafka_partition = {partition} AND kafka_offset < {offset})"
    );
    client
        .query(&sql)
        .fetch_one::<u64>()
        .await
        .map_err(|source| ch("counting rows before the retention horizon", source))
}

/// (log start, log end) per partition of `topic`.
fn log_bounds(
    kafka: &chassis::kafka::KafkaConfig,
    topic: &str,
) -> Result<BTreeMap<i32, (i64, i64)>, OpsError> {
    let consumer: rdkafka::consumer::BaseConsumer =
        kafka.client_config().create().map_err(|source| {
            OpsError::Setup(chassis::kafka::KafkaSetupError::Create {
                role: "ops metadata client",
                source,
            })
        })?;
    let partitions = crate::topic_partitions(&consumer, topic)?;
    partitions
        .into_iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, KAFKA_CALL_TIMEOUT)
                .map(|bounds| (p, bounds))
                .map_err(OpsError::kafka(format!(
                    "reading the log bounds of {topic}/{p}"
                )))
        })
        .collect()
}

/// Committed records per partition between each partition's bounds, and the last one's offset
/// (transaction markers take offsets too, so the end offset alone does not say).
async fn count_records(
    kafka: &chassis::kafka::KafkaConfig,
    topic: &str,
    bounds: &BTreeMap<i32, (i64, i64)>,
) -> Result<BTreeMap<i32, (u64, i64)>, OpsError> {
    let mut config = kafka.reader_config(Duration::from_millis(100));
    config.set("enable.partition.eof", "true");
    let consumer: StreamConsumer<crate::ScanContext> =
        crate::scan_consumer(&config, "usage counter")?;
    let mut assignment = TopicPartitionList::new();
    let mut counts = BTreeMap::new();
    let mut pending = std::collections::BTreeSet::new();
    for (&p, &(start, end)) in bounds {
        counts.insert(p, (0u64, -1i64));
        if start < end {
            pending.insert(p);
        }
        assignment
            .add_partition_offset(topic, p, Offset::Offset(start))
            .map_err(OpsError::kafka("building the assignment"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(OpsError::kafka(format!("assigning {topic}")))?;
    let progress = indicatif::ProgressBar::new(
        bounds
            .values()
            .map(|(s, e)| u64::try_from(e - s).unwrap_or(0))
            .sum(),
    )
    .with_style(
        indicatif::ProgressStyle::with_template(
            "counting usage.events {bar:40} {pos}/{len} ({eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while !pending.is_empty() {
        let message = tokio::time::timeout(KAFKA_CALL_TIMEOUT, consumer.recv())
            .await
            .map_err(|_| OpsError::Unavailable(format!("no answer from Kafka reading {topic}")))?;
        match message {
            Ok(message) => {
                let (p, offset) = (message.partition(), message.offset());
                let end = bounds.get(&p).map_or(0, |b| b.1);
                if offset >= end {
                    pending.remove(&p);
                    continue;
                }
                progress.inc(1);
                if let Some((count, last)) = counts.get_mut(&p) {
                    *count += 1;
                    *last = offset;
                }
            }
            Err(KafkaError::PartitionEOF(p)) => {
                pending.remove(&p);
            }
            Err(source) => {
                return Err(OpsError::Kafka {
                    operation: format!("reading {topic}"),
                    source,
                });
            }
        }
    }
    progress.finish_and_clear();
    Ok(counts)
}

/// The plan (and result) as text.
pub fn render(report: &RebuildReport) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header([
        "PARTITION",
        "LOG-START",
        "LOG-END",
        "ROWS-STORED",
        "ROWS-BEFORE-HORIZON",
        "RECORDS-READ",
        "ROWS-REBUILT",
    ]);
    for p in &report.partitions {
        let verified = report.verified.get(&p.partition);
        table.add_row([
            p.partition.to_string(),
            p.log_start.to_string(),
            p.log_end.to_string(),
            p.rows_stored.to_string(),
            p.rows_before_horizon.to_string(),
            verified.map_or_else(|| "-".into(), |v| v.0.to_string()),
            verified.map_or_else(|| "-".into(), |v| v.1.to_string()),
        ]);
    }
    let mut text = format!(
        "Rebuild of {db}.{{{tables}}} from usage.events (retention horizon: each partition's LOG-START)\n\
         fresh database {fresh}, replaced tables kept in {backup}\n{table}\n",
        db = report.database,
        tables = DATA_TABLES.join(", "),
        fresh = report.fresh,
        backup = report.backup,
    );
    for leftover in &report.leftovers {
        text.push_str(&format!(
            "leftover of a rebuild that died: {leftover} (dropped on --execute)\n"
        ));
    }
    if report.swapped {
        text.push_str(&format!(
            "Verified every partition against Kafka and swapped the rebuilt tables in; the old ones are in {}.\n",
            report.backup
        ));
    }
    text
}
