//! The `imgpipe` binary's library half: the whole configuration, provisioning of topics and
//! schemas, hosting one service (or all of them) in a process with its ops endpoint, and the
//! demo's gallery page of signed GET URLs (`imgpipe gallery`). Thin by design: each service
//! lives in its crate, the operators' tools in `imgpipe-ops` (`aggregators/ops`), and the load
//! generator is a binary of its own (`benches/loadgen`).

pub mod config;
pub mod gallery;
pub mod host;
pub mod provision;

pub use config::Config;
