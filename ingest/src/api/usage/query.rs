//! Tenant usage reports for the api: buckets of one tenant's usage by minute, hour or day,
//! optionally split by output format or outcome.
//!
//! Exact: each request counts once, however many times it was delivered (the query groups by
//! request id before summing, as `usage_minute` does). Scoped: the tenant id and the range are
//! bound parameters (`clickhouse` crate `.bind()`, escaped by the client), and the tenant filter
//! sits inside the dedup subquery, so it uses `usage_raw`'s primary key (tenant first) and no
//! other tenant's rows are read at all.
//!
//! Ranges are half-open `[from, to)`; `from`/`to` are epoch seconds or RFC 3339 (see
//! [`Timestamp`]). A request may span at most [`Granularity::max_buckets`] buckets.

use std::str::FromStr;

use chassis::clickhouse::{ClickHouseConfig, ClickHouseError, DatabaseName};
use clickhouse::Client;
use serde::{Deserialize, Serialize};

pub use super::timestamp::{Timestamp, TimestampError};

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

    fn start_of(self) -> &'static str {
        match self {
            Self::Minute => "toStartOfMinute",
            Self::Hour => "toStartOfHour",
            Self::Day => "toStartOfDay",
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
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// The output format (`jpeg`, `webp`, …; empty when no image was produced).
    Format,
    /// `ok` (delivered), `resized` (made, delivery unconfirmed), `client_closed_request` or the
    /// stable error code.
    Outcome,
}

impl GroupBy {
    /// The request's value of this key over its records, by the rules of `usage_by_request`:
    /// the api's record decides the outcome; the format is whichever record names one.
    fn per_request(self) -> &'static str {
        match self {
            Self::Format => "max(output_format)",
            Self::Outcome => "argMax(outcome, source = 'API')",
        }
    }
}

impl FromStr for GroupBy {
    type Err = UsageQueryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "format" => Ok(Self::Format),
            "outcome" => Ok(Self::Outcome),
            _ => Err(UsageQueryError::BadParameter {
                name: "group_by",
                reason: "must be format or outcome".into(),
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
    /// `format` or `outcome`; none for one row per bucket.
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
    /// Distinct requests.
    pub requests: u64,
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
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct BucketRow {
    start: u32,
    group_key: String,
    requests: u64,
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
        let group_key = request.group_by.map_or("''", GroupBy::per_request);
        // Only expressions chosen above and the checked database name are formatted in; every
        // value (tenant, range) is bound. The inner GROUP BY makes each request count once, with
        // the same rules as the `usage_by_request` view (the api's record decides time and
        // outcome; the work dimensions are the largest of the request's records).
        let sql = format!(
            "SELECT
    toUInt32(bucket) AS start,
    group_key,
    count() AS requests,
    sum(request_bytes_in) AS bytes_in,
    sum(request_bytes_out) AS bytes_out,
    sum(request_pixels_in) AS pixels_in,
    sum(request_pixels_out) AS pixels_out,
    sum(request_cpu_time_us) AS cpu_time_us
FROM (
    SELECT
        request_id,
        {start_of}(argMax(event_time, source = 'API')) AS bucket,
        {group_key} AS group_key,
        max(bytes_in) AS request_bytes_in,
        max(bytes_out) AS request_bytes_out,
        max(pixels_in) AS request_pixels_in,
        max(pixels_out) AS request_pixels_out,
        max(cpu_time_us) AS request_cpu_time_us
    FROM {db}.usage_raw
    WHERE tenant_id = ? AND event_time >= toDateTime(?) AND event_time < toDateTime(?)
    GROUP BY request_id
)
GROUP BY start, group_key
ORDER BY start, group_key",
            start_of = request.granularity.start_of(),
            db = self.database,
        );
        let rows = self
            .client
            .query(&sql)
            .bind(tenant_id)
            .bind(request.from.epoch_seconds())
            .bind(request.to.epoch_seconds())
            .fetch_all::<BucketRow>()
            .await
            .map_err(UsageQueryError::Query)?;
        let buckets = rows
            .into_iter()
            .map(|row| {
                let key = Some(row.group_key);
                UsageBucket {
                    start: Timestamp::from_epoch_seconds(i64::from(row.start))
                        .map_or_else(String::new, Timestamp::to_rfc3339),
                    requests: row.requests,
                    bytes_in: row.bytes_in,
                    bytes_out: row.bytes_out,
                    pixels_in: row.pixels_in,
                    pixels_out: row.pixels_out,
                    cpu_time_us: row.cpu_time_us,
                    format: key
                        .clone()
                        .filter(|_| request.group_by == Some(GroupBy::Format)),
                    outcome: key.filter(|_| request.group_by == Some(GroupBy::Outcome)),
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
                bytes_in: 2,
                bytes_out: 3,
                pixels_in: 4,
                pixels_out: 5,
                cpu_time_us: 6,
                format: Some("webp".into()),
                outcome: None,
            }],
        };
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["buckets"][0]["format"], "webp");
        assert!(json["buckets"][0].get("outcome").is_none());
        assert_eq!(json["granularity"], "minute");
    }
}
