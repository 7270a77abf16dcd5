//! Tenant usage reports for the api: buckets of one tenant's usage by minute, hour or day,
//! optionally split by output format, outcome or source host.
//!
//! Exact: each request counts once, however many times it was delivered. Whole minutes, hours
//! and days that the rollup job has settled are read from `usage_rollup` (a few rows per bucket,
//! at the coarsest granularity that fits the range and the requested buckets); the rest (the
//! partial minutes at the range's ends, and everything after the settle mark) is recounted from
//! delivered records grouped by request id with the same rules: the live tail from
//! `usage_recent` (which holds only the unsettled minutes), the range's partial end minutes from
//! `usage_raw` (any age within its retention). The settle mark is read in the same scan as the
//! rollup rows, and live rows before it are dropped here, so a window settled while the query
//! runs is never counted twice. Scoped: the tenant id is a bound parameter (`clickhouse` crate
//! `.bind()`, escaped by the client) and filters every table, each sorted tenant first, so all
//! three reads go by primary key: a small tenant's report reads a few granules.
//!
//! Billing counts delivered work: `requests` counts the requests that got their image (outcomes
//! [`BILLED_OUTCOMES`]), `refused` every other one (refused by the api, failed, or the client gone
//! first); the other sums cover every request. `group_by=outcome` shows each outcome's row.
//!
//! Ranges are half-open `[from, to)`; `from`/`to` are epoch seconds or RFC 3339 (see
//! [`Timestamp`]). A request may span at most [`Granularity::max_buckets`] buckets.

use std::collections::BTreeMap;
use std::str::FromStr;

use chassis::clickhouse::{ClickHouseConfig, ClickHouseError, DatabaseName};
use clickhouse::Client;
use schemas::events::outcomes;
use serde::{Deserialize, Serialize};

pub use super::timestamp::{Timestamp, TimestampError};

/// The outcomes billed as work, as the analysts' views count them (migration 18's
/// `billed_outcomes`): `ok`, the api handed the image over; `resized`, a resizer made it and
/// the api's record is missing (the api died; also a request's state for the moment between the
/// resizer's record and the api's `ok`); `not_modified`, a revalidated signed GET answered 304
/// with no resize. Every other outcome is a request that got no image.
pub const BILLED_OUTCOMES: [&str; 3] = [outcomes::OK, outcomes::RESIZED, outcomes::NOT_MODIFIED];

/// Bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One minute.
    Minute,
    /// One hour.
    #[default]
    Hour,
    /// One UTC day.
    Day,
}

impl Granularity {
    /// Bucket width in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Self::Minute => 60,
            Self::Hour => 3600,
            Self::Day => 86_400,
        }
    }

    /// Most buckets one request may span: a day of minutes, a month of hours, a year of days.
    pub fn max_buckets(self) -> i64 {
        match self {
            Self::Minute => 1440,
            Self::Hour => 744,
            Self::Day => 366,
        }
    }
}

impl FromStr for Granularity {
    type Err = UsageQueryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "minute" => Ok(Self::Minute),
            "hour" => Ok(Self::Hour),
            "day" => Ok(Self::Day),
            _ => Err(UsageQueryError::BadParameter {
                name: "granularity",
                reason: "must be minute, hour or day".into(),
            }),
        }
    }
}

/// A second dimension to split buckets by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// The output format (`jpeg`, `webp`, …; empty when no image was produced).
    Format,
    /// `ok` (delivered), `resized` (made, delivery unconfirmed), `client_closed_request` or the
    /// stable error code (`unauthenticated`, `forbidden`, `rate_limited`, `bad_parameters`, …):
    /// every outcome gets its row, billed (`requests`) or not (`refused`).
    Outcome,
    /// The host of a signed GET's source URL (`images.example.com`, with the port when it is
    /// not the scheme's default), as the api recorded it; `""` for an image sent in the
    /// request body (`POST /v1/resize`), and for usage recorded before hosts were.
    SourceHost,
}

impl GroupBy {
    /// The request's value of this key over its records, by the rules of `usage_by_request`:
    /// the api's record decides the outcome; the format and the source host are whichever
    /// record names one.
    fn per_request(self) -> &'static str {
        match self {
            Self::Format => "request_format",
            Self::Outcome => "request_outcome",
            Self::SourceHost => "request_source_host",
        }
    }

    /// The same key in `usage_rollup`.
    fn rolled_up(self) -> &'static str {
        match self {
            Self::Format => "format",
            Self::Outcome => "outcome",
            Self::SourceHost => "source_host",
        }
    }
}

impl FromStr for GroupBy {
    type Err = UsageQueryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "format" => Ok(Self::Format),
            "outcome" => Ok(Self::Outcome),
            "source_host" => Ok(Self::SourceHost),
            _ => Err(UsageQueryError::BadParameter {
                name: "group_by",
                reason: "must be format, outcome or source_host".into(),
            }),
        }
    }
}

/// Query-string shape of a usage request (`?from=…&to=…&granularity=hour&group_by=format`),
/// for the api to deserialize and turn into a [`UsageRequest`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// Start (inclusive): epoch seconds or RFC 3339.
    pub from: String,
    /// End (exclusive): epoch seconds or RFC 3339.
    pub to: String,
    /// `minute`, `hour` (default) or `day`.
    pub granularity: Option<String>,
    /// `format`, `outcome` or `source_host`; none for one row per bucket.
    pub group_by: Option<String>,
}

/// A validated usage request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRequest {
    from: Timestamp,
    to: Timestamp,
    granularity: Granularity,
    group_by: Option<GroupBy>,
}

impl UsageRequest {
    /// Checks `to > from` and that the range spans at most `granularity.max_buckets()` buckets.
    pub fn new(
        from: Timestamp,
        to: Timestamp,
        granularity: Granularity,
        group_by: Option<GroupBy>,
    ) -> Result<Self, UsageQueryError> {
        if to <= from {
            return Err(UsageQueryError::BadRange(format!(
                "to ({}) must be after from ({})",
                to.to_rfc3339(),
                from.to_rfc3339()
            )));
        }
        let step = granularity.seconds();
        let first = from.epoch_seconds().div_euclid(step) * step;
        let buckets = (to.epoch_seconds() - first + step - 1) / step;
        if buckets > granularity.max_buckets() {
            return Err(UsageQueryError::BadRange(format!(
                "the range spans {buckets} {granularity:?} buckets; at most {} allowed",
                granularity.max_buckets()
            )));
        }
        Ok(Self {
            from,
            to,
            granularity,
            group_by,
        })
    }

    /// Parses and validates the query-string form.
    pub fn from_params(params: &UsageParams) -> Result<Self, UsageQueryError> {
        let time = |name: &'static str, text: &str| {
            Timestamp::parse(text).map_err(|e| UsageQueryError::BadParameter {
                name,
                reason: e.to_string(),
            })
        };
        let granularity = match params.granularity.as_deref() {
            Some(text) => text.parse()?,
            None => Granularity::default(),
        };
        let group_by = params.group_by.as_deref().map(str::parse).transpose()?;
        Self::new(
            time("from", &params.from)?,
            time("to", &params.to)?,
            granularity,
            group_by,
        )
    }

    /// Start (inclusive).
    pub fn from(&self) -> Timestamp {
        self.from
    }

    /// End (exclusive).
    pub fn to(&self) -> Timestamp {
        self.to
    }

    /// Bucket width.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// Split dimension.
    pub fn group_by(&self) -> Option<GroupBy> {
        self.group_by
    }
}

/// How a range splits between the rollup's granularities: whole minutes `[m1, h1)` and
/// `[h2, m2)`, whole hours `[h1, d1)` and `[d2, h2)`, whole days `[d1, d2)`; the partial minutes
/// `[from, m1)` and `[m2, to)` come from raw rows. A granularity is used only if it is not finer
/// than the requested buckets' (hour rows cannot be split into minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pieces {
    m1: i64,
    m2: i64,
    h1: i64,
    h2: i64,
    d1: i64,
    d2: i64,
}

impl Pieces {
    fn new(request: &UsageRequest) -> Self {
        let (from, to) = (request.from.epoch_seconds(), request.to.epoch_seconds());
        let ceil = |t: i64, step: i64| (t + step - 1).div_euclid(step) * step;
        let floor = |t: i64, step: i64| t.div_euclid(step) * step;
        let (mut m1, mut m2) = (ceil(from, 60), floor(to, 60));
        if m1 >= m2 {
            (m1, m2) = (to, to);
        }
        let coarser = |a: i64, b: i64, step: i64, allowed: bool| {
            if allowed {
                let c = ceil(a, step).min(b);
                (c, floor(b, step).max(c))
            } else {
                (b, b)
            }
        };
        let (h1, h2) = coarser(m1, m2, 3600, request.granularity != Granularity::Minute);
        let (d1, d2) = coarser(h1, h2, 86_400, request.granularity == Granularity::Day);
        Self {
            m1,
            m2,
            h1,
            h2,
            d1,
            d2,
        }
    }
}

/// Why a usage report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UsageQueryError {
    /// The range is empty, reversed or too long. Permanent; the api answers 400.
    #[error("bad range: {0}")]
    BadRange(String),
    /// A parameter (time, granularity, group_by, tenant id) is malformed. Permanent; 400.
    #[error("bad {name}: {reason}")]
    BadParameter {
        /// Parameter.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// ClickHouse could not be reached. Retryable (503).
    #[error(transparent)]
    Connect(#[from] ClickHouseError),
    /// The query failed. Retryable when ClickHouse is down or overloaded (503).
    #[error("querying usage: {0}")]
    Query(#[source] clickhouse::error::Error),
}

impl UsageQueryError {
    /// Whether the caller's request is at fault (answer 400).
    pub fn is_bad_request(&self) -> bool {
        matches!(self, Self::BadRange(_) | Self::BadParameter { .. })
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::BadRange(_) | Self::BadParameter { .. } => false,
            Self::Connect(error) => error.is_retryable(),
            Self::Query(error) => chassis::clickhouse::is_retryable(error),
        }
    }
}

/// One tenant's usage over a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    /// Tenant.
    pub tenant_id: String,
    /// Start (inclusive), RFC 3339 UTC.
    pub from: String,
    /// End (exclusive), RFC 3339 UTC.
    pub to: String,
    /// Bucket width.
    pub granularity: Granularity,
    /// Split dimension, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<GroupBy>,
    /// Buckets with usage, by start then group key (empty buckets are omitted).
    pub buckets: Vec<UsageBucket>,
}

/// Usage in one bucket (and group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageBucket {
    /// Bucket start, RFC 3339 UTC.
    pub start: String,
    /// Distinct requests billed as work: the image was made and handed over (outcome `ok`, or
    /// `resized` when the api's record is missing).
    pub requests: u64,
    /// Distinct requests that got no image: refused by the api (`unauthenticated`, `forbidden`,
    /// `rate_limited`, `bad_parameters`, …), failed (`undecodable_image`, `deadline_exceeded`,
    /// …) or abandoned by the client (`client_closed_request`). Never billed.
    pub refused: u64,
    /// Sum of request body sizes.
    pub bytes_in: i64,
    /// Sum of response image sizes.
    pub bytes_out: i64,
    /// Sum of input pixels.
    pub pixels_in: i64,
    /// Sum of output pixels.
    pub pixels_out: i64,
    /// Sum of CPU time.
    pub cpu_time_us: i64,
    /// Output format, when grouped by format.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Outcome, when grouped by outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Source host, when grouped by source host: the host (and non-default port) of a signed
    /// GET's source URL, `""` for images sent in the request body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_host: Option<String>,
}

/// Where a row of the report query comes from.
const KIND_MARK: u8 = 0;
const KIND_ROLLUP: u8 = 1;
const KIND_LIVE: u8 = 2;
const KIND_EDGE: u8 = 3;

#[derive(Debug, clickhouse::Row, Deserialize)]
struct BucketRow {
    kind: u8,
    start: u32,
    group_key: String,
    requests: u64,
    refused: u64,
    bytes_in: i64,
    bytes_out: i64,
    pixels_in: i64,
    pixels_out: i64,
    cpu_time_us: i64,
}

/// Longest tenant id accepted (ids are short; this only bounds the query text).
const MAX_TENANT_ID_LEN: usize = 256;

/// Tenant usage reports over ClickHouse.
#[derive(Clone)]
pub struct UsageQuery {
    client: Client,
    database: DatabaseName,
}

impl std::fmt::Debug for UsageQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageQuery")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl UsageQuery {
    /// Over an existing client (from `chassis::clickhouse::connect`, so it suits the server).
    pub fn new(client: Client, database: &DatabaseName) -> Self {
        Self {
            client,
            database: database.clone(),
        }
    }

    /// Connects with `config` (version probe included).
    pub async fn connect(config: &ClickHouseConfig) -> Result<Self, UsageQueryError> {
        let (client, _version) = chassis::clickhouse::connect(config).await?;
        Ok(Self::new(client, &config.database))
    }

    /// `tenant_id`'s usage in `request`'s range, exact (each request id counted once).
    pub async fn buckets(
        &self,
        tenant_id: &str,
        request: &UsageRequest,
    ) -> Result<UsageReport, UsageQueryError> {
        if tenant_id.is_empty() || tenant_id.len() > MAX_TENANT_ID_LEN {
            return Err(UsageQueryError::BadParameter {
                name: "tenant_id",
                reason: format!("must be 1 to {MAX_TENANT_ID_LEN} bytes"),
            });
        }
        let (rollup_key, request_key) = request
            .group_by
            .map_or(("''", "''"), |g| (g.rolled_up(), g.per_request()));
        let pieces = Pieces::new(request);
        let Pieces {
            m1,
            m2,
            h1,
            h2,
            d1,
            d2,
        } = pieces;
        let (from, to) = (request.from.epoch_seconds(), request.to.epoch_seconds());
        let at = |t: i64| format!("toDateTime({t}, 'UTC')");
        let (from_t, to_t, m1_t, m2_t) = (at(from), at(to), at(m1), at(m2));
        let mark = format!(
            "(SELECT max(bucket) FROM {}.usage_rollup WHERE granularity = 0)",
            self.database
        );
        let live_from = format!("greatest({m1_t}, {mark} + 1)");
        // An array for `has`: on 18.16 an `IN` in both branches of this UNION ALL fails
        // ("Cannot convert column n because it is non constant in source stream").
        let billed = format!("['{}']", BILLED_OUTCOMES.join("', '"));
        // Only integers computed here, expressions chosen above, the outcome constants and the
        // checked database name are formatted in; the tenant id is bound (three times). A
        // request read from both tables (their event-time ranges overlap by the lookaround) is
        // grouped into one row: `max` and `argMax` are unchanged by a repeated record.
        let sql = format!(
            "SELECT
    kind,
    toUInt32(t) AS start,
    group_key,
    toUInt64(sum(n)) AS requests,
    toUInt64(sum(r)) AS refused,
    sum(b_in) AS bytes_in,
    sum(b_out) AS bytes_out,
    sum(p_in) AS pixels_in,
    sum(p_out) AS pixels_out,
    sum(cpu) AS cpu_time_us
FROM (
    SELECT
        toUInt8(if(granularity = 0, {KIND_MARK}, {KIND_ROLLUP})) AS kind,
        bucket AS t,
        {rollup_key} AS group_key,
        if(has({billed}, outcome), finalizeAggregation(requests), toUInt64(0)) AS n,
        if(has({billed}, outcome), toUInt64(0), finalizeAggregation(requests)) AS r,
        finalizeAggregation(bytes_in) AS b_in,
        finalizeAggregation(bytes_out) AS b_out,
        finalizeAggregation(pixels_in) AS p_in,
        finalizeAggregation(pixels_out) AS p_out,
        finalizeAggregation(cpu_time_us) AS cpu
    FROM {db}.usage_rollup
    WHERE (granularity = 0 AND bucket >= {mark})
       OR (tenant_id = ? AND (
              (granularity = 1 AND ((bucket >= {m1_t} AND bucket < {h1_t}) OR (bucket >= {h2_t} AND bucket < {m2_t})))
           OR (granularity = 2 AND ((bucket >= {h1_t} AND bucket < {d1_t}) OR (bucket >= {d2_t} AND bucket < {h2_t})))
           OR (granularity = 3 AND bucket >= {d1_t} AND bucket < {d2_t})))
    UNION ALL
    SELECT
        toUInt8(if(request_time >= {m1_t} AND request_time < {m2_t}, {KIND_LIVE}, {KIND_EDGE})) AS kind,
        toStartOfMinute(request_time) AS t,
        {request_key} AS group_key,
        toUInt64(has({billed}, request_outcome)) AS n,
        toUInt64(NOT has({billed}, request_outcome)) AS r,
        request_bytes_in AS b_in,
        request_bytes_out AS b_out,
        request_pixels_in AS p_in,
        request_pixels_out AS p_out,
        request_cpu_time_us AS cpu
    FROM (
        SELECT
            request_id,
            argMax(event_time, from_api) AS request_time,
            argMax(outcome, from_api) AS request_outcome,
            max(output_format) AS request_format,
            max(bytes_in) AS request_bytes_in,
            max(bytes_out) AS request_bytes_out,
            max(pixels_in) AS request_pixels_in,
            max(pixels_out) AS request_pixels_out,
            max(cpu_time_us) AS request_cpu_time_us,
            max(source_host) AS request_source_host
        FROM (
            SELECT request_id, event_time, outcome, output_format, bytes_in, bytes_out,
                   pixels_in, pixels_out, cpu_time_us, source_host, source = 'API' AS from_api
            FROM {db}.usage_raw
            WHERE tenant_id = ? AND (
                   (event_time >= {from_t} - 60 AND event_time < {m1_t} + 60)
                OR (event_time >= {m2_t} - 60 AND event_time < {to_t} + 60))
            UNION ALL
            SELECT request_id, event_time, outcome, output_format, bytes_in, bytes_out,
                   pixels_in, pixels_out, cpu_time_us, source_host, from_api
            FROM {db}.usage_recent
            WHERE tenant_id = ? AND event_time >= {live_from} - 60 AND event_time < {m2_t} + 60
        )
        GROUP BY request_id
        HAVING (request_time >= {from_t} AND request_time < {m1_t})
            OR (request_time >= {m2_t} AND request_time < {to_t})
            OR (request_time >= {live_from} AND request_time < {m2_t})
    )
)
GROUP BY kind, start, group_key",
            h1_t = at(h1),
            h2_t = at(h2),
            d1_t = at(d1),
            d2_t = at(d2),
            db = self.database,
        );
        let rows = self
            .client
            .query(&sql)
            .bind(tenant_id)
            .bind(tenant_id)
            .bind(tenant_id)
            .fetch_all::<BucketRow>()
            .await
            .map_err(UsageQueryError::Query)?;
        // The mark as of the rollup rows read: live rows before it were settled meanwhile and
        // are already among the rollup rows.
        let settled_until = rows
            .iter()
            .filter(|row| row.kind == KIND_MARK)
            .map(|row| i64::from(row.start) + 1)
            .max()
            .unwrap_or(0);
        let step = request.granularity.seconds();
        let mut sums: BTreeMap<(i64, String), BucketRow> = BTreeMap::new();
        for row in rows {
            let keep = match row.kind {
                KIND_ROLLUP | KIND_EDGE => true,
                KIND_LIVE => i64::from(row.start) >= settled_until,
                _ => false,
            };
            if !keep {
                continue;
            }
            let start = i64::from(row.start).div_euclid(step) * step;
            let sum = sums
                .entry((start, row.group_key.clone()))
                .or_insert_with(|| BucketRow {
                    kind: row.kind,
                    start: u32::try_from(start).unwrap_or(0),
                    group_key: row.group_key.clone(),
                    requests: 0,
                    refused: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                    pixels_in: 0,
                    pixels_out: 0,
                    cpu_time_us: 0,
                });
            sum.requests += row.requests;
            sum.refused += row.refused;
            sum.bytes_in += row.bytes_in;
            sum.bytes_out += row.bytes_out;
            sum.pixels_in += row.pixels_in;
            sum.pixels_out += row.pixels_out;
            sum.cpu_time_us += row.cpu_time_us;
        }
        let buckets = sums
            .into_values()
            .filter(|row| row.requests + row.refused > 0)
            .map(|row| {
                let key = Some(row.group_key);
                UsageBucket {
                    start: Timestamp::from_epoch_seconds(i64::from(row.start))
                        .map_or_else(String::new, Timestamp::to_rfc3339),
                    requests: row.requests,
                    refused: row.refused,
                    bytes_in: row.bytes_in,
                    bytes_out: row.bytes_out,
                    pixels_in: row.pixels_in,
                    pixels_out: row.pixels_out,
                    cpu_time_us: row.cpu_time_us,
                    format: key
                        .clone()
                        .filter(|_| request.group_by == Some(GroupBy::Format)),
                    outcome: key
                        .clone()
                        .filter(|_| request.group_by == Some(GroupBy::Outcome)),
                    source_host: key.filter(|_| request.group_by == Some(GroupBy::SourceHost)),
                }
            })
            .collect();
        Ok(UsageReport {
            tenant_id: tenant_id.to_owned(),
            from: request.from.to_rfc3339(),
            to: request.to.to_rfc3339(),
            granularity: request.granularity,
            group_by: request.group_by,
            buckets,
        })
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_epoch_seconds(seconds).expect("in range")
    }

    #[test]
    fn ranges_must_be_ordered_and_bounded() {
        let day = 86_400;
        assert!(UsageRequest::new(ts(day), ts(2 * day), Granularity::Minute, None).is_ok());
        let too_long = UsageRequest::new(ts(day), ts(2 * day + 1), Granularity::Minute, None);
        assert!(matches!(too_long, Err(UsageQueryError::BadRange(_))));
        let reversed = UsageRequest::new(ts(day), ts(day), Granularity::Hour, None);
        assert!(matches!(reversed, Err(UsageQueryError::BadRange(_))));
        assert!(UsageRequest::new(ts(0), ts(31 * day), Granularity::Hour, None).is_ok());
        assert!(UsageRequest::new(ts(0), ts(400 * day), Granularity::Day, None).is_err());
    }

    #[test]
    fn ranges_split_into_whole_buckets_no_finer_than_asked() {
        let day = 86_400;
        let hour = |g| UsageRequest::new(ts(day - 90), ts(3 * day + 3630), g, None).unwrap();
        let p = Pieces::new(&hour(Granularity::Day));
        assert_eq!((p.m1, p.h1, p.d1), (day - 60, day, day));
        assert_eq!(
            (p.d2, p.h2, p.m2),
            (3 * day, 3 * day + 3600, 3 * day + 3600)
        );
        let p = Pieces::new(&hour(Granularity::Hour));
        assert_eq!((p.h1, p.h2), (day, 3 * day + 3600));
        assert_eq!((p.d1, p.d2), (p.h2, p.h2), "hour buckets use no day rows");
        let minutes = UsageRequest::new(ts(3500), ts(7300), Granularity::Minute, None).unwrap();
        let p = Pieces::new(&minutes);
        assert_eq!((p.m1, p.m2), (3540, 7260));
        assert_eq!(
            (p.h1, p.h2, p.d1, p.d2),
            (7260, 7260, 7260, 7260),
            "minute rows only"
        );
        let inside = UsageRequest::new(ts(70), ts(100), Granularity::Minute, None).unwrap();
        let p = Pieces::new(&inside);
        assert_eq!((p.m1, p.m2), (100, 100), "all from raw rows");
    }

    #[test]
    fn query_strings_parse_with_every_error_a_bad_request() {
        let ok = UsageRequest::from_params(&UsageParams {
            from: "2025-01-01T00:00:00Z".into(),
            to: "1735693200".into(),
            granularity: Some("minute".into()),
            group_by: Some("outcome".into()),
        })
        .expect("valid");
        assert_eq!(ok.granularity(), Granularity::Minute);
        assert_eq!(ok.group_by(), Some(GroupBy::Outcome));
        let by_host = UsageRequest::from_params(&UsageParams {
            from: "1".into(),
            to: "2".into(),
            group_by: Some("source_host".into()),
            ..UsageParams::default()
        })
        .expect("valid");
        assert_eq!(by_host.group_by(), Some(GroupBy::SourceHost));
        for params in [
            UsageParams {
                from: "soon".into(),
                to: "1".into(),
                ..UsageParams::default()
            },
            UsageParams {
                from: "1".into(),
                to: "2".into(),
                granularity: Some("week".into()),
                ..UsageParams::default()
            },
            UsageParams {
                from: "1".into(),
                to: "2".into(),
                group_by: Some("tenant".into()),
                ..UsageParams::default()
            },
        ] {
            let error = UsageRequest::from_params(&params).expect_err("invalid");
            assert!(error.is_bad_request(), "{error}");
            assert!(!error.is_retryable());
        }
    }

    #[test]
    fn report_json_has_the_documented_shape() {
        let report = UsageReport {
            tenant_id: "t".into(),
            from: "a".into(),
            to: "b".into(),
            granularity: Granularity::Minute,
            group_by: Some(GroupBy::Format),
            buckets: vec![UsageBucket {
                start: "2025-01-01T00:00:00Z".into(),
                requests: 1,
                refused: 7,
                bytes_in: 2,
                bytes_out: 3,
                pixels_in: 4,
                pixels_out: 5,
                cpu_time_us: 6,
                format: Some("webp".into()),
                outcome: None,
                source_host: None,
            }],
        };
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["buckets"][0]["format"], "webp");
        assert_eq!(json["buckets"][0]["refused"], 7);
        assert!(json["buckets"][0].get("outcome").is_none());
        assert!(json["buckets"][0].get("source_host").is_none());
        assert_eq!(json["granularity"], "minute");
        assert_eq!(json["group_by"], "format");

        // By source host: every row names its host, "" for images sent in the body.
        let by_host = UsageReport {
            group_by: Some(GroupBy::SourceHost),
            buckets: vec![
                UsageBucket {
                    format: None,
                    source_host: Some(String::new()),
                    ..report.buckets[0].clone()
                },
                UsageBucket {
                    format: None,
                    source_host: Some("images.example.com".into()),
                    ..report.buckets[0].clone()
                },
            ],
            ..report
        };
        let json = serde_json::to_value(&by_host).expect("serializes");
        assert_eq!(json["group_by"], "source_host");
        assert_eq!(json["buckets"][0]["source_host"], "");
        assert_eq!(json["buckets"][1]["source_host"], "images.example.com");
        assert!(json["buckets"][1].get("format").is_none());
    }
}
