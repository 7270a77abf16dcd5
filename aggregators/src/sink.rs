//! `UsageSink`: writes batches into ClickHouse and answers which offsets it already holds.
//!
//! Offsets live in ClickHouse, next to the rows they produced: every row of `usage_raw` carries its
//! `kafka_partition` and `kafka_offset`, every poison record a row of `usage_rejects`. The highest
//! offset across both tables is where consumption of a partition resumes; that is what makes a
//! restart, a rebalance or an operator's offset reset neither lose nor double count. It is read
//! from `usage_offsets`, which materialized views fill from the same INSERTs (a few rows per
//! partition once merged, whatever the raw table holds), and which is written after the rows it
//! covers: if an INSERT fails half-way, the mark stays behind and the batch is sent again.
//!
//! One batch of one partition is one INSERT (ClickHouse applies a block of up to
//! `max_insert_block_size` rows atomically). Each INSERT carries its own `query_id`, so after a
//! failure whose outcome is unknown (a lost acknowledgement) the sink can wait until the server no
//! longer runs it, then look up the stored offsets and re-send only what is missing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chassis::clickhouse::{ClickHouseConfig, ClickHouseError, DatabaseName, ServerVersion};
use clickhouse::Client;
use schemas::events::{UsageRecorded, UsageSource};
use serde::{Deserialize, Serialize};

/// One row of `usage_raw` (column order and types match the table: RowBinary on old servers has
/// no names to check against).
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize)]
pub struct UsageRow {
    /// Kafka partition the record was read from.
    pub kafka_partition: i32,
    /// Its offset in that partition.
    pub kafka_offset: i64,
    /// Request id as a UUID: the id itself when it is a canonical UUID (as the api makes
    /// them), else derived from its text (see [`request_uuid`]).
    #[serde(with = "clickhouse::serde::uuid")]
    pub request_id: uuid::Uuid,
    /// The request id's text when it is not a canonical UUID; empty otherwise.
    pub request_id_text: String,
    /// Tenant.
    pub tenant_id: String,
    /// API key id.
    pub key_id: String,
    /// Event time, whole seconds (DateTime).
    pub event_time: u32,
    /// Milliseconds within `event_time`'s second (the table's `event_time_ms` is an ALIAS of
    /// both; 18.16 has no DateTime64).
    pub event_ms: u16,
    /// `ok` or the stable error code.
    pub outcome: String,
    /// HTTP status.
    pub status: i32,
    /// Request body size.
    pub bytes_in: i64,
    /// Response image size.
    pub bytes_out: i64,
    /// Input pixels.
    pub pixels_in: i64,
    /// Output pixels.
    pub pixels_out: i64,
    /// CPU time.
    pub cpu_time_us: i64,
    /// Input format, empty when unknown.
    pub input_format: String,
    /// Output format, empty when none.
    pub output_format: String,
    /// Receipt to outcome.
    pub latency_us: i64,
    /// `API` or `RESIZER`.
    pub source: String,
    /// Host of a signed GET's source URL; empty for an image sent in the request body (and for
    /// records written before the field existed).
    pub source_host: String,
}

impl UsageRow {
    /// The row for `event`, read at `partition`/`offset`.
    pub fn new(partition: i32, offset: i64, event: UsageRecorded) -> Self {
        let seconds = event.event_time_ms.div_euclid(1000);
        let (request_id, request_id_text) = request_uuid(event.request_id);
        Self {
            kafka_partition: partition,
            kafka_offset: offset,
            request_id,
            request_id_text,
            tenant_id: event.tenant_id,
            key_id: event.key_id,
            // DateTime holds 1970..2106; times outside it are clamped rather than wrapped.
            event_time: u32::try_from(seconds.max(0)).unwrap_or(u32::MAX),
            // In 0..1000, so the cast cannot truncate.
            event_ms: event.event_time_ms.rem_euclid(1000) as u16,
            outcome: event.outcome,
            status: event.status,
            bytes_in: event.bytes_in,
            bytes_out: event.bytes_out,
            pixels_in: event.pixels_in,
            pixels_out: event.pixels_out,
            cpu_time_us: event.cpu_time_us,
            input_format: event.input_format.unwrap_or_default(),
            output_format: event.output_format.unwrap_or_default(),
            latency_us: event.latency_us,
            source: match event.source {
                UsageSource::Api => "API",
                UsageSource::Resizer => "RESIZER",
            }
            .to_owned(),
            source_host: event.source_host.unwrap_or_default(),
        }
    }
}

/// The stored form of a request id: `(uuid, "")` when `id` is a canonical UUID (lowercase,
/// hyphenated: what the api generates), else `(first 16 bytes of SHA-256(id), id)`, so any id
/// still deduplicates by the UUID and keeps its text. Migration 12 derives the same in SQL.
pub fn request_uuid(id: String) -> (uuid::Uuid, String) {
    use sha2::Digest;
    match uuid::Uuid::try_parse(&id) {
        Ok(parsed) if parsed.hyphenated().to_string() == id => (parsed, String::new()),
        _ => {
            let digest = sha2::Sha256::digest(id.as_bytes());
            let mut bytes = [0_u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            (uuid::Uuid::from_bytes(bytes), id)
        }
    }
}

/// One row of `usage_rejects`: a record that could not be decoded. Its offset counts as stored,
/// so the partition moves past it; the record itself stays in Kafka for the topic's retention.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize)]
pub struct RejectRow {
    /// Kafka partition.
    pub kafka_partition: i32,
    /// Offset.
    pub kafka_offset: i64,
    /// Why it could not be decoded.
    pub error: String,
    /// Size of the value in bytes.
    pub payload_size: i64,
}

/// Why the sink failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The version probe failed.
    #[error(transparent)]
    Connect(#[from] ClickHouseError),
    /// An INSERT failed; whether it was applied is unknown.
    #[error("inserting {rows} rows of partition {partition} into {table}: {source}")]
    Insert {
        /// Table.
        table: &'static str,
        /// Partition of the batch.
        partition: i32,
        /// Rows in the INSERT.
        rows: usize,
        /// ClickHouse's answer.
        source: clickhouse::error::Error,
    },
    /// A query (stored offsets, running queries) failed.
    #[error("{what}: {source}")]
    Query {
        /// Which query.
        what: &'static str,
        /// ClickHouse's answer.
        source: clickhouse::error::Error,
    },
    /// The operation did not finish within its deadline. Retryable.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// Which operation.
        what: &'static str,
        /// Deadline.
        after: Duration,
    },
}

impl SinkError {
    /// Whether retrying later may succeed (server down, overloaded, timed out).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(error) => error.is_retryable(),
            Self::Insert { source, .. } | Self::Query { source, .. } => {
                chassis::clickhouse::is_retryable(source)
            }
            Self::Timeout { .. } => true,
        }
    }
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct OffsetRow {
    kafka_partition: i32,
    max_offset: i64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct CountRow {
    running: u64,
}

/// Writes usage batches and reads back stored offsets.
#[derive(Clone)]
pub struct UsageSink {
    client: Client,
    server: ServerVersion,
    raw_table: String,
    rejects_table: String,
    offsets_table: String,
    database: DatabaseName,
    insert_timeout: Duration,
}

impl std::fmt::Debug for UsageSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageSink")
            .field("raw_table", &self.raw_table)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl UsageSink {
    /// Connects (version-tuned client) to the database named in `config`.
    pub async fn connect(
        config: &ClickHouseConfig,
        insert_timeout: Duration,
    ) -> Result<Self, SinkError> {
        let (client, server) = chassis::clickhouse::connect(config).await?;
        Ok(Self::new(client, server, &config.database, insert_timeout))
    }

    /// A sink over an existing client.
    pub(crate) fn new(
        client: Client,
        server: ServerVersion,
        database: &DatabaseName,
        insert_timeout: Duration,
    ) -> Self {
        Self {
            client,
            server,
            raw_table: format!("{database}.usage_raw"),
            rejects_table: format!("{database}.usage_rejects"),
            offsets_table: format!("{database}.usage_offsets"),
            database: database.clone(),
            insert_timeout,
        }
    }

    /// The client, for migrations and queries sharing its settings.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The server's version.
    pub fn server(&self) -> ServerVersion {
        self.server
    }

    /// The database.
    pub fn database(&self) -> &DatabaseName {
        &self.database
    }

    /// The highest offset stored per partition, across `usage_raw` and `usage_rejects` (as
    /// recorded in `usage_offsets`). Partitions with nothing stored are absent.
    pub async fn stored_offsets(&self, partitions: &[i32]) -> Result<HashMap<i32, i64>, SinkError> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        // Partition numbers are integers we got from Kafka, safe to write into the SQL text.
        let list = partitions
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "SELECT kafka_partition, maxMerge(max_offset) AS max_offset FROM {offsets}
WHERE kafka_partition IN ({list}) GROUP BY kafka_partition HAVING max_offset >= 0",
            offsets = self.offsets_table,
        );
        let what = "looking up stored offsets";
        let rows = tokio::time::timeout(
            self.insert_timeout,
            self.client.query(&sql).fetch_all::<OffsetRow>(),
        )
        .await
        .map_err(|_| SinkError::Timeout {
            what,
            after: self.insert_timeout,
        })?
        .map_err(|source| SinkError::Query { what, source })?;
        Ok(rows
            .into_iter()
            .map(|row| (row.kafka_partition, row.max_offset))
            .collect())
    }

    /// Records `(partition, epoch seconds)` pairs of idle partitions (see the consumer's
    /// `report_idle`) as event-time progress in `usage_offsets`. The offset part is -1, below
    /// any real offset, so the resume point does not move (partitions whose only rows are these
    /// count as having nothing stored).
    pub async fn report_idle(&self, idle: &[(i32, u32)]) -> Result<(), SinkError> {
        let pairs = idle
            .iter()
            .map(|(partition, at)| format!("({partition}, {at})"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO {offsets}
SELECT p, maxState(toInt64(-1)), maxState(toDateTime(t, 'UTC'))
FROM (SELECT arrayJoin([{pairs}]) AS x, toInt32(x.1) AS p, toUInt32(x.2) AS t)
GROUP BY p",
            offsets = self.offsets_table,
        );
        let what = "reporting idle partitions";
        tokio::time::timeout(self.insert_timeout, self.client.query(&sql).execute())
            .await
            .map_err(|_| SinkError::Timeout {
                what,
                after: self.insert_timeout,
            })?
            .map_err(|source| SinkError::Query { what, source })
    }

    /// Waits until ClickHouse no longer runs `query_id` (an INSERT whose answer was lost may
    /// still be writing), at most the insert timeout.
    pub async fn wait_until_finished(&self, query_id: &str) -> Result<(), SinkError> {
        let what = "waiting for an unanswered INSERT to finish";
        let deadline = Instant::now() + self.insert_timeout;
        loop {
            let row = self
                .client
                .query("SELECT count() AS running FROM system.processes WHERE query_id = ?")
                .bind(query_id)
                .fetch_one::<CountRow>()
                .await
                .map_err(|source| SinkError::Query { what, source })?;
            if row.running == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SinkError::Timeout {
                    what,
                    after: self.insert_timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes `rows` (all of one partition) as one INSERT tagged with `query_id`.
    pub async fn insert_rows(
        &self,
        partition: i32,
        rows: &[UsageRow],
        query_id: &str,
    ) -> Result<(), SinkError> {
        self.insert("usage_raw", &self.raw_table, partition, rows, query_id)
            .await
    }

    /// Writes reject rows (all of one partition) as one INSERT tagged with `query_id`.
    pub async fn insert_rejects(
        &self,
        partition: i32,
        rows: &[RejectRow],
        query_id: &str,
    ) -> Result<(), SinkError> {
        self.insert(
            "usage_rejects",
            &self.rejects_table,
            partition,
            rows,
            query_id,
        )
        .await
    }

    async fn insert<T>(
        &self,
        table: &'static str,
        qualified: &str,
        partition: i32,
        rows: &[T],
        query_id: &str,
    ) -> Result<(), SinkError>
    where
        T: clickhouse::Row + for<'a> clickhouse::RowWrite<Value<'a> = T> + Serialize,
    {
        let failed = |source| SinkError::Insert {
            table,
            partition,
            rows: rows.len(),
            source,
        };
        let write = async {
            let mut insert = self
                .client
                .insert_unescaped::<T>(qualified)
                .await
                .map_err(failed)?
                .with_setting("query_id", query_id)
                .with_timeouts(Some(self.insert_timeout), Some(self.insert_timeout));
            for row in rows {
                insert.write(row).await.map_err(failed)?;
            }
            insert.end().await.map_err(failed)
        };
        tokio::time::timeout(self.insert_timeout, write)
            .await
            .map_err(|_| SinkError::Timeout {
                what: "INSERT",
                after: self.insert_timeout,
            })?
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_every_dimension_and_clamp_time() {
        let event = UsageRecorded {
            request_id: "r".into(),
            tenant_id: "t".into(),
            key_id: "k".into(),
            event_time_ms: 1_700_000_000_999,
            outcome: "ok".into(),
            status: 200,
            bytes_in: 1,
            bytes_out: 2,
            pixels_in: 3,
            pixels_out: 4,
            cpu_time_us: 5,
            input_format: Some("jpeg".into()),
            output_format: None,
            latency_us: 6,
            source: UsageSource::Api,
            source_host: None,
        };
        let row = UsageRow::new(3, 42, event.clone());
        assert_eq!(row.event_time, 1_700_000_000);
        assert_eq!((row.kafka_partition, row.kafka_offset), (3, 42));
        assert_eq!(row.output_format, "");
        assert_eq!(row.source, "API");
        assert_eq!(row.event_ms, 999);
        assert_eq!(row.request_id_text, "r", "not a UUID: the text is kept");
        assert_eq!(row.source_host, "", "an inline image has no source host");
        let fetched = UsageRow::new(
            0,
            0,
            UsageRecorded {
                source_host: Some("images.example.com:8443".into()),
                ..event.clone()
            },
        );
        assert_eq!(fetched.source_host, "images.example.com:8443");
        let early = UsageRow::new(
            0,
            0,
            UsageRecorded {
                event_time_ms: -5,
                ..event
            },
        );
        assert_eq!(early.event_time, 0);
        assert_eq!(early.event_ms, 995);
    }

    #[test]
    fn request_ids_become_uuids_canonical_ones_losslessly() {
        let id = "0193a2b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b".to_owned();
        assert_eq!(
            request_uuid(id.clone()),
            (id.parse().unwrap(), String::new())
        );
        // The same value as the SQL of migration 12 (checked on ClickHouse 18.16):
        // toUUID(UUIDNumToString(toFixedString(substring(SHA256('req-1'), 1, 16), 16))).
        let (derived, text) = request_uuid("req-1".into());
        assert_eq!(derived.to_string(), "9456bdfa-12ea-7695-9c94-a3572f5d91c7");
        assert_eq!(text, "req-1");
        let upper = id.to_uppercase();
        assert_eq!(
            request_uuid(upper.clone()).1,
            upper,
            "not canonical: text kept"
        );
    }
}
