//! What every api handler shares ([`AppState`]), and the seams tests swap behind traits: who is
//! calling ([`Authenticator`]), where requests go ([`RequestPublisher`]), where usage reports come
//! from ([`UsageApi`]).

use std::sync::Arc;

use axum::http::HeaderMap;

use super::config::ApiConfig;
use super::metrics::ApiMetrics;
use super::problem::{self, Problem};
use super::publisher::RequestPublisher;
use super::replies::ReplyRouter;
pub use super::usage::UsageApi;
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
    /// Asks origins whether a source changed (a client revalidating a signed GET's answer),
    /// guarded as the resizers' fetches are.
    pub sources: chassis::source::Fetcher,
    /// The signing secret (`None` when signing is not configured: no signed GET then passes),
    /// from which each signing key's `ETag` key is derived.
    pub signing: Option<Arc<crate::signing::SigningSecret>>,
}

impl AppState {
    /// Authenticates a request from its `Authorization: Bearer` header (scheme in any case).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Problem> {
        let result = match chassis::http::bearer_token(headers) {
            Some(key) => self.auth.authenticate(key),
            None => Err(crate::auth::AuthError::MissingCredentials),
        };
        result.map_err(|error| problem::from_auth(&error))
    }
}
