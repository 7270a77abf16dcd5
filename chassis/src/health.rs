//! Readiness as a set of named checks. Each component flips its own check (Kafka connected,
//! identity view caught up, ClickHouse reachable); `/readyz` is ready only when all are, and says
//! which are not and why.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// One named check's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckState {
    /// Whether this dependency is usable right now.
    pub ready: bool,
    /// Why not, for operators (never contains secrets).
    pub reason: String,
}

/// Shared, cheaply cloneable readiness registry.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<String, CheckState>>>,
}

impl Readiness {
    /// Registers a check that starts not ready.
    pub fn register(&self, name: &str, reason: &str) {
        self.set(name, false, reason);
    }

    /// Marks `name` ready.
    pub fn ready(&self, name: &str) {
        self.set(name, true, "");
    }

    /// Marks `name` not ready, with the reason operators will see.
    pub fn not_ready(&self, name: &str, reason: &str) {
        self.set(name, false, reason);
    }

    fn set(&self, name: &str, ready: bool, reason: &str) {
        // The lock is only held to update a map entry; a poisoned lock still holds valid data.
        let mut checks = self.checks.lock().unwrap_or_else(PoisonError::into_inner);
        checks.insert(
            name.to_owned(),
            CheckState {
                ready,
                reason: reason.to_owned(),
            },
        );
    }

    /// A snapshot of every check, and whether all are ready.
    pub fn snapshot(&self) -> (bool, BTreeMap<String, CheckState>) {
        let checks = self
            .checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        (checks.values().all(|c| c.ready), checks)
    }

    /// Whether every registered check is ready.
    pub fn is_ready(&self) -> bool {
        self.snapshot().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_is() {
        let r = Readiness::default();
        r.register("kafka", "connecting");
        r.register("view", "catching up");
        assert!(!r.is_ready());
        r.ready("kafka");
        assert!(!r.is_ready());
        r.ready("view");
        assert!(r.is_ready());
        r.not_ready("kafka", "broker down");
        let (ready, checks) = r.snapshot();
        assert!(!ready);
        assert_eq!(checks["kafka"].reason, "broker down");
    }
}
