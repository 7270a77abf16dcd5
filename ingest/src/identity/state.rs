//! What every admin handler shares ([`AppState`]): the store, the admin token's digest, the
//! limits, the signing secret and the audit writer. Its own module, as the api's, so the routes and the audit
//! middleware both depend on it and not on each other.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::audit::AuditWriter;
use super::config::IdentityConfig;
use super::metrics::IdentityMetrics;
use super::store::IdentityStore;
use crate::signing::SigningSecret;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub(super) store: Arc<IdentityStore>,
    /// SHA-256 of the admin token: comparing digests keeps the comparison constant-time even
    /// in the token's length.
    admin_token_digest: [u8; 32],
    pub(super) default_rate_limit_per_second: i32,
    pub(super) default_burst: i32,
    pub(super) request_timeout: Duration,
    pub(super) max_body_bytes: usize,
    pub(super) concurrency_limit: usize,
    pub(super) metrics: IdentityMetrics,
    /// Where every admin call is recorded; `None` in handler tests.
    audit: Option<Arc<AuditWriter>>,
    /// What signing keys' values are derived from; `None`: signing keys cannot be issued.
    pub(super) signing: Option<SigningSecret>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// State over `store`, with the admin token and limits from `config`.
    pub fn new(
        store: Arc<IdentityStore>,
        config: &IdentityConfig,
        metrics: IdentityMetrics,
    ) -> Self {
        Self {
            store,
            admin_token_digest: Sha256::digest(config.admin_token.as_bytes()).into(),
            default_rate_limit_per_second: config.default_rate_limit_per_second,
            default_burst: config.default_burst,
            request_timeout: config.request_timeout,
            max_body_bytes: config.max_body_bytes,
            concurrency_limit: config.concurrency_limit,
            metrics,
            audit: None,
            signing: None,
        }
    }

    /// The same state, issuing signing keys derived from `secret` (`None`: refused with 503
    /// `signing_disabled`).
    #[must_use]
    pub fn with_signing(mut self, secret: Option<SigningSecret>) -> Self {
        self.signing = secret;
        self
    }

    /// The same state, recording every admin call with `writer`.
    #[must_use]
    pub fn with_audit(mut self, writer: AuditWriter) -> Self {
        self.audit = Some(Arc::new(writer));
        self
    }

    pub(crate) fn audit(&self) -> Option<&Arc<AuditWriter>> {
        self.audit.as_ref()
    }

    pub(crate) fn metrics(&self) -> &IdentityMetrics {
        &self.metrics
    }

    /// Whether `token` is the admin token (compared as SHA-256 digests, in constant time).
    pub(crate) fn is_admin_token(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        bool::from(digest.ct_eq(&self.admin_token_digest))
    }

    /// The store behind the routes.
    pub fn store(&self) -> &Arc<IdentityStore> {
        &self.store
    }
}
