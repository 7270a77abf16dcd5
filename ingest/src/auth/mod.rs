//! The authentication seam of the api. Every request's bearer key, and every signed URL's key id
//! and signature, goes through one [`Authenticator`]; the production one answers from a local,
//! continuously replicated view of `identity.changes`, so the data plane never makes a network
//! call to authenticate.
//!
//! - [`view`]: [`IdentityView`], the replica and its verified-key cache (the [`Authenticator`]).
//! - [`changes`](crate::identity_log::changes): reading `identity.changes` (shared with the identity service's rebuild).
//! - [`keys`](crate::identity_log::keys): the key format and salted hashing (shared with the identity service).
//! - [`rate_limit`]: per-tenant token buckets.
//! - [`metrics`]: every metric name of this module.

pub mod metrics;
pub mod rate_limit;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use view::IdentityView;

use crate::signing::SigningKey;

/// Who is calling, once the key checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant that pays for the request.
    pub tenant_id: Arc<str>,
    /// The id (not the secret) of the key used.
    pub key_id: Arc<str>,
}

/// Who a signed request is billed to, once its signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningPrincipal {
    /// The tenant that pays for the request.
    pub tenant_id: Arc<str>,
    /// The id of the signing key the URL names.
    pub key_id: Arc<str>,
    /// The tenant's allowed source prefixes as of this request (normalised; empty: none).
    pub allowed_sources: Arc<[String]>,
}

impl SigningPrincipal {
    /// The tenant and key, as usage records and logs name them.
    pub fn principal(&self) -> Principal {
        Principal {
            tenant_id: self.tenant_id.clone(),
            key_id: self.key_id.clone(),
        }
    }

    /// Whether the tenant may fetch `source`: it starts with one of the allowed prefixes (see
    /// [`sources::allows`](crate::identity_log::sources::allows); fetch exactly `source.as_str()`).
    pub fn allows(&self, source: &url::Url) -> bool {
        crate::identity_log::sources::allows(&self.allowed_sources, source)
    }
}

/// Why a request is refused before any work. The messages never say whether a tenant or key
/// exists: an attacker learns nothing from the difference between unknown and revoked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header. 401.
    #[error("missing bearer API key")]
    MissingCredentials,
    /// Unknown, malformed, revoked or deleted key, or a signature that does not match. 401 for
    /// a bearer key.
    #[error("invalid API key")]
    InvalidKey,
    /// The key is valid but its tenant is suspended (or, for a signed URL, signing is not
    /// configured on this api). 403.
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

    /// Whose key `api_key` claims to be — the tenant and key its key id names — without checking
    /// its secret: only for recording a refused request against the key under attack or over
    /// its limit, never for granting anything. `None` for a key id nobody owns.
    fn claimed(&self, _api_key: &str) -> Option<Principal> {
        None
    }

    /// Who a signed request with key `key_id` is billed to, or why it is refused (including rate
    /// limits). `signature_matches` is given the key's derived `key` and `salt` and says whether
    /// the request's signature is theirs; it runs before the tenant's quota is charged, so bad
    /// signatures cannot spend it. The same rules as [`Self::authenticate`]: unknown, revoked or
    /// deleted key or a signature that does not match → [`AuthError::InvalidKey`] (or
    /// [`AuthError::Unavailable`] for a key the view has not seen while it is stale); suspended
    /// tenant → [`AuthError::Forbidden`]; over quota → [`AuthError::RateLimited`]. The default
    /// refuses every signed request (an authenticator without signing keys).
    fn authenticate_signed(
        &self,
        _key_id: &str,
        _signature_matches: &dyn Fn(&SigningKey) -> bool,
    ) -> Result<SigningPrincipal, AuthError> {
        Err(AuthError::Forbidden)
    }

    /// Whose signing key `key_id` is, without checking anything: only for recording a refused
    /// signed request against the key's tenant, never for granting anything. `None` for a key
    /// id nobody owns.
    fn claimed_signing_key(&self, _key_id: &str) -> Option<Principal> {
        None
    }
}

/// Settings of the api's identity view and auth cache (the `[auth]` section).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How old the view may be (time since it last confirmed it held everything committed)
    /// before keys it has not seen are refused with 503 instead of 401, and `/readyz` fails.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub max_staleness: Duration,
    /// How often the view asks the brokers for `identity.changes` watermarks to confirm progress.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub watermark_interval: Duration,
    /// How long one watermark query may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub watermark_timeout: Duration,
    /// Longest time the broker holds an empty fetch of `identity.changes` (`fetch.wait.max.ms`).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub fetch_wait_max: Duration,
    /// Most verified keys kept in the cache.
    pub cache_capacity: u64,
    /// A cached key unused for this long is dropped (with the secret it holds).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub cache_time_to_idle: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            max_staleness: default_max_staleness(),
            watermark_interval: default_watermark_interval(),
            watermark_timeout: default_watermark_timeout(),
            fetch_wait_max: default_fetch_wait_max(),
            cache_capacity: default_cache_capacity(),
            cache_time_to_idle: default_cache_time_to_idle(),
        }
    }
}

/// Five seconds: long enough to ride out a leader election, short enough that a key created
/// elsewhere is not refused for long.
fn default_max_staleness() -> Duration {
    Duration::from_secs(5)
}

/// Four checks a second: staleness is known to within a quarter second for 3 cheap requests.
fn default_watermark_interval() -> Duration {
    Duration::from_millis(250)
}

fn default_watermark_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Short parked fetches: a new change is returned as soon as it is committed either way, this
/// only bounds the wait of a fetch that was parked before it arrived.
fn default_fetch_wait_max() -> Duration {
    Duration::from_millis(50)
}

fn default_cache_capacity() -> u64 {
    100_000
}

fn default_cache_time_to_idle() -> Duration {
    Duration::from_secs(600)
}

impl AuthConfig {
    /// Pushes one message per broken rule.
    fn check(&self, errors: &mut Vec<String>) {
        if self.max_staleness.is_zero() {
            errors.push("auth.max_staleness must be positive".into());
        }
        if self.watermark_interval.is_zero() || self.watermark_interval >= self.max_staleness {
            errors.push(format!(
                "auth.watermark_interval must be positive and below auth.max_staleness ({:?}), got {:?}",
                self.max_staleness, self.watermark_interval
            ));
        }
        if self.watermark_timeout.is_zero() {
            errors.push("auth.watermark_timeout must be positive".into());
        }
        if self.fetch_wait_max.is_zero() || self.fetch_wait_max > Duration::from_secs(5) {
            errors.push("auth.fetch_wait_max must be between 1ms and 5s".into());
        }
        if self.cache_capacity == 0 {
            errors.push("auth.cache_capacity must be positive".into());
        }
    }
}

impl chassis::Validate for AuthConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        self.check(errors);
    }
}

/// Why the identity view could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    // Retryable.
    /// Kafka did not answer, or the consumer could not be set up.
    #[error("starting the identity view: {0}")]
    Consumer(#[source] crate::identity_log::changes::ChangesError),
    // Permanent.
    /// The `[auth]` section breaks a rule; every broken rule is listed.
    #[error("invalid [auth] configuration:\n  - {}", .0.join("\n  - "))]
    InvalidConfig(Vec<String>),
    /// A metric could not be registered (a second view in the same registry).
    #[error("registering identity view metrics: {0}")]
    Metrics(#[source] prometheus::Error),
}

impl AuthSetupError {
    /// Whether starting again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Consumer(e) if e.is_retryable())
    }
}
