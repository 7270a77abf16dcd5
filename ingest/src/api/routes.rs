//! The api's HTTP routes. `POST /v1/resize` authenticates, validates, produces the request and
//! answers with the reply from the correlation topic; everything refused on the way gets a
//! problem+json answer and (when the tenant is known) a usage record.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use schemas::events::{ImageFormat, ResizeRequested, ResizeResult, UsageRecorded, UsageSource};
use tower::ServiceBuilder;

use super::config::ApiConfig;
use super::metrics::ApiMetrics;
use super::params;
use super::problem::Problem;
use super::publisher::{PublishError, RequestPublisher};
use super::replies::{ReplyRouter, ReserveError};
use super::usage::UsageApi;
use crate::auth::{Authenticator, Principal};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Who is calling.
    pub auth: Arc<dyn Authenticator>,
    /// Where requests and api usage records go.
    pub publisher: Arc<dyn RequestPublisher>,
    /// Where replies come from.
    pub replies: Arc<ReplyRouter>,
    /// Tenant usage queries (absent when ClickHouse is not configured for this api).
    pub usage: Option<Arc<dyn UsageApi>>,
    /// Metrics.
    pub metrics: ApiMetrics,
    /// Limits and timeouts.
    pub config: Arc<ApiConfig>,
}

/// The api router. Resize requests beyond `max_concurrent_requests` are shed with a fast 503.
pub fn app(state: AppState) -> Router {
    let shed = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            Problem::unavailable(
                "overloaded",
                "The service is at capacity; retry shortly.",
                "",
            )
        }))
        .load_shed()
        .concurrency_limit(state.config.max_concurrent_requests);
    Router::new()
        .route("/v1/resize", post(resize).layer(shed))
        .route("/v1/usage", get(super::usage::usage))
        .route("/openapi.json", get(super::openapi::document))
        .with_state(state)
}

/// Route template label for metrics.
const RESIZE_ROUTE: &str = "/v1/resize";

async fn resize(State(state): State<AppState>, request: Request) -> Response {
    let received = Instant::now();
    let request_id = uuid::Uuid::now_v7().to_string();
    let (response, outcome) = match handle_resize(&state, request, &request_id, received).await {
        Ok(response) => (response, "ok".to_owned()),
        Err(problem) => {
            let code = problem.code.clone();
            (problem.into_response(), code)
        }
    };
    state
        .metrics
        .request_seconds
        .with_label_values(&[RESIZE_ROUTE, outcome.as_str()])
        .observe(received.elapsed().as_secs_f64());
    response
}

/// Authenticates a request from its `Authorization` header.
pub fn authenticate(
    auth: &dyn Authenticator,
    headers: &HeaderMap,
    request_id: &str,
) -> Result<Principal, Problem> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let result = if key.is_empty() {
        Err(crate::auth::AuthError::MissingCredentials)
    } else {
        auth.authenticate(key)
    };
    result.map_err(|error| Problem::from_auth(&error, request_id))
}

async fn handle_resize(
    state: &AppState,
    request: Request,
    request_id: &str,
    received: Instant,
) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let principal = authenticate(state.auth.as_ref(), &parts.headers, request_id)?;
    // From here on the tenant is known: every refusal is also a usage record.
    let principal = &principal;
    let refused = |problem: Problem, bytes_in: usize, format: Option<ImageFormat>| async move {
        let usage = refusal_usage(principal, &problem, bytes_in, format, received);
        state.publisher.record_usage(&usage).await;
        problem
    };

    let params = match params::parse(parts.uri.query()) {
        Ok(params) => params,
        Err(message) => {
            return Err(refused(Problem::bad_parameters(message, request_id), 0, None).await);
        }
    };
    let limit = state.config.max_body_bytes;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("The image is larger than the limit of {limit} bytes."),
            request_id,
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        // Refused before reading a byte of the body.
        return Err(refused(too_large(), declared.unwrap_or_default(), None).await);
    }
    let image = match axum::body::to_bytes(body, limit).await {
        Ok(image) => image,
        Err(error) => {
            let is_limit = std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            let problem = if is_limit {
                too_large()
            } else {
                Problem::bad_parameters(
                    "The request body could not be read completely.",
                    request_id,
                )
            };
            return Err(refused(problem, limit, None).await);
        }
    };
    if image.is_empty() {
        let problem = Problem::bad_parameters("The request body must be the image.", request_id);
        return Err(refused(problem, 0, None).await);
    }
    let Some(input_format) = ImageFormat::sniff(&image) else {
        let message = match ImageFormat::sniff_unsupported(&image) {
            Some(seen) => {
                format!("The body is a {seen} image; only JPEG, PNG, WebP and GIF are read.")
            }
            None => "The body is not a JPEG, PNG, WebP or GIF image.".to_owned(),
        };
        let problem = Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
            request_id,
        );
        return Err(refused(problem, image.len(), None).await);
    };

    let mut slot = state
        .replies
        .reserve(request_id)
        .map_err(|error| match error {
            ReserveError::NoPartition => Problem::unavailable(
                "not_ready",
                "The service is starting; retry shortly.",
                request_id,
            ),
            ReserveError::Full => Problem::unavailable(
                "overloaded",
                "The service is at capacity; retry shortly.",
                request_id,
            ),
        })?;
    let _in_flight = InFlight::enter(&state.metrics);

    let now = now_ms();
    let timeout = state.config.request_timeout;
    let event = ResizeRequested {
        request_id: request_id.to_owned(),
        tenant_id: principal.tenant_id.to_string(),
        key_id: principal.key_id.to_string(),
        received_at_ms: now,
        deadline_at_ms: now + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
        params,
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        image: image.to_vec(),
        reply_topic: state.replies.topic().to_owned(),
        reply_partition: slot.partition,
    };
    let traceparent = traceparent(&parts.headers);
    let produce_started = Instant::now();
    match tokio::time::timeout(timeout, state.publisher.publish(&event, &traceparent)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%request_id, %error, "Producing a resize request failed");
            let problem = match error {
                PublishError::Overloaded => Problem::unavailable(
                    "overloaded",
                    "The service is at capacity; retry shortly.",
                    request_id,
                ),
                PublishError::Unavailable(_) | PublishError::Encode(_) => Problem::unavailable(
                    "kafka_unavailable",
                    "The service cannot accept requests right now; retry shortly.",
                    request_id,
                ),
            };
            return Err(refused(problem, image.len(), Some(input_format)).await);
        }
        Err(_) => return Err(deadline_problem(request_id)),
    }
    let produce = produce_started.elapsed();
    drop(event);

    let remaining = timeout.saturating_sub(received.elapsed());
    let result = match tokio::time::timeout(remaining, slot.wait()).await {
        Ok(Some(result)) => result,
        // Nobody answered in time; the resizer records usage for it if it ever runs.
        Ok(None) | Err(_) => return Err(deadline_problem(request_id)),
    };
    Ok(reply_response(state, result, request_id, received, produce))
}

fn deadline_problem(request_id: &str) -> Problem {
    Problem::new(
        StatusCode::GATEWAY_TIMEOUT,
        "deadline_exceeded",
        "The image was not ready within the deadline.",
        request_id,
    )
}

/// The client's answer from a resizer's reply.
fn reply_response(
    state: &AppState,
    result: ResizeResult,
    request_id: &str,
    received: Instant,
    produce: Duration,
) -> Response {
    let stages = result.timings.stages();
    for (stage, us) in stages {
        state
            .metrics
            .stage_seconds
            .with_label_values(&[stage])
            .observe(us as f64 / 1e6);
    }
    state
        .metrics
        .stage_seconds
        .with_label_values(&["produce"])
        .observe(produce.as_secs_f64());
    let Some(image) = result.image else {
        let error = result
            .error
            .unwrap_or_else(|| schemas::events::ResizeError {
                status: 500,
                code: "internal_error".into(),
                message: "The image could not be processed.".into(),
            });
        let status = u16::try_from(error.status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Problem::new(status, &error.code, error.message, request_id).into_response();
    };
    let mut timing = String::new();
    for (stage, us) in stages {
        let _ = write!(timing, "{stage};dur={:.3}, ", us as f64 / 1000.0);
    }
    let _ = write!(
        timing,
        "total;dur={:.3}",
        received.elapsed().as_secs_f64() * 1000.0
    );
    let mut response = Response::new(Body::from(image.bytes));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(image.format.mime()),
    );
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", id);
    }
    if let Ok(value) = HeaderValue::from_str(&timing) {
        headers.insert("server-timing", value);
    }
    response
}

/// The usage record of a request the api refused after authenticating it.
fn refusal_usage(
    principal: &Principal,
    problem: &Problem,
    bytes_in: usize,
    input_format: Option<ImageFormat>,
    received: Instant,
) -> UsageRecorded {
    UsageRecorded {
        request_id: problem.request_id.clone(),
        tenant_id: principal.tenant_id.to_string(),
        key_id: principal.key_id.to_string(),
        event_time_ms: now_ms(),
        outcome: problem.code.clone(),
        status: i32::from(problem.status.as_u16()),
        bytes_in: i64::try_from(bytes_in).unwrap_or(i64::MAX),
        bytes_out: 0,
        pixels_in: 0,
        pixels_out: 0,
        cpu_time_us: 0,
        input_format: input_format.map(|f| f.name().to_owned()),
        output_format: None,
        latency_us: i64::try_from(received.elapsed().as_micros()).unwrap_or(i64::MAX),
        source: UsageSource::Api,
    }
}

/// The W3C trace context to send on: the client's trace id (a new span), or a new trace.
fn traceparent(headers: &HeaderMap) -> String {
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let incoming = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let parts: Vec<&str> = v.split('-').collect();
            match parts.as_slice() {
                ["00", trace, _, flags]
                    if trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    Some(format!("00-{trace}-{span}-{flags}"))
                }
                _ => None,
            }
        });
    incoming.unwrap_or_else(|| format!("00-{}-{span}-01", uuid::Uuid::new_v4().simple()))
}

/// Counts a request as in flight for as long as it lives.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(metrics: &ApiMetrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics.in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
