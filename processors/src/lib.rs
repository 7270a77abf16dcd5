//! The resizer: consumer group `resizers` turns `image.requests` into replies on `image.results`
//! and usage records, doing the image work in [`kernel`] on a bounded CPU pool, after fetching
//! sources given by reference with [`chassis::source`].

pub mod config;
/// Images tagged with generated ICC profiles, for the kernel's tests, the differential test
/// against libvips and the colour benchmark (the `fixtures` feature; never in a service build).
#[cfg(any(test, feature = "fixtures"))]
pub mod icc_fixtures;
pub mod kernel;
pub mod metrics;
pub mod offsets;
pub mod resizer;

pub use config::ResizerConfig;
pub use resizer::{ResizerError, run};
