//! The shared runtime every imgpipe service stands on: layered config, telemetry, the ops HTTP
//! endpoint (`/metrics`, `/healthz`, `/readyz`), cooperative shutdown, and the Kafka and ClickHouse
//! client set-up whose settings carry the pipeline's delivery guarantees.

pub mod clickhouse;
pub mod config;
pub mod context;
pub mod health;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod ops;
pub mod outage;
pub mod rebalance;
pub mod retry;
pub mod shutdown;
pub mod source;
pub mod stall;
pub mod tasks;
pub mod telemetry;
pub mod trace;

pub use config::{ConfigError, Validate, load_config};
pub use context::ServiceContext;
pub use health::Readiness;
pub use retry::{Backoff, RetryPolicy, RetryStop};
pub use shutdown::Shutdown;
pub use stall::StallDetector;
pub use tasks::{TaskFailure, Tasks};
