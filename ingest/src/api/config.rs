//! Settings of `imgpipe api` (the `[api]` section).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::web_cache::WebConfig;

/// How the api listens, limits and waits.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
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
    #[schemars(with = "chassis::config::HumanDuration")]
    pub request_timeout: Duration,
    /// Requests handled at once; past this, new ones are shed with 503 at once.
    pub max_concurrent_requests: usize,
    /// Caching and format negotiation of signed GETs.
    pub web: WebConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            instance_id: String::new(),
            max_body_bytes: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            max_concurrent_requests: 2048,
            web: WebConfig::default(),
        }
    }
}

/// The longest `request_timeout`: a request's usage records must stay within the usage rollups'
/// one-minute lookaround, with room for clock skew between the api and the resizers.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(50);

impl ApiConfig {
    /// Rules that span fields; one message per broken rule.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.max_body_bytes == 0 {
            errors.push("api.max_body_bytes must be positive".into());
        }
        if self.request_timeout < Duration::from_millis(100) {
            errors.push("api.request_timeout must be at least 100ms".into());
        }
        // A request's usage records (the resizer's, the api's) are stamped within its timeout,
        // and the usage rollups pair them within a minute (aggregators' LOOKAROUND_SECONDS).
        if self.request_timeout > MAX_REQUEST_TIMEOUT {
            errors.push(format!(
                "api.request_timeout must be at most {}s (usage rollups pair a request's records within a minute)",
                MAX_REQUEST_TIMEOUT.as_secs()
            ));
        }
        if self.max_concurrent_requests == 0 {
            errors.push("api.max_concurrent_requests must be positive".into());
        }
        self.web.validate(errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_timeout_stays_within_the_usage_rollups_lookaround() {
        let check = |timeout: Duration| {
            let mut errors = Vec::new();
            ApiConfig {
                request_timeout: timeout,
                ..ApiConfig::default()
            }
            .validate(&mut errors);
            errors
        };
        assert!(check(Duration::from_secs(10)).is_empty());
        assert!(check(MAX_REQUEST_TIMEOUT).is_empty());
        let errors = check(MAX_REQUEST_TIMEOUT + Duration::from_secs(1));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("at most 50s"), "{errors:?}");
        assert_eq!(check(Duration::from_millis(99)).len(), 1);
    }
}
