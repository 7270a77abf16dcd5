//! The authentication seam of the api. Every request's bearer key goes through one
//! [`Authenticator`]; the production one answers from a local, continuously replicated view of
//! `identity.changes`, so the data plane never makes a network call to authenticate.

use std::sync::Arc;
use std::time::Duration;

/// Who is calling, once the key checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant that pays for the request.
    pub tenant_id: Arc<str>,
    /// The id (not the secret) of the key used.
    pub key_id: Arc<str>,
}

/// Why a request is refused before any work. The messages never say whether a tenant or key
/// exists: an attacker learns nothing from the difference between unknown and revoked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header. 401.
    #[error("missing bearer API key")]
    MissingCredentials,
    /// Unknown, malformed, revoked or deleted key. 401.
    #[error("invalid API key")]
    InvalidKey,
    /// The key is valid but its tenant is suspended. 403.
    #[error("tenant is not allowed to make requests")]
    Forbidden,
    /// Over the tenant's rate limit. 429 with `Retry-After`.
    #[error("rate limit exceeded")]
    RateLimited {
        /// When the next request would be admitted.
        retry_after: Duration,
    },
    /// The local identity view is older than its bound, so an unknown key cannot be told apart
    /// from a key created moments ago elsewhere: fail closed. 503.
    #[error("identity view is stale; try again shortly")]
    Unavailable,
}

/// Checks one bearer key. Synchronous and cheap: it runs on every request.
pub trait Authenticator: Send + Sync + 'static {
    /// Who `api_key` belongs to, or why the request is refused (including rate limits).
    fn authenticate(&self, api_key: &str) -> Result<Principal, AuthError>;
}

/// Settings of the api's identity view and auth cache.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {}
