//! What every running service gets from the process that hosts it: where to report readiness,
//! where to register metrics, and the shutdown signal. `imgpipe all` hosts every service in one
//! process with one context each, sharing the shutdown.

use prometheus::Registry;

use crate::{Readiness, Shutdown};

/// The host's handles for one service.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// Readiness checks shown on `/readyz`.
    pub readiness: Readiness,
    /// Metrics registry served on `/metrics`.
    pub metrics: Registry,
    /// Cooperative shutdown.
    pub shutdown: Shutdown,
}

impl ServiceContext {
    /// A fresh context (own readiness and metrics) under a shared shutdown.
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            readiness: Readiness::default(),
            metrics: Registry::new(),
            shutdown,
        }
    }
}
