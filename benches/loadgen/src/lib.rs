//! `imgpipe-loadgen`: drives the api at a fixed rate (open loop) or a fixed concurrency (closed
//! loop) with a set of images (`POST /v1/resize`) or a list of URLs (`GET`, e.g. signed image
//! URLs, ours or another image server's), shows live progress once a second, and prints latency
//! percentiles, throughput and errors by code. From each answer's `Server-Timing` it keeps every stage's
//! latency and separates the resize work (decode + resize + encode) from the pipeline's own
//! overhead (everything else: HTTP, auth, Kafka hand-offs, queueing, reply routing).
//!
//! `--sweep` runs open-loop steps at rising rates until the tipping point and names the capacity
//! point; `--report DIR` writes the run as an HTML page with charts, SVGs and a JSON file.
//!
//! In-flight requests are bounded in both modes: an open-loop run that the service cannot keep up
//! with counts the requests it could not start as `dropped` rather than piling them up.
//!
//! `imgpipe-loadgen origin` serves a folder over HTTP on loopback: the origin that GET benchmarks
//! and the demo fetch their source images from ([`origin`]).
//!
//! A tool of its own, outside the services' binary: the charts of its report pull in plotters,
//! which no service needs.
//!
//! By role: [`args`] (options), [`driver`] (the load loop and the requests), [`measure`] (what
//! a phase counts), [`histogram`] (latency in µs), [`stages`] (`Server-Timing`), [`sweep`] (the
//! step rule and the capacity point), [`results`] (the numbers of a run or step), [`console`]
//! (what is printed), [`report`] (the `--report` folder) and [`origin`] (the file server).

pub mod args;
pub mod console;
pub mod driver;
pub mod histogram;
pub mod measure;
pub mod origin;
pub mod report;
pub mod results;
pub mod stages;
pub mod sweep;

pub use args::LoadgenArgs;
pub use driver::run;

/// Why a load run could not start, or its report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The image folder could not be read or holds no images.
    #[error("reading images from {path}: {reason}")]
    Images {
        /// Folder.
        path: String,
        /// Why.
        reason: String,
    },
    /// The `--urls` file could not be read, holds no URL, or a line is not an absolute URL.
    #[error("reading URLs from {path}: {reason}")]
    Urls {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// The origin could not listen, or failed while serving.
    #[error("origin on {listen}: {reason}")]
    Origin {
        /// Address it was to listen on.
        listen: String,
        /// Why.
        reason: String,
    },
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The `--report` folder or one of its files could not be written. After a run, its results
    /// were printed before this error.
    #[error("writing the report {path}: {reason}")]
    Report {
        /// The folder or file that failed.
        path: String,
        /// Why.
        reason: String,
    },
}
