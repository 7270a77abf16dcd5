//! The api's one HTTP error type: `application/problem+json` with a stable machine-readable
//! `code`, a human `message` and the `request_id`. 5xx messages never carry internal detail;
//! that goes to the log line written where the error is created.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::AuthError;

/// A refused or failed request, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `payload_too_large`.
    pub code: String,
    /// Human-readable and safe to show.
    pub message: String,
    /// The request it answers.
    pub request_id: String,
    /// Seconds to wait before retrying (429 and some 503s).
    pub retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
}

impl Problem {
    /// A problem with the given status, code and message.
    pub fn new(
        status: StatusCode,
        code: &str,
        message: impl Into<String>,
        request_id: &str,
    ) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
            request_id: request_id.to_owned(),
            retry_after: None,
        }
    }

    /// 400 with a message naming the bad parameter.
    pub fn bad_parameters(message: impl Into<String>, request_id: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_parameters",
            message,
            request_id,
        )
    }

    /// 503: a dependency is gone or the api is at capacity.
    pub fn unavailable(code: &str, message: &str, request_id: &str) -> Self {
        let mut problem = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message, request_id);
        problem.retry_after = Some(Duration::from_secs(1));
        problem
    }

    /// The problem for an authentication failure; the text never says whether a tenant or key
    /// exists.
    pub fn from_auth(error: &AuthError, request_id: &str) -> Self {
        match error {
            AuthError::MissingCredentials => Self::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Send your API key as `Authorization: Bearer <key>`.",
                request_id,
            ),
            AuthError::InvalidKey => Self::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "The API key is not valid.",
                request_id,
            ),
            AuthError::Forbidden => Self::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "This API key may not make requests.",
                request_id,
            ),
            AuthError::RateLimited { retry_after } => {
                let mut problem = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "Too many requests; slow down.",
                    request_id,
                );
                problem.retry_after = Some(*retry_after);
                problem
            }
            AuthError::Unavailable => Self::unavailable(
                "auth_unavailable",
                "Authentication is temporarily unavailable.",
                request_id,
            ),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = Body {
            kind: "about:blank",
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            code: &self.code,
            message: &self.message,
            request_id: &self.request_id,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Ok(id) = HeaderValue::from_str(&self.request_id) {
            headers.insert("x-request-id", id);
        }
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: `Retry-After: 0` would invite an immediate retry.
            let seconds = after.as_millis().div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                headers.insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
