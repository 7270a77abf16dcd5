//! Usage reports for `GET /v1/usage` (its handler is in `routes.rs`): the caller's
//! own usage from ClickHouse, never another tenant's (the tenant is taken from the authenticated
//! key, not from the query). ClickHouse being down costs that route a 503; resizing keeps
//! working.

pub mod query;
pub mod timestamp;

use std::sync::Arc;

use chassis::clickhouse::ClickHouseConfig;
use futures::future::BoxFuture;
use tokio::sync::OnceCell;

use query::{UsageQuery, UsageQueryError, UsageReport, UsageRequest};

/// Answers usage queries. A trait so handler tests run without ClickHouse.
pub trait UsageApi: Send + Sync + 'static {
    /// `tenant_id`'s usage for a validated request.
    fn report<'a>(
        &'a self,
        tenant_id: &'a str,
        request: &'a UsageRequest,
    ) -> BoxFuture<'a, Result<UsageReport, UsageQueryError>>;
}

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
