//! Tracing set-up: JSON lines in production (one object per event, for log shippers), a readable
//! format in development. The filter comes from `RUST_LOG`, else from the config. With
//! `telemetry.otlp_endpoint` set, spans are also exported over OTLP/HTTP (off by default), with
//! the trace ids the requests carry (see [`crate::trace`]).

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// How log lines are written.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable, for a terminal.
    #[default]
    Pretty,
}

/// Telemetry settings shared by every service.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Log line format: `json` (production) or `pretty` (development).
    pub log_format: LogFormat,
    /// Filter directives used when `RUST_LOG` is unset, e.g. `info,rdkafka=warn`.
    pub log_filter: String,
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`. Empty (the default):
    /// no export.
    pub otlp_endpoint: String,
    /// `service.name` of exported spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: default_log_filter(),
            otlp_endpoint: String::new(),
            service_name: "imgpipe".to_owned(),
        }
    }
}

impl TelemetryConfig {
    /// Rules that span fields; one message per broken rule.
    pub fn validate(&self, errors: &mut Vec<String>) {
        let endpoint = &self.otlp_endpoint;
        let url = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !(endpoint.is_empty() || url) {
            errors.push(format!(
                "telemetry.otlp_endpoint must be an http(s) URL or empty, got {endpoint:?}"
            ));
        }
    }
}

fn default_log_filter() -> String {
    "info,librdkafka=warn,rdkafka=warn".to_owned()
}

/// The exporter's provider, kept to flush on exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops), so tests
/// that start several services in one process can call it freely. An OTLP exporter that cannot
/// be built is reported and left out; the service runs without it.
pub fn init(config: &TelemetryConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_filter));
    let (otlp, otlp_error) = match otlp_provider(config) {
        Ok(Some(provider)) => {
            let tracer = provider.tracer("imgpipe");
            let _ = PROVIDER.set(provider);
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                None,
            )
        }
        Ok(None) => (None, None),
        Err(error) => (None, Some(error)),
    };
    let lines = match config.log_format {
        LogFormat::Json => json_lines_layer(std::io::stderr).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .compact()
            .boxed(),
    };
    let _already_set = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(otlp)
        .try_init()
        .is_ok();
    if let Some(error) = otlp_error {
        tracing::error!(%error, endpoint = %config.otlp_endpoint, "OTLP trace export disabled");
    }
}

/// Flushes exported spans (bounded): call before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5))
    {
        tracing::warn!(%error, "Flushing OTLP spans failed");
    }
}

/// The OTLP provider for `config`, or `None` when export is off.
pub fn otlp_provider(
    config: &TelemetryConfig,
) -> Result<Option<SdkTracerProvider>, opentelemetry_otlp::ExporterBuildError> {
    if config.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&config.otlp_endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
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

/// JSON lines: one object per event, its fields at the top level, and the fields of the span it
/// was written in (a request's `trace_id` and `request_id`, see
/// [`crate::trace::TraceContext::span`]) under `span`.
fn json_lines_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
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
        let subscriber =
            tracing_subscriber::registry().with(json_lines_layer(move || writer.clone()));
        let mut trace = crate::trace::TraceContext::start();
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

    /// With an endpoint configured, a request's span is exported over OTLP/HTTP with the trace id
    /// the request carries, and the span id this hop sends on is the exported span's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_are_exported_over_otlp_with_the_requests_trace_id() {
        let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let store = received.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    store.lock().expect("lock").push(body.to_vec());
                    ""
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });

        let config = TelemetryConfig {
            otlp_endpoint: format!("http://{address}/v1/traces"),
            ..TelemetryConfig::default()
        };
        let provider = otlp_provider(&config).expect("builds").expect("configured");
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut trace = crate::trace::TraceContext::continue_or_start(Some(client));
        tracing::subscriber::with_default(subscriber, || {
            let span = trace.span("r-1");
            span.in_scope(|| tracing::info!("work"));
        });
        let sent_on = trace.header();
        tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .expect("joins")
            .expect("flushes");

        let bodies = received.lock().expect("lock").concat();
        let contains = |hex: &str| {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            bodies.windows(bytes.len()).any(|w| w == bytes.as_slice())
        };
        assert!(
            contains("4bf92f3577b34da6a3ce929d0e0e4736"),
            "the client's trace id"
        );
        assert!(contains("00f067aa0ba902b7"), "the client's span as parent");
        let hop = sent_on.split('-').nth(2).expect("span id");
        assert!(contains(hop), "the span id sent on is the exported span's");
    }
}
