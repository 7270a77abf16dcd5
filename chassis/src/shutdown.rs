//! Cooperative shutdown: SIGTERM or ctrl-c cancels one token; every task watches it, stops taking
//! new work, finishes what it holds, commits, and returns. A task that fails cancels the token too,
//! so one broken component takes the process down cleanly instead of leaving it half alive.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The process-wide shutdown signal. Clones share one token.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A fresh, untriggered shutdown signal (tests drive it by hand).
    pub fn new() -> Self {
        Self::default()
    }

    /// A shutdown that triggers on SIGTERM or ctrl-c.
    pub fn on_signals() -> Self {
        let shutdown = Self::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("Shutdown signal received");
            trigger.trigger();
        });
        shutdown
    }

    /// Starts shutdown.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has started.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// A child token, cancelled with this one, for APIs that take a `CancellationToken`.
    pub fn token(&self) -> CancellationToken {
        self.token.child_token()
    }
}

/// Default time a service gets to drain in-flight work after shutdown starts.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for SIGTERM; ctrl-c only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
