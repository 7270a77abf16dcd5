//! What a load run measured, as data (serialised to `results.json`), and the `--report` folder
//! drawn from it: `index.html` (self-contained: inline CSS and SVG, no script, no external
//! asset), `timeseries.svg`, `curve.svg` (sweeps only) and `results.json`.
//!
//! By role: this module holds the run's record and writes the folder; [`machine`] reads the
//! host's facts from `/proc`, [`charts`] draws the SVGs, [`html`] lays out the page.

pub mod charts;
pub mod html;
pub mod machine;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::args::LoadgenArgs;
use crate::results::{Second, Summary};
use crate::sweep::{SweepResults, SweepSettings};

pub use machine::Machine;

/// How the run was made (never the key, and only the image folder's name).
#[derive(Debug, Clone, Serialize)]
pub struct Parameters {
    /// `host:port` of the api.
    pub target: String,
    /// Query string of every request.
    pub query: String,
    /// Name of the image folder (GET mode: of the URL file).
    pub images_folder: String,
    /// Images in it (GET mode: URLs in it).
    pub images: usize,
    /// Loop kind in words.
    pub mode: String,
    /// Open loop: requests/s (sweep: the first step's).
    pub rate_per_s: Option<f64>,
    /// In-flight bound.
    pub concurrency: usize,
    /// Run length (sweep: per step), s.
    pub duration_s: f64,
    /// Per-request timeout, s.
    pub timeout_s: f64,
    /// `--requests`, if given.
    pub requests_limit: Option<u64>,
    /// Sweep settings, for a sweep.
    pub sweep: Option<SweepSettings>,
}

impl Parameters {
    /// The parameters of a run with `args` against `target_url` (the api's base URL, or the first
    /// GET URL) over `inputs` images or URLs.
    pub fn of(
        args: &LoadgenArgs,
        target_url: &str,
        inputs: usize,
        mode: &str,
        sweep: Option<SweepSettings>,
    ) -> Self {
        // Only host and port: the URL could carry credentials (or a signature), and the path is
        // always the same or one of many.
        let target = reqwest::Url::parse(target_url)
            .ok()
            .and_then(|url| {
                let host = url.host_str()?.to_owned();
                Some(match url.port_or_known_default() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| "(unparsable URL)".to_owned());
        let source = args.urls.as_ref().or(args.images.as_ref());
        let images_folder = source.map_or_else(String::new, |path| {
            path.file_name().map_or_else(
                || path.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            )
        });
        let query = if args.urls.is_some() {
            "(GET: options in each URL)".to_owned()
        } else {
            args.query.clone()
        };
        Self {
            target,
            query,
            images_folder,
            images: inputs,
            mode: mode.to_owned(),
            rate_per_s: args.rate,
            concurrency: args.concurrency,
            duration_s: args.duration.as_secs_f64(),
            timeout_s: args.timeout.as_secs_f64(),
            requests_limit: args.requests,
            sweep,
        }
    }
}

/// Everything a run produced: `results.json` is this, serialised.
#[derive(Debug, Clone, Serialize)]
pub struct RunResults {
    /// Version of the imgpipe binary that ran the load.
    pub imgpipe_version: String,
    /// How the run was made.
    pub parameters: Parameters,
    /// Where it ran.
    pub machine: Machine,
    /// A single run's numbers (`None` for a sweep: see `sweep`).
    pub summary: Option<Summary>,
    /// A sweep's steps and capacity point.
    pub sweep: Option<SweepResults>,
    /// One record per second, every step of a sweep included.
    pub timeseries: Vec<Second>,
    /// Seconds past the time series' bound, counted but not kept.
    pub seconds_not_kept: u64,
}

/// The report could not be written: which path, and why.
#[derive(Debug)]
pub struct WriteError {
    /// Folder or file that failed.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Writes the report into `dir` (created if missing): `results.json` first (every number, so
/// nothing is lost if a chart fails), then `timeseries.svg`, `curve.svg` for a sweep (a stale
/// one is removed otherwise) and `index.html`. Returns the path of `index.html`.
pub fn write(dir: &Path, results: &RunResults) -> Result<PathBuf, WriteError> {
    let fail = |path: PathBuf| move |reason: String| WriteError { path, reason };
    std::fs::create_dir_all(dir).map_err(|e| fail(dir.to_owned())(e.to_string()))?;

    let json_path = dir.join("results.json");
    let json = serde_json::to_string_pretty(results)
        .map_err(|e| fail(json_path.clone())(e.to_string()))?;
    write_file(&json_path, &json)?;

    let timeseries_path = dir.join("timeseries.svg");
    let timeseries = charts::timeseries_svg(&results.timeseries)
        .map_err(|e| fail(timeseries_path.clone())(e.to_string()))?;
    write_file(&timeseries_path, &timeseries)?;

    let curve_path = dir.join("curve.svg");
    let curve = match &results.sweep {
        Some(sweep) => {
            let curve =
                charts::curve_svg(sweep).map_err(|e| fail(curve_path.clone())(e.to_string()))?;
            write_file(&curve_path, &curve)?;
            Some(curve)
        }
        None => {
            // A curve left by an earlier sweep in the same folder would not belong to this run.
            match std::fs::remove_file(&curve_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(fail(curve_path)(e.to_string()));
                }
                _ => None,
            }
        }
    };

    let index_path = dir.join("index.html");
    let page = html::page(results, &timeseries, curve.as_deref())
        .map_err(|e| fail(index_path.clone())(e.to_string()))?;
    write_file(&index_path, &page)?;
    Ok(index_path)
}

fn write_file(path: &Path, text: &str) -> Result<(), WriteError> {
    std::fs::write(path, text).map_err(|e| WriteError {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}
