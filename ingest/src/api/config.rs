//! Settings of `imgpipe api` (the `[api]` section).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the api listens, limits and waits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the data-plane HTTP server.
    pub listen: SocketAddr,
    /// Stable identity for static membership of the reply group: a restart within the session
    /// timeout keeps the same reply partitions. Empty: dynamic membership.
    pub instance_id: String,
    /// Largest request body (the inline image), in bytes; larger bodies get 413 before
    /// anything is produced.
    pub max_body_bytes: usize,
    /// How long a client waits for its image before a 504.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests handled at once; past this, new ones are shed with 503 at once.
    pub max_concurrent_requests: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            instance_id: String::new(),
            max_body_bytes: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            max_concurrent_requests: 2048,
        }
    }
}

impl ApiConfig {
    /// Rules that span fields; one message per broken rule.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.max_body_bytes == 0 {
            errors.push("api.max_body_bytes must be positive".into());
        }
        if self.request_timeout < Duration::from_millis(100) {
            errors.push("api.request_timeout must be at least 100ms".into());
        }
        if self.max_concurrent_requests == 0 {
            errors.push("api.max_concurrent_requests must be positive".into());
        }
    }
}
