//! `GET /v1/usage`: the caller's own usage from ClickHouse, never another tenant's (the tenant is
//! taken from the authenticated key, not from the query). ClickHouse being down costs this route
//! a 503; resizing keeps working.

pub mod query;
pub mod timestamp;

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chassis::clickhouse::ClickHouseConfig;
use futures::future::BoxFuture;
use tokio::sync::OnceCell;

use query::{UsageParams, UsageQuery, UsageQueryError, UsageReport, UsageRequest};

use super::problem;
use super::state::{AppState, UsageApi};

/// ClickHouse-backed usage, connected on first use so the api starts without ClickHouse.
#[derive(Debug)]
pub struct ClickHouseUsage {
    config: ClickHouseConfig,
    query: OnceCell<UsageQuery>,
}

impl ClickHouseUsage {
    /// Usage from the ClickHouse at `config`.
    pub fn new(config: ClickHouseConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            query: OnceCell::new(),
        })
    }
}

impl UsageApi for ClickHouseUsage {
    fn report<'a>(
        &'a self,
        tenant_id: &'a str,
        request: &'a UsageRequest,
    ) -> BoxFuture<'a, Result<UsageReport, UsageQueryError>> {
        Box::pin(async move {
            let query = self
                .query
                .get_or_try_init(|| UsageQuery::connect(&self.config))
                .await?;
            query.buckets(tenant_id, request).await
        })
    }
}

/// The `GET /v1/usage` handler.
pub async fn usage(State(state): State<AppState>, request: Request) -> Response {
    let request_id = request
        .extensions()
        .get::<chassis::http::RequestId>()
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
        return problem::Problem::unavailable("usage_unavailable", "Usage is not available here.")
            .into_response();
    };
    match usage.report(&principal.tenant_id, &usage_request).await {
        Ok(report) => (StatusCode::OK, Json(report)).into_response(),
        Err(error) if error.is_bad_request() => {
            problem::bad_parameters(error.to_string()).into_response()
        }
        Err(error) => {
            tracing::warn!(%request_id, %error, "Usage query failed");
            problem::Problem::unavailable(
                "usage_unavailable",
                "Usage data is temporarily unavailable; retry shortly.",
            )
            .into_response()
        }
    }
}
