//! What every running service gets from the process that hosts it: where to report readiness,
//! where to register metrics, the shutdown signal, and the supervisor of its background tasks. `imgpipe all` hosts every service in one
//! process with one context each, sharing the shutdown.

use prometheus::Registry;

use crate::http::HttpConfig;
use crate::{Readiness, Shutdown, Tasks};

/// The host's handles for one service.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// Readiness checks shown on `/readyz`.
    pub readiness: Readiness,
    /// Metrics registry served on `/metrics`.
    pub metrics: Registry,
    /// Cooperative shutdown.
    pub shutdown: Shutdown,
    /// Where background tasks are spawned, supervised: the first to fail stops the process.
    pub tasks: Tasks,
    /// Limits of the service's HTTP servers (the `[http]` section).
    pub http: HttpConfig,
}

impl ServiceContext {
    /// A fresh context (own readiness and metrics) under a shared shutdown.
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            readiness: Readiness::default(),
            metrics: Registry::new(),
            tasks: Tasks::new(shutdown.clone()),
            shutdown,
            http: HttpConfig::default(),
        }
    }
}
