//! The api's refusals, as [`chassis::http::Problem`]s (the one HTTP error type every server
//! shares): stable codes and messages safe to show.

use axum::http::StatusCode;
pub use chassis::http::Problem;

use crate::auth::AuthError;

/// 400 with a message naming the bad parameter.
pub fn bad_parameters(message: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "bad_parameters", message)
}

/// 503: the api cannot take more requests right now.
pub fn overloaded() -> Problem {
    Problem::unavailable("overloaded", "The service is at capacity; retry shortly.")
}

/// 504: no image within the request's deadline.
pub fn deadline_exceeded() -> Problem {
    Problem::new(
        StatusCode::GATEWAY_TIMEOUT,
        "deadline_exceeded",
        "The image was not ready within the deadline.",
    )
}

/// The problem for an authentication failure; the text never says whether a tenant or key
/// exists.
pub fn from_auth(error: &AuthError) -> Problem {
    match error {
        AuthError::MissingCredentials => Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Send your API key as `Authorization: Bearer <key>`.",
        ),
        AuthError::InvalidKey => Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "The API key is not valid.",
        ),
        AuthError::Forbidden => Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This API key may not make requests.",
        ),
        AuthError::RateLimited { retry_after } => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many requests; slow down.",
        )
        .retry_after(*retry_after),
        AuthError::Unavailable => Problem::unavailable(
            "auth_unavailable",
            "Authentication is temporarily unavailable.",
        ),
    }
}
