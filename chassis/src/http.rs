//! The one HTTP face of every imgpipe server (api, identity, ops): the server loop, with a header
//! read timeout that also closes idle keep-alive connections, a body read timeout and a connection
//! limit; and the one error type, [`Problem`], rendered as `application/problem+json`
//! `{type, title, status, code, message, request_id}` for handlers' refusals and for the errors
//! the framework makes itself (404, 405, 408, 413, 414, 431, the load-shed 503) alike.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use crate::Shutdown;

/// Header carrying the request id on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Limits every HTTP server of the process applies (the `[http]` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Longest wait for a request's header once a connection is open or idle between two
    /// requests; past it the connection is closed. It is also the keep-alive idle timeout.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config::HumanDuration")]
    pub header_read_timeout: Duration,
    /// Longest gap while reading a request body; past it the request is answered 408
    /// `request_timeout`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config::HumanDuration")]
    pub body_read_timeout: Duration,
    /// Open connections per server at most; past it new connections wait in the listen backlog.
    pub max_connections: usize,
    /// Longest request target (path and query) in bytes; longer gets 414 `uri_too_long`.
    pub max_uri_bytes: usize,
    /// Largest request header section in bytes (names and values); larger gets 431
    /// `headers_too_large`.
    pub max_header_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
        }
    }
}

impl HttpConfig {
    /// Rules that span fields; one message per broken rule.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.header_read_timeout < Duration::from_millis(100) {
            errors.push("http.header_read_timeout must be at least 100ms".into());
        }
        if self.body_read_timeout < Duration::from_millis(100) {
            errors.push("http.body_read_timeout must be at least 100ms".into());
        }
        if self.max_connections == 0 {
            errors.push("http.max_connections must be positive".into());
        }
        if self.max_uri_bytes < 256 {
            errors.push("http.max_uri_bytes must be at least 256".into());
        }
        if self.max_header_bytes < 1024 {
            errors.push("http.max_header_bytes must be at least 1024".into());
        }
    }

    /// hyper's read buffer: large enough that our own limits answer first (with a problem body)
    /// and hyper's bare 431 only meets requests far past them.
    fn read_buffer_bytes(&self) -> usize {
        (2 * (self.max_uri_bytes + self.max_header_bytes)).max(64 * 1024)
    }
}

/// A refused or failed request, as the client sees it. Returned from a handler it renders as a
/// status with the problem attached; [`face`] writes the body, adding the request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `payload_too_large`.
    pub code: Cow<'static, str>,
    /// Human-readable and safe to show: 5xx messages never carry internal detail (that goes to
    /// the log line written where the error is made).
    pub message: String,
    /// Seconds to wait before retrying (429 and 503).
    pub retry_after: Option<Duration>,
}

impl Problem {
    /// A problem with the given status, code and message.
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// 503: a dependency is gone or the server is at capacity; retry after a second.
    pub fn unavailable(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
            .retry_after(Duration::from_secs(1))
    }

    /// 408: the client did not send its request in time.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "The request was not received in time.",
        )
    }

    /// The same problem with a `Retry-After`.
    #[must_use]
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The problem+json response for the request `request_id`.
    pub fn to_response(&self, request_id: &str) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "message": self.message,
            "request_id": request_id,
        });
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: `Retry-After: 0` would invite an immediate retry.
            let seconds = after.as_millis().div_ceil(1000).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds as u64));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }

    /// The problem for a status the framework answered on its own (no handler made a problem).
    fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "No such route."),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "This route does not accept that method.",
            ),
            StatusCode::REQUEST_TIMEOUT => {
                ("request_timeout", "The request was not received in time.")
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                ("payload_too_large", "The request body is too large.")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "The body's media type is not accepted here.",
            ),
            StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "Retry shortly."),
            s if s.is_server_error() => ("internal_error", "The request failed."),
            _ => ("bad_request", "The request is malformed."),
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        // The request id is known only to `face`; it renders the body from this extension.
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// The id of the request being served, for handlers (`Extension<RequestId>`) and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    /// A new time-ordered id (UUID v7).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string().into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a server adopts the caller's `x-request-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestIds {
    /// Always a new id. For the data plane, where the id keys Kafka records and usage rows and a
    /// caller must not be able to choose it.
    Generate,
    /// The caller's id when it is short printable ASCII, else a new one (the admin plane, where
    /// operators correlate their own tooling's ids).
    AcceptFromCaller,
}

/// Wraps `router` in the common face: request ids, the URI and header size limits, the body read
/// timeout, and problem+json for every error response (the outermost layer, so even a load-shed
/// 503 or a timeout carries the request id).
pub fn face(router: Router, config: &HttpConfig, ids: RequestIds) -> Router {
    let limits = Arc::new(config.clone());
    router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| {
            let limits = limits.clone();
            async move { render(request, next, &limits, ids).await }
        },
    ))
}

async fn render(
    mut request: Request,
    next: Next,
    limits: &HttpConfig,
    ids: RequestIds,
) -> Response {
    let caller_id = match ids {
        RequestIds::Generate => None,
        RequestIds::AcceptFromCaller => request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(|v| RequestId(v.into())),
    };
    let id = caller_id.unwrap_or_else(RequestId::generate);
    request.extensions_mut().insert(id.clone());
    // A body that stops arriving fails the read with tower-http's timeout error; whatever the
    // handler then answers, the client hears 408.
    let body_timed_out = Arc::new(AtomicBool::new(false));
    let request = {
        let flag = body_timed_out.clone();
        request.map(|body| {
            Body::new(
                tower_http::timeout::TimeoutBody::new(limits.body_read_timeout, body).map_err(
                    move |error| {
                        if is_body_timeout(error.as_ref()) {
                            flag.store(true, Ordering::Relaxed);
                        }
                        error
                    },
                ),
            )
        })
    };

    let uri_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let mut response = if uri_bytes > limits.max_uri_bytes {
        Problem::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "The request target is longer than {} bytes.",
                limits.max_uri_bytes
            ),
        )
        .into_response()
    } else if header_bytes > limits.max_header_bytes {
        Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "The request headers are larger than {} bytes.",
                limits.max_header_bytes
            ),
        )
        .into_response()
    } else {
        next.run(request).await
    };

    if body_timed_out.load(Ordering::Relaxed) && !response.status().is_success() {
        response = Problem::request_timeout().into_response();
    }
    let status = response.status();
    let problem = response.extensions_mut().remove::<Problem>().or_else(|| {
        // An error the framework made itself (404, 405, a body limit, a timeout, an extractor's
        // rejection) has no body or a plain-text one: it gets the problem body too.
        let plain = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
        (plain && (status.is_client_error() || status.is_server_error()))
            .then(|| Problem::for_status(status))
    });
    if let Some(problem) = problem {
        let kept: Vec<_> = response
            .headers()
            .iter()
            .filter(|(name, _)| *name != header::CONTENT_TYPE && *name != header::CONTENT_LENGTH)
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let extensions = std::mem::take(response.extensions_mut());
        response = problem.to_response(id.as_str());
        for (name, value) in kept {
            response.headers_mut().entry(name).or_insert(value);
        }
        response.extensions_mut().extend(extensions);
        // Handlers and metrics downstream of the render see which problem it was.
        response.extensions_mut().insert(problem);
    }
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// The token of an `Authorization: Bearer <token>` header; the scheme matches in any case
/// (RFC 7235). `None` when the header is missing, not text, of another scheme, or empty.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether a body read failed because the client was too slow (the body read timeout).
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// A server could not bind its address, or its listener failed.
#[derive(Debug, thiserror::Error)]
#[error("serving HTTP on {address}: {source}")]
pub struct ServeError {
    /// The address.
    pub address: std::net::SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

/// Binds `listen` and serves `router` there until `shutdown` (see [`serve`]); `name` is for the
/// log line that says where it listens.
pub async fn bind_and_serve(
    name: &str,
    listen: std::net::SocketAddr,
    router: Router,
    config: &HttpConfig,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError {
            address: listen,
            source,
        })?;
    let address = listener.local_addr().unwrap_or(listen);
    tracing::info!(%address, "{name} listening");
    serve(listener, router, config, shutdown)
        .await
        .map_err(|source| ServeError { address, source })
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish (bounded by
/// the drain deadline). HTTP/1.1 with the limits of `config`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &HttpConfig,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    // HTTP/1.1 only: an auto-detecting server reads the protocol preface before any timeout
    // applies, so a silent connection would be held forever.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.read_buffer_bytes());
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            () = shutdown.wait() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "Accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(
            // The peer's address as `ConnectInfo`, as axum's own `serve` provides it: the
            // identity service's audit trail records where each admin call came from.
            router
                .clone()
                .map_request(move |request: Request<hyper::body::Incoming>| {
                    let mut request = request.map(Body::new);
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    request
                }),
        );
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A peer that resets or times out is routine; nothing to report.
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(crate::shutdown::DRAIN_DEADLINE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after the drain deadline");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
