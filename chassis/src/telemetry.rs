//! Tracing set-up: JSON lines in production (one object per event, for log shippers), a readable
//! format in development. The filter comes from `RUST_LOG`, else from the config.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable, for a terminal.
    #[default]
    Pretty,
}

/// Telemetry settings shared by every service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Log line format: `json` (production) or `pretty` (development).
    pub log_format: LogFormat,
    /// Filter directives used when `RUST_LOG` is unset, e.g. `info,rdkafka=warn`.
    pub log_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: default_log_filter(),
        }
    }
}

fn default_log_filter() -> String {
    "info,librdkafka=warn,rdkafka=warn".to_owned()
}

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops), so tests
/// that start several services in one process can call it freely.
pub fn init(config: &TelemetryConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _already_set = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// Tracing for tests: written through libtest's capture, so a passing test prints nothing and a
/// failing one shows the services' log lines next to its assertion.
pub fn init_for_tests() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_log_filter()));
    let _already_set = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .compact()
        .try_init();
}
