//! Tracing set-up: JSON lines in production (one object per event, for log shippers), a readable
//! format in development. The filter comes from `RUST_LOG`, else from the config.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::util::SubscriberInitExt as _;

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
    let _already_set = match config.log_format {
        LogFormat::Json => json_lines(filter, std::io::stderr).try_init().is_ok(),
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .compact()
            .try_init()
            .is_ok(),
    };
}

/// The JSON-lines subscriber: one object per event, its fields at the top level, and the fields
/// of the span it was written in (a request's `trace_id` and `request_id`, see
/// [`crate::trace::TraceContext::span`]) under `span`.
fn json_lines<W>(filter: EnvFilter, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .finish()
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_json_line_of_a_request_carries_its_trace_id() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = json_lines(EnvFilter::new("info"), move || writer.clone());
        let trace = crate::trace::TraceContext::start();
        tracing::subscriber::with_default(subscriber, || {
            let span = trace.span("r-1");
            let _inside = span.enter();
            tracing::warn!(stage = "decode", "Something of note");
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(
            line["span"]["trace_id"],
            trace.trace_id().as_str(),
            "{line}"
        );
        assert_eq!(line["span"]["request_id"], "r-1", "{line}");
        assert_eq!(line["stage"], "decode", "{line}");
    }
}
