//! The `imgpipe` binary's library half: the whole configuration, provisioning of topics and
//! schemas, and hosting one service (or all of them) in a process with its ops endpoint. Thin by design: each service lives in its crate.

pub mod config;
pub mod host;
pub mod loadgen;
pub mod ops;
pub mod provision;

pub use config::Config;
