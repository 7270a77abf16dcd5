//! ClickHouse client set-up that works with the oldest server we support (Debian's 18.16) and
//! current releases. The `clickhouse` crate's defaults (typed RowBinaryWithNamesAndTypes validation,
//! LZ4 request compression) need a modern server; against an old one both are switched off. The
//! choice is made from the server's own `version()`, not from config, so one binary runs on both.

use std::time::Duration;

use clickhouse::Client;
use clickhouse::Compression;
use serde::{Deserialize, Serialize};

/// Where ClickHouse is and how to log in.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding imgpipe's tables.
    pub database: String,
    /// User name.
    pub user: String,
    /// Password. Never logged, and left out when the config is printed.
    #[serde(skip_serializing)]
    pub password: String,
    /// Timeout of the version probe; inserts and queries have their own deadlines.
    #[serde(with = "humantime_serde")]
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
            database: "imgpipe".to_owned(),
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
