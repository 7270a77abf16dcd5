//! ClickHouse client set-up that works with the oldest server we support (Debian's 18.16) and
//! current releases. The `clickhouse` crate's defaults (typed RowBinaryWithNamesAndTypes validation,
//! LZ4 request compression) need a modern server; against an old one both are switched off. The
//! choice is made from the server's own `version()`, not from config, so one binary runs on both.

use std::time::Duration;

use clickhouse::Client;
use clickhouse::Compression;
use serde::{Deserialize, Serialize};

/// Where ClickHouse is and how to log in.
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding imgpipe's tables: a plain identifier, checked when the config is read.
    #[schemars(with = "String")]
    pub database: DatabaseName,
    /// User name.
    pub user: String,
    /// Password. Never logged, and left out when the config is printed.
    #[serde(skip_serializing)]
    pub password: String,
    /// Timeout of the version probe; inserts and queries have their own deadlines.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config::HumanDuration")]
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".to_owned(),
            database: DatabaseName("imgpipe".to_owned()),
            user: "default".to_owned(),
            password: String::new(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The server's version, as far as client behaviour depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Major version (18 for 18.16.1).
    pub major: u32,
    /// Minor version (16 for 18.16.1).
    pub minor: u32,
}

impl ServerVersion {
    /// Parses `version()` output such as `18.16.1` or `24.8.4.13`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }

    /// Whether the server speaks RowBinaryWithNamesAndTypes, LZ4-compressed inserts over HTTP,
    /// and the newer SQL we gate on (TTL, insert deduplication tokens). 22.x is a conservative
    /// floor: every release since then is known to work with the crate's defaults.
    pub fn is_modern(self) -> bool {
        self.major >= 22
    }
}

/// Why ClickHouse could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    /// The HTTP request for `version()` failed: server down or unreachable. Retryable.
    #[error("asking ClickHouse at {url} for its version: {source}")]
    Unreachable {
        /// The endpoint tried.
        url: String,
        /// The underlying error.
        source: reqwest::Error,
    },
    /// The server answered something that is not a version (wrong endpoint, auth failure).
    #[error("ClickHouse at {url} answered {status}: {body}")]
    BadAnswer {
        /// The endpoint tried.
        url: String,
        /// HTTP status.
        status: u16,
        /// The body, truncated.
        body: String,
    },
}

impl ClickHouseError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::BadAnswer { status, .. } => *status >= 500,
        }
    }
}

/// Asks the server for its version over plain HTTP (works on every release).
pub async fn server_version(config: &ClickHouseConfig) -> Result<ServerVersion, ClickHouseError> {
    let http = reqwest::Client::builder()
        .timeout(config.connect_timeout)
        .build()
        .map_err(|source| ClickHouseError::Unreachable {
            url: config.url.clone(),
            source,
        })?;
    let response = http
        .post(&config.url)
        .header("X-ClickHouse-User", &config.user)
        .header("X-ClickHouse-Key", &config.password)
        .body("SELECT version()")
        .send()
        .await
        .map_err(|source| ClickHouseError::Unreachable {
            url: config.url.clone(),
            source,
        })?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|source| ClickHouseError::Unreachable {
            url: config.url.clone(),
            source,
        })?;
    match (status, ServerVersion::parse(&body)) {
        (200, Some(version)) => Ok(version),
        _ => Err(ClickHouseError::BadAnswer {
            url: config.url.clone(),
            status,
            body: body.chars().take(200).collect(),
        }),
    }
}

/// A ClickHouse database name that is a plain identifier (`[A-Za-z_][A-Za-z0-9_]*`). Checked once,
/// when the config is read, so it can be put into SQL text as it is (`{db}.usage_raw`): database
/// names cannot be bound as query parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatabaseName(String);

/// A database name that is not a plain identifier.
#[derive(Debug, thiserror::Error)]
#[error("clickhouse.database must match [A-Za-z_][A-Za-z0-9_]*, got {0:?}")]
pub struct DatabaseNameError(pub String);

impl DatabaseName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DatabaseName {
    type Error = DatabaseNameError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            Ok(Self(name))
        } else {
            Err(DatabaseNameError(name))
        }
    }
}

impl std::str::FromStr for DatabaseName {
    type Err = DatabaseNameError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::try_from(name.to_owned())
    }
}

impl From<DatabaseName> for String {
    fn from(name: DatabaseName) -> Self {
        name.0
    }
}

impl std::fmt::Display for DatabaseName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// ClickHouse error codes that no retry fixes: the schema or the credentials are wrong.
/// (UNKNOWN_IDENTIFIER, NO_SUCH_COLUMN_IN_TABLE, TYPE_MISMATCH, UNKNOWN_TABLE, SYNTAX_ERROR,
/// UNKNOWN_DATABASE, UNKNOWN_USER, WRONG_PASSWORD, READONLY, AUTHENTICATION_FAILED, ACCESS_DENIED.)
const PERMANENT_CODES: &[u32] = &[47, 16, 53, 60, 62, 81, 192, 193, 164, 516, 497];

/// Sorts a `clickhouse` crate error: transport failures and server-side overload are retryable;
/// schema, syntax and authentication errors, and data the client could not encode, are not.
pub fn is_retryable(error: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error;
    match error {
        Error::Network(_) | Error::TimedOut => true,
        Error::BadResponse(text) => {
            error_code(text).is_none_or(|code| !PERMANENT_CODES.contains(&code))
        }
        _ => false,
    }
}

/// QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING: a statement under this `query_id` is running now.
const QUERY_ALREADY_RUNNING: u32 = 216;

/// Whether the server refused the statement because another one with the same `query_id` is
/// running (how imgpipe keeps two processes from running the same one-off write at once).
pub fn is_query_already_running(error: &clickhouse::error::Error) -> bool {
    matches!(error, clickhouse::error::Error::BadResponse(text)
        if error_code(text) == Some(QUERY_ALREADY_RUNNING))
}

/// The `Code: N` of a ClickHouse exception text.
fn error_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A client tuned to the server's version. The database need not exist yet (migrations create it),
/// so the client is not bound to it; queries name `database.table` explicitly.
pub async fn connect(
    config: &ClickHouseConfig,
) -> Result<(Client, ServerVersion), ClickHouseError> {
    let version = server_version(config).await?;
    let mut client = Client::default()
        .with_url(&config.url)
        .with_user(&config.user)
        .with_password(&config.password);
    if !version.is_modern() {
        client = client
            .with_validation(false)
            .with_compression(Compression::None);
    }
    tracing::info!(
        major = version.major,
        minor = version.minor,
        "Connected to ClickHouse"
    );
    Ok((client, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_database_names_pass_and_are_checked_when_read() {
        for good in ["imgpipe", "t_usage_1a2b_", "_x"] {
            assert!(good.parse::<DatabaseName>().is_ok(), "{good}");
        }
        for bad in ["", "1db", "a.b", "a-b", "x; DROP TABLE y", "db`"] {
            assert!(bad.parse::<DatabaseName>().is_err(), "{bad}");
            let read: Result<ClickHouseConfig, _> =
                serde_json::from_value(serde_json::json!({ "database": bad }));
            assert!(read.is_err(), "{bad}");
        }
    }

    #[test]
    fn schema_and_auth_errors_are_permanent_overload_is_not() {
        use clickhouse::error::Error;
        let permanent = Error::BadResponse(
            "Code: 60, e.displayText() = DB::Exception: Table x.usage_raw doesn't exist".into(),
        );
        assert!(!is_retryable(&permanent));
        let overload = Error::BadResponse("Code: 241, Memory limit exceeded".into());
        assert!(!is_query_already_running(&overload));
        assert!(is_query_already_running(&Error::BadResponse(
            "Code: 216, e.displayText() = DB::Exception: Query with id = q is already running."
                .into()
        )));
        assert!(is_retryable(&overload));
        assert!(is_retryable(&Error::TimedOut));
        assert!(!is_retryable(&Error::NotEnoughData));
    }

    #[test]
    fn parses_old_and_new_version_strings() {
        assert_eq!(
            ServerVersion::parse("18.16.1\n"),
            Some(ServerVersion {
                major: 18,
                minor: 16
            })
        );
        assert_eq!(
            ServerVersion::parse("24.8.4.13"),
            Some(ServerVersion {
                major: 24,
                minor: 8
            })
        );
        assert_eq!(
            ServerVersion::parse("Code: 516. Authentication failed"),
            None
        );
        assert!(
            !ServerVersion {
                major: 18,
                minor: 16
            }
            .is_modern()
        );
        assert!(
            ServerVersion {
                major: 25,
                minor: 1
            }
            .is_modern()
        );
    }
}
