//! Settings of `imgpipe identity` (the `[identity]` section).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Shortest admin token accepted: a guessable token would hand out every tenant's keys.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;
/// Largest quota an admin may set, so token-bucket arithmetic stays exact.
pub const MAX_RATE_LIMIT: i32 = 1_000_000;

/// Settings of `imgpipe identity`.
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Address of the admin HTTP API.
    pub listen: SocketAddr,
    /// Bearer token of the admin API (at least 16 characters). Required; never logged and never
    /// printed by `imgpipe config`.
    #[serde(skip_serializing)]
    pub admin_token: String,
    /// Sustained requests per second of a tenant created without one.
    pub default_rate_limit_per_second: i32,
    /// Burst of a tenant created without one.
    pub default_burst: i32,
    /// Longest an admin request may take, including its Kafka transaction.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub request_timeout: Duration,
    /// How long a transaction commit may take before the write fails with 503.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub commit_timeout: Duration,
    /// Largest admin request body.
    pub max_body_bytes: usize,
    /// Admin requests handled at once; more are shed with 503.
    pub concurrency_limit: usize,
}

impl std::fmt::Debug for IdentityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityConfig")
            .field("listen", &self.listen)
            .field("admin_token", &"<redacted>")
            .field(
                "default_rate_limit_per_second",
                &self.default_rate_limit_per_second,
            )
            .field("default_burst", &self.default_burst)
            .field("request_timeout", &self.request_timeout)
            .field("commit_timeout", &self.commit_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("concurrency_limit", &self.concurrency_limit)
            .finish()
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin_token: String::new(),
            default_rate_limit_per_second: default_rate_limit_per_second(),
            default_burst: default_burst(),
            request_timeout: default_request_timeout(),
            commit_timeout: default_commit_timeout(),
            max_body_bytes: default_max_body_bytes(),
            concurrency_limit: default_concurrency_limit(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8090))
}

fn default_rate_limit_per_second() -> i32 {
    50
}

fn default_burst() -> i32 {
    100
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_commit_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Admin bodies are a handful of fields.
fn default_max_body_bytes() -> usize {
    16 * 1024
}

fn default_concurrency_limit() -> usize {
    64
}

impl IdentityConfig {
    /// Pushes one message per broken rule (never the token itself).
    pub fn check(&self, errors: &mut Vec<String>) {
        if self.admin_token.trim().is_empty() {
            errors.push("identity.admin_token is required (IMGPIPE_IDENTITY__ADMIN_TOKEN)".into());
        } else if self.admin_token.len() < MIN_ADMIN_TOKEN_LEN {
            errors.push(format!(
                "identity.admin_token must be at least {MIN_ADMIN_TOKEN_LEN} characters"
            ));
        }
        for (name, value) in [
            (
                "identity.default_rate_limit_per_second",
                self.default_rate_limit_per_second,
            ),
            ("identity.default_burst", self.default_burst),
        ] {
            if !(1..=MAX_RATE_LIMIT).contains(&value) {
                errors.push(format!("{name} must be between 1 and {MAX_RATE_LIMIT}"));
            }
        }
        if self.commit_timeout >= self.request_timeout {
            errors.push(
                "identity.commit_timeout must be shorter than identity.request_timeout".into(),
            );
        }
        if self.max_body_bytes == 0 || self.concurrency_limit == 0 {
            errors.push(
                "identity.max_body_bytes and identity.concurrency_limit must be positive".into(),
            );
        }
    }
}

impl chassis::Validate for IdentityConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        self.check(errors);
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_is_required_and_long_enough() {
        let mut errors = Vec::new();
        IdentityConfig::default().check(&mut errors);
        assert!(
            errors.iter().any(|e| e.contains("admin_token is required")),
            "{errors:?}"
        );
        let config = IdentityConfig {
            admin_token: "short".into(),
            ..Default::default()
        };
        let mut errors = Vec::new();
        config.check(&mut errors);
        assert!(
            errors.iter().any(|e| e.contains("at least 16")),
            "{errors:?}"
        );
        assert!(
            !errors.iter().any(|e| e.contains("short")),
            "token leaked: {errors:?}"
        );
    }

    #[test]
    fn the_token_is_never_printed() {
        let config = IdentityConfig {
            admin_token: "super-secret-admin-token".into(),
            ..Default::default()
        };
        assert!(!format!("{config:?}").contains("super-secret"));
        let toml = serde_json::to_string(&config).expect("serialises");
        assert!(!toml.contains("super-secret"), "{toml}");
        let mut errors = Vec::new();
        config.check(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
    }
}
