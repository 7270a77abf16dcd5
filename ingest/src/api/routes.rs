//! The api's HTTP routes. `POST /v1/resize` authenticates, validates and reads the body
//! (`read_request`); signed GETs (`GET /v1/img/…`, [`signed_get`](super::signed_get)) read their
//! request from the URL; both hand it to [`Call::serve`](super::call::Call), which produces it
//! and answers with the reply. Everything refused on the way gets a problem+json answer and (when
//! the tenant is known) a usage record. `GET /v1/usage` answers the caller's own usage.

use axum::error_handling::HandleErrorLayer;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chassis::http::RequestId;
use schemas::events::ImageFormat;
use tower::ServiceBuilder;

use super::call::{Call, Input, Next, ReadRequest, Received, UsageDraft};
use super::params;
use super::problem::{self, Problem};
pub use super::state::AppState;
use super::usage::query::{UsageParams, UsageRequest};

/// The api router, with the common HTTP face (request ids, problem+json, body read timeout).
/// Resize requests beyond `max_concurrent_requests` are shed with a fast 503.
pub fn app(state: AppState, http: &chassis::http::HttpConfig) -> Router {
    let shed = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            problem::overloaded()
        }))
        .load_shed()
        .concurrency_limit(state.config.max_concurrent_requests);
    let router = Router::new()
        .route("/v1/resize", post(resize).layer(shed.clone()))
        .route(
            "/v1/img/{*signed}",
            get(super::signed_get::image).layer(shed),
        )
        .route("/v1/usage", get(get_usage))
        .route("/openapi.json", get(super::openapi::document))
        .with_state(state);
    chassis::http::face(router, http, chassis::http::RequestIds::Generate)
}

/// Route template label for metrics.
const RESIZE_ROUTE: &str = "/v1/resize";

async fn resize(State(state): State<AppState>, request: Request) -> Response {
    let call = Call::start(&request);
    let (request_id, received) = (call.request_id().to_owned(), call.received());
    let read = async {
        read_request(&state, request, &request_id, received)
            .await
            .map(Next::from)
    };
    call.serve(&state, RESIZE_ROUTE, read).await
}

/// `GET /v1/usage`: the caller's own usage ([`UsageApi`](super::usage::UsageApi)); the tenant
/// comes from the authenticated key, never from the query.
async fn get_usage(State(state): State<AppState>, request: Request) -> Response {
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default();
    let principal = match state.authenticate(request.headers()) {
        Ok(principal) => principal,
        Err(problem) => return problem.into_response(),
    };
    let params = match Query::<UsageParams>::try_from_uri(request.uri()) {
        Ok(Query(params)) => params,
        Err(rejection) => {
            let message = format!(
                "Bad query: {}. Use from, to, granularity, group_by.",
                rejection.body_text()
            );
            return problem::bad_parameters(message).into_response();
        }
    };
    let usage_request = match UsageRequest::from_params(&params) {
        Ok(r) => r,
        Err(error) => {
            return problem::bad_parameters(error.to_string()).into_response();
        }
    };
    let Some(usage) = &state.usage else {
        return Problem::unavailable("usage_unavailable", "Usage is not available here.")
            .into_response();
    };
    match usage.report(&principal.tenant_id, &usage_request).await {
        Ok(report) => (StatusCode::OK, Json(report)).into_response(),
        Err(error) if error.is_bad_request() => {
            problem::bad_parameters(error.to_string()).into_response()
        }
        Err(error) => {
            tracing::warn!(%request_id, %error, "Usage query failed");
            Problem::unavailable(
                "usage_unavailable",
                "Usage data is temporarily unavailable; retry shortly.",
            )
            .into_response()
        }
    }
}

/// Authenticates the caller, parses the parameters and reads the body within the request's
/// deadline. A refusal after authentication also writes the tenant's usage record.
async fn read_request(
    state: &AppState,
    request: Request,
    request_id: &str,
    received: Received,
) -> Result<ReadRequest, Problem> {
    let (parts, body) = request.into_parts();
    let principal = match state.authenticate(&parts.headers) {
        Ok(principal) => principal,
        Err(problem) => {
            refused_at_authentication(state, &parts.headers, &problem, request_id, received).await;
            return Err(problem);
        }
    };
    // From here on the tenant is known: every answer is also a usage record.
    let usage = UsageDraft {
        request_id: request_id.to_owned(),
        tenant_id: principal.tenant_id.to_string(),
        key_id: principal.key_id.to_string(),
        received,
        source_host: None,
    };
    let refused = |problem: Problem, bytes_in: usize, format: Option<ImageFormat>| {
        let record = usage.answered(&problem, bytes_in, format);
        async move {
            state.publisher.record_usage(&record).await;
            problem
        }
    };

    let params = match params::parse(parts.uri.query()) {
        Ok(params) => params,
        Err(message) => return Err(refused(problem::bad_parameters(message), 0, None).await),
    };
    let limit = state.config.max_body_bytes;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("The image is larger than the limit of {limit} bytes."),
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
    // The body must arrive within the request's deadline: a client slower than that gets 408 and
    // nothing is produced (a resizer must never work for a client that has already given up).
    let body_deadline = state
        .config
        .request_timeout
        .saturating_sub(received.at.elapsed());
    let image = match tokio::time::timeout(body_deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(image)) => image,
        Ok(Err(error)) => {
            let problem = if std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>())
            {
                too_large()
            } else if chassis::http::is_body_timeout(&error) {
                Problem::request_timeout()
            } else {
                problem::bad_parameters("The request body could not be read completely.")
            };
            return Err(refused(problem, limit, None).await);
        }
        Err(_) => return Err(refused(Problem::request_timeout(), 0, None).await),
    };
    if image.is_empty() {
        let problem = problem::bad_parameters("The request body must be the image.");
        return Err(refused(problem, 0, None).await);
    }
    let Some(input_format) = ImageFormat::sniff(&image) else {
        let message = match ImageFormat::sniff_unsupported(&image) {
            Some(seen) => {
                format!(
                    "The body is a {seen} image; only JPEG, PNG, WebP, GIF, AVIF and HEIC are read."
                )
            }
            None => "The body is not a JPEG, PNG, WebP, GIF, AVIF or HEIC image.".to_owned(),
        };
        let problem = Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        );
        return Err(refused(problem, image.len(), None).await);
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(ReadRequest {
        usage,
        params,
        input: Input::Inline {
            image,
            format: input_format,
            content_type,
        },
        web: None,
    })
}

/// A request refused at authentication (bad secret, suspended tenant, over the rate limit) is
/// recorded against the key it named, when that key exists: a usage record with the refusal's
/// code, never billed as work, so abuse of a key and a leaked key show up per key and tenant.
/// Keys nobody owns are only counted (`imgpipe_auth_decisions_total`): there is no tenant to
/// record them for.
async fn refused_at_authentication(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    problem: &Problem,
    request_id: &str,
    received: Received,
) {
    if problem.status == StatusCode::SERVICE_UNAVAILABLE {
        return;
    }
    let Some(claimed) =
        chassis::http::bearer_token(headers).and_then(|key| state.auth.claimed(key))
    else {
        return;
    };
    let usage = UsageDraft {
        request_id: request_id.to_owned(),
        tenant_id: claimed.tenant_id.to_string(),
        key_id: claimed.key_id.to_string(),
        received,
        source_host: None,
    };
    state
        .publisher
        .record_usage(&usage.answered(problem, 0, None))
        .await;
}
