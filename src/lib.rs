//! The `imgpipe` binary's library half: the whole configuration, and hosting one service (or all
//! of them) in a process with its ops endpoint. Thin by design: each service lives in its crate.

pub mod config;
pub mod host;
pub mod loadgen;

pub use config::Config;
