//! The resizer: consumer group `resizers` turns `image.requests` into replies on `image.results`
//! and usage records, doing the image work in [`kernel`] on a bounded CPU pool.

pub mod config;
pub mod kernel;
pub mod metrics;
pub mod offsets;
pub mod resizer;

pub use config::ResizerConfig;
pub use resizer::{ResizerError, run};
