//! The ops endpoint every service exposes on its own port, apart from any data-plane traffic:
//! `/metrics` (Prometheus text), `/healthz` (the process is alive) and `/readyz` (every dependency
//! this service needs is usable; 503 with the reasons otherwise).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use serde::{Deserialize, Serialize};

use crate::http::HttpConfig;
use crate::{Readiness, Shutdown};

/// Where the ops endpoint listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
}

#[derive(Clone)]
struct OpsState {
    registries: Vec<Registry>,
    readiness: Readiness,
}

/// The ops router: metrics from every given registry (one per service in `imgpipe all`), with
/// the common HTTP face.
pub fn router(registries: Vec<Registry>, readiness: Readiness, http: &HttpConfig) -> Router {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(OpsState {
            registries,
            readiness,
        });
    crate::http::face(router, http, crate::http::RequestIds::Generate)
}

/// Serves the ops router on `listener` until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registries: Vec<Registry>,
    readiness: Readiness,
    http: &HttpConfig,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "Ops endpoint listening");
    crate::http::serve(
        listener,
        router(registries, readiness, http),
        http,
        shutdown,
    )
    .await
}

async fn metrics(State(state): State<OpsState>) -> Response {
    // Services hosted together may export the same family (say, `imgpipe_consumer_stalled`
    // with their own label values): merge by name, since the text format allows one block each.
    let mut merged: std::collections::BTreeMap<String, prometheus::proto::MetricFamily> =
        std::collections::BTreeMap::new();
    let process = crate::metrics::process_registry();
    for mut family in state
        .registries
        .iter()
        .chain(std::iter::once(process))
        .flat_map(Registry::gather)
    {
        match merged.get_mut(family.name()) {
            Some(existing) => existing.mut_metric().extend(family.take_metric()),
            None => {
                merged.insert(family.name().to_owned(), family);
            }
        }
    }
    match crate::metrics::readiness_family(&state.readiness) {
        Ok(family) => {
            merged.insert(family.name().to_owned(), family);
        }
        Err(error) => tracing::error!(%error, "Building the readiness metric failed"),
    }
    let families: Vec<_> = merged.into_values().collect();
    let mut body = Vec::new();
    match TextEncoder::new().encode(&families, &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "Encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let (ready, checks) = state.readiness.snapshot();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({ "ready": ready, "checks": checks })),
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn metrics_carry_each_readiness_check_as_a_gauge() {
        let readiness = Readiness::default();
        readiness.ready("kafka-producer");
        readiness.not_ready("aggregator.clickhouse", "ClickHouse unavailable");
        let app = router(vec![Registry::new()], readiness, &HttpConfig::default());
        let request = axum::http::Request::get("/metrics")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.contains("imgpipe_readiness_check_up{check=\"kafka-producer\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("imgpipe_readiness_check_up{check=\"aggregator.clickhouse\"} 0"),
            "{text}"
        );
    }
}
