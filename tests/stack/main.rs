//! The integration tests that run against the shared local stack (`compose/local/stack up`: real
//! Kafka, schema registry and ClickHouse). One binary, one module per subject, so the suite links
//! once instead of once per file. Each test isolates itself with its own namespace (topics,
//! groups, transactional ids, subjects, ClickHouse database), so they run in parallel.
//!
//! Behind the `stack-tests` feature, so `cargo test` alone needs no stack and stays fast;
//! `compose/local/test` turns it on: `cargo test --features stack-tests,failpoints --test stack`.
#![cfg(feature = "stack-tests")]

#[path = "../support/mod.rs"]
mod support;

mod aggregator_outage;
mod billing;
mod contracts;
mod gallery_browser;
mod http_face;
mod identity;
mod monitoring;
mod ops;
mod phone_formats;
mod resize_pipeline;
mod resizer_failover;
mod signed_get;
mod sources;
mod supervision;
mod usage_api;
mod usage_exactness;
mod usage_rollups;
mod web_caching;
mod web_crops;
