//! `identity.audit` → ClickHouse `admin_audit`: the admin audit trail, queryable with SQL beside
//! usage. Low volume (one record per admin call), so one simple loop: read a batch (up to
//! [`BATCH_RECORDS`] or [`BATCH_AGE`]), INSERT it, then store the offsets (at least once). A
//! batch written again after a crash carries the same `audit_id`s, and the table replaces by
//! them (`ReplacingMergeTree`, sort key ending in `audit_id`), so the trail holds each call once
//! (`FINAL`, or `uniqExact(audit_id)`, for exact counts before a merge).

use std::time::Duration;

use chassis::ServiceContext;
use chassis::clickhouse::ClickHouseConfig;
use chassis::kafka::{ConsumerProfile, KafkaConfig};
use clickhouse::Client;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use schemas::Codec;
use schemas::events::{AdminAudited, Event};
use serde::Serialize;

/// The consumer group of the audit loop (namespaced).
pub const AUDIT_GROUP: &str = "audit-aggregator";
/// Most records in one INSERT.
pub const BATCH_RECORDS: usize = 500;
/// Longest a record waits for its INSERT.
pub const BATCH_AGE: Duration = Duration::from_secs(1);

/// One row of `admin_audit` (column order matches the table).
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize)]
pub struct AuditRow {
    /// Tenant acted on, empty when none.
    pub tenant_id: String,
    /// When, whole seconds.
    pub at: u32,
    /// When, milliseconds.
    pub at_ms: i64,
    /// Unique id of the call's record.
    pub audit_id: String,
    /// Token fingerprint or `anonymous`.
    pub actor: String,
    /// 1 when the token was the admin token.
    pub authenticated: u8,
    /// Method and route template.
    pub action: String,
    /// Key acted on, empty when none.
    pub key_id: String,
    /// HTTP status.
    pub status: i32,
    /// Peer address.
    pub remote_addr: String,
    /// Request id.
    pub request_id: String,
}

impl From<AdminAudited> for AuditRow {
    fn from(a: AdminAudited) -> Self {
        Self {
            tenant_id: a.tenant_id.unwrap_or_default(),
            at: u32::try_from(a.at_ms / 1000).unwrap_or(0),
            at_ms: a.at_ms,
            audit_id: a.audit_id,
            actor: a.actor,
            authenticated: u8::from(a.authenticated),
            action: a.action,
            key_id: a.key_id.unwrap_or_default(),
            status: a.status,
            remote_addr: a.remote_addr,
            request_id: a.request_id,
        }
    }
}

/// Why the audit loop stopped (permanent only: ClickHouse or Kafka being away is waited out).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The consumer could not be set up or subscribe.
    #[error("audit consumer: {0}")]
    Kafka(String),
}

/// Copies `identity.audit` into `admin_audit` until shutdown. The table comes from the
/// aggregator's migrations; until they ran (or while ClickHouse is away) INSERTs are retried.
pub async fn run(
    kafka: KafkaConfig,
    codec: Codec,
    clickhouse: ClickHouseConfig,
    ctx: ServiceContext,
) -> Result<(), AuditError> {
    let mut backoff = chassis::RetryPolicy::DEPENDENCY.backoff();
    let client = loop {
        match chassis::clickhouse::connect(&clickhouse).await {
            Ok((client, _)) => break client,
            Err(error) => {
                tracing::warn!(%error, "ClickHouse unavailable for the audit trail; retrying");
                if backoff.wait(&ctx.shutdown).await.is_err() {
                    return Ok(());
                }
            }
        }
    };
    let topic = kafka.name(AdminAudited::TOPIC);
    let consumer: StreamConsumer = kafka
        .group_consumer_config(AUDIT_GROUP, ConsumerProfile::AtLeastOnce)
        .create()
        .map_err(|e| AuditError::Kafka(e.to_string()))?;
    consumer
        .subscribe(&[&topic])
        .map_err(|e| AuditError::Kafka(e.to_string()))?;
    let table = format!("{}.admin_audit", clickhouse.database);
    loop {
        // Collect a batch: the first record waits as long as it takes, the rest at most BATCH_AGE.
        let mut batch: Vec<(AuditRow, i32, i64)> = Vec::new();
        let deadline = tokio::time::Instant::now() + BATCH_AGE;
        while batch.len() < BATCH_RECORDS {
            let next = if batch.is_empty() {
                tokio::select! {
                    () = ctx.shutdown.wait() => return Ok(()),
                    next = consumer.recv() => next,
                }
            } else {
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            };
            let message = match next {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "Reading identity.audit failed; retrying");
                    continue;
                }
            };
            match codec
                .decode::<AdminAudited>(message.payload().unwrap_or_default())
                .await
            {
                Ok(record) => batch.push((record.into(), message.partition(), message.offset())),
                Err(error) if error.is_retryable() => {
                    // The registry is away: keep what we have; this record comes again after
                    // the seek below.
                    tracing::warn!(%error, "Schema registry unavailable; retrying the audit record");
                    let _ = consumer.seek(
                        message.topic(),
                        message.partition(),
                        rdkafka::Offset::Offset(message.offset()),
                        Duration::from_secs(5),
                    );
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, partition = message.partition(), offset = message.offset(), "Undecodable audit record skipped");
                    let _ = consumer.store_offset_from_message(&message);
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        // Insert until it works or shutdown; the offsets move only after the INSERT.
        loop {
            match insert(&client, &table, &batch).await {
                Ok(()) => {
                    backoff.reset();
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, rows = batch.len(), "Writing the audit trail to ClickHouse failed; retrying");
                    if backoff.wait(&ctx.shutdown).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        for (_, partition, offset) in &batch {
            let _ = consumer.store_offset(&topic, *partition, *offset);
        }
    }
}

async fn insert(
    client: &Client,
    table: &str,
    batch: &[(AuditRow, i32, i64)],
) -> Result<(), clickhouse::error::Error> {
    let mut insert = client.insert_unescaped::<AuditRow>(table).await?;
    for (row, ..) in batch {
        insert.write(row).await?;
    }
    insert.end().await
}
